"""Where a store keeps its files, and finding the files its manifest does not reference.

::

    STORE/manifest.sqlite                                 SQLite manifest (plus -wal / -shm)
    STORE/images/<case>-<token>.nrrd                      case images
    STORE/labels/<case>/<structure>_v<NNNN>_<token>.nrrd  one file per label version

A random token in every file name means that no path is ever written twice, even after a crash
left an unrecorded file behind.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = [
    "IMAGES",
    "LABELS",
    "MANIFEST_NAME",
    "data_files",
    "image_file",
    "is_temporary",
    "label_file",
    "make_dir",
    "remove_empty_label_folders",
    "slug",
]

MANIFEST_NAME = "manifest.sqlite"
IMAGES = "images"
LABELS = "labels"

# Temporary names of MedSegAdaptLib.io.atomic_output: ".<stem>.tmp-<hex><suffix>".
_TEMPORARY = re.compile(r"^\..*\.tmp-[0-9a-f]+(\.[^.]+)*$")


def _token() -> str:
    return secrets.token_hex(4)


def slug(name: str) -> str:
    """``name`` as a file-name part: lower case, runs of other characters than a-z 0-9 as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "structure"


def image_file(case_id: str) -> str:
    """Store-relative path for a new image file of ``case_id``."""
    return f"{IMAGES}/{case_id}-{_token()}.nrrd"


def label_file(case_id: str, structure: str, version: int) -> str:
    """Store-relative path for a new label file: the name carries the structure and version."""
    return f"{LABELS}/{case_id}/{slug(structure)}_v{version:04d}_{_token()}.nrrd"


def make_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; the new entry is fsynced into its parent folder."""
    if path.is_dir():
        return
    make_dir(path.parent)
    path.mkdir(exist_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # POSIX only
        descriptor = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)



def data_files(root: Path) -> set[str]:
    """Store-relative paths of all files under ``images/`` and ``labels/``."""
    return {
        path.relative_to(root).as_posix()
        for folder in (IMAGES, LABELS)
        for path in (root / folder).rglob("*")
        if path.is_file()
    }


def is_temporary(relative: str) -> bool:
    """True for the temporary file of a write that did not finish."""
    return bool(_TEMPORARY.match(Path(relative).name))


def remove_empty_label_folders(root: Path) -> None:
    """Remove empty case folders under ``labels/`` (made again when a label is written)."""
    labels = root / LABELS
    for folder in labels.iterdir() if labels.is_dir() else ():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

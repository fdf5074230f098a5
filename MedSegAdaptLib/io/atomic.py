"""Atomic file output: a file appears complete at its final path or not at all."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from MedSegAdaptLib.core.errors import InputError

__all__ = ["atomic_output"]


def _temporary_path(final: Path) -> Path:
    """Hidden sibling of ``final`` that keeps its extension (``.seg.nrrd``, ``.nii.gz``, ...)."""
    suffix = "".join(final.suffixes[-2:])
    stem = final.name[: len(final.name) - len(suffix)]
    return final.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move the written file onto ``path``.

    The body must write the file at the yielded path. On success the file is fsynced, renamed onto
    ``path`` with ``os.replace`` and the directory is fsynced (where the platform allows it). On any
    exception the temporary file is removed and the exception re-raised, so ``path`` is either
    untouched or complete.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise InputError(
            f"Cannot write {final}: folder {final.parent} does not exist; expected an existing folder"
        )
    temporary = _temporary_path(final)
    try:
        yield temporary
        _fsync(temporary, os.O_RDWR)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX only: Windows cannot open a directory for fsync
        _fsync(final.parent, os.O_RDONLY | os.O_DIRECTORY)

"""Five real clinical cases (CT lung tumours, MR brain tumours, an MR breast lesion) with reference labels.

They ship inside the source archive of pyradiomics 3.1.0 on the package index (`data/`, image + label
NRRD each). The archive is fetched once from the index pip is configured with, its SHA-256 checked,
and only the case files are extracted into a cache folder outside the checkout
(``$MEDSEGADAPT_CASES_DIR``, default ``~/.cache/medsegadapt/clinical_cases``). Nothing else of that
package is used. Each case carries report texts written for this project, several phrasings each.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.hashing import sha256_file
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.io.atomic import atomic_output

__all__ = ["ClinicalCase", "cases_dir", "clinical_cases", "fetch_clinical_cases"]

_JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ClinicalCase:
    """One case: name ('lung1', ...), modality ('ct' or 'mr'), the knowledge-base structure it shows, a
    one-line description of the finding, report texts, and the image and label NRRD files."""

    name: str
    modality: str
    structure: str
    finding: str
    reports: tuple[str, ...]
    image_path: Path
    label_path: Path

    def load(self):
        """(Volume, reference mask (I, J, K) bool) of the case."""
        from MedSegAdaptLib.io.volume import read_volume

        volume = read_volume(self.image_path)
        label = read_volume(self.label_path)
        if label.array.shape != volume.array.shape:
            raise InputError(f"{self.label_path} has shape {label.array.shape}; expected the image's "
                             f"{volume.array.shape}")
        return volume, label.array > 0


@cache
def _manifest() -> dict:
    return json.loads(files("MedSegAdaptLib.io").joinpath("clinical_cases.json").read_text(encoding="utf-8"))


def cases_dir() -> Path:
    """Where the extracted cases live: $MEDSEGADAPT_CASES_DIR, else ~/.cache/medsegadapt/clinical_cases."""
    configured = os.environ.get("MEDSEGADAPT_CASES_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "medsegadapt" / "clinical_cases"


def _case_files(name: str) -> tuple[str, str]:
    return f"{name}_image.nrrd", f"{name}_label.nrrd"


def _missing(folder: Path) -> list[str]:
    return [file for case in _manifest()["cases"] for file in _case_files(case["name"])
            if not (folder / file).is_file()]


def clinical_cases(folder: str | os.PathLike[str] | None = None) -> list[ClinicalCase]:
    """The five cases, in a fixed order; InputError (saying how to fetch them) when they are not there."""
    folder = Path(folder) if folder is not None else cases_dir()
    missing = _missing(folder)
    if missing:
        raise InputError(f"clinical cases missing in {folder} ({', '.join(missing)}); fetch them with `make cases` "
                         "or `medsegadapt cases --fetch`")
    cases = []
    for entry in _manifest()["cases"]:
        image, label = _case_files(entry["name"])
        cases.append(ClinicalCase(entry["name"], entry["modality"], entry["structure"], entry["finding"],
                                  tuple(entry["reports"]), folder / image, folder / label))
    return cases


def _index_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL, pip's configuration, else pip's default)."""
    configured = os.environ.get("PIP_INDEX_URL")
    if configured:
        return configured
    found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True, check=False)
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    from pip._internal.models.index import PyPI  # pip's own default index

    return PyPI.simple_url


def _archive_url(index: str, project: str, filename: str) -> str:
    """The download address of `filename` on the index's project page (PEP 691 JSON)."""
    request = urllib.request.Request(f"{index.rstrip('/')}/{project}/", headers={"Accept": _JSON_ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            page = json.load(response)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the project page of {project} on the package index {index} ({error})") from error
    for entry in page.get("files", []):
        if entry.get("filename") == filename:
            return entry["url"]
    raise InputError(f"the package index {index} does not list {filename} for {project}")


def _download(url: str, target: Path, expected_sha256: str, progress: ProgressCallback | None) -> None:
    """Download `url` into `target`, checking the SHA-256; InputError (and no file) when it differs."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=180) as response, open(target, "wb") as out:
        total, done = int(response.headers.get("Content-Length") or 0), 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None and total:
                progress("downloading the clinical cases", done, total)
    if digest.hexdigest() != expected_sha256:
        target.unlink()
        raise InputError(f"{url} has SHA-256 {digest.hexdigest()}; expected {expected_sha256}")


def _extract(archive: Path, member_folder: str, names: list[str], folder: Path) -> None:
    """Extract the named files of `member_folder` in `archive` into `folder`, each written atomically."""
    with tarfile.open(archive, "r:gz") as tar:
        for name in names:
            member = tar.getmember(f"{member_folder}/{name}")
            source = tar.extractfile(member)
            if source is None:
                raise InputError(f"{archive} holds {member.name} but not as a file")
            with atomic_output(folder / name) as temporary, open(temporary, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)


def fetch_clinical_cases(folder: str | os.PathLike[str] | None = None, archive: str | os.PathLike[str] | None = None,
                         progress: ProgressCallback | None = None) -> Path:
    """Make sure the cases are in `folder` (default cases_dir()) and return it.

    Files already there are kept. `archive`: a local copy of the source archive to extract from instead
    of downloading it (its SHA-256 is checked all the same).
    """
    folder = Path(folder) if folder is not None else cases_dir()
    missing = _missing(folder)
    if not missing:
        return folder
    source = _manifest()["source"]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        if archive is None:
            archive = Path(scratch) / source["archive"]
            _download(_archive_url(_index_url(), source["project"], source["archive"]), archive, source["sha256"],
                      progress)
        elif sha256_file(Path(archive)) != source["sha256"]:
            raise InputError(f"{archive} has SHA-256 {sha256_file(Path(archive))}; expected {source['sha256']} "
                             f"({source['archive']})")
        _extract(Path(archive), source["folder"], missing, folder)
    return folder


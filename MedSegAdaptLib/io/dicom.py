"""DICOM folders as scanners write them: the series a folder holds, and which one to read.

A scanner's export folder often holds several series (scout, thin and thick reconstructions, a dose
report as a colour secondary capture). Series are told apart by their Series Instance UID; only the
files' headers are read here, never their pixel data.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedSegAdaptLib.core.errors import InputError, unknown_name

__all__ = ["DicomSeries", "choose_dicom_series", "default_dicom_series", "list_dicom_series"]

_MODALITY, _DESCRIPTION, _NUMBER = "0008|0060", "0008|103e", "0020|0011"


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder, as its files' headers describe it.

    ``files`` are in slice order (GDCM sorts them by position). ``size`` is (I, J, K) voxels: columns,
    rows and slices, the slices being the frames of a single multi-frame file. ``spacing`` is in mm,
    K from the distance between the first two slices (or the multi-frame file's own), None when a
    single slice has none. ``samples_per_pixel`` is 1 for greyscale, 3 for RGB colour.
    """

    uid: str
    folder: str
    files: tuple[str, ...]
    modality: str
    description: str
    number: int | None
    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    samples_per_pixel: int

    @property
    def problem(self) -> str | None:
        """Why this series cannot be read as a scalar 3D volume, or None when it can."""
        if self.samples_per_pixel != 1:
            return f"colour ({self.samples_per_pixel} samples per pixel), not a greyscale image"
        if sum(extent > 1 for extent in self.size) < 3:
            return "a single 2D slice, not a 3D volume"
        return None

    def describe(self) -> str:
        """One line: modality, description, files and size."""
        modality = self.modality or "modality unknown"
        files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        frames = ", multi-frame" if len(self.files) == 1 and self.size[2] > 1 else ""
        return f"{modality}, {self.description!r}, {files}{frames}, {'x'.join(map(str, self.size))}"


def _text(reader: sitk.ImageFileReader, tag: str) -> str:
    if not reader.HasMetaDataKey(tag):
        return ""
    try:
        return reader.GetMetaData(tag).strip(" \x00")
    except UnicodeDecodeError:  # a description in a character set SimpleITK does not decode
        return ""


def _header(file: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(f"Cannot read the DICOM header of {file} ({reason}); expected a DICOM image file") from error
    return reader


def _describe(folder: Path, uid: str) -> DicomSeries:
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    first = _header(files[0])
    columns, rows, frames = (tuple(first.GetSize()) + (1,))[:3]
    in_plane = tuple(first.GetSpacing()[:2])
    if len(files) > 1:
        gap = float(np.linalg.norm(np.subtract(_header(files[1]).GetOrigin(), first.GetOrigin())))
        spacing = (*in_plane, gap)
    else:
        spacing = (*in_plane, float(first.GetSpacing()[2])) if frames > 1 else None
    number = _text(first, _NUMBER)
    return DicomSeries(
        uid=uid,
        folder=str(folder),
        files=files,
        modality=_text(first, _MODALITY),
        description=_text(first, _DESCRIPTION),
        number=int(number) if number.lstrip("-").isdigit() else None,
        size=(int(columns), int(rows), int(frames) * len(files)),
        spacing=spacing,
        samples_per_pixel=int(first.GetNumberOfComponents()),
    )


def _series_uids(folder: str | Path) -> tuple[Path, list[str]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; expected a folder of DICOM files")
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"No DICOM series found in folder {folder}; expected a folder of DICOM files")
    return folder, uids


def _order(series: DicomSeries) -> tuple:
    return (series.number is None, series.number or 0, series.uid)


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """Every series in ``folder`` (not its subfolders), by series number then UID."""
    folder, uids = _series_uids(folder)
    return sorted((_describe(folder, uid) for uid in uids), key=_order)


def default_dicom_series(series: Sequence[DicomSeries]) -> DicomSeries:
    """The series read when none is chosen: the one with the most slices among those readable as a
    scalar 3D volume (among all when none is), the first in ``series``' order on a tie."""
    return max(series, key=lambda one: (one.problem is None, one.size[2]))


def choose_dicom_series(folder: str | Path, series_uid: str | None = None) -> tuple[DicomSeries, str]:
    """The series of ``folder`` to read, and one line saying which it is and why.

    With ``series_uid``, that series (InputError naming the folder and the UIDs there when it is not
    one of them); without, ``default_dicom_series`` of the folder's series.
    """
    folder, uids = _series_uids(folder)
    count = f"{len(uids)} series in {folder}"
    if series_uid is not None:
        wanted = series_uid.strip()
        if wanted not in uids:
            raise unknown_name("DICOM series UID", wanted, sorted(uids), f"folder {folder}")
        chosen = _describe(folder, wanted)
        return chosen, f"DICOM series {chosen.uid} ({chosen.describe()}), chosen of the {count}"
    if len(uids) == 1:
        chosen = _describe(folder, uids[0])
        return chosen, f"DICOM series {chosen.uid} ({chosen.describe()}), the only series in {folder}"
    chosen = default_dicom_series(list_dicom_series(folder))
    return chosen, (f"DICOM series {chosen.uid} ({chosen.describe()}): the largest 3D volume of the {count}; "
                    f"choose another by its series UID (`medsegadapt series {folder}` lists them)")

"""DICOM files written the way scanners write them, for tests: one file per slice of a series, a
multi-frame file, a colour secondary capture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["FLIPPED", "STUDY_UID", "sitk_image", "write_dicom_series", "write_multiframe", "write_rgb_capture"]

STUDY_UID = "1.2.826.0.1.3680043.2.1125.1"
#: I and J flipped (the usual axial CT in LPS): columns are the I, J, K directions.
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def sitk_image(array_ijk: np.ndarray, spacing, origin, direction) -> sitk.Image:
    """A SimpleITK image of an (I, J, K) array placed in LPS."""
    image = sitk.GetImageFromArray(array_ijk.transpose(2, 1, 0))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _writer() -> sitk.ImageFileWriter:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    return writer


def write_dicom_series(folder: Path, array_ijk: np.ndarray, spacing, origin, series_uid: str,
                       direction=FLIPPED, description: str = "", number: int | None = None,
                       modality: str = "CT") -> list[Path]:
    """One CT Image Storage file per K slice, as a scanner would; returns the files in slice order.
    ``direction`` must be a rotation (its K column the cross product of I and J), as DICOM's is."""
    image = sitk_image(array_ijk, spacing, origin, direction)
    writer = _writer()
    direction = image.GetDirection()
    files = []
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                         direction[1], direction[4], direction[7])),
            "0018|0050": f"{spacing[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|103e": description,
        }
        if number is not None:
            tags["0020|0011"] = str(number)
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        files.append(folder / f"{series_uid[-3:]}_{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_image)
    return files


def write_multiframe(path: Path, array_ijk: np.ndarray, spacing, origin, direction, series_uid: str) -> None:
    """One multi-frame (Enhanced CT) file holding every K slice as a frame, as GDCM writes a 3D image."""
    image = sitk_image(array_ijk, spacing, origin, direction)
    for tag, value in {"0008|0060": "CT", "0020|000d": STUDY_UID, "0020|000e": series_uid,
                       "0008|0018": f"{series_uid}.1", "0008|103e": "enhanced CT"}.items():
        image.SetMetaData(tag, value)
    writer = _writer()
    writer.SetFileName(str(path))
    writer.Execute(image)


def write_rgb_capture(path: Path, series_uid: str, index: int = 1, shape=(12, 10)) -> None:
    """Slice ``index`` of a colour (RGB, 3 samples per pixel) secondary capture, like a scanner's dose
    report page; files of one ``series_uid`` with different indices make a series of several slices."""
    pixels = np.random.default_rng(index).integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    image = sitk.GetImageFromArray(pixels, isVector=True)
    for tag, value in {"0008|0060": "OT", "0008|0016": "1.2.840.10008.5.1.4.1.1.7", "0020|000d": STUDY_UID,
                       "0020|000e": series_uid, "0008|0018": f"{series_uid}.{index}", "0020|0013": str(index),
                       "0020|0032": f"0\\0\\{index}", "0020|0037": "1\\0\\0\\0\\1\\0",
                       "0008|103e": "dose report"}.items():
        image.SetMetaData(tag, value)
    writer = _writer()
    writer.SetFileName(str(path))
    writer.Execute(image)

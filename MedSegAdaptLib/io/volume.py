"""Reading and writing 3D image volumes (NRRD, NIfTI, MHA/MHD, DICOM series) with SimpleITK."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.atomic import atomic_output
from MedSegAdaptLib.io.geometry import Geometry

__all__ = ["WRITABLE_SUFFIXES", "Volume", "read_volume", "volume_from_array", "write_volume"]

#: Extensions write_volume accepts: single-file formats only, so the atomic rename moves everything.
WRITABLE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")

_MODALITY_TAG = "0008|0060"


@dataclass
class Volume:
    """A scalar 3D image.

    ``array`` is indexed (I, J, K) as in 3D Slicer: the file's first, second and third axis.
    ``modality_hint`` is the DICOM Modality ('CT', 'MR', ...) when the source says so, else None.
    Construction checks that the array is 3D, matches ``geometry.shape`` and has finite voxels.
    """

    array: np.ndarray
    geometry: Geometry
    path: str | None = None
    modality_hint: str | None = None

    def __post_init__(self) -> None:
        source = self.path or "volume array"
        if self.array.ndim != 3:
            raise InputError(f"{source} has shape {self.array.shape}; expected a 3D volume")
        if tuple(self.array.shape) != self.geometry.shape:
            raise InputError(
                f"{source} has shape {self.array.shape} but its geometry says {self.geometry.shape}"
            )
        if not np.issubdtype(self.array.dtype, np.number) or np.iscomplexobj(self.array):
            raise InputError(f"{source} has voxel type {self.array.dtype}; expected real numbers")
        if np.issubdtype(self.array.dtype, np.floating) and not np.isfinite(self.array).all():
            nan_count = int(np.isnan(self.array).sum())
            kind = f"{nan_count} NaN" if nan_count else f"{int(np.isinf(self.array).sum())} infinite"
            raise InputError(f"{source} contains {kind} voxels; expected finite intensities")

    def checksum(self) -> str:
        """Hex SHA-256 over the voxel bytes, dtype, shape and geometry."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.array).data)
        digest.update(f"{self.array.dtype.str}|{self.array.shape}|{self.geometry!r}".encode())
        return digest.hexdigest()

    def voxel_checksum(self) -> str:
        """Hex SHA-256 over the voxel bytes, dtype and shape: what an image encoder sees. The geometry is
        left out: it changes no slice embedding, and its last float digits change when a volume is
        written and read back (a generated sample in memory, then from the store, is one volume)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.array).data)
        digest.update(f"{self.array.dtype.str}|{self.array.shape}".encode())
        return digest.hexdigest()


def volume_from_array(
    array: np.ndarray,
    geometry: Geometry,
    path: str | None = None,
    modality_hint: str | None = None,
) -> Volume:
    """Volume from an in-memory (I, J, K) array; the same checks as for a file apply."""
    return Volume(np.asarray(array), geometry, path, modality_hint)


def _dicom_series_files(folder: Path) -> list[str]:
    """Files of the DICOM series with the most files in ``folder``."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(
            f"No DICOM series found in folder {folder}; expected a folder of DICOM files of one series"
        )
    return max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids),
        key=len,
    )


def _read_image(path: Path) -> tuple[sitk.Image, str | None]:
    """The SimpleITK image at ``path`` (file or DICOM folder) and its DICOM Modality if any."""
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_series_files(path))
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
            has_modality = reader.HasMetaDataKey(0, _MODALITY_TAG)
            modality = reader.GetMetaData(0, _MODALITY_TAG) if has_modality else ""
        else:
            image = sitk.ReadImage(str(path))
            has_modality = image.HasMetaDataKey(_MODALITY_TAG)
            modality = image.GetMetaData(_MODALITY_TAG) if has_modality else ""
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(
            f"Cannot read {path} as an image ({reason}); "
            "expected a NRRD, NIfTI, MHA/MHD file or a DICOM series folder"
        ) from error
    return image, modality.strip() or None


def _as_3d(image: sitk.Image, path: Path) -> sitk.Image:
    """The image itself if 3D and scalar; a 4D image with a single time point as 3D; else InputError."""
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a scalar (single-component) 3D image"
        )
    if image.GetDimension() == 4 and size[3] == 1:
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image of size {size}; expected a 3D volume")
    return image


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D scalar volume from NRRD/NHDR, NIfTI, MHA/MHD or a DICOM series folder.

    Spacing, origin and direction are kept in LPS as SimpleITK gives them; the array is (I, J, K).
    For a folder, the DICOM series with the most files is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"Volume not found: {path}; expected an existing NRRD, NIfTI, MHA/MHD file or DICOM folder"
        )
    image, modality = _read_image(path)
    image = _as_3d(image, path)
    geometry = Geometry(
        shape=image.GetSize(),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
    )
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, geometry, str(path), modality)


def write_volume(path: str | os.PathLike[str], volume: Volume) -> None:
    """Write ``volume`` atomically and compressed; the format follows the extension (NRRD advised)."""
    path = Path(path)
    if not path.name.lower().endswith(WRITABLE_SUFFIXES):
        raise InputError(f"Cannot write volume to {path}: expected one of {', '.join(WRITABLE_SUFFIXES)}")
    image = sitk.GetImageFromArray(volume.array.transpose(2, 1, 0))
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)

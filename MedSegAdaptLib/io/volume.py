"""Reading and writing 3D image volumes (NRRD, NIfTI, MHA/MHD, DICOM files and folders) with SimpleITK."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.atomic import atomic_output
from MedSegAdaptLib.io.dicom import DicomSeries, choose_dicom_series
from MedSegAdaptLib.io.geometry import Geometry

__all__ = ["WRITABLE_SUFFIXES", "Volume", "read_volume", "volume_from_array", "write_volume"]

#: Extensions write_volume accepts: single-file formats only, so the atomic rename moves everything.
WRITABLE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")

_MODALITY_TAG = "0008|0060"
_SERIES_TAG = "0020|000e"


@dataclass
class Volume:
    """A scalar 3D image.

    ``array`` is indexed (I, J, K) as in 3D Slicer: the file's first, second and third axis.
    ``modality_hint`` is the DICOM Modality ('CT', 'MR', ...) when the source says so, else None.
    ``dicom_series`` is the series read when the source was a DICOM folder, else None.
    Construction checks that the array is 3D, matches ``geometry.shape`` and has finite voxels.
    """

    array: np.ndarray
    geometry: Geometry
    path: str | None = None
    modality_hint: str | None = None
    dicom_series: DicomSeries | None = None

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


def _read_image(path: Path, series: DicomSeries | None) -> sitk.Image:
    """The SimpleITK image of ``series`` (a series of one file is read as that file, so that a
    multi-frame file comes back 3D) or, without a series, of the file at ``path``."""
    try:
        if series is not None and len(series.files) > 1:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(series.files))
            return reader.Execute()
        return sitk.ReadImage(series.files[0] if series is not None else str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(
            f"Cannot read {path} as an image ({reason}); "
            "expected a NRRD, NIfTI, MHA/MHD file or a DICOM series folder"
        ) from error


def _modality(image: sitk.Image, series: DicomSeries | None) -> str | None:
    if series is not None:
        return series.modality or None
    if not image.HasMetaDataKey(_MODALITY_TAG):
        return None
    return image.GetMetaData(_MODALITY_TAG).strip() or None


def _as_3d(image: sitk.Image, path: Path, series: DicomSeries | None) -> sitk.Image:
    """The image itself if 3D and scalar; a 4D image with a single time point as 3D; else InputError
    naming the file (a DICOM series' first file)."""
    if series is not None:
        files = f"{len(series.files)} file{'s' if len(series.files) != 1 else ''}"
        source = f"DICOM file {series.files[0]} (series {series.uid}, {files})"
    else:
        source = str(path)
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        original = ": read the original greyscale series" if series is not None or image.HasMetaDataKey(
            _SERIES_TAG) else ""
        raise InputError(
            f"{source} has {components} components per voxel (colour, such as the RGB of a secondary capture "
            f"or screenshot); a scalar (greyscale) image is expected{original}"
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        size = image.GetSize()
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{source} is a {image.GetDimension()}D image of size {size}; expected a 3D volume")
    extents = [extent for extent in size if extent > 1]
    if len(extents) == 2:
        hint = ""
        if series is None and image.HasMetaDataKey(_SERIES_TAG):
            hint = "; for a DICOM series, give the folder that holds all of its files"
        raise InputError(
            f"{source} is a single 2D slice ({extents[0]} x {extents[1]} pixels); a 3D volume is needed{hint}"
        )
    if len(extents) < 2 or image.GetDimension() != 3:
        raise InputError(f"{source} has size {size}; a 3D volume is needed")
    return image


def read_volume(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    notify: Callable[[str], None] | None = None,
) -> Volume:
    """Read a 3D scalar volume from NRRD/NHDR, NIfTI, MHA/MHD, a DICOM file or a DICOM folder.

    Spacing, origin and direction (oblique ones too) are kept in LPS as SimpleITK gives them; the
    array is (I, J, K). For a folder, ``series_uid`` picks the DICOM series to read; without it the
    largest is read (see io.dicom.choose_dicom_series). Either way ``notify``, when given, is called
    with one line saying which series was read and why, and the volume's ``dicom_series`` is it.
    A single-frame file or series is refused as a 2D slice, a colour image as not greyscale; a
    multi-frame file is read as the 3D volume its frames make.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"Volume not found: {path}; expected an existing NRRD, NIfTI, MHA/MHD file or DICOM folder"
        )
    series = None
    if path.is_dir():
        series, line = choose_dicom_series(path, series_uid)
        if notify is not None:
            notify(line)
    elif series_uid is not None:
        raise InputError(
            f"A series UID ({series_uid}) picks one series of a DICOM folder, but {path} is a file; "
            "expected the folder that holds the series"
        )
    image = _read_image(path, series)
    modality = _modality(image, series)
    image = _as_3d(image, path, series)
    geometry = Geometry(
        shape=image.GetSize(),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
    )
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, geometry, str(path), modality, series)


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

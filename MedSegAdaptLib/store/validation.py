"""Checks on what users hand to the store; each failure is an InputError naming value and expectation."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import slicerio

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import Geometry
from MedSegAdaptLib.io.modality import MODALITIES

__all__ = [
    "binary_mask",
    "case_id_from_path",
    "check_case_id",
    "check_geometry",
    "check_label_values",
    "check_modality",
    "check_name",
    "check_sha256",
]

_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_IMAGE_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")


def check_case_id(case_id: str) -> str:
    """``case_id`` if it is a safe file-name part: 1-128 of A-Z a-z 0-9 . _ - and no leading dot."""
    if not _CASE_ID.fullmatch(case_id):
        raise InputError(
            f"Case id {case_id!r} is not allowed; expected 1 to 128 characters from A-Z, a-z, 0-9, "
            "'.', '_' and '-', not starting with a dot"
        )
    return case_id


def case_id_from_path(path: Path) -> str:
    """A case id made from an image file or folder name (``chest_01.nii.gz`` -> ``chest_01``)."""
    name = path.name
    suffix = next((s for s in _IMAGE_SUFFIXES if name.lower().endswith(s)), "")
    stem = name[: len(name) - len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[:128] or "case"


def check_name(value: str, what: str) -> str:
    """``value`` stripped; InputError when empty (annotator, reviewer, structure names)."""
    stripped = (value or "").strip()
    if not stripped:
        raise InputError(f"{what} is empty; expected a name")
    return stripped


def check_sha256(value: str | None) -> str | None:
    """Lower-case hex SHA-256, or None."""
    if value is None:
        return None
    if not _SHA256.fullmatch(value):
        raise InputError(f"Checkpoint SHA-256 {value!r} is not valid; expected 64 hexadecimal digits")
    return value.lower()


def check_modality(value: str | None) -> str | None:
    """'ct', 'mr' or None (not given); anything else is refused."""
    if value is None:
        return None
    modality = value.strip().lower()
    if modality not in MODALITIES:
        raise InputError(f"Modality {value!r} is not supported; expected one of {', '.join(MODALITIES)}")
    return modality


def check_geometry(actual: Geometry, expected: Geometry, what: str, case_id: str) -> None:
    """InputError unless ``actual`` (of ``what``) matches the case image's geometry."""
    if not actual.matches(expected):
        raise InputError(
            f"Geometry of {what} does not match the image of case {case_id!r}: "
            f"{actual.describe_mismatch(expected)}; expected the case image's voxel grid"
        )


def binary_mask(array: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """``array`` as a boolean mask of ``shape``; InputError unless it is bool or holds only 0 and 1."""
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise InputError(f"{what} has shape {array.shape}; expected the case image's shape {tuple(shape)}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{what} has voxel type {array.dtype}; expected a 0/1 or bool mask")
    values = np.unique(array)
    stray = values[(values != 0) & (values != 1)]
    if stray.size:
        raise InputError(
            f"{what} has label values {stray[:8].tolist()}; expected 0/1 or bool (one structure per mask)"
        )
    return array == 1


def check_label_values(path: Path) -> None:
    """InputError if a ``.seg.nrrd`` holds voxel values that belong to none of its segments."""
    data = slicerio.read_segmentation(str(path))
    voxels = data["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    for layer_index, layer in enumerate(layers):
        allowed = {0} | {
            int(segment["labelValue"])
            for segment in data["segments"]
            if int(segment.get("layer", 0)) == layer_index
        }
        stray = sorted(set(np.unique(layer).tolist()) - allowed)
        if stray:
            raise InputError(
                f"{path} has voxel values {stray[:8]} in layer {layer_index} that belong to no segment "
                f"(segment values there: {sorted(allowed - {0})}); expected only the segments' label values"
            )

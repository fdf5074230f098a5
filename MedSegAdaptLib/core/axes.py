"""Slicing axes of (I, J, K) volumes in Slicer's IJK order, and slices taken along them.

A slice along `axis` is an (H, W) image whose columns (x) run along the lower of the two other axes
and whose rows (y) along the higher one: for axial slices (axis K), x = I and y = J, as in the
(row = J, column = I) arrays LiteMedSAM was trained on.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from MedSegAdaptLib.core.errors import InputError

__all__ = ["AXIS_NAMES", "DEFAULT_AXIS", "axis_index", "in_plane_axes", "nearest_slice", "occupied_slices", "put_slice", "take_slices"]

AXIS_NAMES = ("i", "j", "k")
"""Axis names in array order."""
DEFAULT_AXIS = 2
"""Slices are taken along K (axial for most scans) unless a caller says otherwise."""


def axis_index(name: str) -> int:
    """0, 1 or 2 for 'i', 'j' or 'k' (any case); InputError otherwise."""
    key = name.strip().lower()
    if key not in AXIS_NAMES:
        raise InputError(f"unknown axis {name!r}; expected one of {', '.join(AXIS_NAMES)}")
    return AXIS_NAMES.index(key)


def in_plane_axes(axis: int) -> tuple[int, int]:
    """(x axis, y axis) of slices along `axis`."""
    x_axis, y_axis = (a for a in range(3) if a != axis)
    return x_axis, y_axis


def take_slices(volume: np.ndarray, axis: int, indices: list[int] | np.ndarray) -> np.ndarray:
    """(N, H, W) images of the slices at `indices` along `axis` of an (I, J, K) volume."""
    return np.moveaxis(volume, axis, 0)[np.asarray(indices)].transpose(0, 2, 1)


def put_slice(volume: np.ndarray, axis: int, index: int, image: np.ndarray) -> None:
    """Write an (H, W) slice image back into an (I, J, K) volume in place."""
    np.moveaxis(volume, axis, 0)[index] = image.T


def occupied_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Indices (ascending) of the slices along `axis` where an (I, J, K) mask has a voxel."""
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))


def nearest_slice(index: int, slices: Sequence[int]) -> int:
    """The slice of `slices` nearest to `index`, the lower one on a tie."""
    return min(slices, key=lambda s: (abs(s - index), s))

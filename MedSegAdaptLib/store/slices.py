"""Partial annotations: which slices along which axis (i, j, k) an annotator actually annotated.

Voxels outside the annotated slices are unknown, not background. ``None`` means the whole volume
was annotated.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from MedSegAdaptLib.core.axes import AXIS_NAMES
from MedSegAdaptLib.core.errors import InputError

__all__ = ["AnnotatedSlices", "annotated_region", "check_slices", "format_slices", "parse_slices"]

AnnotatedSlices = dict[str, list[int]]


def parse_slices(texts: Sequence[str]) -> AnnotatedSlices:
    """``["k:12,30,47", "i:5"]`` (command-line ``--slices`` values) as ``{"k": [12, 30, 47], "i": [5]}``.

    Only the syntax is checked here; :func:`check_slices` checks axes and ranges against an image.
    """
    slices: AnnotatedSlices = {}
    for text in texts:
        axis, separator, numbers = text.partition(":")
        try:
            indices = [int(number) for number in numbers.split(",")]
        except ValueError:
            indices = []
        if not separator or not indices:
            raise InputError(
                f"--slices {text!r} is not AXIS:N,N,...; expected an axis (i, j or k), a colon and "
                "comma-separated slice indices, e.g. k:12,30,47"
            )
        slices.setdefault(axis.strip().lower(), []).extend(indices)
    return slices


def format_slices(slices: Mapping[str, Sequence[int]] | None, whole: str = "all") -> str:
    """``{"k": [12, 30], "i": [5]}`` as 'k:12,30 i:5' (what :func:`parse_slices` reads, axes separated by a
    space); None, the whole volume, as ``whole``."""
    if slices is None:
        return whole
    return " ".join(f"{axis}:{','.join(str(index) for index in indices)}" for axis, indices in slices.items())


def check_slices(
    slices: Mapping[str, Iterable[int]] | None, shape: tuple[int, int, int]
) -> AnnotatedSlices | None:
    """Checked copy of ``slices`` for an image of ``shape``: known axes, indices in range, sorted, unique."""
    if slices is None:
        return None
    checked: AnnotatedSlices = {}
    for axis, indices in slices.items():
        if axis not in AXIS_NAMES:
            raise InputError(f"Unknown axis {axis!r} in the annotated slices; expected i, j or k")
        size = shape[AXIS_NAMES.index(axis)]
        values = sorted({int(index) for index in indices})
        outside = [index for index in values if not 0 <= index < size]
        if outside:
            raise InputError(
                f"Annotated slice(s) {outside} on axis {axis} are out of range; the case image has "
                f"{size} slices along {axis} (expected 0..{size - 1})"
            )
        if not values:
            raise InputError(f"No slice indices given for axis {axis}; expected at least one")
        checked[axis] = values
    if not checked:
        raise InputError("Annotated slices are empty; expected at least one axis with slice indices")
    return checked


def annotated_region(shape: tuple[int, int, int], slices: Mapping[str, Sequence[int]] | None) -> np.ndarray:
    """Boolean (I, J, K) mask of the annotated voxels: the union of the slices, or everything for None."""
    if slices is None:
        return np.ones(shape, dtype=bool)
    region = np.zeros(shape, dtype=bool)
    for axis, indices in slices.items():
        index: list[slice | list[int]] = [slice(None)] * 3
        index[AXIS_NAMES.index(axis)] = list(indices)
        region[tuple(index)] = True
    return region

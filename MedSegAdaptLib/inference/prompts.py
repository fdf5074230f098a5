"""Prompts in volume index space (Slicer IJK) and their projection onto slices (see core.axes for how
a slice's x and y run)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.core.axes import AXIS_NAMES, in_plane_axes
from MedSegAdaptLib.core.errors import InputError

__all__ = ["Box3D", "Point3D", "mask_rect"]


def _comma_integers(text: str) -> list[int]:
    """Integers from 'a,b,c,...' (decimals rounded); an empty list when any part is not a number."""
    try:
        return [int(round(float(v))) for v in text.split(",")]
    except ValueError:
        return []


@dataclass(frozen=True)
class Box3D:
    """Inclusive voxel box: lo = (i0, j0, k0), hi = (i1, j1, k1)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def parse(cls, text: str) -> Box3D:
        """From 'i0,j0,k0,i1,j1,k1'."""
        values = _comma_integers(text)
        if len(values) != 6:
            raise InputError(f"box {text!r} is not six comma-separated voxel indices i0,j0,k0,i1,j1,k1")
        return cls(tuple(values[:3]), tuple(values[3:]))

    @classmethod
    def around(cls, mask: np.ndarray, margin: int = 0) -> Box3D:
        """Bounding box of a non-empty (I, J, K) mask, grown by `margin` voxels and kept inside it."""
        nonzero = np.argwhere(mask)
        if nonzero.size == 0:
            raise InputError("cannot take the bounding box of an empty mask")
        lo = np.maximum(nonzero.min(0) - margin, 0)
        hi = np.minimum(nonzero.max(0) + margin, np.array(mask.shape) - 1)
        return cls(tuple(int(v) for v in lo), tuple(int(v) for v in hi))

    def validate(self, shape: tuple[int, int, int], source: str = "volume") -> None:
        """Refuse empty boxes and boxes reaching outside a volume of `shape`."""
        for axis in range(3):
            lo, hi, size = self.lo[axis], self.hi[axis], shape[axis]
            if lo > hi:
                raise InputError(f"box {self} is empty along {AXIS_NAMES[axis]}: {lo} > {hi}")
            if lo < 0 or hi >= size:
                raise InputError(f"box {self} reaches outside the {source} along {AXIS_NAMES[axis]}: "
                                 f"[{lo}, {hi}] is not within [0, {size - 1}]")

    def slice_range(self, axis: int) -> tuple[int, int]:
        return self.lo[axis], self.hi[axis]

    def on_slice(self, axis: int, index: int) -> Box3D:
        """The same in-plane rectangle on slice `index` along `axis` only: a 2D box drawn on one slice."""
        lo, hi = list(self.lo), list(self.hi)
        lo[axis] = hi[axis] = index
        return Box3D(tuple(lo), tuple(hi))

    def is_2d(self, axis: int) -> bool:
        """True for a box one slice thick along `axis`: propagation then runs through the whole volume."""
        return self.lo[axis] == self.hi[axis]

    def rect(self, axis: int) -> np.ndarray:
        """In-plane box (x0, y0, x1, y1) on slices along `axis`."""
        x_axis, y_axis = in_plane_axes(axis)
        return np.array([self.lo[x_axis], self.lo[y_axis], self.hi[x_axis], self.hi[y_axis]], dtype=np.float32)

    def __str__(self) -> str:
        return ",".join(str(v) for v in (*self.lo, *self.hi))


@dataclass(frozen=True)
class Point3D:
    """A voxel (i, j, k) marked foreground (label 1) or background (label 0)."""

    ijk: tuple[int, int, int]
    label: int = 1

    @classmethod
    def parse(cls, text: str) -> Point3D:
        """From 'i,j,k' or 'i,j,k,label'."""
        values = _comma_integers(text)
        if len(values) not in (3, 4) or (len(values) == 4 and values[3] not in (0, 1)):
            raise InputError(f"point {text!r} is not i,j,k or i,j,k,label with label 0 (background) or 1")
        return cls(tuple(values[:3]), values[3] if len(values) == 4 else 1)

    def validate(self, shape: tuple[int, int, int], source: str = "volume") -> None:
        if any(not 0 <= v < s for v, s in zip(self.ijk, shape)):
            raise InputError(f"point {self.ijk} lies outside the {source} of size {tuple(shape)}")

    def xy(self, axis: int) -> tuple[int, int]:
        x_axis, y_axis = in_plane_axes(axis)
        return self.ijk[x_axis], self.ijk[y_axis]


def mask_rect(mask: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) bounding box of an (H, W) mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)

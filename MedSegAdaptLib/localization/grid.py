"""A coarser working grid for anatomy: whole blocks of in-plane voxels averaged to about 1.5 mm.

Finding the body, the lungs or the brain needs no sub-millimetre detail, and a 512 x 512 CT slice
averaged in 3 x 3 blocks is nine times cheaper to threshold, label and close. Masks found on the
coarse grid are brought back to the volume's own grid by repetition (each coarse voxel is a block).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.io.geometry import Geometry

__all__ = ["WORKING_SPACING_MM", "CoarseGrid"]

WORKING_SPACING_MM = 1.5
"""Axes with finer spacing are averaged in blocks to at least this spacing."""


@dataclass(frozen=True)
class CoarseGrid:
    """Block factors (per I, J, K axis) from a volume's grid to the working grid, and the working geometry."""

    fine: Geometry
    factors: tuple[int, int, int]

    @classmethod
    def for_geometry(cls, geometry: Geometry, spacing_mm: float = WORKING_SPACING_MM) -> CoarseGrid:
        """The grid whose blocks are the largest whole number of voxels at most `spacing_mm` wide (1 at least)."""
        factors = tuple(max(1, int(spacing_mm // s)) for s in geometry.spacing)
        return cls(geometry, factors)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(I, J, K) voxels of the working grid (incomplete blocks at the far edges are dropped)."""
        return tuple(n // f for n, f in zip(self.fine.shape, self.factors))

    @property
    def geometry(self) -> Geometry:
        """The working grid placed in patient space: same directions, block spacing, block-centre origin."""
        direction = np.reshape(self.fine.direction, (3, 3))
        spacing = np.asarray(self.fine.spacing) * self.factors
        shift = direction @ (np.asarray(self.fine.spacing) * (np.asarray(self.factors) - 1) / 2)
        return Geometry(self.shape, tuple(spacing), tuple(np.asarray(self.fine.origin) + shift), self.fine.direction)

    def down(self, array: np.ndarray) -> np.ndarray:
        """(I, J, K) float32 block means of a fine (I, J, K) array."""
        (a, b, c), (fa, fb, fc) = self.shape, self.factors
        blocks = array[:a * fa, :b * fb, :c * fc].astype(np.float32, copy=False)
        return blocks.reshape(a, fa, b, fb, c, fc).mean(axis=(1, 3, 5), dtype=np.float32)

    def up(self, mask: np.ndarray) -> np.ndarray:
        """A working-grid (I, J, K) bool mask on the fine grid (each block filled; dropped edges False)."""
        fine = np.zeros(self.fine.shape, dtype=bool)
        expanded = mask
        for axis, factor in enumerate(self.factors):
            expanded = np.repeat(expanded, factor, axis=axis)
        fine[tuple(slice(0, n) for n in expanded.shape)] = expanded
        return fine

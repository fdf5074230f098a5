"""Where a voxel lies in the patient: left-right, posterior-anterior and inferior-superior coordinates.

Laterality always comes from the image's direction cosines (LPS, as ITK and Slicer), never from array
order: a volume stored with I running right-to-left and one stored left-to-right give the same answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.io.geometry import Geometry

__all__ = ["PatientAxes", "patient_coordinate"]

LPS_AXES = {"left": 0, "posterior": 1, "superior": 2}
"""LPS component (0 x, 1 y, 2 z) that grows towards each patient direction."""


@dataclass(frozen=True)
class PatientAxes:
    """For each patient direction, the array axis closest to it and whether indices grow towards it."""

    left: tuple[int, int]
    posterior: tuple[int, int]
    superior: tuple[int, int]

    @classmethod
    def of(cls, geometry: Geometry) -> PatientAxes:
        """The array axes of `geometry` nearest to L, P and S (each a (axis, +1 or -1) pair)."""
        direction = np.reshape(geometry.direction, (3, 3))
        found = {}
        for name, component in LPS_AXES.items():
            axis = int(np.argmax(np.abs(direction[component])))
            found[name] = (axis, 1 if direction[component, axis] > 0 else -1)
        return cls(**found)


def patient_coordinate(geometry: Geometry, direction: str) -> np.ndarray:
    """(I, J, K) float32 millimetres of every voxel centre along 'left', 'posterior' or 'superior' (LPS)."""
    component = LPS_AXES[direction]
    row = np.reshape(geometry.direction, (3, 3))[component] * np.asarray(geometry.spacing)
    grids = [np.arange(n, dtype=np.float32).reshape([-1 if a == d else 1 for a in range(3)]) * np.float32(row[d])
             for d, n in enumerate(geometry.shape)]
    return (grids[0] + grids[1] + grids[2] + np.float32(geometry.origin[component])).astype(np.float32)

"""Voxel grid geometry: how voxel indices (I, J, K) map to patient LPS coordinates in millimetres."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """A 3D voxel grid placed in patient space (LPS, millimetres), as in ITK and 3D Slicer.

    ``direction`` is a row-major 3x3 matrix whose columns are the unit directions of the I, J and K
    axes in LPS (the same layout as SimpleITK's ``GetDirection()``).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, float, float, float, float, float, float, float, float]

    def __post_init__(self) -> None:
        # Normalise to plain Python numbers so equality, hashing and repr are stable.
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in np.ravel(self.direction)))
        lengths = (len(self.shape), len(self.spacing), len(self.origin), len(self.direction))
        if lengths != (3, 3, 3, 9):
            raise ValueError(
                f"Geometry needs 3 shape, 3 spacing, 3 origin and 9 direction values, got {lengths}"
            )

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping voxel (i, j, k) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.reshape(self.direction, (3, 3)) * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    @classmethod
    def from_ijk_to_lps(cls, matrix: np.ndarray, shape: tuple[int, int, int]) -> Geometry:
        """Geometry of a grid of ``shape`` voxels from its 4x4 IJK-to-LPS matrix."""
        matrix = np.asarray(matrix, dtype=float)
        axes = matrix[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing == 0):
            raise ValueError(f"IJK-to-LPS matrix has a zero-length axis: {matrix.tolist()}")
        return cls(
            shape=tuple(shape),
            spacing=tuple(spacing),
            origin=tuple(matrix[:3, 3]),
            direction=tuple((axes / spacing).ravel()),
        )

    def _differences(self, other: Geometry, atol: float) -> list[str]:
        differences = []
        if self.shape != other.shape:
            differences.append(f"shape {self.shape} vs {other.shape}")
        for field in ("spacing", "origin", "direction"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if not np.allclose(mine, theirs, rtol=0.0, atol=atol):
                differences.append(f"{field} {_rounded(mine)} vs {_rounded(theirs)}")
        return differences

    def matches(self, other: Geometry, atol: float = 1e-4) -> bool:
        """True when shapes are equal and spacing, origin and direction agree within ``atol``."""
        return not self._differences(other, atol)

    def describe_mismatch(self, other: Geometry, atol: float = 1e-4) -> str:
        """Which of shape/spacing/origin/direction differ, with both values ('' when they match)."""
        return "; ".join(self._differences(other, atol))


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(v, 6) for v in values)

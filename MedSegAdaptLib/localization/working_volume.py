"""One volume on the localiser's working grid, with its patient coordinates: what the CT and MR anatomies share."""
from __future__ import annotations

import functools

import numpy as np

from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.localization.grid import CoarseGrid
from MedSegAdaptLib.localization.patient_axes import patient_coordinate
from MedSegAdaptLib.localization.regions import Region

__all__ = ["WorkingVolume"]


class WorkingVolume:
    """image: (I, J, K) float32 block means on the ~1.5 mm working grid; x, y, z: LPS millimetres of each
    working voxel (towards the patient's left, posterior, superior), computed on first use."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.grid = CoarseGrid.for_geometry(volume.geometry)
        self.geometry = self.grid.geometry
        self.image = self.grid.down(volume.array)
        self.spacing = self.geometry.spacing

    def region(self, name: str, mask: np.ndarray, method: str) -> Region:
        """A Region on this volume's working grid."""
        return Region(name, mask, method, self.grid)

    @functools.cached_property
    def x(self) -> np.ndarray:
        """(I, J, K) LPS x (towards the patient's left), mm."""
        return patient_coordinate(self.geometry, "left")

    @functools.cached_property
    def y(self) -> np.ndarray:
        """(I, J, K) LPS y (towards posterior), mm."""
        return patient_coordinate(self.geometry, "posterior")

    @functools.cached_property
    def z(self) -> np.ndarray:
        """(I, J, K) LPS z (towards superior), mm."""
        return patient_coordinate(self.geometry, "superior")

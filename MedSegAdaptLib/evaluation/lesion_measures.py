"""Lesion measurements as a radiologist takes them: volume (mL) and longest axial diameter (mm, RECIST)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.morphology import convex_hull_image
from skimage.segmentation import find_boundaries

from MedSegAdaptLib.core.axes import in_plane_axes, occupied_slices, take_slices
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase

__all__ = ["LesionMeasurement", "axial_axis", "measure_if_lesion", "measure_lesion"]


@dataclass(frozen=True)
class LesionMeasurement:
    """volume_ml: voxel count x voxel volume; longest_axial_diameter_mm: the longest in-plane distance
    between two points of the lesion on any axial slice, at `axial_slice` (index along `axial_axis`)."""

    volume_ml: float
    longest_axial_diameter_mm: float
    axial_slice: int
    axial_axis: int

    def as_tags(self) -> dict[str, str]:
        """Segment tags for the .seg.nrrd (Slicer keeps unknown tags as they are)."""
        return {"MedSegAdapt.VolumeMl": f"{self.volume_ml:.3f}",
                "MedSegAdapt.LongestAxialDiameterMm": f"{self.longest_axial_diameter_mm:.1f}",
                "MedSegAdapt.LongestAxialDiameterSlice": str(self.axial_slice)}

    def __str__(self) -> str:
        return (f"volume {self.volume_ml:.2f} mL, longest axial diameter {self.longest_axial_diameter_mm:.1f} mm "
                f"(slice {self.axial_slice})")


def axial_axis(geometry: Geometry) -> int:
    """The array axis (0, 1, 2) closest to the patient's superior-inferior direction: slices along it are axial."""
    direction = np.reshape(geometry.direction, (3, 3))
    return int(np.argmax(np.abs(direction[2])))


def _longest_chord_mm(plane: np.ndarray, spacing_x: float, spacing_y: float) -> float:
    """Longest distance (mm) between two pixel corners of an (H, W) mask (rows along y): the maximum Feret
    diameter, measured edge to edge as on a screen ruler."""
    hull = convex_hull_image(plane)
    rows, cols = np.nonzero(find_boundaries(hull, mode="inner"))
    corners = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    points = corners * np.array([spacing_y, spacing_x])
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences ** 2).sum(-1)).max())


def measure_lesion(mask: np.ndarray, geometry: Geometry) -> LesionMeasurement | None:
    """Volume and longest axial diameter of an (I, J, K) bool lesion mask; None when it is empty."""
    if not mask.any():
        return None
    axis = axial_axis(geometry)
    x_axis, y_axis = in_plane_axes(axis)
    volume_ml = float(mask.sum()) * float(np.prod(geometry.spacing)) / 1000.0
    best, best_slice = 0.0, 0
    for index in occupied_slices(mask, axis):
        plane = take_slices(mask, axis, [int(index)])[0]
        length = _longest_chord_mm(plane, geometry.spacing[x_axis], geometry.spacing[y_axis])
        if length > best:
            best, best_slice = length, int(index)
    return LesionMeasurement(volume_ml, best, best_slice, axis)


def measure_if_lesion(structure: str, mask: np.ndarray, geometry: Geometry) -> LesionMeasurement | None:
    """measure_lesion when the knowledge base files `structure` (a name or query) as a lesion, else None."""
    return measure_lesion(mask, geometry) if KnowledgeBase.load().category_of(structure) == "lesion" else None

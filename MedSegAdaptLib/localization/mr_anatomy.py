"""MR anatomy by intensity, components, morphology and left-right symmetry.

- head (or imaged body part): above half of Otsu's threshold, the largest component, holes filled per slice;
- brain: the head eroded by SCALP_MM (scalp and skull off, roughly);
- mid-sagittal plane: the mirror shift along the left-right array axis that best correlates the head with
  its mirror image; the plane is accepted only when it lies inside the head with head on both sides
  (a breast or knee coil crop has no midline: then the side comes from the scanner's x coordinate);
- hemispheres: the sides of that plane (the left-right array axis and its sign from the direction cosines).
"""
from __future__ import annotations

import functools

import numpy as np
from skimage.filters import threshold_otsu

from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.localization.morphology import (
    erode_mm,
    fill_holes_per_slice,
    largest_component,
)
from MedSegAdaptLib.localization.patient_axes import PatientAxes
from MedSegAdaptLib.localization.regions import Region
from MedSegAdaptLib.localization.working_volume import WorkingVolume

__all__ = ["SCALP_MM", "HeadMR"]

SCALP_MM = 8.0
MAX_MIRROR_SHIFT_MM = 30.0
MIN_SIDE_SHARE = 0.3
"""The midline is accepted when the smaller side holds at least this share of the head."""


class HeadMR(WorkingVolume):
    """The anatomy of one MR volume, each part found once on first use (working-grid masks)."""

    def __init__(self, volume: Volume) -> None:
        super().__init__(volume)
        self.lr_axis, self.lr_sign = PatientAxes.of(self.geometry).left

    @functools.cached_property
    def head(self) -> np.ndarray:
        """The imaged head or body part."""
        threshold = 0.5 * float(threshold_otsu(self.image))
        return fill_holes_per_slice(largest_component(self.image > threshold))

    @functools.cached_property
    def brain(self) -> np.ndarray:
        """The head without its outer SCALP_MM."""
        return erode_mm(self.head, SCALP_MM, self.spacing)

    def mirror(self, array: np.ndarray) -> np.ndarray:
        """`array` mirrored across the mid-sagittal plane (requires `midline_shift` not None)."""
        return np.roll(np.flip(array, self.lr_axis), self.midline_shift, axis=self.lr_axis)

    @functools.cached_property
    def midline_shift(self) -> int | None:
        """The roll (voxels) after a flip along the left-right axis that best matches the head to itself;
        None when the best plane does not split the head into two real sides."""
        limit = int(MAX_MIRROR_SHIFT_MM / self.spacing[self.lr_axis])
        flipped, flipped_head = np.flip(self.image, self.lr_axis), np.flip(self.head, self.lr_axis)
        best, best_shift = -2.0, 0
        for shift in range(-limit, limit + 1):
            both = self.head & np.roll(flipped_head, shift, axis=self.lr_axis)
            if both.sum() < 0.5 * self.head.sum():
                continue
            score = np.corrcoef(self.image[both], np.roll(flipped, shift, axis=self.lr_axis)[both])[0, 1]
            if score > best:
                best, best_shift = float(score), shift
        if best == -2.0:
            return None
        coordinate = np.arange(self.image.shape[self.lr_axis]).reshape([-1 if a == self.lr_axis else 1 for a in range(3)])
        plane = (self.image.shape[self.lr_axis] - 1 + best_shift) / 2.0
        low = (self.head & (coordinate < plane)).sum()
        share = min(low, self.head.sum() - low) / max(int(self.head.sum()), 1)
        return best_shift if share >= MIN_SIDE_SHARE else None

    def side(self, side: str) -> Region:
        """The left or right hemisphere (or, without a midline in the volume, the part on that side of x = 0)."""
        if self.midline_shift is not None:
            index = np.arange(self.image.shape[self.lr_axis]).reshape(
                [-1 if a == self.lr_axis else 1 for a in range(3)])
            plane = (self.image.shape[self.lr_axis] - 1 + self.midline_shift) / 2.0
            towards_left = (index > plane) if self.lr_sign > 0 else (index < plane)
            mask = self.brain & (towards_left if side == "left" else ~towards_left)
            return self.region(f"{side} hemisphere", mask,
                               f"the head without its outer {SCALP_MM:g} mm, {side} of the mid-sagittal plane "
                               "found by left-right symmetry")
        inside = self.x > 0 if side == "left" else self.x < 0
        mask = self.head & inside
        return self.region(f"{side} side", mask,
                           f"the imaged part on the {side} of the scanner's x = 0 (the volume shows no midline)")

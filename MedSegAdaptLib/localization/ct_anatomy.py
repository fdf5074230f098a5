"""CT anatomy by thresholds in Hounsfield units, connected components, morphology and position.

Everything is found on the ~1.5 mm working grid (grid.CoarseGrid):

- body: voxels above -500 HU, the largest component, holes filled slice by slice;
- lungs: air (< -400 HU) enclosed by the body, components over 100 mL, split at the body's mid-sagittal
  plane (x in LPS, so the side comes from the direction cosines) and the largest component kept per side;
- a lung's region for lesions: the lung closed by a disk as wide as the expected lesion and its holes
  filled, so that nodules inside the lung and masses against the pleura both fall in it;
- lobes: no fissures are searched for; the oblique fissure is modelled as a plane running from high at
  the back to low at the front, the right horizontal fissure as a level plane (see `lobe_mask`);
- bone: above 200 HU; the spine: bone within 30 mm of the mid-sagittal plane behind the body's centre;
  its thoracic part: the slices where the lungs' cross-section is at least LUNG_LEVEL_FRACTION of its largest.
"""
from __future__ import annotations

import functools

import numpy as np

from MedSegAdaptLib.localization.morphology import (
    close_mm,
    fill_holes_per_slice,
    largest_component,
)
from MedSegAdaptLib.localization.regions import Region
from MedSegAdaptLib.localization.working_volume import WorkingVolume

__all__ = ["BODY_HU", "LUNG_AIR_HU", "LUNG_LEVEL_FRACTION", "ChestCT"]

BODY_HU = -500.0
LUNG_AIR_HU = -400.0
BONE_HU = 200.0
MIN_LUNG_ML = 100.0
SPINE_HALF_WIDTH_MM = 30.0
MIN_CLOSING_MM = 25.0
"""The lung region encloses pleural-based masses up to 50 mm even when the report gives a smaller size or none."""
LUNG_LEVEL_FRACTION = 0.6
"""Thoracic spine levels: slices where both lungs together cover at least this share of their largest cross-section."""


class ChestCT(WorkingVolume):
    """The anatomy of one CT volume, each part found once on first use (working-grid masks); `hu` is the
    working image in Hounsfield units."""

    @property
    def hu(self) -> np.ndarray:
        """(I, J, K) float32 HU on the working grid."""
        return self.image

    @functools.cached_property
    def body(self) -> np.ndarray:
        """The body: the largest component above BODY_HU, enclosed holes (lungs, bowel gas) filled per slice."""
        return fill_holes_per_slice(largest_component(self.hu > BODY_HU))

    @functools.cached_property
    def midline_x(self) -> float:
        """LPS x of the body's mid-sagittal plane (the mean x of the body), mm."""
        return float(self.x[self.body].mean()) if self.body.any() else float(self.x.mean())

    @functools.cached_property
    def lungs(self) -> dict[str, np.ndarray]:
        """{'right': mask, 'left': mask} of lung air, split at the mid-sagittal plane."""
        from skimage.measure import label

        air = self.body & (self.hu < LUNG_AIR_HU)
        labels = label(air, connectivity=3)
        sizes = np.bincount(labels.ravel()) * np.prod(self.spacing) / 1000.0
        sizes[0] = 0
        lungs = np.isin(labels, np.flatnonzero(sizes >= MIN_LUNG_ML))
        left = self.x >= self.midline_x
        return {"right": largest_component(lungs & ~left), "left": largest_component(lungs & left)}

    def lung(self, side: str) -> Region:
        """The right or left lung's air."""
        return self.region(f"{side} lung", self.lungs[side],
                           f"air below {LUNG_AIR_HU:g} HU inside the body, {side} of the mid-sagittal plane "
                           f"(x = {self.midline_x:.0f} mm LPS)")

    def lung_region(self, side: str, lesion_mm: float) -> Region:
        """The lung with what it encloses: closed by a disk of radius lesion_mm / 2 (at least
        MIN_CLOSING_MM), holes filled."""
        radius = max(MIN_CLOSING_MM, lesion_mm / 2.0)
        lung = self.lungs[side]
        mask = fill_holes_per_slice(close_mm(lung, radius, self.spacing)) & self.body
        return self.region(f"{side} lung region", mask,
                           f"the {side} lung closed by a {radius:.0f} mm disk and its holes filled, so that "
                           "nodules and pleural-based masses are inside")

    def lobe_mask(self, lobe: str, lung: np.ndarray) -> np.ndarray:
        """The part of a lung mask that the lobe occupies by position (no fissure detection).

        Heights run from the lung's base (0) to its apex (1), depth from its back (0) to its front (1).
        Lower lobes: below the oblique plane h = 0.75 - 0.6 d; the right middle lobe: above it but below
        h = 0.55; upper lobes (lingula included): the rest.
        """
        if not lung.any():
            return lung
        z, y = self.z[lung], self.y[lung]
        height = np.zeros(lung.shape, np.float32)
        depth = np.zeros(lung.shape, np.float32)
        height[lung] = (z - z.min()) / max(float(np.ptp(z)), 1e-6)
        depth[lung] = (y.max() - y) / max(float(np.ptp(y)), 1e-6)  # +y is posterior
        lower = height < 0.75 - 0.6 * depth
        if lobe.endswith("lower lobe"):
            part = lower
        elif lobe == "right middle lobe":
            part = ~lower & (height < 0.55)
        elif lobe == "right upper lobe":
            part = ~lower & (height >= 0.55)
        else:  # left upper lobe, lingula
            part = ~lower
        return lung & part

    @functools.cached_property
    def spine(self) -> np.ndarray:
        """Bone above BONE_HU within SPINE_HALF_WIDTH_MM of the mid-sagittal plane, behind the body's centre."""
        if not self.body.any():
            return np.zeros_like(self.body)
        behind = self.y > float(self.y[self.body].mean())
        near = np.abs(self.x - self.midline_x) <= SPINE_HALF_WIDTH_MM
        return largest_component(self.body & (self.hu > BONE_HU) & near & behind)

    def thoracic_levels(self) -> np.ndarray:
        """(K,) bool: slices at thoracic spine levels (the lungs' cross-section at least LUNG_LEVEL_FRACTION
        of its largest)."""
        area = (self.lungs["right"] | self.lungs["left"]).sum(axis=(0, 1))
        return area >= LUNG_LEVEL_FRACTION * max(int(area.max()), 1)

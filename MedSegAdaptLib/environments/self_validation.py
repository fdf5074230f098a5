"""Self-validation of a generated sample's pseudo-mask: knowledge-base rules and ensemble agreement.

Checks (each passes or fails; a check that does not apply to the structure or modality is skipped):
- non-empty: the pseudo-mask has voxels (a failed check makes the score 0);
- side: a right / left structure (knowledge-base laterality) has its centroid on that side of the
  body's midline (patient LPS x: left is +x), a midline one within 15 % of the body's width of it;
- components: a right, left or midline structure that is not a lesion is one piece: at most one 3D
  connected component holding 5 % or more of the mask;
- relative size: the mask's share of the body volume lies within a factor 2 of the expected share
  (the knowledge base gives no sizes; the caller passes the share of the labeled source's structure);
- intensity (CT): the median HU inside the mask lies within the knowledge base's CT texture HU
  ranges, widened by 150 HU (partial volume, contrast);
- agreement: the ensemble's mean pairwise Dice, which enters the score as its value.
score = mean over the applicable checks (1 pass, 0 fail, agreement its value), for ranking; a sample
passes when no check fails (the agreement check: agreement >= threshold, 0.8 by default). A mean
alone let one failed rule through: on CTChest4 a thoracic-column pseudo-mask of Dice 0.60 scored 0.94.

The body is the largest connected region brighter than Otsu's threshold of the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu
from skimage.measure import label as label_components

from MedSegAdaptLib.localization.morphology import largest_component
from MedSegAdaptLib.io import Volume
from MedSegAdaptLib.knowledge.knowledge_base import Structure

__all__ = [
    "DEFAULT_THRESHOLD",
    "HU_TOLERANCE",
    "MIDLINE_FRACTION",
    "SIGNIFICANT_COMPONENT",
    "SIZE_FACTOR",
    "Validation",
    "body_mask",
    "self_validate",
    "volume_share",
]

DEFAULT_THRESHOLD = 0.8
HU_TOLERANCE = 150.0
SIZE_FACTOR = 2.0
MIDLINE_FRACTION = 0.15
SIGNIFICANT_COMPONENT = 0.05


@dataclass
class Validation:
    """score in [0, 1]; checks: name -> {"passed": bool, "value": ..., "expected": ...}; passed: no check failed."""

    score: float
    checks: dict[str, dict]
    passed: bool

    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [name for name, check in self.checks.items() if not check["passed"]]


def body_mask(volume: Volume) -> np.ndarray:
    """(I, J, K) bool: the largest region brighter than Otsu's threshold."""
    array = volume.array.astype(np.float32)
    return largest_component(array > threshold_otsu(array))


def volume_share(mask: np.ndarray, body: np.ndarray) -> float:
    """Voxels of `mask` over voxels of `body` (both on one grid)."""
    return float(mask.sum()) / max(float(body.sum()), 1.0)


def _lps_x(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """LPS x (mm) of every voxel of `mask`."""
    first_row = volume.geometry.ijk_to_lps()[0]
    return np.argwhere(mask).astype(np.float64) @ first_row[:3] + first_row[3]


def self_validate(mask: np.ndarray, volume: Volume, modality: str, structure: Structure, agreement: float,
                  source_share: float | None = None, threshold: float = DEFAULT_THRESHOLD) -> Validation:
    """Consistency of a pseudo-mask (I, J, K) bool with the knowledge base, the source label's size
    share `source_share` (None: not checked) and the ensemble `agreement` (see the module docstring)."""
    checks: dict[str, dict] = {}
    if not mask.any():
        checks["non-empty"] = {"passed": False, "value": 0, "expected": "> 0 voxels"}
        return Validation(0.0, checks, False)
    body = body_mask(volume)
    if structure.laterality in ("right", "left", "midline") and body.any():
        body_x = _lps_x(volume, body)
        midline, width = float(np.median(body_x)), float(np.ptp(body_x))
        offset = float(np.mean(_lps_x(volume, mask))) - midline  # > 0: patient left
        if structure.laterality == "midline":
            passed = abs(offset) <= MIDLINE_FRACTION * width
        else:
            passed = offset < 0 if structure.laterality == "right" else offset > 0
        checks["side"] = {"passed": bool(passed), "value": round(offset, 1),
                          "expected": f"{structure.laterality} of the midline (mm from it, + is patient left)"}
    if structure.laterality in ("right", "left", "midline") and structure.category != "lesion":
        components = label_components(mask, connectivity=3)
        sizes = np.bincount(components.ravel())[1:]
        significant = int((sizes >= SIGNIFICANT_COMPONENT * mask.sum()).sum())
        checks["components"] = {"passed": significant <= 1, "value": significant, "expected": "1"}
    if source_share is not None and source_share > 0:
        share = volume_share(mask, body)
        checks["relative size"] = {"passed": source_share / SIZE_FACTOR <= share <= source_share * SIZE_FACTOR,
                                   "value": round(share, 5),
                                   "expected": f"{source_share / SIZE_FACTOR:.5f}-{source_share * SIZE_FACTOR:.5f}"}
    ranges = structure.hu_ranges() if modality == "ct" else []
    if ranges:
        low, high = min(r[0] for r in ranges) - HU_TOLERANCE, max(r[1] for r in ranges) + HU_TOLERANCE
        median = float(np.median(volume.array[mask]))
        checks["intensity"] = {"passed": low <= median <= high, "value": round(median, 1),
                               "expected": f"{low:.0f} to {high:.0f} HU"}
    checks["agreement"] = {"passed": agreement >= threshold, "value": round(agreement, 4),
                           "expected": f">= {threshold}"}
    values = [agreement if name == "agreement" else float(check["passed"]) for name, check in checks.items()]
    return Validation(float(np.mean(values)), checks, all(check["passed"] for check in checks.values()))

"""Zero-shot mask refinement from the knowledge base's expected CT intensity of a structure.

The backbone's mask may reach past the structure into tissue of another density: a lung mask into
the mediastinum (heart and aorta are soft tissue, lung parenchyma is air), a nodule's mask into the
aerated lung around it. Voxels more than HU_TOLERANCE outside every Hounsfield range the knowledge
base gives for the structure are cut. Bone is left alone: its range is the marrow's, and the cortex
is far brighter (docs/segmentation.md has the effect per real target).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["HU_TOLERANCE", "cut_to_expected_hu"]

HU_TOLERANCE = 300.0
"""HU allowed beyond the knowledge base's range before a voxel counts as another tissue."""


def cut_to_expected_hu(mask: np.ndarray, hounsfield: np.ndarray, ranges: Sequence[tuple[float, float]],
                       tolerance: float = HU_TOLERANCE) -> np.ndarray:
    """mask, hounsfield: (I, J, K); ranges: the structure's expected (low, high) HU. Returns the (I, J, K)
    bool mask without its voxels more than `tolerance` HU outside every range (unchanged when `ranges`
    is empty)."""
    if not ranges:
        return mask
    expected = np.zeros(mask.shape, dtype=bool)
    for low, high in ranges:
        expected |= (hounsfield >= low - tolerance) & (hounsfield <= high + tolerance)
    return mask & expected

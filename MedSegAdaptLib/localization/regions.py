"""A region of a volume found by the anatomical localiser, with the sentence that says how."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.localization.grid import CoarseGrid

__all__ = ["Region"]


@dataclass(frozen=True)
class Region:
    """name: what the region is ('left lung', 'right hemisphere'); mask: (I, J, K) bool on the working grid;
    method: one sentence on how it was found, for the user."""

    name: str
    mask: np.ndarray
    method: str
    grid: CoarseGrid

    @property
    def empty(self) -> bool:
        """Whether no voxel was found."""
        return not self.mask.any()

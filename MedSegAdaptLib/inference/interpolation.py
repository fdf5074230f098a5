"""Shape-based interpolation between annotated slices (the Segment Editor's "Fill between slices" idea).

Between two consecutive non-empty annotated slices, each slice in between is the zero level of the
linear blend of the two slices' signed distance maps (Raya and Udupa's shape-based interpolation).
Nothing is extrapolated past the outermost annotated slices, and an empty annotated slice interpolates
with nothing (it ends the structure). The baseline anchored re-propagation is measured against.
"""
from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import numpy as np
from scipy import ndimage as ndi

from MedSegAdaptLib.core.axes import put_slice

__all__ = ["interpolate_between_slices", "signed_distance"]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 signed distance in pixels: negative inside `mask`, positive outside."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return (ndi.distance_transform_edt(~mask) - ndi.distance_transform_edt(mask)).astype(np.float32)


def interpolate_between_slices(anchors: Mapping[int, np.ndarray], shape: tuple[int, int, int], axis: int) -> np.ndarray:
    """(I, J, K) bool: the anchors ((H, W) bool masks by slice index along `axis`) and the slices between them."""
    volume = np.zeros(shape, dtype=bool)
    order = sorted(anchors)
    for index in order:
        put_slice(volume, axis, index, anchors[index])
    for below, above in pairwise(order):
        if not (anchors[below].any() and anchors[above].any()):
            continue
        low, high = signed_distance(anchors[below]), signed_distance(anchors[above])
        for index in range(below + 1, above):
            t = (index - below) / (above - below)
            put_slice(volume, axis, index, (1 - t) * low + t * high < 0)
    return volume

"""A simulated annotator correcting a segmentation one slice at a time, as interactive-segmentation
benchmarks do: on the slice with the most wrong voxels, a click at the centre (the point deepest inside,
by distance map) of the largest wrong region, positive on missed structure, negative on a false one; or
the reference's box redrawn on the worst slice holding the structure."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from skimage.measure import label as label_components

from MedSegAdaptLib.core.axes import in_plane_axes, take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference.prompts import Point3D, mask_rect

__all__ = ["corrected_box", "corrective_click", "worst_slice"]


def worst_slice(prediction: np.ndarray, reference: np.ndarray, axis: int, holding_reference: bool = False) -> int:
    """The slice along `axis` where (I, J, K) bool `prediction` and `reference` differ in most voxels (the lowest
    index on a tie); holding_reference: only slices where the reference is present. InputError when none differs."""
    other = tuple(a for a in range(3) if a != axis)
    wrong = (prediction != reference).sum(axis=other)
    if holding_reference:
        wrong = np.where(reference.any(axis=other), wrong, 0)
    if not wrong.any():
        raise InputError("the prediction already equals the reference: nothing to correct")
    return int(np.argmax(wrong))


def _deepest_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of an (H, W) bool region farthest from its outside (beyond the image edge included)."""
    padded = np.pad(region, 1).astype(np.uint8)
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.GetImageFromArray(padded), insideIsPositive=True, squaredDistance=False, useImageSpacing=False))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(np.where(region, depth, -np.inf)), region.shape)
    return int(col), int(row)


def corrective_click(prediction: np.ndarray, reference: np.ndarray, axis: int) -> Point3D:
    """One click on the worst slice: at the centre of its largest missed (label 1) or false (label 0) region,
    whichever is larger."""
    index = worst_slice(prediction, reference, axis)
    predicted, wanted = (take_slices(m, axis, [index])[0] for m in (prediction, reference))
    missed, false = wanted & ~predicted, predicted & ~wanted
    label = 1 if missed.sum() >= false.sum() else 0
    components = label_components(missed if label else false, connectivity=1)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    x, y = _deepest_point(components == largest)
    ijk = [0, 0, 0]
    x_axis, y_axis = in_plane_axes(axis)
    ijk[axis], ijk[x_axis], ijk[y_axis] = index, x, y
    return Point3D(tuple(ijk), label)


def corrected_box(prediction: np.ndarray, reference: np.ndarray, axis: int, margin: int) -> tuple[int, np.ndarray]:
    """(slice, rect (x0, y0, x1, y1)): the reference's box plus `margin` pixels on the worst slice holding it."""
    index = worst_slice(prediction, reference, axis, holding_reference=True)
    rect = mask_rect(take_slices(reference, axis, [index])[0])
    x_axis, y_axis = in_plane_axes(axis)
    high = np.array([reference.shape[x_axis], reference.shape[y_axis]] * 2, np.float32) - 1
    return index, np.clip(rect + np.array([-margin, -margin, margin, margin], np.float32), 0, high)

"""Edits on one slice that re-propagate (inference.refinement), with the real weights on CTChest4's left lung."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.simulated_edits import (
    corrected_box,
    corrective_click,
    worst_slice,
)
from MedSegAdaptLib.inference import Box3D
from MedSegAdaptLib.inference.prompts import Point3D, mask_rect
from MedSegAdaptLib.inference.refinement import changed_slices

STRUCTURE = "left lung"
EDITED = 20


def _deepest(mask: np.ndarray, index: int) -> tuple[int, int]:
    """(i, j) of the voxel deepest inside the mask on slice `index` (axial)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(mask[:, :, index])
    i, j = np.unravel_index(np.argmax(depth), depth.shape)
    return int(i), int(j)


def test_simulated_annotator_clicks_the_centre_of_the_largest_error_on_the_worst_slice():
    reference = np.zeros((30, 30, 6), bool)
    reference[5:25, 5:25, 1:5] = True
    prediction = reference.copy()
    prediction[5:25, 5:15, 3] = False  # slice 3 misses half the square
    prediction[0:3, 0:3, 2] = True  # slice 2 has a small false blob
    assert worst_slice(prediction, reference, 2) == 3
    click = corrective_click(prediction, reference, 2)
    assert click.label == 1 and click.ijk[2] == 3 and reference[click.ijk] and not prediction[click.ijk]
    prediction[5:25, 5:15, 3] = True
    click = corrective_click(prediction, reference, 2)
    assert click.label == 0 and click.ijk == (1, 1, 2)  # the false blob's centre
    index, rect = corrected_box(prediction, reference, 2, margin=2)
    assert index == 2 and list(rect) == [3, 3, 26, 26]  # the slice of the blob, the reference square plus 2
    with pytest.raises(InputError, match="nothing to correct"):
        worst_slice(reference, reference, 2)


def test_changed_slices_lists_where_two_masks_differ():
    first = np.zeros((4, 4, 5), bool)
    second = first.copy()
    second[1, 1, 3] = second[2, 2, 0] = True
    assert changed_slices(first, second, 2) == [0, 3]
    assert changed_slices(first, second, 0) == [1, 2]


@pytest.mark.slow
def test_a_positive_click_fills_a_missed_slice_and_leaves_the_rest_untouched(segmenter, ctchest4):
    volume, segmentation = ctchest4
    reference = segmentation.get(STRUCTURE).mask
    previous = reference.copy()
    previous[:, :, EDITED] = False  # the model missed one slice
    i, j = _deepest(reference, EDITED)
    result = segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((i, j, EDITED), 1)])
    assert dice(result.mask[:, :, EDITED], reference[:, :, EDITED]) >= 0.9  # 0.96 measured
    # its neighbours were right already: the new slice does not spread into them
    assert result.changed == [EDITED]
    assert "kept" in result.stopped_because["up"] and "kept" in result.stopped_because["down"]
    assert not previous[:, :, EDITED].any(), "the previous segmentation was changed in place"


@pytest.mark.slow
def test_a_negative_click_on_a_false_blob_removes_it_from_the_neighbours_too(segmenter, ctchest4):
    volume, segmentation = ctchest4
    reference = segmentation.get(STRUCTURE).mask
    x1 = int(mask_rect(reference[:, :, EDITED].T)[2])
    centre = (x1 + 10, 64)
    rows, cols = np.ogrid[:reference.shape[0], :reference.shape[1]]
    blob = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= 36
    previous = segmenter.segment(volume, STRUCTURE, Box3D.around(reference, 5)).mask  # the model's result
    previous[:, :, 17:24] |= blob[:, :, None]  # with a false blob beside the lung on 17..23
    result = segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((*centre, EDITED), 0)])
    left = (result.mask[:, :, 17:24] & blob[:, :, None]).sum(axis=(0, 1))
    # gone from the edited slice and its neighbours; the run may stop short of the blob's last slice
    # (17 kept 74 of its 113 voxels: the whole-slice agreement check is conservative)
    assert not left[1:].any() and left.sum() <= 0.2 * 7 * blob.sum(), f"blob voxels left on 17..23: {left}"
    assert set(range(18, 24)) <= set(result.changed)
    untouched = np.setdiff1d(np.arange(reference.shape[2]), result.decoded)
    assert untouched.size > 15  # the change died out: most of the lung was not decoded again
    np.testing.assert_array_equal(result.mask[:, :, untouched], previous[:, :, untouched])
    assert dice(result.mask, reference) > dice(previous, reference)

    alone = segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((*centre, EDITED), 0)], propagate=False)
    assert alone.changed == [EDITED] and alone.decoded == [EDITED]


@pytest.mark.slow
def test_edits_are_checked_before_anything_runs(segmenter, ctchest4):
    volume, segmentation = ctchest4
    previous = segmentation.get(STRUCTURE).mask
    with pytest.raises(InputError, match="not on the edited slice"):
        segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((60, 60, EDITED + 1), 1)])
    with pytest.raises(InputError, match="needs a point or a box"):
        segmenter.refine(volume, STRUCTURE, previous, EDITED)
    with pytest.raises(InputError, match="kept as drawn"):
        segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((60, 60, EDITED), 1)], keep=(EDITED,))
    with pytest.raises(InputError, match="outside the box"):
        segmenter.refine(volume, STRUCTURE, previous, EDITED, [Point3D((60, 60, EDITED), 1)],
                         box=Box3D((0, 0, 0), (127, 127, 10)))
    with pytest.raises(InputError, match="shape"):
        segmenter.refine(volume, STRUCTURE, previous[:, :, :10], 5, [Point3D((60, 60, 5), 1)])

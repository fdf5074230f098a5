"""Anchored re-propagation from annotated slices against shape-based interpolation (real weights on CTChest4)."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference.interpolation import interpolate_between_slices

# The anchors; Dice on the other slices measured 2026-12-02 (docs/segmentation.md,
# `python benchmarks/evaluate_repropagation.py`): interpolation 0.525 / 0.697, combined 0.667 / 0.951.
ANCHORS = {"thoracic vertebral column": (15, 19, 23), "left lung": (13, 20, 26)}


def _other_slices_dice(mask: np.ndarray, reference: np.ndarray, anchors: tuple[int, ...]) -> float:
    keep = np.setdiff1d(np.arange(reference.shape[2]), anchors)
    return dice(mask[:, :, keep], reference[:, :, keep])


def test_interpolation_blends_the_two_nearest_annotated_slices():
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    small = np.zeros((20, 20), bool)
    small[8:12, 8:12] = True
    volume = interpolate_between_slices({0: square, 4: small, 6: np.zeros((20, 20), bool)}, (20, 20, 8), axis=2)
    areas = volume.sum(axis=(0, 1))
    assert areas[0] == 100 and areas[4] == 16 and 16 < areas[2] < 100  # between the two
    assert areas[5] == 0 and areas[7] == 0  # no blend towards an empty slice, nothing past the last one


@pytest.mark.slow
@pytest.mark.parametrize("structure", sorted(ANCHORS))
def test_repropagation_keeps_the_anchors_and_beats_interpolation(segmenter, ctchest4, structure):
    volume, segmentation = ctchest4
    reference = segmentation.get(structure).mask
    slices = ANCHORS[structure]
    anchors = dict(zip(slices, take_slices(reference, 2, list(slices))))
    outcome = segmenter.repropagate(volume, structure, anchors)
    for index in slices:
        assert np.array_equal(outcome.mask[:, :, index], reference[:, :, index]), "an annotated slice was changed"
    interpolated = interpolate_between_slices(anchors, reference.shape, 2)
    assert _other_slices_dice(outcome.mask, reference, slices) > _other_slices_dice(interpolated, reference, slices)

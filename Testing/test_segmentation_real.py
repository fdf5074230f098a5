"""LiteMedSAM volumetric segmentation of the real CTChest4 with the real weights (slow)."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.evaluation import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Point3D, Segmenter

pytestmark = pytest.mark.slow

# Dice with a box from the reference's 3D extent + 2 voxels, measured on 2026-12-02 (README table);
# a regression fails when a structure drops more than 0.02 below.
MEASURED_BOX_DICE = {
    "right lung": 0.949,
    "left lung": 0.971,
    "thoracic vertebral column": 0.558,
    "cervical vertebral column": 0.567,
    "lumbar vertebral column": 0.610,
}


@pytest.mark.parametrize("name", list(MEASURED_BOX_DICE))
def test_box_prompt_dice_does_not_regress(ctchest4, segmenter, name):
    volume, reference = ctchest4
    truth = reference.get(name).mask
    outcome = segmenter.segment(volume, name, box=Box3D.around(truth, 2))
    score = dice(outcome.mask, truth)
    print(f"{name}: Dice {score:.3f}")
    assert score >= MEASURED_BOX_DICE[name] - 0.02
    assert outcome.modality == "ct"


def test_second_prompt_runs_only_the_decoder(ctchest4, segmenter):
    volume, reference = ctchest4
    box = Box3D.around(reference.get("right lung").mask, 2)
    first = segmenter.segment(volume, "right lung", box=box)
    again = segmenter.segment(volume, "right lung", box=box)
    assert again.slices_encoded == 0
    assert np.array_equal(first.mask, again.mask)


def test_propagation_stays_inside_the_box_and_stops_at_the_lung_base(ctchest4, segmenter):
    volume, reference = ctchest4
    truth = reference.get("right lung").mask
    box = Box3D.around(truth, 2)
    outcome = segmenter.segment(volume, "right lung", box=box)
    inside = np.zeros_like(outcome.mask)
    inside[box.lo[0]:box.hi[0] + 1, box.lo[1]:box.hi[1] + 1, box.lo[2]:box.hi[2] + 1] = True
    assert not (outcome.mask & ~inside).any()
    # Below the lung base the box reaches into the liver; the intensity rule stops there.
    assert "median intensity" in outcome.propagation.stopped_because["down"]
    assert not outcome.mask[:, :, box.lo[2]].any()


def test_point_deep_inside_a_lung_segments_that_lung(ctchest4, segmenter):
    """LiteMedSAM takes boxes only: a point becomes a start box from regions grown around it at a few
    intensity tolerances, the smallest box the decoder is nearly as sure of as the best winning."""
    from MedSegAdaptLib.harness.real_cases import reference_prompt

    volume, reference = ctchest4
    truth = reference.get("left lung").mask
    _, points = reference_prompt(truth, "point")
    outcome = segmenter.segment(volume, "left lung", points=points)
    assert outcome.mask[points[0].ijk]
    assert dice(outcome.mask, truth) > 0.9
    assert dice(outcome.mask, reference.get("right lung").mask) < 0.1


@pytest.mark.xfail(strict=True, reason="a point on a vessel near the hilum: the regions grown from it stay tiny "
                   "until one leaks through the mediastinum into the right lung, whose box then wins (both lungs)")
def test_point_prompt_segments_a_lung(ctchest4, segmenter):
    """LiteMedSAM takes boxes only: a point becomes a start box from the region grown around it.
    The point at the median coordinates of the left lung on slice 20 lies on a vessel (-550 HU)."""
    volume, reference = ctchest4
    truth = reference.get("left lung").mask
    k = 20
    rows, cols = np.nonzero(take_slices(truth, 2, [k])[0])
    point = Point3D((int(np.median(cols)), int(np.median(rows)), k))
    assert truth[point.ijk]
    outcome = segmenter.segment(volume, "left lung", points=[point])
    assert outcome.mask[point.ijk]
    assert dice(outcome.mask, truth) > 0.4
    assert dice(outcome.mask, reference.get("right lung").mask) < 0.1


def test_disk_cache_skips_the_encoder_in_a_new_process_state(ctchest4, litemedsam, tmp_path):
    volume, reference = ctchest4
    box = Box3D.around(reference.get("cervical vertebral column").mask, 1)
    first = Segmenter(litemedsam, EmbeddingCache(tmp_path)).segment(volume, "cervical vertebral column", box=box)
    assert first.slices_encoded == box.hi[2] - box.lo[2] + 1
    second = Segmenter(litemedsam, EmbeddingCache(tmp_path)).segment(volume, "cervical vertebral column", box=box)
    assert second.slices_encoded == 0
    assert np.array_equal(first.mask, second.mask)

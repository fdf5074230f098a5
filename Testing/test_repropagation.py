"""Anchored re-propagation from annotated slices against shape-based interpolation (real weights on CTChest4
and the brain1 clinical case)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.real_cases import reference_prompt
from MedSegAdaptLib.inference.interpolation import interpolate_between_slices
from MedSegAdaptLib.inference.propagation import LESION_OPTIONS

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


@pytest.mark.slow
def test_repropagation_inside_a_lesion_box_takes_the_box_rectangle(clinical, segmenter):
    # brain1 grows faster over its 6.5 mm slices than a box following the previous mask; inside its 3D box,
    # measured 2026-12-04 (`python benchmarks/evaluate_repropagation.py --box`): combined 0.806 with the
    # lesion preset's rectangle, 0.649 with the follow box alone
    case, volume, reference = clinical["brain1"]
    slices = (12, 14, 16)
    anchors = dict(zip(slices, take_slices(reference, 2, list(slices))))
    box, _ = reference_prompt(reference, "box")
    with_rect = segmenter.repropagate(volume, case.structure, anchors, box, modality=case.modality)
    follow_only = segmenter.repropagate(volume, case.structure, anchors, box, modality=case.modality,
                                        options=replace(LESION_OPTIONS, box_rect="off"))
    assert with_rect.options.box_rect == "confident"
    score = _other_slices_dice(with_rect.mask, reference, slices)
    assert score >= 0.78
    assert score > _other_slices_dice(follow_only.mask, reference, slices) + 0.1


@pytest.mark.slow
def test_repropagation_from_the_latest_partial_correction_in_a_store(tmp_path, monkeypatch, capsys, segmenter,
                                                                     ctchest4):
    import json

    from MedSegAdaptLib.cli import main
    from MedSegAdaptLib.io import read_segmentation
    from MedSegAdaptLib.io.sample_data import ctchest4_volume_path
    from MedSegAdaptLib.store import FineTuningStore

    volume, segmentation = ctchest4
    reference = segmentation.get("left lung").mask
    slices = ANCHORS["left lung"]
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "chest", modality="ct")
        store.submit_mask("chest", "left lung", np.roll(reference, 4, axis=0), "first", annotated_slices={"k": [20]})
        store.submit_mask("chest", "left lung", reference, "second", annotated_slices={"k": list(slices)})
    monkeypatch.setattr("MedSegAdaptLib.cli.segment.load_segmenter", lambda *args, **kwargs: segmenter)
    output = tmp_path / "out.seg.nrrd"
    argv = [str(ctchest4_volume_path()), "--structure", "left lung", "-o", str(output), "--json"]
    assert main(["segment", *argv, "--store", str(tmp_path / "store"), "--case-id", "chest"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["anchor_slices"] == list(slices) and "version 2" in summary["anchors_from"]  # the latest one
    mask = read_segmentation(output).get("left lung").mask
    for index in slices:
        assert np.array_equal(mask[:, :, index], reference[:, :, index])
    assert _other_slices_dice(mask, reference, slices) >= 0.9  # 0.951 measured, as from --anchors

    assert main(["segment", *argv, "--store", str(tmp_path / "store"), "--case-id", "other"]) == 2
    assert "other" in capsys.readouterr().err
    assert main(["segment", *argv, "--case-id", "chest", "--anchors", str(output), "--anchor-slices", "k:20"]) == 2
    assert "--store" in capsys.readouterr().err

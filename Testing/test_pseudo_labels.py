"""Selective semi-supervised fine-tuning: pseudo-label selection rules and a real run on CTChest4."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.cli import build_parser
from MedSegAdaptLib.core.axes import nearest_slice, take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.models.checkpoint import load_checkpoint
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune
from MedSegAdaptLib.training.pseudo_labels import (
    PseudoLabel,
    extrapolation_limit,
    select_pseudo_labels,
)

STRUCTURE = "left lung"
ANNOTATED = [14, 20, 26]


def _candidate(index: int, confidence: float, distance: float) -> PseudoLabel:
    return PseudoLabel("case", STRUCTURE, 2, index, 0, confidence, distance, mask=np.ones((4, 4), bool))


def test_selection_keeps_confident_and_close_candidates_only():
    confidence = [0.95, 0.90, 0.60, 0.97, 0.70]
    distance = [0.001, 0.050, 0.002, 0.004, 0.090]
    candidates = [_candidate(i, c, d) for i, (c, d) in enumerate(zip(confidence, distance))]
    report = select_pseudo_labels(candidates, confidence_percentile=50, distance_percentile=50)
    assert report.confidence_threshold == pytest.approx(0.90)
    assert report.distance_threshold == pytest.approx(0.004)
    assert [c.index for c in report.accepted] == [0, 3]
    assert "far from labeled" in candidates[1].reason and "low confidence" not in candidates[1].reason
    assert "low confidence" in candidates[2].reason and "far from" not in candidates[2].reason
    assert "low confidence" in candidates[4].reason and "far from" in candidates[4].reason
    assert report.counts() == {"candidates": 5, "accepted": 2, "low_confidence": 2, "far_from_labeled": 2}
    loose = select_pseudo_labels(candidates, confidence_percentile=0, distance_percentile=100)
    assert len(loose.accepted) == 5


def test_selection_of_nothing_reports_nothing():
    report = select_pseudo_labels([])
    assert report.accepted == [] and report.confidence_threshold is None
    assert "no unannotated slice" in report.summary()


def test_chains_start_from_the_nearest_annotated_slice_and_stop_past_the_range():
    assert nearest_slice(16, [14, 20, 26]) == 14
    assert nearest_slice(17, [14, 20, 26]) == 14  # tie: the lower one
    assert nearest_slice(18, [14, 20, 26]) == 20
    assert extrapolation_limit([14, 20, 26]) == 3
    assert extrapolation_limit([10, 13]) == 2
    assert extrapolation_limit([10]) > 1000


def test_percentiles_are_checked():
    with pytest.raises(InputError, match="confidence percentile must be in"):
        FineTuneOptions(confidence_percentile=120)
    args = build_parser().parse_args(["finetune", "store", "-o", "ft.pt", "--semi-supervised",
                                      "--distance-percentile", "40"])
    assert args.semi_supervised and args.distance_percentile == 40


@pytest.fixture(scope="module")
def semi_supervised_run(tmp_path_factory, ctchest4, embeddings):
    """A one-epoch-per-stage semi-supervised run on 3 annotated slices of the left lung (real weights)."""
    volume, reference = ctchest4
    folder = tmp_path_factory.mktemp("semi")
    truth = reference.get(STRUCTURE).mask
    with FineTuningStore.init(folder / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, truth, "tester", annotated_slices={"k": ANNOTATED})
        options = FineTuneOptions(epochs=1, batch_size=2, min_steps_per_epoch=4, semi_supervised=True)
        result = fine_tune(store, folder / "ft.pt", options=options, cache=embeddings)
    return result, truth, folder


def test_semi_supervised_run_adds_selected_pseudo_labels(semi_supervised_run):
    result, truth, _ = semi_supervised_run
    report = result.pseudo_labels
    indices = [c.index for c in report.candidates]
    reach = extrapolation_limit(ANNOTATED)
    assert indices and not set(indices) & set(ANNOTATED)
    assert min(indices) >= ANNOTATED[0] - reach and max(indices) <= ANNOTATED[-1] + reach
    assert 0 < len(report.accepted) < len(report.candidates)
    assert result.train_slices == len(ANNOTATED) + len(report.accepted)
    assert [record["stage"] for record in result.history] == ["supervised", "semi-supervised"]
    for candidate in report.accepted:
        assert candidate.confidence >= report.confidence_threshold
        assert candidate.distance <= report.distance_threshold
    dice = []
    for candidate in report.accepted:
        reference = take_slices(truth, 2, [candidate.index])[0]
        dice.append(2 * (candidate.mask & reference).sum() / (candidate.mask.sum() + reference.sum()))
    print(f"accepted pseudo-label Dice against the reference: {np.round(dice, 3)}")
    assert np.mean(dice) > 0.8


def test_selection_is_kept_in_the_checkpoint_and_resume_is_refused(semi_supervised_run):
    result, _, folder = semi_supervised_run
    saved = load_checkpoint(result.checkpoint)["metrics"]["pseudo_labels"]
    assert saved["counts"] == result.pseudo_labels.counts()
    assert [s["index"] for s in saved["slices"]] == [c.index for c in result.pseudo_labels.candidates]
    with FineTuningStore(folder / "store") as store, pytest.raises(InputError, match="cannot be resumed"):
        fine_tune(store, folder / "again.pt", resume=result.checkpoint)

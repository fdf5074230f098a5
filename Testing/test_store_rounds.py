"""Annotation rounds from a store's label history (MedSegAdaptLib.store.rounds), on a real store in a tmp folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import Geometry, Segment, Segmentation, volume_from_array
from MedSegAdaptLib.store import FineTuningStore, annotation_rounds, last_round_gain

SHAPE = (10, 10, 8)
GEOMETRY = Geometry(SHAPE, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
CASE = "phantom"


def square(*slices: int, columns: slice = slice(2, 6)) -> np.ndarray:
    """A 4-row square (4x4, or 4 rows by ``columns``) on each given K slice."""
    mask = np.zeros(SHAPE, dtype=bool)
    for k in slices:
        mask[2:6, columns, k] = True
    return mask


def predict(store: FineTuningStore, structure: str, mask: np.ndarray) -> int:
    """Store ``mask`` as a prediction of ``structure``; its version."""
    return store.add_prediction(CASE, Segmentation(GEOMETRY, [Segment(structure, mask)]))[0].version


@pytest.fixture
def store(tmp_path: Path):
    with FineTuningStore.init(tmp_path / "store") as opened:
        image = np.random.default_rng(0).normal(0, 100, SHAPE).astype(np.int16)
        opened.add_image(volume_from_array(image, GEOMETRY), case_id=CASE, modality="ct")
        yield opened


def test_agreement_is_over_the_annotated_slices_against_the_latest_earlier_prediction(store):
    # Round 1: the prediction matches slice 2 and misses slice 5; its blob on slice 7 is not annotated.
    first = predict(store, "left lung", square(2) | square(7, columns=slice(0, 4)))
    store.submit_mask(CASE, "left lung", square(2, 5), "dr a", {"k": [5, 2]})
    # Round 2: a newer prediction matches slice 3 and half of slice 6.
    predict(store, "left lung", square(2, 3, 5) | square(6, columns=slice(2, 4)))
    second = predict(store, "left lung", square(3) | square(6, columns=slice(2, 4)))
    store.submit_mask(CASE, "left lung", square(2, 3, 5, 6), "dr b", {"k": [3, 6]})
    # Neither a prediction after the last correction nor a synthetic label is a round or changes one.
    predict(store, "left lung", np.zeros(SHAPE, dtype=bool))
    store.submit_mask(CASE, "left lung", square(1), "simulator", {"k": [1]}, kind="synthetic")

    rounds = annotation_rounds(store, CASE, "Left Lung")
    assert [(r.number, r.version, r.annotated_slices, r.annotator) for r in rounds] == [
        (1, 2, {"k": [2, 5]}, "dr a"), (2, 5, {"k": [3, 6]}, "dr b")]
    assert [r.prediction_version for r in rounds] == [first, second]
    # Over slices 2 and 5: 2 * 16 / (16 + 32); the whole volume (the slice-7 blob counted) would give 0.5.
    assert rounds[0].agreement == pytest.approx(2 / 3, abs=1e-6)
    # Over slices 3 and 6: 2 * 24 / (24 + 32), against the prediction just before (the empty later one gives 0).
    assert rounds[1].agreement == pytest.approx(6 / 7, abs=1e-6)
    assert last_round_gain(rounds) == pytest.approx(6 / 7 - 2 / 3, abs=1e-6)
    assert rounds[1].date == rounds[1].time[:10] and len(rounds[1].date) == 10


def test_a_whole_volume_correction_is_a_round_compared_over_the_whole_volume(store):
    predict(store, "tissue", square(1, 2))
    store.submit_mask(CASE, "tissue", square(1), "dr a")  # no slices: the whole volume was annotated
    (only,) = annotation_rounds(store, CASE, "tissue")
    assert only.annotated_slices is None
    assert only.agreement == pytest.approx(2 * 16 / (32 + 16), abs=1e-6)
    assert last_round_gain([only]) is None  # no earlier round to compare with


def test_corrections_without_a_prediction_before_have_no_agreement(store):
    store.submit_mask(CASE, "right lung", square(4), "dr a", {"k": [4]})
    predict(store, "right lung", square(4))
    store.submit_mask(CASE, "right lung", square(4, 5), "dr a", {"k": [5]})
    rounds = annotation_rounds(store, CASE, "right lung")
    assert [(r.agreement, r.prediction_version) for r in rounds] == [(None, None), (0.0, 2)]
    assert last_round_gain(rounds) is None  # the first round's agreement is unknown
    assert last_round_gain([]) is None


def test_no_correction_yet_is_no_round_and_an_unknown_case_is_an_error(store):
    assert annotation_rounds(store, CASE, "left lung") == []  # an empty history
    predict(store, "left lung", square(2))
    assert annotation_rounds(store, CASE, "left lung") == []  # predictions only
    with pytest.raises(InputError, match="nope"):
        annotation_rounds(store, "nope", "left lung")

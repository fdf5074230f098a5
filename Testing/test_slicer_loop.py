"""Where the loop stands, as the panels show it: the Suggestions panel's round line from corrections submitted
through the Logic on a real MRML scene (slicer-core), and the Adapt panel's result table (MedSegAdaptLogic.loop).

No model runs: model results are fake masks written through the Logic, or predictions stored directly;
fine-tuning results are stand-ins with the two fields the table reads.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

try:
    import slicer  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"slicer-core is not installed ({error})", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegAdapt"))

from MedSegAdaptLogic.logic import MedSegAdaptLogic  # noqa: E402
from MedSegAdaptLogic.loop import (  # noqa: E402
    ADAPT_COLUMNS,
    AdaptResults,
    describe_rounds,
    slices_text,
)
from MedSegAdaptLogic.scene import roi_from_box, set_segment_mask, volume_to_node  # noqa: E402
from slicer_scene import make_scene  # noqa: E402

from MedSegAdaptLib.core.errors import InputError  # noqa: E402
from MedSegAdaptLib.inference import Box3D  # noqa: E402
from MedSegAdaptLib.io import (  # noqa: E402
    Geometry,
    Segment,
    Segmentation,
    read_volume,
    volume_from_array,
)
from MedSegAdaptLib.store import AnnotationRound, FineTuningStore  # noqa: E402

SHAPE = (12, 12, 8)
GEOMETRY = Geometry(SHAPE, (1.0, 1.0, 2.5), (-6.0, 4.0, 10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def square(*slices: int, columns: slice = slice(3, 7)) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for k in slices:
        mask[3:7, columns, k] = True
    return mask


def phantom(app):
    image = np.random.default_rng(1).normal(0, 200, SHAPE).astype(np.int16)
    return volume_to_node(volume_from_array(image, GEOMETRY), app.scene, "phantom")


def test_correcting_a_model_segment_stores_the_models_result_as_the_prediction_first(tmp_path):
    app = make_scene()
    volume_node, segmentation_node = phantom(app), app.new_segmentation()
    store_path, logic = str(tmp_path / "store"), MedSegAdaptLogic()
    roi = roi_from_box(Box3D((1, 1, 0), (10, 10, 7)), volume_node)

    def model(mask):  # what the worker hands back, written as the panel writes it
        request = logic.prepare(volume_node, "left lung", roi_node=roi)
        logic.apply(SimpleNamespace(mask=mask, report=None), request, volume_node, segmentation_node, replace=True,
                    confirm_replace=lambda name: True)

    def correct(mask, slices, annotator="dr a"):  # the annotator's edit in the Segment Editor, then Submit
        set_segment_mask(segmentation_node, "left lung", mask, volume_node, replace=True)
        return logic.submit_correction(volume_node, segmentation_node, "left lung", store_path, "phantom", annotator,
                                       slices=slices)

    model(square(2, 3))
    with pytest.raises(InputError, match="Annotator"):
        correct(square(2, 5), {"k": [2, 5]}, annotator=" ")
    assert not (tmp_path / "store").exists()  # no prediction without its correction
    first = correct(square(2, 5), {"k": [2, 5]})  # the model is right on slice 2, wrong on slice 5
    correct(square(2, 3, 5), {"k": [3]})  # the same model result: not stored again
    history = logic.history(store_path, "phantom", "left lung")
    assert [(v.version, v.kind) for v in history] == [(1, "prediction"), (2, "correction"), (3, "correction")]
    np.testing.assert_array_equal(read_volume(history[0].file).array != 0, square(2, 3))
    assert history[1].diff["against_version"] == history[2].diff["against_version"] == 1
    date = first.time[:10]
    assert logic.round_text(store_path, "phantom", "left lung") == (
        f"Round 3 for left lung: the model agreed with your round-2 corrections (k:3, {date}) at Dice 1.00, "
        "+0.33 over round 1.")
    model(square(4))  # a new result (the corrected segment replaced after asking): stored with the next correction
    correct(square(2, 3, 4, 5), {"k": [4, 5]})
    assert [v.kind for v in logic.history(store_path, "phantom", "left lung")][3:] == ["prediction", "correction"]
    assert logic.round_text(store_path, "phantom", "left lung") == (
        f"Round 4 for left lung: the model agreed with your round-3 corrections (k:4,5, {date}) at Dice 0.67, "
        "-0.33 over round 2.")
    drawn = app.new_segmentation("Drawn")  # a segment the model never wrote has no prediction
    set_segment_mask(drawn, "tissue", square(1), volume_node)
    logic.submit_correction(volume_node, drawn, "tissue", store_path, "phantom", "dr a")
    assert [v.kind for v in logic.history(store_path, "phantom", "tissue")] == ["correction"]


def test_a_re_propagated_segment_is_compared_with_the_models_result_before_the_edits(tmp_path):
    app = make_scene()
    volume_node, segmentation_node = phantom(app), app.new_segmentation()
    store_path, logic = str(tmp_path / "store"), MedSegAdaptLogic()
    roi = roi_from_box(Box3D((1, 1, 0), (10, 10, 7)), volume_node)
    request = logic.prepare(volume_node, "left lung", roi_node=roi)
    logic.apply(SimpleNamespace(mask=square(2, 3), report=None), request, volume_node, segmentation_node)
    set_segment_mask(segmentation_node, "left lung", square(2, 3, 5), volume_node)  # the annotator adds slice 5
    edits = logic.prepare_repropagation(volume_node, segmentation_node, "left lung")
    assert edits.slices == [5]
    logic.apply_repropagation(SimpleNamespace(mask=square(2, 3, 4, 5)), edits, volume_node, segmentation_node)
    logic.submit_correction(volume_node, segmentation_node, "left lung", store_path, "phantom", "dr a",
                            slices={"k": [4, 5]})
    prediction, correction = logic.history(store_path, "phantom", "left lung")
    np.testing.assert_array_equal(read_volume(prediction.file).array != 0, square(2, 3))  # not the re-propagation
    assert correction.diff["dice"] == 0.0  # the model had nothing on slices 4 and 5


def test_the_round_line_follows_the_corrections_submitted_from_the_scene(tmp_path):
    app = make_scene()
    volume_node = phantom(app)
    segmentation_node = app.new_segmentation()
    store_path = str(tmp_path / "store")
    logic = MedSegAdaptLogic()
    assert logic.round_text(store_path, "phantom", "left lung") == "Round 1 for left lung: no corrections yet."
    assert logic.round_text(store_path, "phantom", " ") == ""

    def submit(mask, slices):
        set_segment_mask(segmentation_node, "left lung", mask, volume_node, replace=True)
        return logic.submit_correction(volume_node, segmentation_node, "left lung", store_path, "phantom", "dr a",
                                       slices=slices)

    def predict(mask):
        with FineTuningStore(store_path) as store:
            store.add_prediction("phantom", Segmentation(GEOMETRY, [Segment("left lung", mask)]))

    first = submit(square(2, 5), {"k": [2, 5]})  # round 1, no prediction before it
    date = first.time[:10]
    assert logic.round_text(store_path, "PHANTOM", "Left lung") == (
        f"Round 2 for Left lung: no model prediction was stored before your round-1 corrections (k:2,5, {date}), "
        "so how well the model agreed is unknown.")
    predict(square(3) | square(6, columns=slice(3, 5)))  # right on slice 3, half of slice 6
    submit(square(2, 3, 5, 6), {"k": [3, 6]})
    assert logic.round_text(store_path, "phantom", "left lung") == (
        f"Round 3 for left lung: the model agreed with your round-2 corrections (k:3,6, {date}) at Dice 0.86 "
        "(round 1's agreement is unknown).")
    predict(square(1, 4) | square(2, 3, 5, 6))  # right on slice 4, nothing on slice 7: Dice 2 * 16 / (16 + 32)
    submit(square(2, 3, 4, 5, 6, 7), {"k": [4, 7]})
    assert logic.round_text(store_path, "phantom", "left lung") == (
        f"Round 4 for left lung: the model agreed with your round-3 corrections (k:4,7, {date}) at Dice 0.67, "
        "-0.19 over round 2.")
    assert logic.round_text(store_path, "other case", "left lung") == "Round 1 for left lung: no corrections yet."


def test_round_lines_for_a_first_round_a_gain_and_the_slices():
    def made(number, agreement, slices=None):
        return AnnotationRound(number, number * 2, slices, "2026-12-02T10:00:00.000+00:00", "dr a", agreement,
                               None if agreement is None else number * 2 - 1)

    assert describe_rounds("tissue", [made(1, 0.9)]) == (
        "Round 2 for tissue: the model agreed with your round-1 corrections (whole volume, 2026-12-02) at Dice 0.90.")
    assert describe_rounds("tissue", [made(1, 0.81), made(2, 0.864, {"k": [12, 30]})]).endswith(
        "round-2 corrections (k:12,30, 2026-12-02) at Dice 0.86, +0.05 over round 1.")
    assert slices_text({"i": [5], "k": [1, 2]}) == "i:5 k:1,2"


def test_the_adapt_table_has_a_row_per_environment_and_structure_then_the_fine_tuning():
    results = AdaptResults()
    low_dose = {"left lung": {"generated": 4, "accepted": 3, "queued": 1},
                "right lung": {"generated": 4, "accepted": 4, "queued": 0}}
    results.add_samples("low-dose-ct", low_dose)
    assert results.rows() == [["low-dose-ct", "left lung", "4", "3", "1", "-", "-"],
                              ["low-dose-ct", "right lung", "4", "4", "0", "-", "-"]]
    assert len(results.rows()[0]) == len(ADAPT_COLUMNS)
    results.add_fine_tune(SimpleNamespace(best_val_dice=0.91234, epochs_run=5))
    results.add_samples("pediatric", {"left lung": {"generated": 2, "accepted": 0, "queued": 2}})
    assert results.rows() == [["low-dose-ct", "left lung", "4", "3", "1", "0.912", "5"],
                              ["low-dose-ct", "right lung", "4", "4", "0", "0.912", "5"],
                              ["pediatric", "left lung", "2", "0", "2", "-", "-"]]  # generated after it
    # A new low-dose run replaces its rows (and comes last); the next fine-tuning covers both environments.
    results.add_samples("low-dose-ct", {"left lung": {"generated": 6, "accepted": 6, "queued": 0}})
    results.add_fine_tune(SimpleNamespace(best_val_dice=None, epochs_run=3))
    assert results.rows() == [["pediatric", "left lung", "2", "0", "2", "no validation slices", "3"],
                              ["low-dose-ct", "left lung", "6", "6", "0", "no validation slices", "3"]]


def test_the_logic_keeps_one_adapt_table_per_store(tmp_path, monkeypatch):
    logic = MedSegAdaptLogic()
    assert logic.adapt_result_rows(str(tmp_path / "a")) == [] and logic.adapt_result_rows("") == []
    logic.record_fine_tune(str(tmp_path / "a"), SimpleNamespace(best_val_dice=0.8, epochs_run=2))
    monkeypatch.chdir(tmp_path)
    assert logic.adapt_result_rows("a") == [["-", "all structures", "-", "-", "-", "0.800", "2"]]  # the same store
    logic.record_samples("b", "pediatric", {"tissue": {"generated": 1, "accepted": 1, "queued": 0}})
    assert logic.adapt_result_rows(str(tmp_path / "b")) == [["pediatric", "tissue", "1", "1", "0", "-", "-"]]
    assert logic.adapt_result_rows("a") == [["-", "all structures", "-", "-", "-", "0.800", "2"]]
    assert list(logic.ADAPT_RESULT_COLUMNS) == ["Environment", "Structure", "Generated", "Accepted", "Queued",
                                               "Best validation Dice", "Epochs"]

"""The panel's report-driven segmentation on a real MRML scene (slicer-core): Find a report's candidates in a
volume node, jump the slice views to one, and keep candidates as separate new segments.

CTChest4 only, and no network loaded or run: Find parses the report and ranks candidates without one
(with the packaged LiteMedSAM, which has no MedSeg-R priors, the Logic does not even load it), a whole
structure (a lung) keeps the localiser's mask, lesion candidates are written with their localiser mask
(``method='localiser'``) or through a stand-in segmenter that records what the backbone would get.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; pip install slicer-core to test the module Logic")
import vtk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegAdapt"))

from MedSegAdaptLogic.logic import CANDIDATE_TAGS, MedSegAdaptLogic
from MedSegAdaptLogic.scene import (
    segment_ids,
    segment_mask,
    set_segment_mask,
    slice_views,
)
from MedSegAdaptLogic.state import PanelInputs, ready_actions
from MedSegAdaptLogic.worker import Processing
from slicer_scene import make_scene

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference.report_segmentation import candidate_box
from MedSegAdaptLib.io import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    read_segmentation,
)

NODULE_REPORT = "Right upper lobe: 14 mm solid pulmonary nodule."


@pytest.fixture(scope="module")
def logic():
    """One Logic for the file, with the packaged LiteMedSAM (never loaded here)."""
    return MedSegAdaptLogic(device="cpu")


def _ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _tag(segmentation_node, segment_id, key) -> str:
    value = vtk.reference("")
    assert segmentation_node.GetSegmentation().GetSegment(segment_id).GetTag(key, value), key
    return str(value)


def _names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetSegment(s).GetName() for s in segment_ids(segmentation_node)]


def test_find_lists_the_left_lung_as_one_whole_structure_candidate(logic, volume_node):
    found = logic.find_candidates(volume_node, "left lung")
    assert found.structure == "left lung" and found.modality == "ct"
    assert len(found.candidates) == 1
    candidate = found.candidates[0]
    assert candidate["rank"] == 1 and candidate["score"] == 1.0 and found.is_whole_structure(1)
    assert candidate["reason"].startswith("the left lung:") and "\n" not in candidate["reason"]
    assert {"region", "diameter_mm", "volume_ml", "centre_ijk", "terms"} <= candidate.keys()
    assert found.understood["report"]["structure"] == "left lung"
    assert found.understood["report"]["findings"]["laterality"] == "left"
    assert "knowledge base" in found.understood["ranked_by"] and found.understood["steered_by"]
    assert logic.understood_text(found) == "left lung on CT (laterality left)"
    text = logic.candidate_text(candidate)
    assert text.startswith("Candidate 1 (score 1.00, ") and text.endswith(f" mL): {candidate['reason']}")
    [row] = logic.candidate_rows(found)
    assert row[:2] == ["1", "1.00"] and row[2].endswith(" mL") and row[3] == candidate["reason"]
    assert logic.last_find(volume_node) is found  # kept: Apply does not localise again
    assert logic._segmenter is None  # finding ran no network and loaded none
    assert found.understood["steered_by"] == "box only (no MedSeg-R priors in this checkpoint)"


def test_with_a_checkpoint_find_asks_the_loaded_model_whether_its_priors_steer(logic, volume_node, monkeypatch):
    tuned = MedSegAdaptLogic(checkpoint="finetuned.pt", device="cpu")
    loaded = SimpleNamespace(guidance=logic._report_guidance(None)[0], backbone=SimpleNamespace(priors=object()))
    stages = []
    monkeypatch.setattr(tuned, "_loaded_segmenter", lambda progress: stages.append("loaded") or loaded)
    found = tuned.find_candidates(volume_node, "left lung")
    assert stages == ["loaded"] and found.understood["steered_by"] == "MedSeg-R priors from the report's texts"


def test_applying_candidate_1_twice_keeps_two_separate_segments(logic, app, volume_node):
    output = app.new_segmentation("Out")
    found = logic.find_candidates(volume_node, "left lung")
    saved = []
    result = logic.run_candidate(found, 1)
    assert result.method == "localiser" and result.outcome is None  # no network for a whole structure
    first = logic.apply_candidate(result, found, volume_node, output, save_undo_state=lambda: saved.append(1))
    first_mask = segment_mask(output, first, volume_node)
    np.testing.assert_array_equal(first_mask, result.mask)
    truth = read_segmentation(ctchest4_segmentation_path()).get("left lung").mask
    assert dice(first_mask, truth) > 0.8
    second = logic.segment_candidate(volume_node, output, 1)  # from the kept Find
    assert second != first and _names(output) == ["left lung", "left lung (2)"]
    np.testing.assert_array_equal(segment_mask(output, first, volume_node), first_mask)  # not overwritten
    assert saved == [1]
    tags = {key: _tag(output, first, key) for key in CANDIDATE_TAGS}
    assert tags == {"MedSegAdapt.Report": "left lung", "MedSegAdapt.CandidateRank": "1",
                    "MedSegAdapt.CandidateScore": "1.0000", "MedSegAdapt.Method": "localiser",
                    "MedSegAdapt.CandidateReason": found.candidates[0]["reason"]}
    segment = output.GetSegmentation().GetSegment(first)
    assert "Lung" in _tag(output, first, segment.GetTerminologyEntryTagName())  # the structure's terminology
    assert logic.last_measurement is None  # a lung is no lesion


def test_lesion_candidates_become_numbered_segments_next_to_a_drawn_one(logic, app, volume_node):
    output = app.new_segmentation("Out")
    drawn = np.zeros(tuple(volume_node.GetImageData().GetDimensions()), dtype=bool)
    drawn[80:90, 70:80, 20:25] = True
    mine = set_segment_mask(output, "lung nodule 1", drawn, volume_node)  # drawn by the user
    found = logic.find_candidates(volume_node, NODULE_REPORT)
    assert found.structure == "lung nodule" and len(found.candidates) >= 2
    assert [c["rank"] for c in found.candidates] == list(range(1, len(found.candidates) + 1))
    assert found.candidates[0]["score"] >= found.candidates[1]["score"]
    assert not found.is_whole_structure(1)
    assert "right upper lobe" in logic.understood_text(found) and "size 14 mm" in logic.understood_text(found)
    ids = []
    for rank in (1, 2, 1):
        result = logic.run_candidate(found, rank, method="localiser")  # the blob itself: no network
        ids.append(logic.apply_candidate(result, found, volume_node, output))
        measured = logic.last_measurement
        assert measured is not None
        assert _tag(output, ids[-1], "MedSegAdapt.VolumeMl") == f"{measured.volume_ml:.3f}"
        assert _tag(output, ids[-1], "MedSegAdapt.CandidateRank") == str(rank)
    assert _names(output) == ["lung nodule 1", "lung nodule 2", "lung nodule 3", "lung nodule 4"]
    np.testing.assert_array_equal(segment_mask(output, mine, volume_node), drawn)
    np.testing.assert_array_equal(segment_mask(output, ids[0], volume_node), segment_mask(output, ids[2], volume_node))
    assert not (segment_mask(output, ids[0], volume_node) & segment_mask(output, ids[1], volume_node)).any()


def test_a_lesion_goes_to_the_backbone_with_its_box_and_the_report(logic, app, volume_node, monkeypatch):
    found = logic.find_candidates(volume_node, NODULE_REPORT)
    calls = []

    class StandIn:  # what the backbone is asked, without running it
        def segment(self, volume, structure, box, points, modality, progress, report, **options):
            calls.append((volume, structure, box, tuple(points), modality, report))
            mask = np.zeros(volume.geometry.shape, dtype=bool)
            mask[box.lo[0]:box.hi[0] + 1, box.lo[1]:box.hi[1] + 1, box.lo[2]:box.hi[2] + 1] = True
            return SimpleNamespace(mask=mask)

    monkeypatch.setattr(logic, "_loaded_segmenter", lambda progress: StandIn())
    result = logic.run_candidate(found, 2)
    assert result.method == "backbone" and result.picked == 1
    [(volume, structure, box, points, modality, report)] = calls
    assert volume is found.volume and structure == "lung nodule" and points == () and modality == "ct"
    assert report == NODULE_REPORT and box == candidate_box(found.result.finding, 1) == result.box
    assert found.result.picked is None and found.result.mask is None  # the kept Find is not changed
    output = app.new_segmentation("Out")
    segment_id = logic.apply_candidate(result, found, volume_node, output)
    assert _names(output) == ["lung nodule 1"] and _tag(output, segment_id, "MedSegAdapt.Method") == "backbone"


def test_candidate_centre_to_ras_follows_ijk_to_ras_and_the_slice_views_jump_there(logic, app, volume_node):
    found = logic.find_candidates(volume_node, NODULE_REPORT)
    candidate = found.candidates[0]
    expected = _ijk_to_ras(volume_node) @ np.append(np.asarray(candidate["centre_ijk"], dtype=float), 1.0)
    position = logic.candidate_centre_ras(volume_node, candidate)
    np.testing.assert_allclose(position, expected[:3], atol=1e-9)
    np.testing.assert_allclose(logic.ijk_to_ras_point(volume_node, candidate["centre_ijk"]), position)
    views = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        view = app.scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        view.SetLayoutName(name)
        view.SetOrientation(orientation)
        views.append(view)
    assert slice_views(app.scene) == views
    assert logic.jump_to_candidate(volume_node, candidate) == position
    for view in views:  # centred: every view's plane passes through the centre, at the view's middle
        matrix = view.GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(r, 3) for r in range(3)], position, atol=1e-6)
    # Under a linear transform the views go where the candidate is shown: the world position.
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(shift)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(logic.candidate_centre_ras(volume_node, candidate),
                               [position[0] + 10.0, position[1], position[2]], atol=1e-9)
    with pytest.raises(InputError, match="not an"):
        logic.candidate_centre_ras(volume_node, [1, 2])


def test_an_unlocatable_or_unknown_report_says_why_and_adds_no_segment(logic, app, volume_node):
    output = app.new_segmentation("Out")
    logic.find_candidates(volume_node, "left lung")
    with pytest.raises(InputError, match=r"'liver' from a report alone is not available on CT .*draw a box"):
        logic.find_candidates(volume_node, "segment the liver")
    assert logic.last_find(volume_node) is None  # the older report's candidates are not segmented by mistake
    with pytest.raises(InputError, match="No candidates found yet in CTChest4"):
        logic.segment_candidate(volume_node, output, 1)
    with pytest.raises(InputError, match="No known structure is named in the report"):
        logic.find_candidates(volume_node, "blah blah")
    with pytest.raises(InputError, match="No report given"):
        logic.prepare_find(volume_node, "  \n ")
    with pytest.raises(InputError, match="No input volume"):
        logic.prepare_find(None, "left lung")
    found = logic.find_candidates(volume_node, "left lung")
    for rank in (0, 2, True):
        with pytest.raises(InputError, match="does not exist: the report gave 1 candidate"):
            logic.run_candidate(found, rank)
    with pytest.raises(InputError, match="unknown segmentation method"):
        logic.run_candidate(found, 1, method="magic")
    assert output.GetSegmentation().GetNumberOfSegments() == 0


def test_a_find_is_kept_per_volume_node_and_refused_elsewhere(logic, app, volume_node):
    found = logic.find_candidates(volume_node, "left lung")
    other = app.load_volume(ctchest4_volume_path(), "Other")
    assert logic.last_find(other) is None and logic.last_find(volume_node) is found
    result = logic.run_candidate(found, 1)
    output = app.new_segmentation("Out")
    with pytest.raises(InputError, match="another volume than Other; press Find again"):
        logic.apply_candidate(result, found, other, output)
    later = make_scene()  # after a scene close, the next scene's volume gets the same node id
    again = later.load_volume(ctchest4_volume_path(), "CTChest4")
    assert again.GetID() == volume_node.GetID() and logic.last_find(again) is None
    logic.forget_finds()
    assert logic.last_find(volume_node) is None
    app.scene.Clear(0)  # File > Close scene between Find and Apply: nothing is written
    with pytest.raises(InputError, match="no longer in the scene"):
        logic.apply_candidate(result, found, volume_node, output)
    with pytest.raises(InputError, match="no longer in the scene"):
        logic.jump_to_candidate(volume_node, found.candidates[0])


def test_find_and_apply_run_on_the_worker_and_their_buttons_follow_the_table(logic, app, volume_node):
    output = app.new_segmentation("Out")
    inputs = PanelInputs(volume=volume_node, segmentation=output)
    assert not ready_actions(inputs)["find"][0] and "paste a report" in ready_actions(inputs)["find"][1]
    inputs.report = "left lung"
    assert ready_actions(inputs)["find"][0] and not ready_actions(inputs)["candidate"][0]
    processing = Processing()
    try:
        request = logic.prepare_find(volume_node, inputs.report)
        stages = []

        def find(progress):
            return logic.run_find(request, lambda *report: (stages.append(report[0]), progress(*report)))

        job = processing.start("find", find, "finding", volume_node)
        inputs.running = "find"
        assert ready_actions(inputs)["find"] == (True, "Stop the running work.")
        assert not ready_actions(inputs)["candidate"][0] and not ready_actions(inputs)["segment"][0]
        assert job.wait(60) and job.state == "done", job.error
        kind, finished, _ = processing.poll()
        assert kind == "find" and "locating" in stages
        found = finished.result
        inputs.running, inputs.candidate_selected = None, True
        assert ready_actions(inputs)["candidate"][0]
        job = processing.start("candidate", lambda progress: logic.run_candidate(found, 1, progress), "segmenting")
        assert job.wait(60) and job.state == "done", job.error
        processing.poll()
        logic.apply_candidate(job.result, found, volume_node, output)  # back on the main thread
        assert _names(output) == ["left lung"]
    finally:
        processing.shutdown()

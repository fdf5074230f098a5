"""Re-propagating a model segment from the user's edits, on a real MRML scene (slicer-core): which slices were
edited since the model's result (per-slice digests in the segment's tags, also after saving and reloading),
the refusals, and the re-propagated segment (edited slices kept as drawn, no other segment touched, undoable,
the new model result).

Shape-based interpolation (``mode='interpolation'``) runs no network, so all but one test run in seconds; the
slow one re-propagates CTChest4's left lung with the real LiteMedSAM weights from three reference slices.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; pip install slicer-core to test the module Logic")
import slicer
import vtk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegAdapt"))

from MedSegAdaptLogic.logic import REPROPAGATION_TAGS, MedSegAdaptLogic
from MedSegAdaptLogic.scene import (
    MODEL_SLICES_TAG,
    edited_slices,
    is_unedited_model_output,
    roi_from_box,
    segment_mask,
    set_segment_mask,
)
from MedSegAdaptLogic.state import PanelInputs, ready_actions

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D


@pytest.fixture(scope="module")
def logic(embeddings):
    """One Logic for the file: the backbone loads once (interpolation runs no network); slices come from the
    session's cache."""
    logic = MedSegAdaptLogic(device="cpu")
    logic.embedding_cache = embeddings
    return logic


def _blob(shape, centre, radius, slices) -> np.ndarray:
    """(I, J, K) bool: a disc of ``radius`` around ``centre`` (I, J) on each slice of ``slices``."""
    i, j = np.ogrid[:shape[0], :shape[1]]
    disc = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius ** 2
    mask = np.zeros(shape, dtype=bool)
    mask[:, :, slices] = disc[:, :, None]
    return mask


def _model_segment(logic, volume_node, segmentation_node, structure, mask) -> str:
    """Write ``mask`` as the model's result for ``structure`` (the Logic's apply, a stand-in outcome)."""
    request = logic.prepare(volume_node, structure, roi_node=roi_from_box(Box3D.around(mask), volume_node))
    return logic.apply(SimpleNamespace(mask=mask, report=None), request, volume_node, segmentation_node)


def _paint(segmentation_node, structure, volume_node, mask) -> None:
    """What the Segment Editor leaves behind: the segment's voxels changed (colour and tags kept)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segmentation_node.GetSegmentation()
                                                               .GetSegmentIdBySegmentName(structure))
    set_segment_mask(segmentation_node, structure, mask, volume_node, color=segment.GetColor())


def _tag(segmentation_node, segment_id, key) -> str:
    value = vtk.reference("")
    assert segmentation_node.GetSegmentation().GetSegment(segment_id).GetTag(key, value), key
    return str(value)


@pytest.fixture()
def edited(app, logic, volume_node):
    """A model segment 'left lung' (a disc on slices 15..30) with slice 20 painted bigger and slice 25 partly
    erased, and a model segment 'right lung' beside it that overlaps it: (segmentation node, ids, masks)."""
    shape = tuple(volume_node.GetImageData().GetDimensions())
    output = app.new_segmentation("Out")
    model = _blob(shape, (64, 64), 15, slice(15, 31))
    other_mask = _blob(shape, (80, 64), 12, slice(10, 28))
    left = _model_segment(logic, volume_node, output, "left lung", model)
    right = _model_segment(logic, volume_node, output, "right lung", other_mask)
    assert edited_slices(output, left, volume_node, "k") == []
    painted = model.copy()
    painted[:, :, 20] = _blob(shape, (60, 60), 22, [0])[:, :, 0]
    painted[40:64, :, 25] = False
    _paint(output, "left lung", volume_node, painted)
    return SimpleNamespace(node=output, left=left, right=right, model=model, painted=painted, other=other_mask)


def test_edited_slices_are_exactly_the_painted_ones(edited, volume_node):
    assert edited_slices(edited.node, edited.left, volume_node, "k") == [20, 25]
    assert edited_slices(edited.node, edited.right, volume_node) == []  # K by default
    assert not is_unedited_model_output(edited.node, edited.left, volume_node)
    assert len(_tag(edited.node, edited.left, MODEL_SLICES_TAG)) == 8 * 34  # 8 hex characters per slice
    with pytest.raises(InputError, match="recorded slice by slice along k, not j"):
        edited_slices(edited.node, edited.left, volume_node, "j")


def test_edited_slices_survive_saving_and_reloading_the_segmentation(app, edited, volume_node, tmp_path):
    path = tmp_path / "Out.seg.nrrd"
    storage = app.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(edited.node)
    reloaded = app.load_segmentation(path, "Reloaded")
    segmentation = reloaded.GetSegmentation()
    left = segmentation.GetSegmentIdBySegmentName("left lung")
    assert edited_slices(reloaded, left, volume_node, "k") == [20, 25]
    assert edited_slices(reloaded, segmentation.GetSegmentIdBySegmentName("right lung"), volume_node, "k") == []


def test_a_segment_without_a_model_result_or_without_edits_is_refused(app, logic, edited, volume_node):
    drawn = set_segment_mask(edited.node, "tumour", edited.other, volume_node)  # by hand: no model result
    with pytest.raises(InputError, match="no model result recorded.*segment it with the model first"):
        edited_slices(edited.node, drawn, volume_node)
    with pytest.raises(InputError, match="segment it with the model first"):
        logic.prepare_repropagation(volume_node, edited.node, "tumour", mode="interpolation")
    with pytest.raises(InputError, match="Nothing was edited in segment 'right lung'"):
        logic.prepare_repropagation(volume_node, edited.node, "right lung", mode="interpolation")
    with pytest.raises(InputError, match="No segment named 'heart'"):
        logic.prepare_repropagation(volume_node, edited.node, "heart", mode="interpolation")
    with pytest.raises(InputError, match="Unknown re-propagation mode"):
        logic.prepare_repropagation(volume_node, edited.node, "left lung", mode="guess")


def test_repropagation_keeps_the_edits_touches_no_other_segment_and_is_undoable(app, logic, edited, volume_node):
    editor = slicer.vtkSlicerSegmentEditorLogic()  # what the panel's Segment Editor saves its undo states with
    editor.SetMRMLScene(app.scene)
    editor.SetMRMLApplicationLogic(app.app_logic)
    editor.SetSegmentEditorNode(app.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    editor.SetSegmentationNode(edited.node)
    color = edited.node.GetSegmentation().GetSegment(edited.left).GetColor()

    segment_id = logic.repropagate_from_edits(volume_node, edited.node, "Left Lung", mode="interpolation",
                                              save_undo_state=editor.SaveStateForUndo)

    assert segment_id == edited.left
    result = segment_mask(edited.node, edited.left, volume_node)
    for index in (20, 25):
        np.testing.assert_array_equal(result[:, :, index], edited.painted[:, :, index])  # kept as drawn
    assert all(result[:, :, index].any() for index in range(21, 25))  # between the edits: re-propagated
    # interpolation reaches no further: the slices beyond the edits keep what the segment had
    np.testing.assert_array_equal(result[:, :, :20], edited.painted[:, :, :20])
    np.testing.assert_array_equal(result[:, :, 26:], edited.painted[:, :, 26:])
    np.testing.assert_array_equal(segment_mask(edited.node, edited.right, volume_node), edited.other)
    assert edited.node.GetSegmentation().GetNumberOfSegments() == 2
    assert edited.node.GetSegmentation().GetSegment(edited.left).GetColor() == color
    assert [_tag(edited.node, edited.left, key) for key in REPROPAGATION_TAGS] == ["k:20,25", "interpolation"]
    assert edited_slices(edited.node, edited.left, volume_node, "k") == []  # the new model result
    assert is_unedited_model_output(edited.node, edited.left, volume_node)
    with pytest.raises(InputError, match="Nothing was edited"):
        logic.prepare_repropagation(volume_node, edited.node, "left lung", mode="interpolation")

    assert editor.CanUndo()
    editor.Undo()  # Ctrl+Z in the Segment Editor: the edited segment is back
    np.testing.assert_array_equal(segment_mask(edited.node, edited.left, volume_node), edited.painted)
    np.testing.assert_array_equal(segment_mask(edited.node, edited.right, volume_node), edited.other)
    assert edited_slices(edited.node, edited.left, volume_node, "k") == [20, 25]


def test_a_cleared_slice_is_an_empty_anchor_that_bounds_the_structure(logic, edited, volume_node):
    painted = edited.painted.copy()
    painted[:, :, 28] = False  # the user cleared slice 28: the structure ends before it
    _paint(edited.node, "left lung", volume_node, painted)
    request = logic.prepare_repropagation(volume_node, edited.node, "left lung", mode="interpolation")
    assert request.slices == [20, 25, 28] and not request.anchors[28].any()
    logic.apply_repropagation(logic.run_repropagation(request), request, volume_node, edited.node)
    result = segment_mask(edited.node, edited.left, volume_node)
    np.testing.assert_array_equal(result[:, :, 25], painted[:, :, 25])
    assert not result[:, :, 26:29].any()  # nothing blends towards the cleared slice
    np.testing.assert_array_equal(result[:, :, 29:], painted[:, :, 29:])  # past the last edit: as it was
    assert _tag(edited.node, edited.left, REPROPAGATION_TAGS[0]) == "k:20,25,28"


def test_a_segment_edited_again_while_the_model_ran_is_not_overwritten(logic, edited, volume_node):
    request = logic.prepare_repropagation(volume_node, edited.node, "left lung", mode="interpolation")
    outcome = logic.run_repropagation(request)
    again = edited.painted.copy()
    again[:, :, 22] = False
    _paint(edited.node, "left lung", volume_node, again)
    with pytest.raises(InputError, match="edited again while re-propagating"):
        logic.apply_repropagation(outcome, request, volume_node, edited.node)
    np.testing.assert_array_equal(segment_mask(edited.node, edited.left, volume_node), again)
    edited.node.GetSegmentation().RemoveSegment(edited.left)
    with pytest.raises(InputError, match="deleted while re-propagating"):
        logic.apply_repropagation(outcome, request, volume_node, edited.node)


def test_the_button_needs_a_volume_a_segmentation_and_a_segment(app, volume_node):
    inputs = PanelInputs(volume=volume_node, segmentation=app.new_segmentation())
    enabled, tip = ready_actions(inputs)["repropagate"]
    assert not enabled and "segment" in tip
    inputs.correction_segment = "left lung"
    assert ready_actions(inputs)["repropagate"][0]
    inputs.running = "segment"
    assert not ready_actions(inputs)["repropagate"][0]
    inputs.running = "repropagate"
    assert ready_actions(inputs)["repropagate"] == (True, "Stop the running work.")
    assert not ready_actions(inputs)["submit"][0]  # the segment is about to change


@pytest.mark.slow
def test_left_lung_repropagated_from_three_reference_slices(app, logic, volume_node, ctchest4):
    _, segmentation = ctchest4
    reference = segmentation.get("left lung").mask
    anchors, low, high = (15, 19, 23), 14, 24  # an 11-slice slab: 11 slices to encode, about 10 s on one core
    output = app.new_segmentation("Out")
    wrong = np.roll(reference, 6, axis=0)  # a poor model result, 6 voxels off
    _model_segment(logic, volume_node, output, "left lung", wrong)
    corrected = wrong.copy()
    corrected[:, :, anchors] = reference[:, :, anchors]  # the annotator redraws three slices
    _paint(output, "left lung", volume_node, corrected)
    around = Box3D.around(reference, 5)
    roi = roi_from_box(Box3D((*around.lo[:2], low), (*around.hi[:2], high)), volume_node)

    segment_id = logic.repropagate_from_edits(volume_node, output, "left lung", roi_node=roi, mode="combined")

    result = segment_mask(output, segment_id, volume_node)
    for index in anchors:
        np.testing.assert_array_equal(result[:, :, index], reference[:, :, index])
    others = np.setdiff1d(np.arange(low, high + 1), anchors)
    assert dice(result[:, :, others], reference[:, :, others]) >= 0.9  # 0.964 measured
    # the ROI bounds it: the slices outside keep the model result
    np.testing.assert_array_equal(result[:, :, :low], wrong[:, :, :low])
    np.testing.assert_array_equal(result[:, :, high + 1:], wrong[:, :, high + 1:])
    assert [_tag(output, segment_id, key) for key in REPROPAGATION_TAGS] == ["k:15,19,23", "combined"]

"""What the panel does to the scene, on a real MRML scene (slicer-core): the Settings' default device,
re-running Apply next to a corrected segment, undo, showing a slice of an oblique volume, cancel and
scene close, and which buttons are enabled.

The widget itself runs only inside Slicer; everything it decides lives in the Qt-free package
(``MedSegAdaptLogic.logic``, ``.scene``, ``.state``, ``.worker``), tested here with fake model
results, so none of these tests needs the model weights.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

try:
    import slicer
    import vtk
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"slicer-core is not installed ({error})", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegAdapt"))

from MedSegAdaptLogic.logic import MedSegAdaptLogic  # noqa: E402
from MedSegAdaptLogic.scene import (  # noqa: E402
    roi_from_box,
    segment_ids,
    segment_mask,
    set_segment_mask,
    show_slice,
    slice_position_ras,
    slice_views,
)
from MedSegAdaptLogic.state import PanelInputs, parameter_node, ready_actions  # noqa: E402
from MedSegAdaptLogic.worker import Processing  # noqa: E402
from slicer_scene import make_scene  # noqa: E402

from MedSegAdaptLib.core.errors import InputError  # noqa: E402
from MedSegAdaptLib.inference import Box3D  # noqa: E402


BOX = Box3D((20, 30, 10), (60, 90, 20))


def model_result(logic, volume_node, roi, structure="right lung", seed=0):
    """(outcome, request) as the worker hands them back: a request read from the scene and a fake mask."""
    request = logic.prepare(volume_node, structure, roi_node=roi)
    mask = np.zeros(request.volume.geometry.shape, dtype=bool)
    mask[25 + seed:55, 35:85, 12:18] = True
    return SimpleNamespace(mask=mask, report=None), request


# --- 6: the Settings' default device -----------------------------------------------------------------


def test_a_new_scene_takes_the_default_device_and_a_saved_one_keeps_its_own(app):
    node = parameter_node(app.scene, {"device": "cuda"})
    assert node.GetParameter("device") == "cuda"
    assert node.GetAttribute("ModuleName") == "MedSegAdapt" and node.GetSingletonTag() == "MedSegAdapt"
    node.SetParameter("device", "cpu")  # the user chose a device for this scene
    again = parameter_node(app.scene, {"device": "cuda"})
    assert again is node and again.GetParameter("device") == "cpu"
    assert app.scene.GetNodesByClass("vtkMRMLScriptedModuleNode").GetNumberOfItems() == 1
    assert MedSegAdaptLogic.parameter_node(make_scene().scene, {"device": "auto"}).GetParameter("device") == "auto"


# --- 7: Apply again never overwrites a corrected segment; undo ------------------------------------------


def test_apply_again_adds_a_new_segment_and_keeps_the_first(app, volume_node):
    logic = MedSegAdaptLogic()
    roi = roi_from_box(BOX, volume_node)
    output = app.new_segmentation("Out")
    first = logic.apply(*model_result(logic, volume_node, roi), volume_node, output)
    kept = segment_mask(output, first, volume_node)
    second = logic.apply(*model_result(logic, volume_node, roi, seed=3), volume_node, output)
    names = [output.GetSegmentation().GetSegment(s).GetName() for s in segment_ids(output)]
    assert names == ["right lung", "right lung (2)"] and second != first
    np.testing.assert_array_equal(segment_mask(output, first, volume_node), kept)


def test_replace_overwrites_the_models_own_segment_without_asking(app, volume_node):
    logic = MedSegAdaptLogic()
    roi = roi_from_box(BOX, volume_node)
    output = app.new_segmentation("Out")
    first = logic.apply(*model_result(logic, volume_node, roi), volume_node, output)
    asked = []
    outcome, request = model_result(logic, volume_node, roi, seed=3)
    again = logic.apply(outcome, request, volume_node, output, replace=True, confirm_replace=asked.append)
    assert again == first and asked == [] and output.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(segment_mask(output, first, volume_node), outcome.mask)


@pytest.mark.parametrize("answer", [False, True])
def test_replace_of_a_corrected_segment_asks_first(app, volume_node, answer):
    logic = MedSegAdaptLogic()
    roi = roi_from_box(BOX, volume_node)
    output = app.new_segmentation("Out")
    first = logic.apply(*model_result(logic, volume_node, roi), volume_node, output)
    corrected = segment_mask(output, first, volume_node)
    corrected[30:40, 40:50, 14] = False  # the annotator erased part of one slice
    set_segment_mask(output, "right lung", corrected, volume_node)
    asked = []
    outcome, request = model_result(logic, volume_node, roi, seed=3)
    written = logic.apply(outcome, request, volume_node, output, replace=True,
                          confirm_replace=lambda name: asked.append(name) or answer)
    assert asked == ["right lung"]
    if answer:
        assert written == first and output.GetSegmentation().GetNumberOfSegments() == 1
        np.testing.assert_array_equal(segment_mask(output, first, volume_node), outcome.mask)
    else:  # kept, and the result went into a new segment
        assert written != first and output.GetSegmentation().GetSegment(written).GetName() == "right lung (2)"
        np.testing.assert_array_equal(segment_mask(output, first, volume_node), corrected)
        # Without anyone to ask, a corrected segment is never replaced.
        assert logic.apply(outcome, request, volume_node, output, replace=True) not in (first, written)
        np.testing.assert_array_equal(segment_mask(output, first, volume_node), corrected)


def test_a_segment_drawn_by_hand_is_never_replaced_silently(app, volume_node):
    logic = MedSegAdaptLogic()
    output = app.new_segmentation("Out")
    drawn = np.zeros((128, 128, 34), dtype=bool)
    drawn[40:50, 40:50, 15] = True
    hand = set_segment_mask(output, "right lung", drawn, volume_node)
    written = logic.apply(*model_result(logic, volume_node, roi_from_box(BOX, volume_node)), volume_node, output,
                          replace=True)
    assert written != hand
    np.testing.assert_array_equal(segment_mask(output, hand, volume_node), drawn)


def test_the_models_edit_is_undone_through_the_segment_editors_saved_state(app, volume_node):
    logic = MedSegAdaptLogic()
    roi = roi_from_box(BOX, volume_node)
    output = app.new_segmentation("Out")
    editor_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(app.scene)
    editor.SetMRMLApplicationLogic(app.app_logic)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(output)
    first = logic.apply(*model_result(logic, volume_node, roi), volume_node, output,
                        save_undo_state=editor.SaveStateForUndo)
    before = segment_mask(output, first, volume_node)
    outcome, request = model_result(logic, volume_node, roi, seed=5)
    logic.apply(outcome, request, volume_node, output, replace=True, save_undo_state=editor.SaveStateForUndo)
    np.testing.assert_array_equal(segment_mask(output, first, volume_node), outcome.mask)
    assert editor.CanUndo()
    editor.Undo()  # Ctrl+Z in the Segment Editor: the model's replacement is undone
    np.testing.assert_array_equal(segment_mask(output, first, volume_node), before)
    editor.Undo()  # and the first result too
    assert output.GetSegmentation().GetNumberOfSegments() == 0


# --- 8: a suggested slice of an oblique volume ----------------------------------------------------------


def _slice_views(scene):
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName(name)
        node.SetOrientation(orientation)
    return slice_views(scene)


def _rotate(volume_node, degrees):
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    rotation = vtk.vtkTransform()
    rotation.RotateX(degrees)
    rotation.RotateZ(degrees / 2)
    rotated = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(rotation.GetMatrix(), matrix, rotated)
    volume_node.SetIJKToRASMatrix(rotated)


def _plane(slice_node):
    matrix = slice_node.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    origin = np.array([matrix.GetElement(r, 3) for r in range(3)])
    return normal / np.linalg.norm(normal), origin


def test_showing_a_slice_of_an_oblique_volume_rotates_the_views_onto_it(app, volume_node):
    _rotate(volume_node, 30.0)
    views = _slice_views(app.scene)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    k_axis = np.array([ijk_to_ras.GetElement(r, 2) for r in range(3)])
    k_axis /= np.linalg.norm(k_axis)
    red = views[0]
    assert abs(np.dot(_plane(red)[0], k_axis)) < 0.95, "the RAS-aligned axial view cuts across the oblique slices"

    showing = show_slice(volume_node, "k", 17, views)
    assert [view.GetLayoutName() for view in showing] == ["Red"]
    normal, origin = _plane(red)
    assert abs(np.dot(normal, k_axis)) == pytest.approx(1.0, abs=1e-6)  # the view's plane is a K slice...
    centre = np.array(slice_position_ras(volume_node, "k", 17))
    assert np.dot(centre - origin, normal) == pytest.approx(0.0, abs=1e-4)  # ... slice 17, through its centre
    for view in views:  # every view passes through the slice's centre
        view_normal, view_origin = _plane(view)
        assert np.dot(centre - view_origin, view_normal) == pytest.approx(0.0, abs=1e-4)
    # The i and j planes of the volume show in the other two views.
    assert [v.GetLayoutName() for v in show_slice(volume_node, "i", 3, views)] == ["Yellow"]


# --- 9: cancel, scene close, button states ---------------------------------------------------------------


def test_cancel_acts_at_once_even_while_the_work_reports_no_progress():
    processing = Processing()
    release, started = threading.Event(), threading.Event()

    def load_model_silently(progress):  # model loading and the ONNX export report no progress
        started.set()
        release.wait(10)
        return "a result nobody asked for any more"

    try:
        processing.start("segment", load_model_silently, "segmenting", context="ctx")
        assert started.wait(10)
        assert processing.stop(abandon=True) == ("segment", "ctx")
        assert not processing.busy and processing.poll() is None  # idle again at once
        release.set()
        follow = processing.start("suggest", lambda progress: "next", "suggesting")
        assert follow.wait(10)
        assert processing.poll()[0:1] == ("suggest",)  # the abandoned result never comes back
    finally:
        processing.shutdown()


def test_stop_without_abandon_waits_for_the_next_progress_report():
    processing = Processing()
    step = threading.Event()

    def train(progress):
        progress("fine-tuning epoch 1/2", 0, 2)
        step.wait(10)
        progress("fine-tuning epoch 1/2", 1, 2)
        return "finished"

    try:
        job = processing.start("finetune", train, "fine-tuning")
        processing.stop()
        assert processing.busy and processing.kind == "finetune"
        step.set()
        assert job.wait(10)
        kind, finished, _ = processing.poll()
        assert kind == "finetune" and finished.state == "cancelled"
        with pytest.raises(RuntimeError, match="is running"):
            processing.start("segment", lambda progress: None)
            processing.start("segment", lambda progress: None)
    finally:
        processing.shutdown()


def test_a_result_arriving_after_a_scene_close_is_not_written(app, volume_node):
    logic = MedSegAdaptLogic()
    output = app.new_segmentation("Out")
    outcome, request = model_result(logic, volume_node, roi_from_box(BOX, volume_node))
    app.scene.Clear(0)  # File > Close scene while the model ran
    with pytest.raises(InputError, match="no longer in the scene; the result was not written"):
        logic.apply(outcome, request, volume_node, output)
    assert output.GetSegmentation().GetNumberOfSegments() == 0
    assert app.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_a_created_but_unplaced_roi_is_no_prompt(app, volume_node):
    roi = app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")  # "Create new ROI" in the selector
    inputs = PanelInputs(volume=volume_node, segmentation=app.new_segmentation(), roi=roi, structure="right lung")
    enabled, tip = ready_actions(inputs)["segment"]
    assert not enabled and "place an ROI" in tip
    with pytest.raises(InputError, match="No prompt"):
        MedSegAdaptLogic().prepare(volume_node, "right lung", roi_node=roi)
    roi_from_box(BOX, volume_node, roi_node=roi)  # placed
    assert ready_actions(inputs)["segment"][0]
    points = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    assert not ready_actions(PanelInputs(volume=volume_node, segmentation=inputs.segmentation, points=points,
                                         structure="right lung"))["segment"][0]


def test_store_actions_wait_while_fine_tuning_holds_the_store(app, volume_node):
    inputs = PanelInputs(volume=volume_node, segmentation=app.new_segmentation(), store_path="/data/store",
                         case_id="c1", annotator="dr_a", correction_segment="right lung", review_selected=True,
                         reviewer="dr_b", environment="pediatric")
    idle = ready_actions(inputs)
    assert all(idle[a][0] for a in ("submit", "accept", "reject", "finetune", "generate", "preview"))
    for running in ("finetune", "generate"):
        inputs.running = running
        busy = ready_actions(inputs)
        assert not any(busy[a][0] for a in ("submit", "accept", "reject")), running
        assert busy[running][0] and not busy["segment"][0]  # the running one stops; the others wait
    inputs.running = "segment"
    assert not ready_actions(inputs)["submit"][0] and ready_actions(inputs)["accept"][0]

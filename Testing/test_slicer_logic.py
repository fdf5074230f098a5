"""The module's Logic on a real MRML scene (slicer-core): conversions, segmentation, suggestions,
corrections, fine-tuning with its plot nodes, and review.

CTChest4 and its Slicer segmentation are loaded through Slicer's own storage nodes and compared
with what MedSegAdaptLib reads from the same files.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as label_components

try:
    import slicer
    import vtk
    from slicer import vtkMRMLScene, vtkSlicerSegmentationsModuleLogic  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"slicer-core is not installed ({error}); pip install slicer-core to test the module Logic",
        allow_module_level=True,
    )

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegAdapt"))

from MedSegAdaptLogic.logic import MedSegAdaptLogic  # noqa: E402
from MedSegAdaptLogic.scene import (  # noqa: E402
    box_from_roi,
    fiducials_from_points,
    geometry_from_volume_node,
    label_arrays_from_node,
    points_from_node,
    roi_from_box,
    segment_mask,
    segment_terminology,
    segmentation_from_node,
    set_segment_mask,
    slice_position_ras,
    training_history_chart,
    training_history_table,
    volume_from_node,
    volume_to_node,
)
from MedSegAdaptLogic.worker import Job, SegmentationCancelled, Worker, progress_text  # noqa: E402
from slicer_scene import make_scene  # noqa: E402

from MedSegAdaptLib.core.errors import InputError  # noqa: E402
from MedSegAdaptLib.evaluation.metrics import dice  # noqa: E402
from MedSegAdaptLib.inference import Box3D, Point3D  # noqa: E402
from MedSegAdaptLib.io import (  # noqa: E402
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    default_color,
    read_segmentation,
    read_volume,
    standard_terminology,
)
from MedSegAdaptLib.store import FineTuningStore  # noqa: E402


def _ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own IJKToRAS matrix as numpy (what Slicer shows in the Volumes module)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def reference():
    """CTChest4 and its segmentation as MedSegAdaptLib reads them (no Slicer involved)."""
    return read_volume(ctchest4_volume_path()), read_segmentation(ctchest4_segmentation_path())


@pytest.fixture()
def segmentation_node(app):
    return app.load_segmentation(ctchest4_segmentation_path(), "Reference")


# --- volumes ---------------------------------------------------------------------------------------


def test_volume_node_equals_read_volume(volume_node, reference):
    volume, _ = reference
    converted = volume_from_node(volume_node)
    assert converted.array.dtype == volume.array.dtype
    assert converted.array.shape == volume.array.shape == (128, 128, 34)
    np.testing.assert_array_equal(converted.array, volume.array)
    assert converted.geometry.matches(volume.geometry, atol=1e-6), converted.geometry.describe_mismatch(
        volume.geometry, atol=1e-6
    )
    assert converted.path == str(ctchest4_volume_path())


def test_volume_geometry_is_lps_with_ijk_direction_columns(volume_node):
    geometry = geometry_from_volume_node(volume_node)
    ijk_to_ras = _ijk_to_ras(volume_node)
    # Voxel (3, 5, 7) lands on the same physical point in both conventions (L = -R, P = -A).
    ras = ijk_to_ras @ np.array([3, 5, 7, 1.0])
    lps = geometry.ijk_to_lps() @ np.array([3, 5, 7, 1.0])
    np.testing.assert_allclose(lps[:3], [-ras[0], -ras[1], ras[2]], atol=1e-6)


def test_volume_under_linear_transform_gets_world_geometry(app, volume_node):
    before = geometry_from_volume_node(volume_node)
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm towards Right (= -10 in L)
    matrix.SetElement(2, 3, 5.0)  # 5 mm Superior
    transform.SetMatrixTransformToParent(matrix)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    after = geometry_from_volume_node(volume_node)
    np.testing.assert_allclose(np.subtract(after.origin, before.origin), [-10.0, 0.0, 5.0], atol=1e-6)
    assert after.spacing == pytest.approx(before.spacing)


def test_volume_to_node_round_trip(app, reference):
    volume, _ = reference
    node = volume_to_node(volume, app.scene, "Copy")
    back = volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.geometry.matches(volume.geometry, atol=1e-6)


def test_volume_node_without_image_is_refused(app):
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="Empty has no image data"):
        volume_from_node(empty)


# --- segmentations ---------------------------------------------------------------------------------


def test_segmentation_node_label_arrays_equal_read_segmentation(volume_node, segmentation_node, reference):
    _, segmentation = reference
    arrays = label_arrays_from_node(segmentation_node, volume_node)
    assert list(arrays) == segmentation.names()
    for segment in segmentation.segments:
        assert arrays[segment.name].dtype == bool
        np.testing.assert_array_equal(arrays[segment.name], segment.mask, err_msg=segment.name)
        assert segment.mask.any()


def test_segmentation_node_keeps_colour_and_terminology(volume_node, segmentation_node, reference):
    _, segmentation = reference
    converted = segmentation_from_node(segmentation_node, volume_node)
    for segment in segmentation.segments:
        mine = converted.get(segment.name)
        assert mine.color == pytest.approx(segment.color, abs=1e-6)
        assert mine.terminology == segment.terminology


def test_new_segment_gets_standard_terminology_in_slicer_format(app, volume_node, segmentation_node, reference):
    _, segmentation = reference
    target = app.new_segmentation("Out")
    segment_id = set_segment_mask(target, "right lung", segmentation.get("right lung").mask, volume_node)
    segment = target.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "right lung"
    assert tuple(segment.GetColor()) == pytest.approx(default_color("right lung"), abs=1e-6)
    assert segment_terminology(segment) == standard_terminology("right lung")
    # Byte for byte the tag Slicer itself wrote into Segmentation.seg.nrrd for this structure.
    tag_name = segment.GetTerminologyEntryTagName()
    mine, slicers = vtk.reference(""), vtk.reference("")
    original = segmentation_node.GetSegmentation()
    original_segment = original.GetSegment(original.GetSegmentIdBySegmentName("right lung"))
    assert segment.GetTag(tag_name, mine) and original_segment.GetTag(tag_name, slicers)
    assert str(mine) == str(slicers)


def test_set_segment_mask_round_trip_and_replace(app, volume_node, reference):
    _, segmentation = reference
    target = app.new_segmentation("Out")
    lung = segmentation.get("left lung").mask
    segment_id = set_segment_mask(target, "left lung", lung, volume_node)
    np.testing.assert_array_equal(segment_mask(target, segment_id, volume_node), lung)

    smaller = np.zeros_like(lung)
    smaller[40:60, 40:60, 10:14] = True
    again = set_segment_mask(target, "Left Lung", smaller, volume_node)
    assert again == segment_id
    assert target.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(segment_mask(target, segment_id, volume_node), smaller)

    added = set_segment_mask(target, "left lung", lung, volume_node, replace=False)
    assert added != segment_id
    assert target.GetSegmentation().GetNumberOfSegments() == 2


def test_overlapping_segments_stay_separate(app, volume_node, reference):
    _, segmentation = reference
    target = app.new_segmentation("Overlap")
    lung = segmentation.get("right lung").mask
    box = np.zeros_like(lung)
    box[50:80, 50:80, 10:20] = True
    set_segment_mask(target, "right lung", lung, volume_node)
    set_segment_mask(target, "box", box, volume_node)
    assert (lung & box).any()
    arrays = label_arrays_from_node(target, volume_node)
    np.testing.assert_array_equal(arrays["right lung"], lung)
    np.testing.assert_array_equal(arrays["box"], box)


def test_empty_segment_is_an_empty_mask(app, volume_node):
    target = app.new_segmentation("Empty")
    segment_id = target.GetSegmentation().AddEmptySegment("", "nothing")
    mask = segment_mask(target, segment_id, volume_node)
    assert mask.shape == (128, 128, 34) and not mask.any()


def test_wrong_mask_shape_is_refused(app, volume_node):
    with pytest.raises(InputError, match="expected the reference volume's"):
        set_segment_mask(app.new_segmentation(), "right lung", np.zeros((10, 10, 10), bool), volume_node)


# --- prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["right lung", "left lung", "thoracic vertebral column"])
def test_roi_from_reference_box_maps_back(volume_node, reference, structure):
    _, segmentation = reference
    box = Box3D.around(segmentation.get(structure).mask, margin=2)
    roi = roi_from_box(box, volume_node)
    assert box_from_roi(roi, volume_node) == box
    # The ROI covers the boxed voxels to their outer faces, in world RAS.
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    ijk_to_ras = _ijk_to_ras(volume_node)
    corners = np.array([np.array(box.lo) - 0.5, np.array(box.hi) + 0.5])
    ras = (ijk_to_ras @ np.c_[corners, np.ones(2)].T)[:3].T
    np.testing.assert_allclose(bounds[0::2], ras.min(axis=0), atol=1e-4)
    np.testing.assert_allclose(bounds[1::2], ras.max(axis=0), atol=1e-4)


def test_roi_partly_outside_is_clipped_and_outside_refused(app, volume_node):
    roi = app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    ijk_to_ras = _ijk_to_ras(volume_node)
    center = (ijk_to_ras @ np.array([0.0, 64.0, 17.0, 1.0]))[:3]
    roi.SetXYZ(*center)
    roi.SetRadiusXYZ(3.04687595 * 10.2, 3.04687595 * 5.2, 10.0 * 2.2)
    box = box_from_roi(roi, volume_node)
    assert box.lo[0] == 0 and box.hi[0] == 10
    assert (box.lo[1], box.hi[1]) == (59, 69) and (box.lo[2], box.hi[2]) == (15, 19)

    roi.SetXYZ(*(ijk_to_ras @ np.array([-50.0, 64.0, 17.0, 1.0]))[:3])
    with pytest.raises(InputError, match="does not contain any voxel"):
        box_from_roi(roi, volume_node)


def test_points_map_to_voxels(volume_node):
    points = [Point3D((10, 20, 5)), Point3D((100, 64, 30)), Point3D((127, 127, 33))]
    node = fiducials_from_points(points, volume_node)
    assert points_from_node(node, volume_node) == points
    assert [p.label for p in points_from_node(node, volume_node, label=0)] == [0, 0, 0]


def test_point_outside_volume_is_refused(app, volume_node):
    node = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    node.AddControlPointWorld(vtk.vtkVector3d(5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="outside"):
        points_from_node(node, volume_node)


def test_prepare_needs_a_prompt_and_a_structure(volume_node):
    logic = MedSegAdaptLogic()
    with pytest.raises(InputError, match="No prompt"):
        logic.prepare(volume_node, "right lung")
    with pytest.raises(InputError, match="No structure"):
        logic.prepare(volume_node, "  ")


# --- slices ----------------------------------------------------------------------------------------


def test_slice_position_is_the_slice_centre_in_world_ras(app, volume_node):
    ras_to_ijk = np.linalg.inv(_ijk_to_ras(volume_node))
    position = slice_position_ras(volume_node, "k", 17)
    np.testing.assert_allclose((ras_to_ijk @ np.append(position, 1.0))[:3], [63.5, 63.5, 17.0], atol=1e-6)
    sagittal = slice_position_ras(volume_node, "I", 0)
    np.testing.assert_allclose((ras_to_ijk @ np.append(sagittal, 1.0))[:3], [0.0, 63.5, 16.5], atol=1e-6)
    # Under a transform the slice is shown where the transform puts it.
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    matrix.SetElement(2, 3, 5.0)
    transform.SetMatrixTransformToParent(matrix)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(np.subtract(slice_position_ras(volume_node, 2, 17), position), [10.0, 0.0, 5.0],
                               atol=1e-6)
    with pytest.raises(InputError, match=r"slice 34 along k is outside CTChest4; expected 0\.\.33"):
        slice_position_ras(volume_node, "k", 34)
    with pytest.raises(InputError, match="axis 'x' is not a volume axis"):
        slice_position_ras(volume_node, "x", 1)


# --- segmentation with the real weights ------------------------------------------------------------


@pytest.fixture(scope="module")
def logic(embeddings):
    """One Logic for the module: the backbone loads once and is kept; slices come from the session's cache."""
    logic = MedSegAdaptLogic(device="cpu")
    logic.embedding_cache = embeddings
    return logic


@pytest.mark.slow
def test_segment_right_lung_from_roi(app, logic, volume_node, reference):
    _, segmentation = reference
    truth = segmentation.get("right lung").mask
    roi = roi_from_box(Box3D.around(truth, margin=2), volume_node)
    output = app.new_segmentation("MedSegAdapt")
    stages = []
    segment_id = logic.segment(volume_node, output, "right lung", roi_node=roi,
                               progress=lambda stage, done, total: stages.append(stage))
    segment = output.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "right lung"
    assert segment_terminology(segment) == standard_terminology("right lung")
    mask = segment_mask(output, segment_id, volume_node)
    score = dice(mask, truth)
    print(f"Dice right lung through the Logic: {score:.3f}")
    assert score >= 0.85
    assert stages, "the progress callback was never called"
    # Same backbone object reused on the next call.
    assert logic.segmenter() is logic.segmenter()


@pytest.mark.slow
def test_segment_from_a_report_names_the_segment(app, logic, volume_node, reference):
    _, segmentation = reference
    truth = segmentation.get("left lung").mask
    roi = roi_from_box(Box3D.around(truth, margin=2), volume_node)
    output = app.new_segmentation("MedSegAdapt report")
    segment_id = logic.segment(volume_node, output, "", roi_node=roi,
                               report="LEFT LUNG: no nodule, no effusion. Right lung clear.")
    segment = output.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "left lung"
    assert logic.last_outcome.report.structure == "left lung"
    assert dice(segment_mask(output, segment_id, volume_node), truth) >= 0.78


@pytest.mark.slow
def test_a_lesion_is_one_component_with_its_measurements_in_the_segment_tags(app, logic, clinical):
    case, volume, truth = clinical["brain2"]
    node = volume_to_node(volume, app.scene, "brain2")
    output = app.new_segmentation("MedSegAdapt lesion")
    segment_id = logic.segment(node, output, case.structure, roi_node=roi_from_box(Box3D.around(truth, 2), node))
    mask = segment_mask(output, segment_id, node)
    assert dice(mask, truth) > 0.3
    assert label_components(mask, connectivity=3).max() == 1
    measured = logic.last_measurement
    assert measured.volume_ml == pytest.approx(mask.sum() * np.prod(volume.geometry.spacing) / 1000)
    segment = output.GetSegmentation().GetSegment(segment_id)
    for key, value in measured.as_tags().items():
        text = vtk.reference("")
        assert segment.GetTag(key, text) and str(text) == value
    assert 5 < measured.longest_axial_diameter_mm < 40  # a 15 mm lesion


@pytest.mark.slow
def test_cancel_from_progress_stops_segmentation(app, logic, volume_node, reference):
    _, segmentation = reference
    roi = roi_from_box(Box3D.around(segmentation.get("left lung").mask, margin=2), volume_node)
    output = app.new_segmentation("Cancelled")

    def cancel(stage, done, total):
        raise SegmentationCancelled("stop")

    with pytest.raises(SegmentationCancelled):
        logic.segment(volume_node, output, "left lung", roi_node=roi, progress=cancel)
    assert output.GetSegmentation().GetNumberOfSegments() == 0


# --- suggestions -----------------------------------------------------------------------------------

LEFT_LUNG_BOX = Box3D((11, 30, 15), (68, 98, 19))  # 5 axial slices of the left lung


def test_prepare_suggestion_checks_its_inputs(volume_node):
    logic = MedSegAdaptLogic()
    with pytest.raises(InputError, match="No input volume"):
        logic.prepare_suggestion(None, "left lung", 3)
    with pytest.raises(InputError, match="No structure"):
        logic.prepare_suggestion(volume_node, " ", 3)
    with pytest.raises(InputError, match="budget 0 is not a number of slices"):
        logic.prepare_suggestion(volume_node, "left lung", 0)
    with pytest.raises(InputError, match="axis 'x'"):
        logic.prepare_suggestion(volume_node, "left lung", 3, axis="x")
    with pytest.raises(InputError, match="Cannot rank slices for 'speed'; expected one of training, correction"):
        logic.prepare_suggestion(volume_node, "left lung", 3, purpose="speed")
    roi = roi_from_box(LEFT_LUNG_BOX, volume_node)
    request = logic.prepare_suggestion(volume_node, " Left lung ", 4, store_path="  ", case_id="", roi_node=roi,
                                       axis=2)
    assert (request.structure, request.budget, request.store_path, request.case_id, request.axis,
            request.purpose) == ("Left lung", 4, None, None, "k", "training")
    assert request.box == LEFT_LUNG_BOX and request.points == []
    np.testing.assert_array_equal(request.volume.array, volume_from_node(volume_node).array)


def test_suggest_refuses_a_volume_that_is_not_the_store_case(tmp_path, app, volume_node, reference):
    volume, _ = reference
    store_path = tmp_path / "store"
    with FineTuningStore.init(store_path) as store:
        store.add_image(volume, "chest4", modality="ct")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="The volume is not the image of case 'chest4'"):
        MedSegAdaptLogic().suggest(volume_node, "left lung", 2, str(store_path), "Chest4")


@pytest.mark.slow
def test_suggest_from_an_roi_ranks_slices_of_the_box(tmp_path, logic, volume_node):
    roi = roi_from_box(LEFT_LUNG_BOX, volume_node)
    new_store = tmp_path / "new store"
    new_store.mkdir()
    stages = []
    # An empty store folder: nothing annotated yet, so the volume itself is scored.
    suggestions = logic.suggest(volume_node, "left lung", 3, str(new_store), "chest4", roi_node=roi,
                                progress=lambda stage, done, total: stages.append(stage))
    print("\n".join(f"{s.axis}:{s.index} score {s.score:.2f} DKD {s.dkd:.2f} ASD {s.asd:.2f}  {s.reason}"
                    for s in suggestions))
    assert sorted(s.index for s in suggestions) == [16, 17, 18]  # spread evenly between the box's ends 15 and 19
    assert all("spreads labels evenly between slices 15 and 19" in s.reason for s in suggestions)
    assert all(s.axis == "k" and s.case_id == "chest4" and s.reason for s in suggestions)
    assert all(0.0 <= s.dkd <= 1.0 and 0.0 <= s.asd <= 1.0 for s in suggestions)
    assert [s.score for s in suggestions] == sorted((s.score for s in suggestions), reverse=True)
    assert "scoring slices" in stages
    assert not any(new_store.iterdir()), "suggesting must not create a store"
    # For correction, the ends of the prediction count in full: the box's end slices 15 and 19 lose no weight.
    ends = {s.index: s for s in logic.suggest(volume_node, "left lung", 5, roi_node=roi, purpose="correction")}
    assert all(s.components["presence"] == 1.0 for s in ends.values())
    weighted = {s.index: s for s in logic.suggest(volume_node, "left lung", 5, roi_node=roi)}
    assert weighted[15].components["presence"] < 1.0 and weighted[19].components["presence"] < 1.0


@pytest.mark.slow
def test_suggest_from_the_store_skips_annotated_slices(tmp_path, app, logic, volume_node, reference):
    _, segmentation = reference
    label = segmentation.get("left lung").mask.copy()
    label[:, :, [k for k in range(label.shape[2]) if not 16 <= k <= 18]] = False
    corrections = app.new_segmentation("Corrections")
    set_segment_mask(corrections, "left lung", label, volume_node)
    store_path = str(tmp_path / "store")
    logic.submit_correction(volume_node, corrections, "left lung", store_path, "chest4", "dr_a", slices={"k": [16, 18]})
    # No ROI: the box comes from the stored correction (its extent 16..18 plus 2 slices).
    suggestions = logic.suggest(volume_node, "left lung", 3, store_path, "CHEST4")
    indices = [s.index for s in suggestions]
    assert len(indices) == 3 and not {16, 18} & set(indices)
    assert all(14 <= k <= 20 for k in indices)
    assert {s.case_id for s in suggestions} == {"chest4"}


# --- corrections -----------------------------------------------------------------------------------


def test_submitted_correction_reads_back_identical(tmp_path, app, volume_node, segmentation_node, reference):
    volume, segmentation = reference
    store_path = tmp_path / "store"
    logic = MedSegAdaptLogic()
    # The annotator's edit: the reference right lung with two slices cleared.
    edited = segmentation.get("right lung").mask.copy()
    edited[:, :, 12:14] = False
    corrections = app.new_segmentation("Corrections")
    set_segment_mask(corrections, "right lung", edited, volume_node)

    first = logic.submit_correction(volume_node, corrections, "Right Lung", str(store_path), "chest4", "dr_a",
                                    slices={"k": [12, 13, 20]})
    assert (first.case_id, first.structure, first.version, first.kind) == ("chest4", "right lung", 1, "correction")
    assert first.annotator == "dr_a"
    assert first.annotated_slices == {"k": [12, 13, 20]}
    assert first.voxels == int(edited.sum())
    stored = read_volume(first.file)
    np.testing.assert_array_equal(stored.array != 0, edited)
    assert stored.geometry.matches(volume.geometry, atol=1e-6)

    # A second submission is a new version; the first stays as it was.
    set_segment_mask(corrections, "right lung", segmentation.get("right lung").mask, volume_node)
    second = logic.submit_correction(volume_node, corrections, "right lung", str(store_path), "chest4", "dr_b")
    history = logic.history(str(store_path), "chest4", "right lung")
    assert [(v.version, v.annotator) for v in history] == [(1, "dr_a"), (2, "dr_b")]
    assert history[0].file == first.file and history[1].file == second.file
    np.testing.assert_array_equal(read_volume(first.file).array != 0, edited)
    np.testing.assert_array_equal(read_volume(second.file).array != 0, segmentation.get("right lung").mask)
    # The case image in the store is CTChest4 itself.
    with FineTuningStore(store_path) as store:
        case = store.case("chest4")
        np.testing.assert_array_equal(read_volume(case.image).array, volume.array)


def test_submit_unknown_segment_names_the_available_ones(tmp_path, volume_node, segmentation_node):
    with pytest.raises(InputError, match="available: 'ribs'"):
        MedSegAdaptLogic().submit_correction(volume_node, segmentation_node, "liver", str(tmp_path / "s"),
                                             "c1", "dr_a")
    assert not (tmp_path / "s").exists()


# --- fine-tuning -----------------------------------------------------------------------------------

HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "val_dice": None, "seconds": 1.0},
    {"epoch": 2, "train_loss": 0.5, "val_dice": 0.71, "seconds": 1.0},
    {"epoch": 3, "train_loss": 0.25, "val_dice": 0.8, "seconds": 1.0},
]
TINY = {"epochs": 2, "batch_size": 2, "min_steps_per_epoch": 2}


def _table_rows(table_node) -> list[list[float]]:
    table = table_node.GetTable()
    return [[table.GetValueByName(row, column).ToDouble() for column in ("epoch", "loss", "validation Dice")]
            for row in range(table.GetNumberOfRows())]


def _rows_of(history: list[dict]) -> list[list[float]]:
    return [[r["epoch"], r["train_loss"], math.nan if r["val_dice"] is None else r["val_dice"]] for r in history]


def _assert_rows_equal(table_node, history):
    np.testing.assert_allclose(_table_rows(table_node), _rows_of(history), rtol=1e-12)  # NaN == NaN here


def test_training_history_table_and_chart_follow_the_epochs(app):
    table_node = training_history_table(HISTORY[:2], app.scene)
    assert table_node.IsA("vtkMRMLTableNode")
    assert [table_node.GetColumnName(i) for i in range(table_node.GetNumberOfColumns())] == [
        "epoch", "loss", "validation Dice"]
    _assert_rows_equal(table_node, HISTORY[:2])
    assert math.isnan(_table_rows(table_node)[0][2])
    chart = training_history_chart(table_node)
    assert chart.IsA("vtkMRMLPlotChartNode")
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [(s.GetTableNodeID(), s.GetXColumnName(), s.GetYColumnName()) for s in series] == [
        (table_node.GetID(), "epoch", "loss"), (table_node.GetID(), "epoch", "validation Dice")]
    assert all(s.IsA("vtkMRMLPlotSeriesNode") and s.GetScene() is app.scene for s in series)
    # The next epoch refills the same nodes: one more row, still two series.
    assert training_history_table(HISTORY, app.scene, table_node) is table_node
    _assert_rows_equal(table_node, HISTORY)
    assert training_history_chart(table_node, chart) is chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert app.scene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 2


def test_fine_tune_options_and_bad_inputs(tmp_path):
    logic = MedSegAdaptLogic()
    assert logic.fine_tune_options(3, "all").priors == ("location", "texture", "shape", "semantic")
    options = logic.fine_tune_options(5, " location, Shape ", batch_size=4)
    assert (options.epochs, options.priors, options.batch_size) == (5, ("location", "shape"), 4)
    assert logic.fine_tune_options().priors == ()
    with pytest.raises(InputError, match="unknown priors colour"):
        logic.fine_tune_options(2, "colour")
    with pytest.raises(InputError, match="epochs must be at least 1"):
        logic.fine_tune_options(0)
    with pytest.raises(InputError, match="No output checkpoint"):
        logic.fine_tune(str(tmp_path), " ")
    with pytest.raises(InputError, match="not a MedSegAdapt fine-tuning store"):
        logic.fine_tune(str(tmp_path), str(tmp_path / "out.pt"))
    with pytest.raises(InputError, match="No fine-tuning store folder given"):
        logic.fine_tune("", str(tmp_path / "out.pt"))
    assert logic.default_checkpoint_path(str(tmp_path / "store")) == str(tmp_path / "store-finetuned.pt")


def test_segmenter_reloads_when_its_checkpoint_file_changes(tmp_path, monkeypatch):
    loaded = []

    class Backbone:
        spec = type("Spec", (), {"name": "stub"})

    def load_backbone(checkpoint=None, device=None, for_inference=False):
        loaded.append(checkpoint)
        return Backbone()

    monkeypatch.setattr("MedSegAdaptLib.models.load_backbone", load_backbone)
    checkpoint = tmp_path / "finetuned.pt"
    checkpoint.write_bytes(b"epoch 1")
    logic = MedSegAdaptLogic(str(checkpoint), device="cpu")
    first = logic.segmenter()
    assert logic.segmenter() is first and len(loaded) == 1
    assert first.cache is logic.embedding_cache
    written = os.stat(checkpoint).st_mtime_ns
    os.utime(checkpoint, ns=(written + 10**9, written + 10**9))  # fine-tuning wrote the next epoch into it
    assert logic.segmenter() is not first and loaded == [str(checkpoint)] * 2


@pytest.fixture(scope="module")
def finetune_store(tmp_path_factory, reference):
    """A store with a correction of the left lung on two axial slices, submitted through the Logic."""
    app = make_scene()
    volume_node = app.load_volume(ctchest4_volume_path(), "CTChest4")
    corrections = app.new_segmentation("Corrections")
    set_segment_mask(corrections, "left lung", reference[1].get("left lung").mask, volume_node)
    path = tmp_path_factory.mktemp("finetune") / "store"
    MedSegAdaptLogic().submit_correction(volume_node, corrections, "left lung", str(path), "chest4", "dr_a",
                                         slices={"k": [17, 23]})
    return str(path)


@pytest.mark.slow
def test_fine_tune_on_the_worker_reports_epochs_and_plots_them(tmp_path, app, logic, finetune_store):
    from MedSegAdaptLib.models.checkpoint import load_checkpoint

    output = tmp_path / "finetuned.pt"
    records: list[dict] = []
    worker = Worker()
    try:
        job = worker.submit(lambda progress: logic.fine_tune(finetune_store, str(output), logic.fine_tune_options(**TINY),
                                                             progress, records.append), "fine-tuning")
        assert job.wait(300)
    finally:
        worker.stop()
    assert job.state == "done", job.error
    result = job.result
    assert [r["epoch"] for r in records] == [1, 2] and result.history == records
    assert progress_text(job.stage, job.done, job.total) == "Epoch 2/2, step 2/2"
    table_node = training_history_table(records, app.scene)
    _assert_rows_equal(table_node, result.history)
    assert records[1]["train_loss"] < records[0]["train_loss"]
    checkpoint = load_checkpoint(output)
    assert checkpoint["epoch"] == 2 and checkpoint["structures"] == ["left lung"]


@pytest.mark.slow
def test_stopping_fine_tuning_keeps_the_last_completed_epoch(tmp_path, logic, finetune_store):
    from MedSegAdaptLib.models.checkpoint import load_checkpoint

    stopped, never = tmp_path / "stopped.pt", tmp_path / "never.pt"
    jobs: list[Job] = []
    worker = Worker()

    def stop_at_once(progress):
        jobs[1].cancel()  # Stop pressed while the model loads: the first progress report raises
        return logic.fine_tune(finetune_store, str(never), logic.fine_tune_options(**TINY), progress)

    try:
        jobs.append(worker.submit(lambda progress: logic.fine_tune(
            finetune_store, str(stopped), logic.fine_tune_options(**TINY), progress,
            on_epoch=lambda record: jobs[0].cancel()), "fine-tuning"))  # Stop pressed during epoch 1's save
        jobs.append(worker.submit(stop_at_once, "fine-tuning"))
        assert jobs[1].wait(300)
    finally:
        worker.stop()
    assert [job.state for job in jobs] == ["cancelled", "cancelled"]
    assert isinstance(jobs[0].error, SegmentationCancelled)
    checkpoint = load_checkpoint(stopped)
    assert checkpoint["epoch"] == 1 and [r["epoch"] for r in checkpoint["metrics"]["history"]] == [1]
    assert not never.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.pt"], "no temporary file left behind"


# --- environment adaptation ------------------------------------------------------------------------


def test_environments_are_listed_with_their_defaults():
    listing = MedSegAdaptLogic.environments()
    assert [e["name"] for e in listing] == ["low-dose-ct", "high-res-ct", "varying-field-mri", "pediatric", "pathology"]
    assert all(e["description"] and e["parameters"] for e in listing)
    with pytest.raises(InputError, match="Unknown environment 'ultrasound'"):
        MedSegAdaptLogic().generate_environment_samples("unused", "ultrasound", 1)


@pytest.mark.slow
def test_semi_supervised_fine_tuning_then_environment_samples_on_the_worker(tmp_path, finetune_store, embeddings):
    """The Adapt panel's path: semi-supervised fine-tuning, then samples of a new environment pseudo-labelled
    by the fine-tuned model with the packaged LiteMedSAM in the ensemble."""
    store_path = tmp_path / "store"
    shutil.copytree(finetune_store, store_path)
    logic = MedSegAdaptLogic(device="cpu")
    logic.embedding_cache = embeddings
    assert logic.pretrained_segmenter() is None  # the packaged model has no other reference
    checkpoint = tmp_path / "finetuned.pt"
    result = logic.fine_tune(str(store_path), str(checkpoint), logic.fine_tune_options(**TINY, semi_supervised=True))
    counts = result.pseudo_labels.counts()
    assert counts["candidates"] > counts["accepted"] > 0, counts  # some unannotated slices trusted, not all
    logic.configure(checkpoint=str(checkpoint))
    pretrained = logic.pretrained_segmenter()
    assert pretrained is not None and pretrained.backbone is not logic.segmenter().backbone
    assert pretrained.cache is logic.embedding_cache
    worker = Worker()
    try:
        job = worker.submit(lambda progress: logic.generate_environment_samples(
            str(store_path), "pediatric", 1, labels="pseudo", progress=progress), "generating samples")
        assert job.wait(600)
    finally:
        worker.stop()
    assert job.state == "done", job.error
    assert progress_text(job.stage, job.done, job.total).endswith("1/1")
    (label,) = job.result
    assert label.structure == "left lung" and label.accepted == label.validation.passed
    assert logic.summarize_samples(job.result)["left lung"]["generated"] == 1
    queued = {queued.label_id for queued in logic.review_queue(str(store_path))}
    assert (label.label_id in queued) == (not label.accepted)
    stored = logic.history(str(store_path), label.case_id)
    assert [(v.kind, v.annotator) for v in stored] == [("synthetic", "medsegadapt-adapt")]


# --- review ----------------------------------------------------------------------------------------


def test_review_queue_accept_reject_and_preview(tmp_path, app, reference):
    volume, segmentation = reference
    store_path = str(tmp_path / "store")
    left, ribs = segmentation.get("left lung").mask, segmentation.get("ribs").mask
    with FineTuningStore.init(store_path) as store:
        store.add_image(volume, "chest4", modality="ct")
        correction = store.submit_mask("chest4", "right lung", segmentation.get("right lung").mask, "dr_a")
        synthetic = store.submit_mask("chest4", "left lung", left, "low-dose-ct", kind="synthetic",
                                      comment="low-dose variant")
        pseudo = store.submit_mask("chest4", "ribs", ribs, "model", kind="pseudo-label",
                                   annotated_slices={"k": [10, 11]})
    logic = MedSegAdaptLogic()
    queue = logic.review_queue(store_path)
    assert [(v.label_id, v.kind, v.review_status) for v in queue] == [
        (synthetic.label_id, "synthetic", "pending"), (pseudo.label_id, "pseudo-label", "pending")]

    image_node, label_node = logic.preview_label(store_path, synthetic.label_id, app.scene)
    shown = volume_from_node(image_node)
    np.testing.assert_array_equal(shown.array, volume.array)
    assert shown.geometry.matches(volume.geometry, atol=1e-6)
    arrays = label_arrays_from_node(label_node, image_node)
    assert list(arrays) == ["left lung"]
    np.testing.assert_array_equal(arrays["left lung"], left)
    assert image_node.GetScene() is app.scene and label_node.GetScene() is app.scene

    accepted = logic.review(store_path, synthetic.label_id, True, "dr_b", "looks right")
    assert accepted.review_status == "accepted" and accepted.trains and accepted.reviews[-1].comment == "looks right"
    assert [v.label_id for v in logic.review_queue(store_path)] == [pseudo.label_id]
    rejected = logic.review(store_path, pseudo.label_id, False, "dr_b")
    assert rejected.review_status == "rejected" and not rejected.trains
    assert logic.review_queue(store_path) == []
    assert len(logic.review_queue(store_path, include_reviewed=True)) == 2
    with FineTuningStore(store_path) as store:
        assert sorted(row.structure for row in store.training_view()) == ["left lung", "right lung"]

    with pytest.raises(InputError, match="which is not reviewed"):
        logic.review(store_path, correction.label_id, True, "dr_b")
    with pytest.raises(InputError, match="No label with id 99"):
        logic.preview_label(store_path, 99, app.scene)
    with pytest.raises(InputError, match="No fine-tuning store folder given"):
        logic.review_queue(" ")
    with pytest.raises(InputError, match="not a MedSegAdapt fine-tuning store"):
        logic.review_queue(str(tmp_path))


# --- worker thread ---------------------------------------------------------------------------------


def test_worker_runs_jobs_in_order_and_reports_errors():
    worker = Worker()
    try:
        order = []
        first = worker.submit(lambda progress: order.append(1) or "one")
        failing = worker.submit(lambda progress: 1 / 0)
        third = worker.submit(lambda progress: order.append(3) or threading.current_thread().name)
        assert third.wait(10)
        assert (first.state, first.result) == ("done", "one")
        assert failing.state == "failed" and isinstance(failing.error, ZeroDivisionError)
        assert third.state == "done" and third.result == "MedSegAdaptWorker"
        assert order == [1, 3]
    finally:
        worker.stop()
    assert not worker.alive


def test_worker_job_cancels_at_next_progress_report():
    worker = Worker()
    try:
        started = threading.Event()
        release = threading.Event()

        def work(progress):
            progress("encoding slices", 0, 10)
            started.set()
            release.wait(10)
            progress("encoding slices", 1, 10)  # raises once cancelled
            return "finished"

        job = worker.submit(work, "test")
        assert started.wait(10)
        assert job.state == "running" and (job.stage, job.done, job.total) == ("encoding slices", 0, 10)
        job.cancel()
        release.set()
        assert job.wait(10)
        assert job.state == "cancelled" and job.result is None
        assert isinstance(job.error, SegmentationCancelled)
    finally:
        worker.stop()


def test_progress_text():
    assert progress_text("encoding slices", 3, 34) == "Encoding slices 3/34"
    assert progress_text("propagating", 0, 0) == "Propagating"
    assert progress_text("scoring slices", 3, 7) == "Scoring slices 3/7"
    assert progress_text("fine-tuning epoch 2/10", 5, 8) == "Epoch 2/10, step 5/8"


def test_job_cancelled_before_start_never_runs():
    ran = []
    job = Job(lambda progress: ran.append(1))
    job.cancel()
    job._run()
    assert job.state == "cancelled" and not ran

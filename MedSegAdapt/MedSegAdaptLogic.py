"""MedSegAdapt Logic: every MRML <-> MedSegAdaptLib conversion, segmentation, suggestions, corrections,
fine-tuning and review.

This file imports neither Qt nor ``slicer.ScriptedLoadableModule``, so it runs in Slicer's Python
console, in the module's widget and in tests on a real MRML scene from the ``slicer-core`` package.
It goes through the module logic classes directly (``vtkSlicerSegmentationsModuleLogic``), never
through ``slicer.modules``, which does not exist outside the Slicer application.

Conventions: MedSegAdaptLib volumes are (I, J, K) arrays with LPS geometry whose direction columns
are the I, J and K axes; Slicer nodes keep RAS matrices. A voxel box (``Box3D``) covers voxel
indices lo..hi inclusive, i.e. the IJK region [lo - 0.5, hi + 0.5] in continuous coordinates.

In Slicer::

    import MedSegAdaptLogic
    logic = MedSegAdaptLogic.MedSegAdaptLogic()
    segment_id = logic.segment(getNode("CTChest"), getNode("Segmentation"), "right lung", roi_node=getNode("R"))
    for s in logic.suggest(getNode("CTChest"), "right lung", 3, roi_node=getNode("R")):
        print(s.axis, s.index, round(s.score, 2), s.reason)
    result = logic.fine_tune("/data/store", "/data/finetuned.pt", logic.fine_tune_options(epochs=5))
    chart = logic.training_history_chart(logic.training_history_table(result.history, slicer.mrmlScene))
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedSegAdaptLib.core.axes import AXIS_NAMES
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Point3D
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    Volume,
    default_color,
    standard_terminology,
)

logger = logging.getLogger("MedSegAdapt")

#: LPS <-> RAS: flip the first two axes (its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SegmentationCancelled(Exception):
    """Raised from a progress callback to stop a running segmentation."""


# --- small VTK helpers ---------------------------------------------------------------------------


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_to_world(node) -> np.ndarray:
    """4x4 matrix from ``node``'s own coordinates to world RAS (identity when not transformed).

    Non-linear parent transforms are refused: voxel boxes and label arrays need a linear grid.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"{node.GetName()} is under the non-linear transform {parent.GetName()}; "
            "harden the transform (Data module) or remove it first"
        )
    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, matrix)
    return _matrix_to_numpy(matrix)


def _ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _matrix_to_numpy(matrix)


def _ijk_to_world(volume_node) -> np.ndarray:
    """4x4 IJK-to-world-RAS matrix of a volume node, parent (linear) transforms included."""
    return _node_to_world(volume_node) @ _ijk_to_ras(volume_node)


def _image_to_ijk_array(image: vtk.vtkImageData) -> np.ndarray:
    """(I, J, K) numpy copy of a single-component vtkImageData (VTK stores I fastest)."""
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError("image has no voxel data; expected a loaded volume")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"image has {scalars.GetNumberOfComponents()} components per voxel; expected a scalar volume"
        )
    flat = numpy_support.vtk_to_numpy(scalars)
    return np.array(flat.reshape(dims[::-1]).transpose(2, 1, 0))


def _ijk_array_to_image(array: np.ndarray) -> vtk.vtkImageData:
    """vtkImageData (origin 0, spacing 1: geometry lives in the node's IJKToRAS) from an (I, J, K) array."""
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def _string_array(values: Sequence[str]) -> vtk.vtkStringArray:
    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


# --- volumes -------------------------------------------------------------------------------------


def geometry_from_volume_node(volume_node) -> Geometry:
    """LPS ``Geometry`` of a volume node (its IJKToRAS with parent linear transforms, RAS -> LPS)."""
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None:
        name = volume_node.GetName() if volume_node is not None else "None"
        raise InputError(f"Volume {name} has no image data; expected a loaded scalar volume")
    return Geometry.from_ijk_to_lps(_LPS_TO_RAS @ _ijk_to_world(volume_node), image.GetDimensions())


def volume_from_node(volume_node) -> Volume:
    """``MedSegAdaptLib.io.Volume`` of a scalar volume node: (I, J, K) array and LPS geometry."""
    geometry = geometry_from_volume_node(volume_node)
    array = _image_to_ijk_array(volume_node.GetImageData())
    storage = volume_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None and storage.GetFileName() else None
    try:
        return Volume(array, geometry, path=path)
    except InputError as error:
        raise InputError(f"Volume node {volume_node.GetName()}: {error}") from error


def volume_to_node(volume: Volume, scene, name: str = "Volume", labelmap: bool = False):
    """A new scalar (or labelmap) volume node in ``scene`` holding ``volume`` (array and geometry)."""
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name)
    _set_node_voxels(node, volume.array, _LPS_TO_RAS @ volume.geometry.ijk_to_lps())
    node.CreateDefaultDisplayNodes()
    return node


def _set_node_voxels(node, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras))
    node.SetAndObserveImageData(_ijk_array_to_image(array))


# --- segmentations -------------------------------------------------------------------------------


@contextlib.contextmanager
def _temporary_labelmap(scene) -> Iterator[Any]:
    """A hidden labelmap node in ``scene`` (the segmentations logic needs one there), removed after use."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedSegAdaptTemporaryLabelmap")
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    try:
        yield node
    finally:
        scene.RemoveNode(node)


def _scene_of(*nodes):
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
    raise InputError("The nodes are not in a MRML scene; expected nodes added to the scene")


def segment_ids(segmentation_node) -> list[str]:
    """Segment ids of a segmentation node, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def find_segment_id(segmentation_node, name: str) -> str | None:
    """Id of the segment called ``name`` (ignoring case and surrounding spaces), or None."""
    key = name.strip().casefold()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        if segmentation.GetSegment(segment_id).GetName().strip().casefold() == key:
            return segment_id
    return None


def _get_segment_id(segmentation_node, name: str) -> str:
    segment_id = find_segment_id(segmentation_node, name)
    if segment_id is None:
        segmentation = segmentation_node.GetSegmentation()
        names = [segmentation.GetSegment(s).GetName() for s in segment_ids(segmentation_node)]
        raise InputError(
            f"No segment named {name!r} in {segmentation_node.GetName()}; "
            f"available: {', '.join(repr(n) for n in names) or 'none'}"
        )
    return segment_id


def segment_mask(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """Boolean (I, J, K) mask of one segment on the reference volume's voxel grid."""
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"No segment with id {segment_id!r} in {segmentation_node.GetName()}")
    shape = reference_volume_node.GetImageData().GetDimensions()
    scene = _scene_of(segmentation_node, reference_volume_node)
    with _temporary_labelmap(scene) as labelmap:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, _string_array([segment_id]), labelmap, reference_volume_node
        )
        image = labelmap.GetImageData()
        if not exported or image is None:
            # An empty segment exports nothing; anything else is a real failure.
            if _segment_is_empty(segmentation_node, segment_id):
                return np.zeros(shape, dtype=bool)
            raise InputError(
                f"Could not export segment {segment_id!r} of {segmentation_node.GetName()} "
                f"onto {reference_volume_node.GetName()}"
            )
        mask = _image_to_ijk_array(image) != 0
    if mask.shape != tuple(shape):
        raise InputError(
            f"Segment {segment_id!r} exported with shape {mask.shape}; expected the reference volume's {shape}"
        )
    return mask


def _segment_is_empty(segmentation_node, segment_id: str) -> bool:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if labelmap is None:
        return True
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return True
    scalars = labelmap.GetPointData().GetScalars()
    if scalars is None:
        return True
    values = numpy_support.vtk_to_numpy(scalars)
    return not np.any(values == segment.GetLabelValue())


def segment_terminology(segment) -> dict | None:
    """A vtkSegment's terminology in slicerio's dict layout, or None when it has no terminology tag."""
    from slicerio.segmentation import terminology_entry_from_string

    value = vtk.reference("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), value) or not str(value):
        return None
    try:
        entry = terminology_entry_from_string(str(value))
    except (IndexError, ValueError):
        return None
    return entry if {"category", "type"} <= entry.keys() and entry.get("type", [""])[0] else None


def set_segment_terminology(segment, terminology: dict) -> None:
    """Tag a vtkSegment with ``terminology`` in Slicer's TerminologyEntry string format."""
    from slicerio.segmentation import terminology_entry_to_string

    segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry_to_string(terminology))


def segmentation_from_node(segmentation_node, reference_volume_node, names: Sequence[str] | None = None) -> Segmentation:
    """``MedSegAdaptLib.io.Segmentation`` of a segmentation node on the reference volume's grid.

    Every segment (or those ``names``) becomes a full-size boolean mask with its name, colour and
    terminology; overlapping segments stay separate.
    """
    geometry = geometry_from_volume_node(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    chosen = [_get_segment_id(segmentation_node, n) for n in names] if names is not None else segment_ids(segmentation_node)
    result = Segmentation(geometry)
    for segment_id in chosen:
        segment = segmentation.GetSegment(segment_id)
        result.add(
            Segment(
                name=segment.GetName(),
                mask=segment_mask(segmentation_node, segment_id, reference_volume_node),
                color=tuple(segment.GetColor()),
                terminology=segment_terminology(segment),
            )
        )
    return result


def label_arrays_from_node(segmentation_node, reference_volume_node) -> dict[str, np.ndarray]:
    """``{segment name: boolean (I, J, K) mask}`` on the reference volume's grid."""
    return {s.name: s.mask for s in segmentation_from_node(segmentation_node, reference_volume_node).segments}


def set_segment_mask(
    segmentation_node,
    name: str,
    mask: np.ndarray,
    reference_volume_node,
    color: Sequence[float] | None = None,
    terminology: dict | None = None,
    replace: bool = True,
) -> str:
    """Write a boolean (I, J, K) mask on the reference volume's grid into the segment called ``name``.

    A segment of that name (ignoring case) is overwritten when ``replace``; otherwise (or when there
    is none) a new segment is added. Colour and terminology default to the standard ones for the
    name. Returns the segment id.
    """
    mask = np.asarray(mask)
    shape = tuple(reference_volume_node.GetImageData().GetDimensions())
    if mask.shape != shape:
        raise InputError(
            f"Mask for segment {name!r} has shape {mask.shape}; expected the reference volume's {shape}"
        )
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    color = tuple(color) if color is not None else default_color(name)
    terminology = terminology if terminology is not None else standard_terminology(name)
    segment_id = find_segment_id(segmentation_node, name) if replace else None
    if segment_id is None:
        segment_id = segmentation.AddEmptySegment("", name, list(color))
        if not segment_id:
            raise InputError(f"Could not add segment {name!r} to {segmentation_node.GetName()}")
    segment = segmentation.GetSegment(segment_id)
    segment.SetColor(*color)
    if terminology is not None:
        set_segment_terminology(segment, terminology)
    scene = _scene_of(segmentation_node, reference_volume_node)
    with _temporary_labelmap(scene) as labelmap:
        _set_node_voxels(labelmap, mask.astype(np.uint8), _ijk_to_world(reference_volume_node))
        imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap, segmentation_node, _string_array([segment_id])
        )
    if not imported:
        raise InputError(f"Could not import the mask of {name!r} into {segmentation_node.GetName()}")
    return segment_id


# --- prompts -------------------------------------------------------------------------------------


def box_from_roi(roi_node, volume_node) -> Box3D:
    """Voxel ``Box3D`` of the volume's voxels whose centres lie inside a markups ROI (any orientation).

    The ROI's corners are mapped to IJK and their bounding box taken; the box is clipped to the
    volume and refused when nothing of the volume is inside.
    """
    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    object_to_world = roi_node.GetObjectToWorldMatrix()
    corners = np.array(
        [[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]
    ).T
    world_to_ijk = np.linalg.inv(_ijk_to_world(volume_node))
    ijk = (world_to_ijk @ _matrix_to_numpy(object_to_world) @ corners)[:3]
    tolerance = 1e-3
    lo = np.ceil(ijk.min(axis=1) - tolerance).astype(int)
    hi = np.floor(ijk.max(axis=1) + tolerance).astype(int)
    shape = np.array(volume_node.GetImageData().GetDimensions())
    clipped_lo, clipped_hi = np.maximum(lo, 0), np.minimum(hi, shape - 1)
    if np.any(clipped_lo > clipped_hi):
        raise InputError(
            f"ROI {roi_node.GetName()} does not contain any voxel centre of {volume_node.GetName()} "
            f"(IJK {lo.tolist()}..{hi.tolist()}, volume size {shape.tolist()}); move the ROI onto the volume"
        )
    return Box3D(tuple(int(v) for v in clipped_lo), tuple(int(v) for v in clipped_hi))


def roi_from_box(box: Box3D, volume_node, roi_node=None, name: str = "MedSegAdapt ROI"):
    """A markups ROI (new, or ``roi_node`` updated) covering exactly the voxels of ``box``.

    The ROI is aligned with the volume's IJK axes, so it also fits oblique volumes.
    """
    shape = volume_node.GetImageData().GetDimensions()
    box.validate(tuple(shape), volume_node.GetName())
    scene = volume_node.GetScene()
    if roi_node is None:
        roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    ijk_to_world = _ijk_to_world(volume_node)
    if roi_node.GetParentTransformNode() is not None:
        ijk_to_world = np.linalg.inv(_node_to_world(roi_node)) @ ijk_to_world
    axes = ijk_to_world[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    lo, hi = np.array(box.lo, dtype=float), np.array(box.hi, dtype=float)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes / spacing
    object_to_node[:3, 3] = (ijk_to_world @ np.append((lo + hi) / 2.0, 1.0))[:3]
    roi_node.SetAndObserveObjectToNodeMatrix(_numpy_to_matrix(object_to_node))
    roi_node.SetSize(*((hi - lo + 1.0) * spacing))
    return roi_node


def points_from_node(points_node, volume_node, label: int = 1) -> list[Point3D]:
    """Control points of a markups node (placed ones only) as voxel ``Point3D``s with ``label``.

    Points outside the volume are refused with their number and position.
    """
    world_to_ijk = np.linalg.inv(_ijk_to_world(volume_node))
    shape = volume_node.GetImageData().GetDimensions()
    points = []
    for index in range(points_node.GetNumberOfControlPoints()):
        if points_node.GetNthControlPointPositionStatus(index) != points_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        points_node.GetNthControlPointPositionWorld(index, position)
        ijk = world_to_ijk @ np.append(position, 1.0)
        point = Point3D(tuple(int(round(v)) for v in ijk[:3]), label)
        point.validate(tuple(shape), volume_node.GetName())
        points.append(point)
    return points


def fiducials_from_points(points: Sequence[Point3D], volume_node, points_node=None, name: str = "MedSegAdapt points"):
    """A markups point list (new, or ``points_node`` emptied) with one control point per voxel point."""
    if points_node is None:
        points_node = volume_node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    points_node.RemoveAllControlPoints()
    ijk_to_world = _ijk_to_world(volume_node)
    for point in points:
        world = ijk_to_world @ np.append(np.asarray(point.ijk, dtype=float), 1.0)
        points_node.AddControlPointWorld(vtk.vtkVector3d(*world[:3]))
    return points_node


def _prompts(volume_node, roi_node=None, points_node=None, background_points_node=None) -> tuple[Box3D | None, list[Point3D]]:
    """(voxel box of the ROI or None, foreground then background voxel points) read from the scene."""
    box = box_from_roi(roi_node, volume_node) if roi_node is not None else None
    points = points_from_node(points_node, volume_node, 1) if points_node is not None else []
    if background_points_node is not None:
        points += points_from_node(background_points_node, volume_node, 0)
    return box, points


# --- slices --------------------------------------------------------------------------------------


def axis_number(axis: str | int) -> int:
    """0, 1 or 2 for a volume axis given as 'i', 'j', 'k' (any case) or as that number."""
    if isinstance(axis, str) and axis.strip().lower() in AXIS_NAMES:
        return AXIS_NAMES.index(axis.strip().lower())
    if not isinstance(axis, (bool, str)) and axis in (0, 1, 2):
        return int(axis)
    raise InputError(f"axis {axis!r} is not a volume axis; expected i, j or k")


def slice_position_ras(volume_node, axis: str | int, index: int) -> tuple[float, float, float]:
    """World RAS position of the centre of IJK slice ``index`` along ``axis`` (parent linear transforms
    included): where the slice views jump to show that slice."""
    number = axis_number(axis)
    shape = geometry_from_volume_node(volume_node).shape
    if isinstance(index, bool) or not 0 <= index < shape[number]:
        raise InputError(f"slice {index!r} along {AXIS_NAMES[number]} is outside {volume_node.GetName()}; "
                         f"expected 0..{shape[number] - 1}")
    ijk = (np.array(shape, dtype=float) - 1.0) / 2.0
    ijk[number] = index
    world = _ijk_to_world(volume_node) @ np.append(ijk, 1.0)
    return float(world[0]), float(world[1]), float(world[2])


# --- fine-tuning history as table and plot nodes -------------------------------------------------

#: Table columns of the fine-tuning history: (column name, key of the trainer's epoch record).
HISTORY_COLUMNS = (("epoch", "epoch"), ("loss", "train_loss"), ("validation Dice", "val_dice"))
#: Plotted columns and their colours (RGB 0..1).
HISTORY_SERIES = (("loss", (0.85, 0.37, 0.0)), ("validation Dice", (0.0, 0.45, 0.7)))


def training_history_table(history: Sequence[dict], scene, table_node=None,
                           name: str = "MedSegAdapt fine-tuning"):
    """A table node (new, or ``table_node`` refilled) with one row per epoch record of the trainer:
    columns epoch, loss (mean training loss) and validation Dice (NaN without validation slices)."""
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    for column, key in HISTORY_COLUMNS:
        array = vtk.vtkIntArray() if column == "epoch" else vtk.vtkDoubleArray()
        array.SetName(column)
        for record in history:
            value = record.get(key)
            array.InsertNextValue(value if value is not None else float("nan"))
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    return table_node


def training_history_chart(table_node, chart_node=None, name: str = "MedSegAdapt fine-tuning"):
    """A plot chart (new, or ``chart_node`` completed) with loss and validation Dice against epoch, as
    line-and-marker series over ``table_node``'s columns."""
    scene = _scene_of(table_node)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart_node.SetTitle("Fine-tuning")
    chart_node.SetXAxisTitle("epoch")
    chart_node.SetYAxisTitle("loss / Dice")
    existing = {}
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(i)
        existing[series.GetYColumnName()] = series
    for column, color in HISTORY_SERIES:
        series = existing.get(column)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name}: {column}")
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetColor(*color)
    return chart_node


# --- the fine-tuning store -----------------------------------------------------------------------


def _store_folder(store_path: str | os.PathLike | None) -> Path:
    """``store_path`` as a Path; InputError when none was given."""
    if not str(store_path or "").strip():
        raise InputError("No fine-tuning store folder given; expected a folder path")
    return Path(store_path)


def _open_store(store_path: str | os.PathLike | None):
    """The existing fine-tuning store at ``store_path`` (InputError when it is not a store)."""
    from MedSegAdaptLib.store import FineTuningStore

    return FineTuningStore(_store_folder(store_path))


def _existing_case(store_path: str | os.PathLike | None, case_id: str | None) -> str | None:
    """The id of case ``case_id`` in the store, or None when no store or no such case exists yet
    (a new or empty folder is a store that has not been created yet)."""
    if not str(store_path or "").strip() or not str(case_id or "").strip():
        return None
    folder = Path(store_path)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    with _open_store(folder) as store:
        return next((case.case_id for case in store.cases() if case.case_id.casefold() == case_id.strip().casefold()),
                    None)


# --- the Logic -----------------------------------------------------------------------------------


@dataclass
class SegmentationRequest:
    """What the model needs, taken from the scene on the main thread (MRML is not thread-safe)."""

    volume: Volume
    structure: str
    box: Box3D | None = None
    points: list[Point3D] = field(default_factory=list)
    modality: str = "auto"
    report: str | None = None


@dataclass
class SuggestionRequest:
    """What suggesting slices needs, taken from the scene on the main thread.

    store_path / case_id: the fine-tuning store and the volume's case there, whose annotated slices
    are skipped; axis: 'i', 'j' or 'k'; purpose: what the slices are ranked for, a key of
    ``RANKING_PURPOSES`` ('training': labels that teach most, spread over the structure; 'correction': where the
    model is most wrong).
    """

    volume: Volume
    structure: str
    budget: int
    box: Box3D | None = None
    points: list[Point3D] = field(default_factory=list)
    store_path: str | None = None
    case_id: str | None = None
    axis: str = "k"
    purpose: str = "training"


class MedSegAdaptLogic:
    """Slicer-free Logic of the module: conversions, segmentation, suggestions, corrections,
    fine-tuning and review.

    The backbone is loaded on first use and kept for later calls; slice embeddings are kept in one
    cache shared by segmentation, suggestions and fine-tuning. Scene work (:meth:`prepare`,
    :meth:`apply`, :meth:`prepare_suggestion`, :meth:`preview_label`) must run on the main thread;
    model work (:meth:`run_model`, :meth:`run_suggestion`, :meth:`fine_tune`) may run on a worker thread.
    """

    def __init__(self, checkpoint: str | None = None, device: str = "auto") -> None:
        self.checkpoint = checkpoint or None
        self.device = device
        self.embedding_cache = EmbeddingCache()
        self._segmenter = None
        self._segmenter_key: tuple | None = None
        self._pretrained: tuple[str, Any] | None = None  # (device, Segmenter) of the packaged LiteMedSAM
        self._lock = threading.Lock()
        self.last_outcome = None

    # conversions, as methods so the Slicer console finds them on the logic object
    volume_from_node = staticmethod(volume_from_node)
    volume_to_node = staticmethod(volume_to_node)
    geometry_from_volume_node = staticmethod(geometry_from_volume_node)
    segmentation_from_node = staticmethod(segmentation_from_node)
    label_arrays_from_node = staticmethod(label_arrays_from_node)
    segment_mask = staticmethod(segment_mask)
    set_segment_mask = staticmethod(set_segment_mask)
    box_from_roi = staticmethod(box_from_roi)
    roi_from_box = staticmethod(roi_from_box)
    points_from_node = staticmethod(points_from_node)
    fiducials_from_points = staticmethod(fiducials_from_points)
    slice_position_ras = staticmethod(slice_position_ras)
    training_history_table = staticmethod(training_history_table)
    training_history_chart = staticmethod(training_history_chart)

    # model

    def configure(self, checkpoint: str | None = None, device: str | None = None) -> None:
        """Change checkpoint or device; the model reloads on next use only if they changed."""
        self.checkpoint = checkpoint or None
        if device is not None:
            self.device = device

    def segmenter(self):
        """The ``Segmenter`` for the configured checkpoint and device, loaded once and kept (reloaded
        when the checkpoint file changes, e.g. after fine-tuning into it)."""
        from MedSegAdaptLib.inference import Segmenter
        from MedSegAdaptLib.models import load_backbone
        from MedSegAdaptLib.models.device import resolve_device

        written = os.stat(self.checkpoint).st_mtime_ns if self.checkpoint and os.path.isfile(self.checkpoint) else None
        key = (self.checkpoint, written, self.device)
        with self._lock:
            if self._segmenter is None or self._segmenter_key != key:
                started = time.perf_counter()
                backbone = load_backbone(
                    checkpoint=self.checkpoint, device=resolve_device(self.device), for_inference=True
                )
                self._segmenter, self._segmenter_key = Segmenter(backbone, self.embedding_cache), key
                logger.info("MedSegAdapt: loaded %s on %s in %.1f s", backbone.spec.name, self.device,
                            time.perf_counter() - started)
            return self._segmenter

    # segmentation in three steps (main thread, any thread, main thread)

    def prepare(self, volume_node, structure: str, roi_node=None, points_node=None,
                background_points_node=None, modality: str = "auto", report: str | None = None) -> SegmentationRequest:
        """Read the inputs out of the scene. Main thread.

        report: free text that names the structure when ``structure`` is empty and, with a checkpoint
        fine-tuned with MedSeg-R priors, steers the model. Without ROI and points, only a fine-tuned
        checkpoint can segment (prompt-free, for the structures it was trained on).
        """
        if volume_node is None:
            raise InputError("No input volume selected; expected a scalar volume")
        structure = (structure or "").strip()
        report = (report or "").strip() or None
        if not structure and report is None:
            raise InputError("No structure given; expected a structure name such as 'right lung', or a report")
        volume = volume_from_node(volume_node)
        box, points = _prompts(volume_node, roi_node, points_node, background_points_node)
        if box is None and not points and self.checkpoint is None:
            raise InputError("No prompt: place an ROI around the structure or click points on it "
                             "(prompt-free segmentation needs a fine-tuned checkpoint)")
        return SegmentationRequest(volume, structure, box, points, modality, report)

    def run_model(self, request: SegmentationRequest, progress: ProgressCallback | None = None):
        """Run the model on a prepared request; returns the library's ``SegmentationOutcome``. Any thread."""
        outcome = self.segmenter().segment(
            request.volume, request.structure or None, request.box, request.points, request.modality, progress,
            request.report,
        )
        self.last_outcome = outcome
        return outcome

    def apply(self, outcome, request: SegmentationRequest, volume_node, segmentation_node) -> str:
        """Write the outcome's mask as the structure's segment (standard colour, terminology). Main thread."""
        if segmentation_node is None:
            raise InputError("No output segmentation selected; expected a segmentation node")
        if outcome.mask.shape != request.volume.geometry.shape:
            raise InputError("The segmentation result does not match the volume's grid")
        name = request.structure or outcome.report.structure
        if not outcome.mask.any():
            logger.warning("MedSegAdapt: the model found nothing for %r", name)
        return set_segment_mask(segmentation_node, name, outcome.mask, volume_node)

    def segment(self, volume_node, segmentation_node, structure: str, roi_node=None, points_node=None,
                progress: ProgressCallback | None = None, background_points_node=None,
                modality: str = "auto", report: str | None = None) -> str:
        """Segment ``structure`` (or the structure ``report`` names) in the volume from an ROI and/or
        points; returns the segment id.

        The segment is named after the structure (replacing a segment of that name), with the
        standard colour and terminology. ``progress(stage, done, total)`` may raise to cancel.
        """
        request = self.prepare(volume_node, structure, roi_node, points_node, background_points_node, modality,
                               report)
        outcome = self.run_model(request, progress)
        return self.apply(outcome, request, volume_node, segmentation_node)

    # suggestions in two steps (main thread, any thread)

    def prepare_suggestion(self, volume_node, structure: str, budget: int, store_path: str | None = None,
                           case_id: str | None = None, roi_node=None, points_node=None,
                           background_points_node=None, axis: str = "k",
                           purpose: str = "training") -> SuggestionRequest:
        """Read what suggesting slices needs out of the scene. Main thread."""
        from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES
        from MedSegAdaptLib.suggestions.slices import check_budget

        if volume_node is None:
            raise InputError("No input volume selected; expected a scalar volume")
        structure = (structure or "").strip()
        if not structure:
            raise InputError("No structure given; expected a structure name such as 'left lung'")
        budget = check_budget(budget)
        if purpose not in RANKING_PURPOSES:
            raise InputError(f"Cannot rank slices for {purpose!r}; expected one of {', '.join(RANKING_PURPOSES)}")
        axis = AXIS_NAMES[axis_number(axis)]
        volume = volume_from_node(volume_node)
        box, points = _prompts(volume_node, roi_node, points_node, background_points_node)
        return SuggestionRequest(volume, structure, budget, box, points, str(store_path or "").strip() or None,
                                 str(case_id or "").strip() or None, axis, purpose)

    def run_suggestion(self, request: SuggestionRequest, progress: ProgressCallback | None = None) -> list:
        """Up to ``request.budget`` slices to annotate next, best first (``Suggestion``s). Any thread.

        When the store holds the case, its slices already annotated for the structure are skipped
        and, without an ROI or points, its latest prediction or correction gives the box; the volume
        must then be that case's image. Otherwise (no store, or the case not in it yet) nothing is
        annotated and the volume itself is scored.
        """
        from MedSegAdaptLib.suggestions import suggest_from_store, suggest_slices
        from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES

        axis = axis_number(request.axis)
        options = RANKING_PURPOSES[request.purpose]
        case_id = _existing_case(request.store_path, request.case_id)
        if case_id is None:
            return suggest_slices(self.segmenter(), request.volume, request.structure, request.budget, request.box,
                                  request.points, axis=axis, options=options, case_id=request.case_id,
                                  progress=progress)
        with _open_store(request.store_path) as store:
            case = store.case(case_id)
            if not case.geometry.matches(request.volume.geometry):
                raise InputError(f"The volume is not the image of case {case_id!r} in {store.root}: "
                                 f"{case.geometry.describe_mismatch(request.volume.geometry)}; "
                                 "expected the case's own image, or another case id")
            return suggest_from_store(store, case_id, request.structure, request.budget, self.segmenter(),
                                      request.box, request.points, axis=axis, options=options, progress=progress)

    def suggest(self, volume_node, structure: str, budget: int, store_path: str | None = None,
                case_id: str | None = None, roi_node=None, progress: ProgressCallback | None = None,
                points_node=None, background_points_node=None, axis: str = "k", purpose: str = "training") -> list:
        """Up to ``budget`` slices of the volume to annotate next for ``structure``, best first, each a
        ``Suggestion`` with its score, DKD, ASD and reason; see :meth:`run_suggestion`.

        The prediction is prompted by the ROI and/or points (or the store's latest label of the
        structure, or nothing with a prompt-free fine-tuned checkpoint). Jump to a suggestion with
        :func:`slice_position_ras`.
        """
        request = self.prepare_suggestion(volume_node, structure, budget, store_path, case_id, roi_node, points_node,
                                          background_points_node, axis, purpose)
        return self.run_suggestion(request, progress)

    # fine-tuning

    @staticmethod
    def fine_tune_options(epochs: int = 10, priors: str | Sequence[str] = "", **options: Any):
        """``FineTuneOptions`` with ``epochs``, the MedSeg-R ``priors`` to train ('all', '' for none, or
        a comma-separated subset of location, texture, shape, semantic) and any other of its fields."""
        from MedSegAdaptLib.training import FineTuneOptions
        from MedSegAdaptLib.training.options import parse_priors

        names = parse_priors(priors) if isinstance(priors, str) else tuple(priors)
        return FineTuneOptions(epochs=int(epochs), priors=names, **options)

    @staticmethod
    def default_checkpoint_path(store_path: str) -> str:
        """Where a store's fine-tuned checkpoint goes by default: ``<store folder>-finetuned.pt`` beside it."""
        folder = _store_folder(store_path).absolute()
        return str(folder.parent / f"{folder.name}-finetuned.pt")

    def fine_tune(self, store_path: str, output_checkpoint: str, options=None,
                  progress: ProgressCallback | None = None, on_epoch: Callable[[dict], None] | None = None,
                  resume: str | None = None):
        """Fine-tune the configured model (the checkpoint, else the packaged LiteMedSAM) on the store's
        training view; returns the library's ``FineTuneResult``. Any thread.

        ``output_checkpoint`` is rewritten atomically after every epoch, and ``on_epoch(record)``
        then gets that epoch's record (epoch, train_loss, val_dice, seconds, best_epoch). Stopping by
        raising from ``progress`` (:meth:`Job.cancel`) leaves the checkpoint of the last completed
        epoch, or the file untouched when no epoch completed. Slice embeddings come from the cache
        shared with segmentation.
        """
        from MedSegAdaptLib.models.device import resolve_device
        from MedSegAdaptLib.training import fine_tune

        if not str(output_checkpoint or "").strip():
            raise InputError("No output checkpoint file given; expected a path such as finetuned.pt")
        options = options if options is not None else self.fine_tune_options()
        with _open_store(store_path) as store:
            return fine_tune(store, output_checkpoint, checkpoint=self.checkpoint, device=resolve_device(self.device),
                             options=options, resume=resume, cache=self.embedding_cache, progress=progress,
                             on_epoch=on_epoch)

    # environment adaptation (MedSeg-Adapt)

    @staticmethod
    def environments() -> list[dict]:
        """MedSeg-Adapt's imaging environments: {"name", "description", "parameters"} each."""
        from MedSegAdaptLib.environments import environment_catalog

        return environment_catalog()

    @staticmethod
    def summarize_samples(generated: Sequence) -> dict:
        """Per structure, counts of :meth:`generate_environment_samples`' labels: generated, accepted
        (by self-validation), queued (for review)."""
        from MedSegAdaptLib.environments import summarize

        return summarize(generated)

    def pretrained_segmenter(self):
        """The packaged LiteMedSAM's ``Segmenter`` (sharing the embedding cache) when the configured
        checkpoint was fine-tuned from it, else None; loaded once and kept."""
        from MedSegAdaptLib.inference import Segmenter
        from MedSegAdaptLib.models import fine_tunes_packaged_litemedsam, load_backbone
        from MedSegAdaptLib.models.device import resolve_device

        current = self.segmenter()
        if not fine_tunes_packaged_litemedsam(current.backbone.spec):
            return None
        with self._lock:
            if self._pretrained is None or self._pretrained[0] != self.device:
                backbone = load_backbone(device=resolve_device(self.device), for_inference=True)
                self._pretrained = (self.device, Segmenter(backbone, self.embedding_cache))
            return self._pretrained[1]

    def generate_environment_samples(self, store_path: str, environment: str, count: int, seed: int = 0,
                                     settings: dict | None = None, threshold: float | None = None,
                                     progress: ProgressCallback | None = None) -> list:
        """Simulate ``count`` samples of ``environment`` (e.g. 'low-dose-ct', with ``settings`` overriding
        its parameters) from the store's corrected cases into the store; returns the ``GeneratedLabel``s.
        Any thread.

        Each sample's pseudo-masks come from an ensemble of the configured model (and the packaged
        LiteMedSAM when the model is a fine-tune of it); those passing every self-validation check
        (ensemble agreement at least ``threshold``, default the library's 0.8) are accepted as synthetic
        labels and train at once, the others wait in the review queue.
        """
        from MedSegAdaptLib.environments import environment as make_environment
        from MedSegAdaptLib.environments import generate_samples
        from MedSegAdaptLib.environments.self_validation import DEFAULT_THRESHOLD

        chosen = make_environment(environment, **(settings or {}))
        members = [self.segmenter()]
        pretrained = self.pretrained_segmenter()
        if pretrained is not None:
            members.append(pretrained)
        with _open_store(store_path) as store:
            return generate_samples(store, chosen, int(count), members, seed=int(seed),
                                    threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                                    progress=progress)

    # corrections

    def submit_correction(self, volume_node, segmentation_node, segment_name: str, store_path: str,
                          case_id: str, annotator: str, slices: dict[str, Sequence[int]] | None = None,
                          comment: str | None = None):
        """Store the segment's current mask as a new correction version; returns the ``LabelVersion``.

        The store is created when ``store_path`` is a new or empty folder. The volume becomes the
        case ``case_id`` the first time (the same image already in the store is recognised, under
        its existing case id). ``slices`` (``{"k": [12, 30]}``) marks a partial annotation.
        """
        from MedSegAdaptLib.store import FineTuningStore

        folder = _store_folder(store_path)
        segment_id = _get_segment_id(segmentation_node, segment_name)
        structure = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName().strip()
        volume = volume_from_node(volume_node)
        mask = segment_mask(segmentation_node, segment_id, volume_node)
        with FineTuningStore.init(folder) as store:
            case, _created = store.add_image(volume, case_id=case_id)
            return store.submit_mask(
                case.case_id, structure, mask, annotator, annotated_slices=slices, comment=comment,
                source=f"3D Slicer segmentation {segmentation_node.GetName()} / segment {structure}",
            )

    @staticmethod
    def history(store_path: str, case_id: str, structure: str | None = None):
        """Every stored version of the case's labels (of one structure if given), oldest first."""
        with _open_store(store_path) as store:
            return store.history(case_id, structure)

    # review of pseudo-labels and synthetic samples

    @staticmethod
    def review_queue(store_path: str, include_reviewed: bool = False) -> list:
        """The store's pseudo-labels and synthetic labels awaiting review (``LabelVersion``s; with
        ``include_reviewed``, the reviewed ones too)."""
        with _open_store(store_path) as store:
            return store.review_queue(include_reviewed)

    @staticmethod
    def review(store_path: str, label_id: int, accept: bool, reviewer: str, comment: str | None = None):
        """Accept (it then trains) or reject a queued label; returns the updated ``LabelVersion``."""
        with _open_store(store_path) as store:
            return store.review(int(label_id), accept, reviewer, comment)

    @staticmethod
    def preview_label(store_path: str, label_id: int, scene) -> tuple[Any, Any]:
        """(volume node, segmentation node): a stored label's case image and its mask as a segment
        named after the structure, new in ``scene``, for a reviewer to inspect. Main thread."""
        from MedSegAdaptLib.io import read_volume

        with _open_store(store_path) as store:
            label = store.label(int(label_id))
            image = store.case(label.case_id).image
        volume_node = volume_to_node(read_volume(image), scene, f"{label.case_id} (label {label.label_id})")
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{label.case_id} {label.structure} v{label.version} ({label.kind})")
        segmentation_node.CreateDefaultDisplayNodes()
        set_segment_mask(segmentation_node, label.structure, read_volume(label.file).array != 0, volume_node)
        return volume_node, segmentation_node


# --- a persistent worker thread (no Qt: the widget polls jobs with a QTimer) -----------------------


class Job:
    """One piece of work for :class:`Worker`: state, progress, result or error, and a cancel flag.

    ``state`` goes 'queued' -> 'running' -> 'done' | 'failed' | 'cancelled'.
    """

    def __init__(self, function: Callable[[ProgressCallback], Any], description: str = "") -> None:
        self.function = function
        self.description = description
        self.state = "queued"
        self.stage, self.done, self.total = "queued", 0, 0
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._finished = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def progress(self, stage: str, done: int, total: int) -> None:
        """The library's progress callback: records progress and raises once cancel was asked for."""
        self.stage, self.done, self.total = stage, int(done), int(total)
        if self._cancel.is_set():
            raise SegmentationCancelled(f"{self.description or 'work'} cancelled")

    def _run(self) -> None:
        if self._cancel.is_set():
            self.state = "cancelled"
            self._finished.set()
            return
        self.state = "running"
        try:
            self.result = self.function(self.progress)
            self.state = "done"
        except SegmentationCancelled as error:
            self.error, self.state = error, "cancelled"
        except BaseException as error:  # reported to the GUI thread, which shows it
            self.error, self.state = error, "failed"
            logger.exception("MedSegAdapt: %s failed", self.description or "work")
        finally:
            self._finished.set()


class Worker:
    """One persistent background thread running :class:`Job`s in order (the model stays on it)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="MedSegAdaptWorker", daemon=True)
        self._thread.start()

    def submit(self, function: Callable[[ProgressCallback], Any], description: str = "") -> Job:
        job = Job(function, description)
        self._queue.put(job)
        return job

    def stop(self, timeout: float | None = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job._run()


def progress_text(stage: str, done: int, total: int) -> str:
    """'Encoding slices 12/34' style label for a progress stage of the library."""
    names = {"queued": "Waiting", "loading": "Loading model", "encoding slices": "Encoding slices",
             "propagating": "Propagating", "writing": "Writing segment"}
    if stage.startswith("fine-tuning epoch "):  # the trainer's "fine-tuning epoch 2/10", done/total steps
        epoch = stage.removeprefix("fine-tuning epoch ")
        return f"Epoch {epoch}, step {done}/{total}" if total else f"Epoch {epoch}"
    label = names.get(stage, stage.replace("_", " ").capitalize())
    return f"{label} {done}/{total}" if total else label




__all__ = [
    "Job",
    "MedSegAdaptLogic",
    "SegmentationCancelled",
    "SegmentationRequest",
    "SuggestionRequest",
    "Worker",
    "axis_number",
    "box_from_roi",
    "dice",
    "fiducials_from_points",
    "find_segment_id",
    "geometry_from_volume_node",
    "label_arrays_from_node",
    "points_from_node",
    "progress_text",
    "roi_from_box",
    "segment_ids",
    "segment_mask",
    "segment_terminology",
    "segmentation_from_node",
    "set_segment_mask",
    "set_segment_terminology",
    "slice_position_ras",
    "training_history_chart",
    "training_history_table",
    "volume_from_node",
    "volume_to_node",
]

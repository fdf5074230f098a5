"""MRML <-> MedSegAdaptLib conversions: volumes, segments, ROI and points, slices, fine-tuning plots.

No Qt and no ``slicer.ScriptedLoadableModule``: this runs in Slicer's Python console, in the widget
and in tests on a real MRML scene from the ``slicer-core`` package. It goes through the module logic
classes directly (``vtkSlicerSegmentationsModuleLogic``), never through ``slicer.modules``, which
does not exist outside the Slicer application. Main thread only (MRML is not thread-safe).

Conventions: MedSegAdaptLib volumes are (I, J, K) arrays with LPS geometry whose direction columns
are the I, J and K axes; Slicer nodes keep RAS matrices. A voxel box (``Box3D``) covers voxel
indices lo..hi inclusive, i.e. the IJK region [lo - 0.5, hi + 0.5] in continuous coordinates.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedSegAdaptLib.core.axes import AXIS_NAMES, take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference import Box3D, Point3D
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    Volume,
    default_color,
    standard_terminology,
)

from .state import roi_is_placed

__all__ = [
    "axis_number",
    "box_from_roi",
    "changed_slices",
    "edited_slices",
    "fiducials_from_points",
    "find_segment_id",
    "geometry_from_volume_node",
    "HISTORY_COLUMNS",
    "HISTORY_SERIES",
    "ijk_to_ras_point",
    "is_unedited_model_output",
    "jump_slices_to",
    "label_arrays_from_node",
    "mark_model_output",
    "mask_digest",
    "model_output_digest",
    "MODEL_MASK_TAG",
    "MODEL_SLICE_AXIS_TAG",
    "MODEL_SLICES_TAG",
    "node_in_scene",
    "numbered_segment_name",
    "points_from_node",
    "prompts_from_nodes",
    "require_segment_id",
    "roi_from_box",
    "segment_ids",
    "segment_mask",
    "segment_terminology",
    "segmentation_from_node",
    "set_segment_mask",
    "set_segment_terminology",
    "show_slice",
    "SLICE_DIGEST_CHARS",
    "slice_digests",
    "slice_position_ras",
    "slice_views",
    "tag_text",
    "training_history_chart",
    "training_history_table",
    "unique_segment_name",
    "volume_from_node",
    "volume_to_node",
]

#: LPS <-> RAS: flip the first two axes (its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def require_segment_id(segmentation_node, name: str) -> str:
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
    chosen = [require_segment_id(segmentation_node, n) for n in names] if names is not None else segment_ids(segmentation_node)
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
    segment_id: str | None = None,
) -> str:
    """Write a boolean (I, J, K) mask on the reference volume's grid into the segment called ``name``.

    A segment of that name (ignoring case) is overwritten when ``replace``; otherwise (or when there
    is none) a new segment is added; ``segment_id``: overwrite exactly that segment (which must
    exist) instead of looking it up by name. Colour and terminology default to the standard ones
    for the name. Returns the segment id.
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
    if segment_id is not None:
        if segmentation.GetSegment(segment_id) is None:
            raise InputError(f"No segment with id {segment_id!r} in {segmentation_node.GetName()}")
    elif replace:
        segment_id = find_segment_id(segmentation_node, name)
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


#: Segment tag holding the SHA-256 of the mask the model last wrote into the segment.
MODEL_MASK_TAG = "MedSegAdapt.ModelMaskSHA256"


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a boolean mask and its shape (what :data:`MODEL_MASK_TAG` stores)."""
    mask = np.asarray(mask, dtype=bool)
    digest = hashlib.sha256(repr(mask.shape).encode())
    digest.update(np.packbits(mask, axis=None).tobytes())
    return digest.hexdigest()


#: Segment tag holding the axis ('i', 'j' or 'k') along which :data:`MODEL_SLICES_TAG` digests the model's mask.
MODEL_SLICE_AXIS_TAG = "MedSegAdapt.ModelSliceAxis"
#: Segment tag holding one short digest per slice of the model's mask along :data:`MODEL_SLICE_AXIS_TAG`,
#: concatenated (:data:`SLICE_DIGEST_CHARS` hex characters each): which slices the user edited since.
MODEL_SLICES_TAG = "MedSegAdapt.ModelSliceDigests"
#: Hex characters per slice digest (32 bits: an edit goes unseen with odds of 1 in 4 billion per slice).
SLICE_DIGEST_CHARS = 8


def slice_digests(mask: np.ndarray, axis: str | int = "k") -> list[str]:
    """One short digest (BLAKE2b, :data:`SLICE_DIGEST_CHARS` hex characters) of each slice of a boolean
    (I, J, K) mask along ``axis``, slice shape included."""
    mask = np.asarray(mask, dtype=bool)
    number = axis_number(axis)
    digests = []
    for image in take_slices(mask, number, np.arange(mask.shape[number])):
        digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=SLICE_DIGEST_CHARS // 2)
        digest.update(np.packbits(image, axis=None).tobytes())
        digests.append(digest.hexdigest())
    return digests


def mark_model_output(segmentation_node, segment_id: str, mask: np.ndarray, axis: str | int = "k") -> None:
    """Record on the segment that ``mask`` is what the model wrote into it: its digest, and one digest
    per slice along ``axis`` (see :func:`edited_slices`). Tags are saved with the segmentation."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    segment.SetTag(MODEL_MASK_TAG, mask_digest(mask))
    segment.SetTag(MODEL_SLICE_AXIS_TAG, AXIS_NAMES[axis_number(axis)])
    segment.SetTag(MODEL_SLICES_TAG, "".join(slice_digests(mask, axis)))


def _tag(segment, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment is not None and segment.GetTag(key, value) and str(value) else None


def model_output_digest(segmentation_node, segment_id: str) -> str | None:
    """The :func:`mask_digest` of what the model last wrote into the segment (its tag); None when it never did."""
    return _tag(segmentation_node.GetSegmentation().GetSegment(segment_id), MODEL_MASK_TAG)


def changed_slices(segmentation_node, segment_id: str, mask: np.ndarray, axis: str | int = "k") -> list[int]:
    """Slices along ``axis`` (ascending) where the boolean (I, J, K) ``mask`` differs from the model result
    recorded on the segment by :func:`mark_model_output`; [] when it is that result.

    InputError when the segment has no model result recorded (drawn by hand, or written by the model
    before per-slice records existed), when it was recorded along another axis, or on another grid.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"No segment with id {segment_id!r} in {segmentation_node.GetName()}")
    name = segment.GetName()
    recorded, recorded_axis = _tag(segment, MODEL_SLICES_TAG), _tag(segment, MODEL_SLICE_AXIS_TAG)
    if recorded is None or recorded_axis not in AXIS_NAMES:
        raise InputError(f"Segment {name!r} has no model result recorded to compare with; "
                         "segment it with the model first")
    number = axis_number(axis)
    if recorded_axis != AXIS_NAMES[number]:
        raise InputError(f"The model result of segment {name!r} was recorded slice by slice along {recorded_axis}, "
                         f"not {AXIS_NAMES[number]}; use axis {recorded_axis}")
    current = slice_digests(mask, number)
    if len(recorded) != SLICE_DIGEST_CHARS * len(current):
        raise InputError(f"The model result of segment {name!r} was recorded on another grid "
                         f"({len(recorded) // SLICE_DIGEST_CHARS} slices along {recorded_axis}, this volume has "
                         f"{len(current)}); segment it with the model on this volume first")
    return [index for index, digest in enumerate(current)
            if recorded[index * SLICE_DIGEST_CHARS:(index + 1) * SLICE_DIGEST_CHARS] != digest]


def edited_slices(segmentation_node, segment_id: str, reference_volume_node, axis: str | int = "k") -> list[int]:
    """Slices along ``axis`` (ascending) whose current content on the reference volume's grid differs from
    the model's last result in the segment: the slices the user painted, erased or cleared since ([] when
    none). Works after saving and reloading the scene (the record lives in the segment's tags); see
    :func:`changed_slices` for the errors."""
    mask = segment_mask(segmentation_node, segment_id, reference_volume_node)
    return changed_slices(segmentation_node, segment_id, mask, axis)


def is_unedited_model_output(segmentation_node, segment_id: str, reference_volume_node) -> bool:
    """Whether the segment still holds exactly what the model last wrote into it.

    False for a segment the user drew or corrected (in the Segment Editor or by any other means),
    and for one the model never wrote: replacing such a segment loses someone's work.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.reference("")
    if segment is None or not segment.GetTag(MODEL_MASK_TAG, value) or not str(value):
        return False
    return str(value) == mask_digest(segment_mask(segmentation_node, segment_id, reference_volume_node))


def unique_segment_name(segmentation_node, name: str) -> str:
    """``name``, or ``name (2)``, ``name (3)``... the first that no segment of the node has (ignoring case)."""
    candidate, number = name, 1
    while find_segment_id(segmentation_node, candidate) is not None:
        number += 1
        candidate = f"{name} ({number})"
    return candidate


def numbered_segment_name(segmentation_node, name: str) -> str:
    """``name 1``, ``name 2``... the first that no segment of the node has (ignoring case): one finding
    of a report each ('lung nodule 1', 'lung nodule 2'), kept side by side."""
    number = 1
    while find_segment_id(segmentation_node, f"{name} {number}") is not None:
        number += 1
    return f"{name} {number}"


def tag_text(text: str) -> str:
    """``text`` as one segment tag value: on one line and without '|', which ends a tag in the .seg.nrrd
    header (Slicer writes ``key:value|key:value|``; a '|' inside a value cuts it when read back)."""
    return " ".join(str(text).replace("|", "/").split())


def node_in_scene(node, scene=None) -> bool:
    """Whether ``node`` is still in its (or the given) scene: a scene close or a delete removes it."""
    if node is None:
        return False
    owner = node.GetScene()
    return owner is not None and (scene is None or owner is scene) and owner.IsNodePresent(node) != 0


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


def prompts_from_nodes(volume_node, roi_node=None, points_node=None,
                       background_points_node=None) -> tuple[Box3D | None, list[Point3D]]:
    """(voxel box of the ROI or None, foreground then background voxel points) read from the scene.

    An ROI that has not been placed yet counts as no ROI.
    """
    box = box_from_roi(roi_node, volume_node) if roi_is_placed(roi_node) else None
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


def ijk_to_ras_point(volume_node, ijk: Sequence[float]) -> tuple[float, float, float]:
    """World RAS position of voxel ``ijk`` (I, J, K indices, as the library's arrays and ``centre_ijk`` give
    them) of the volume: its IJKToRAS matrix, parent linear transforms included."""
    ijk = np.asarray(ijk, dtype=float)
    if ijk.shape != (3,) or not np.all(np.isfinite(ijk)):
        raise InputError(f"voxel {list(np.ravel(ijk))} is not an (I, J, K) position; expected three numbers")
    world = _ijk_to_world(volume_node) @ np.append(ijk, 1.0)
    return float(world[0]), float(world[1]), float(world[2])


def jump_slices_to(scene, ras: Sequence[float]) -> list:
    """Centre every slice view of ``scene`` on the world RAS point ``ras``; returns the views. What Slicer's
    ``slicer.modules.markups.logic().JumpSlicesToLocation(r, a, s, True)`` does
    (``vtkMRMLSliceNode::JumpAllSlices`` in centred mode), without going through ``slicer.modules``."""
    r, a, s = (float(v) for v in ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return slice_views(scene)


def slice_views(scene) -> list:
    """The scene's slice view nodes (Red, Yellow, Green and any others of the layout)."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def show_slice(volume_node, axis: str | int, index: int, slice_nodes: Sequence) -> list:
    """Show IJK slice ``index`` along ``axis`` of the volume in the slice views; returns the views showing it.

    Each view is first rotated to the volume's planes (``RotateToVolumePlane``: for an oblique volume
    the RAS-aligned views cut across its slices, so no view would show slice ``index`` and an
    annotator could mark a slice they never saw), then moved along its normal onto the slice's
    centre. The views returned are those whose plane is that slice (normal along ``axis``).
    """
    number = axis_number(axis)
    position = slice_position_ras(volume_node, number, index)
    direction = _ijk_to_world(volume_node)[:3, number]
    direction = direction / np.linalg.norm(direction)
    showing = []
    for slice_node in slice_nodes:
        slice_node.RotateToVolumePlane(volume_node)
        slice_node.JumpSliceByOffsetting(*position)
        normal = _matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
        if abs(float(np.dot(normal / np.linalg.norm(normal), direction))) > 1.0 - 1e-6:
            showing.append(slice_node)
    return showing


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

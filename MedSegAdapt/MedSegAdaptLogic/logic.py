"""The module's Logic: one class over MedSegAdaptLib for segmentation, suggestions, corrections,
fine-tuning, environment samples and review, usable from the widget, Slicer's Python console and tests.

No Qt and no ``slicer.ScriptedLoadableModule`` (tests run it on a real ``slicer-core`` scene). Scene
work (:meth:`~MedSegAdaptLogic.prepare`, :meth:`~MedSegAdaptLogic.apply`,
:meth:`~MedSegAdaptLogic.prepare_suggestion`, :meth:`~MedSegAdaptLogic.preview_label`,
:meth:`~MedSegAdaptLogic.prepare_repropagation`, :meth:`~MedSegAdaptLogic.apply_repropagation`) runs on the
main thread; model work (:meth:`~MedSegAdaptLogic.run_model`, :meth:`~MedSegAdaptLogic.run_suggestion`,
:meth:`~MedSegAdaptLogic.run_repropagation`,
:meth:`~MedSegAdaptLogic.fine_tune`, :meth:`~MedSegAdaptLogic.run_find`,
:meth:`~MedSegAdaptLogic.run_candidate`) may run on the worker thread.

In Slicer::

    from MedSegAdaptLogic.logic import MedSegAdaptLogic
    logic = MedSegAdaptLogic()
    segment_id = logic.segment(getNode("CTChest"), getNode("Segmentation"), "right lung", roi_node=getNode("R"))
    found = logic.find_candidates(getNode("CTChest"), "Right upper lobe: 14 mm solid pulmonary nodule.")
    for candidate in found.candidates:
        print(candidate["rank"], candidate["score"], candidate["reason"])
    logic.jump_to_candidate(getNode("CTChest"), found.candidates[0])
    segment_id = logic.segment_candidate(getNode("CTChest"), getNode("Segmentation"), 1)  # 'lung nodule 1'
    # after painting or erasing a few slices of 'lung nodule 1' in the Segment Editor:
    print(logic.edited_slices(getNode("Segmentation"), segment_id, getNode("CTChest"), "k"))  # e.g. [20, 25]
    logic.repropagate_from_edits(getNode("CTChest"), getNode("Segmentation"), "lung nodule 1")  # kept as drawn
    for s in logic.suggest(getNode("CTChest"), "right lung", 3, roi_node=getNode("R")):
        print(s.axis, s.index, round(s.score, 2), s.reason)
    result = logic.fine_tune("/data/store", "/data/finetuned.pt", logic.fine_tune_options(epochs=5))
    chart = logic.training_history_chart(logic.training_history_table(result.history, slicer.mrmlScene))
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedSegAdaptLib.core.axes import AXIS_NAMES, take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation.lesion_measures import measure_if_lesion
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Point3D
from MedSegAdaptLib.io import Volume

from .loop import ADAPT_COLUMNS, AdaptResults, describe_rounds
from .report import (
    ReportFind,
    ReportRequest,
    candidate_rows,
    candidate_text,
    understood_text,
)
from .scene import (
    axis_number,
    box_from_roi,
    changed_slices,
    edited_slices,
    fiducials_from_points,
    find_segment_id,
    geometry_from_volume_node,
    ijk_to_ras_point,
    is_unedited_model_output,
    jump_slices_to,
    label_arrays_from_node,
    mark_model_output,
    mask_digest,
    model_output_digest,
    node_in_scene,
    numbered_segment_name,
    points_from_node,
    prompts_from_nodes,
    require_segment_id,
    roi_from_box,
    segment_mask,
    segment_terminology,
    segmentation_from_node,
    set_segment_mask,
    show_slice,
    slice_position_ras,
    tag_text,
    training_history_chart,
    training_history_table,
    unique_segment_name,
    volume_from_node,
    volume_to_node,
)
from .state import parameter_node

__all__ = ["CANDIDATE_TAGS", "REPROPAGATION_TAGS", "MedSegAdaptLogic", "ReportFind", "ReportRequest",
           "RepropagationRequest", "SegmentationRequest", "SuggestionRequest"]

#: Segment tags of a segment made from a report's candidate (Slicer saves them with the segmentation).
CANDIDATE_TAGS = ("MedSegAdapt.Report", "MedSegAdapt.CandidateRank", "MedSegAdapt.CandidateScore",
                  "MedSegAdapt.CandidateReason", "MedSegAdapt.Method")

#: Segment tags of a segment re-propagated from the user's edits: the slices kept as drawn ('k:20,25') and the
#: library's re-propagation mode ('combined', 'anchored' or 'interpolation').
REPROPAGATION_TAGS = ("MedSegAdapt.RepropagatedFrom", "MedSegAdapt.RepropagationMode")

logger = logging.getLogger("MedSegAdapt")

#: How many of the model's latest results the Logic keeps (bit-packed) to store as the prediction a
#: correction corrects (see :meth:`MedSegAdaptLogic.submit_correction`).
MODEL_RESULTS_KEPT = 8

# --- the fine-tuning store ---------------------------------------------------------------------


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


def _require_in_scene(volume_node, segmentation_node) -> None:
    """InputError (nothing is written) when no segmentation is selected or a node left the scene since it was read."""
    if segmentation_node is None:
        raise InputError("No output segmentation selected; expected a segmentation node")
    for node, what in ((volume_node, "input volume"), (segmentation_node, "output segmentation")):
        if not node_in_scene(node):
            raise InputError(f"The {what} {node.GetName()} is no longer in the scene; the result was not written")


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
class RepropagationRequest:
    """What re-propagating a segment from the user's edits needs, taken from the scene on the main thread.

    anchors: edited slice index along ``axis`` -> (H, W) bool image of the segment there now (kept as drawn;
    an empty one bounds the structure); digest: the segment's whole mask when read (a segment edited again
    while the model ran is not overwritten); structure: the segment's name (it picks the intensity preset).
    """

    volume: Volume
    segment_id: str
    structure: str
    anchors: dict[int, np.ndarray]
    digest: str
    previous: np.ndarray | None = None
    """The segment's (I, J, K) mask when read: the slices re-propagation does not reach keep it."""
    axis: str = "k"
    box: Box3D | None = None
    mode: str = "combined"
    modality: str = "auto"

    @property
    def slices(self) -> list[int]:
        """The edited slices (the anchors), ascending."""
        return sorted(self.anchors)

    @property
    def slices_text(self) -> str:
        """The anchors as the store writes annotated slices: 'k:20,25'."""
        return f"{self.axis}:{','.join(str(index) for index in self.slices)}"


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
    :meth:`apply`, :meth:`prepare_suggestion`, :meth:`preview_label`, :meth:`prepare_find`,
    :meth:`apply_candidate`, :meth:`jump_to_candidate`, :meth:`prepare_repropagation`,
    :meth:`apply_repropagation`) must run on the main thread; model work (:meth:`run_model`,
    :meth:`run_suggestion`, :meth:`fine_tune`, :meth:`run_find`, :meth:`run_candidate`, :meth:`run_repropagation`)
    may run on a worker thread. The last Find of a report in each volume node is kept
    (:meth:`last_find`), so that segmenting its candidates does not localise again, and so are the Adapt
    panel's results in each store (:meth:`adapt_result_rows`).
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
        self._last_measurement = None
        self._finds: dict[str, ReportFind] = {}  # volume node id -> the last Find of a report in it
        self._finds_lock = threading.Lock()
        self._report_parser = None  # the packaged model's report parser (see _report_guidance)
        self._adapt_results: dict[str, AdaptResults] = {}  # store folder -> the Adapt panel's results in it
        self._model_results: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}  # mask digest -> (shape, bits)
        self._predictions_stored: set[tuple[str, str, str, str]] = set()  # (store, case, structure, digest)

    @property
    def last_measurement(self):
        """Volume and longest axial diameter (LesionMeasurement) of the last lesion `apply` wrote, also kept
        in the segment's tags; None after any other structure."""
        return self._last_measurement

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
    ijk_to_ras_point = staticmethod(ijk_to_ras_point)
    candidate_rows = staticmethod(candidate_rows)
    candidate_text = staticmethod(candidate_text)
    understood_text = staticmethod(understood_text)
    training_history_table = staticmethod(training_history_table)
    training_history_chart = staticmethod(training_history_chart)
    show_slice = staticmethod(show_slice)
    edited_slices = staticmethod(edited_slices)

    # the module's parameter node (see .state: the widget needs it before the dependencies are installed)
    parameter_node = staticmethod(parameter_node)

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
        box, points = prompts_from_nodes(volume_node, roi_node, points_node, background_points_node)
        if box is None and not points and self.checkpoint is None:
            raise InputError("No prompt: place an ROI around the structure or click points on it "
                             "(prompt-free segmentation needs a fine-tuned checkpoint)")
        return SegmentationRequest(volume, structure, box, points, modality, report)

    def _loaded_segmenter(self, progress: ProgressCallback | None):
        """The segmenter, with a progress report before and after loading it: model loading (and the ONNX
        export of the encoder) report nothing, so these are the points where a cancel takes effect."""
        if progress is not None:
            progress("loading", 0, 0)
        segmenter = self.segmenter()
        if progress is not None:
            progress("loading", 1, 1)
        return segmenter

    def run_model(self, request: SegmentationRequest, progress: ProgressCallback | None = None):
        """Run the model on a prepared request; returns the library's ``SegmentationOutcome``. Any thread."""
        outcome = self._loaded_segmenter(progress).segment(
            request.volume, request.structure or None, request.box, request.points, request.modality, progress,
            request.report,
        )
        self.last_outcome = outcome
        return outcome

    def apply(self, outcome, request: SegmentationRequest, volume_node, segmentation_node, replace: bool = False,
              confirm_replace: Callable[[str], bool] | None = None,
              save_undo_state: Callable[[], Any] | None = None) -> str:
        """Write the outcome's mask into the segmentation (standard colour, terminology); returns the
        segment id. Main thread.

        By default the result goes into a new segment named after the structure ('right lung', or
        'right lung (2)' when the segmentation has one). With ``replace`` it overwrites the
        structure's segment, but only without asking when that segment is still exactly what the
        model last wrote: a segment the user corrected or drew is overwritten only when
        ``confirm_replace(segment name)`` returns True, and otherwise the result goes into a new
        segment. ``save_undo_state`` (the Segment Editor's ``saveStateForUndo``) is called just before
        the segmentation changes, so that Undo restores it. Nodes removed from the scene since
        :meth:`prepare` (a scene close, a delete) are refused: nothing is written.
        """
        _require_in_scene(volume_node, segmentation_node)
        if outcome.mask.shape != request.volume.geometry.shape:
            raise InputError("The segmentation result does not match the volume's grid")
        name = request.structure or outcome.report.structure
        if not outcome.mask.any():
            logger.warning("MedSegAdapt: the model found nothing for %r", name)
        existing = find_segment_id(segmentation_node, name)
        overwrite = replace and existing is not None and (
            is_unedited_model_output(segmentation_node, existing, volume_node)
            or (confirm_replace is not None and bool(confirm_replace(
                segmentation_node.GetSegmentation().GetSegment(existing).GetName()))))
        if save_undo_state is not None:
            save_undo_state()
        if overwrite:
            segment_id = set_segment_mask(segmentation_node, name, outcome.mask, volume_node, replace=True)
        else:
            segment_id = set_segment_mask(segmentation_node, unique_segment_name(segmentation_node, name),
                                          outcome.mask, volume_node, replace=False)
        mark_model_output(segmentation_node, segment_id, outcome.mask)
        self._keep_model_result(outcome.mask)
        self._measure(segmentation_node, segment_id, name, outcome.mask, request.volume.geometry)
        return segment_id

    def _keep_model_result(self, mask: np.ndarray) -> None:
        """Keep a mask the model wrote into a segment, by the digest its tags record: submitting a correction of
        that segment stores it as the prediction it corrects."""
        mask = np.asarray(mask, dtype=bool)
        self._keep(mask_digest(mask), (mask.shape, np.packbits(mask, axis=None)))

    def _keep(self, digest: str, kept: tuple[tuple[int, ...], np.ndarray]) -> None:
        """Keep ``(shape, bits)`` under ``digest``, the last :data:`MODEL_RESULTS_KEPT` of them."""
        self._model_results.pop(digest, None)
        self._model_results[digest] = kept
        while len(self._model_results) > MODEL_RESULTS_KEPT:
            del self._model_results[next(iter(self._model_results))]

    def _model_result(self, segmentation_node, segment_id: str, shape: tuple[int, ...]) -> tuple[str, np.ndarray] | None:
        """(digest, mask) of the model's result the segment corrects (see :meth:`_keep_model_result`) when it is
        kept and on a grid of ``shape``."""
        kept = self._model_results.get(model_output_digest(segmentation_node, segment_id) or "")
        if kept is None or tuple(kept[0]) != tuple(shape):
            return None
        mask = np.unpackbits(kept[1], count=int(np.prod(shape))).reshape(shape).astype(bool)
        return mask_digest(mask), mask

    def _measure(self, segmentation_node, segment_id: str, structure: str, mask, geometry) -> None:
        """Keep (:attr:`last_measurement`) and tag on the segment a lesion's volume and longest axial diameter."""
        self._last_measurement = measure_if_lesion(structure, mask, geometry)
        if self._last_measurement is not None:
            segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
            for key, value in self._last_measurement.as_tags().items():
                segment.SetTag(key, value)

    def segment(self, volume_node, segmentation_node, structure: str, roi_node=None, points_node=None,
                progress: ProgressCallback | None = None, background_points_node=None,
                modality: str = "auto", report: str | None = None, replace: bool = False) -> str:
        """Segment ``structure`` (or the structure ``report`` names) in the volume from an ROI and/or
        points; returns the segment id.

        The segment is named after the structure, with the standard colour and terminology; it is a
        new segment unless ``replace`` (see :meth:`apply`: from here a corrected segment is never
        replaced). ``progress(stage, done, total)`` may raise to cancel.
        """
        request = self.prepare(volume_node, structure, roi_node, points_node, background_points_node, modality,
                               report)
        outcome = self.run_model(request, progress)
        return self.apply(outcome, request, volume_node, segmentation_node, replace=replace)

    # re-propagation from the user's edits (main thread, any thread, main thread)

    def prepare_repropagation(self, volume_node, segmentation_node, segment_name: str, roi_node=None,
                              mode: str = "combined", axis: str = "k", modality: str = "auto") -> RepropagationRequest:
        """Read a model segment's edited slices out of the scene. Main thread.

        The edited slices are those whose content differs from the model's last result in the segment
        (:func:`~MedSegAdaptLogic.scene.edited_slices`, along ``axis``); their current content becomes the
        anchors, kept exactly as drawn (a slice the user cleared is an empty anchor: it bounds the
        structure). roi_node: a placed ROI bounds the re-propagation; mode: 'combined', 'anchored' or
        'interpolation' (no network runs). InputError when the segment has no model result recorded or
        nothing was edited since.
        """
        from MedSegAdaptLib.inference.anchored import REPROPAGATION_MODES

        if volume_node is None:
            raise InputError("No input volume selected; expected a scalar volume")
        if segmentation_node is None:
            raise InputError("No segmentation selected; expected the segmentation holding the edited segment")
        if mode not in REPROPAGATION_MODES:
            raise InputError(f"Unknown re-propagation mode {mode!r}; expected one of {', '.join(REPROPAGATION_MODES)}")
        number = axis_number(axis)
        segment_id = require_segment_id(segmentation_node, segment_name or "")
        structure = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName().strip()
        mask = segment_mask(segmentation_node, segment_id, volume_node)
        edited = changed_slices(segmentation_node, segment_id, mask, number)
        if not edited:
            raise InputError(f"Nothing was edited in segment {structure!r} since the model's last result; paint or "
                             "erase on a few slices first (they are kept as drawn), then re-propagate from them")
        box, _ = prompts_from_nodes(volume_node, roi_node)
        anchors = {index: image.copy() for index, image in zip(edited, take_slices(mask, number, edited))}
        return RepropagationRequest(volume_from_node(volume_node), segment_id, structure, anchors, mask_digest(mask),
                                    mask, AXIS_NAMES[number], box, mode, modality)

    def run_repropagation(self, request: RepropagationRequest, progress: ProgressCallback | None = None):
        """Re-propagate the segment from its edited slices (the library's ``Segmenter.repropagate``); returns
        its ``SegmentationOutcome``, whose mask keeps every edited slice as drawn. Any thread."""
        outcome = self._loaded_segmenter(progress).repropagate(
            request.volume, request.structure, request.anchors, request.box, request.modality, progress,
            axis=axis_number(request.axis), mode=request.mode, previous=request.previous)
        self.last_outcome = outcome
        return outcome

    def apply_repropagation(self, outcome, request: RepropagationRequest, volume_node, segmentation_node,
                            save_undo_state: Callable[[], Any] | None = None) -> str:
        """Replace the re-propagated segment's mask with the outcome's (no other segment changes); returns its
        id. Main thread.

        The segment keeps its name, colour and terminology, becomes the model's new result (later edits are
        diffed against it) and its tags say which slices it was re-propagated from, how
        (:data:`REPROPAGATION_TAGS`). ``save_undo_state`` (the Segment Editor's ``saveStateForUndo``) is
        called just before the segmentation changes, so that Undo restores the edited segment. Refused
        (nothing written) when a node left the scene, the segment was deleted, or it was edited again since
        :meth:`prepare_repropagation`.
        """
        _require_in_scene(volume_node, segmentation_node)
        geometry = geometry_from_volume_node(volume_node)
        if not geometry.matches(request.volume.geometry) or outcome.mask.shape != geometry.shape:
            raise InputError(f"The re-propagated segment does not match the grid of {volume_node.GetName()}; "
                             "the result was not written")
        segment = segmentation_node.GetSegmentation().GetSegment(request.segment_id)
        if segment is None:
            raise InputError(f"The segment {request.structure!r} was deleted while re-propagating; "
                             "the result was not written")
        if mask_digest(segment_mask(segmentation_node, request.segment_id, volume_node)) != request.digest:
            raise InputError(f"The segment {segment.GetName()!r} was edited again while re-propagating; the result "
                             "was not written: re-propagate again to use the new edits")
        if not outcome.mask.any():
            logger.warning("MedSegAdapt: re-propagating %r from %s gave an empty segment", request.structure,
                           request.slices_text)
        if save_undo_state is not None:
            save_undo_state()
        name = segment.GetName()
        # The re-propagated mask holds the annotator's own edits: its prediction stays the model's result before them.
        original = self._model_results.get(model_output_digest(segmentation_node, request.segment_id) or "")
        segment_id = set_segment_mask(segmentation_node, name, outcome.mask, volume_node, color=segment.GetColor(),
                                      terminology=segment_terminology(segment), segment_id=request.segment_id)
        mark_model_output(segmentation_node, segment_id, outcome.mask, request.axis)
        if original is not None:
            self._keep(mask_digest(outcome.mask), original)
        for key, value in zip(REPROPAGATION_TAGS, (request.slices_text, request.mode)):
            segment.SetTag(key, value)
        self._measure(segmentation_node, segment_id, request.structure, outcome.mask, geometry)
        return segment_id

    def repropagate_from_edits(self, volume_node, segmentation_node, segment_name: str, roi_node=None,
                               mode: str = "combined", axis: str = "k", progress: ProgressCallback | None = None,
                               save_undo_state: Callable[[], Any] | None = None) -> str:
        """Re-propagate a model segment from the slices the user edited since the model's last result, kept as
        drawn (:meth:`prepare_repropagation`, :meth:`run_repropagation`, :meth:`apply_repropagation`); returns
        the segment id. Main thread."""
        request = self.prepare_repropagation(volume_node, segmentation_node, segment_name, roi_node, mode, axis)
        outcome = self.run_repropagation(request, progress)
        return self.apply_repropagation(outcome, request, volume_node, segmentation_node, save_undo_state)

    # report-driven segmentation: find the candidates (main thread, any thread), then segment the ones kept
    # (any thread, main thread)

    def prepare_find(self, volume_node, report: str, structure: str | None = None,
                     modality: str = "auto") -> ReportRequest:
        """Read what finding a report's candidates needs out of the scene. Main thread.

        report: a pasted report or a typed query ('Right upper lobe: 14 mm solid pulmonary nodule.');
        structure: the structure when the report does not name it (None: the report names it).
        """
        if volume_node is None:
            raise InputError("No input volume selected; expected a scalar volume")
        report = (report or "").strip()
        if not report:
            raise InputError("No report given; paste a report or type a query such as "
                             "'right upper lobe nodule, 14 mm'")
        volume = volume_from_node(volume_node)
        return ReportRequest(volume, volume_node.GetID(), volume_node, report, (structure or "").strip() or None,
                             modality)

    def _report_guidance(self, progress: ProgressCallback | None):
        """(report parser, whether the backbone has MedSeg-R priors) for ``find_candidates``. Finding runs
        no network, so with the packaged LiteMedSAM (no checkpoint, no priors) the backbone is not loaded
        for it: a Find takes under a second even before the first segmentation. A checkpoint is loaded
        (it may have priors, and a text encoder of its own)."""
        if self.checkpoint is not None:
            segmenter = self._loaded_segmenter(progress)
            return segmenter.guidance, segmenter.backbone.priors is not None
        from MedSegAdaptLib.inference.report_guidance import PriorGuidance

        with self._lock:
            if self._report_parser is None:
                self._report_parser = PriorGuidance()
            return self._report_parser, False

    def run_find(self, request: ReportRequest, progress: ProgressCallback | None = None) -> ReportFind:
        """Parse the report and rank its candidates in the volume (no network runs; a checkpoint is loaded,
        for whether its MedSeg-R priors steer, if it was not yet); returns the :class:`ReportFind`, also
        kept as the volume's last Find (see :meth:`last_find`). Any thread.

        InputError (the library's LocalizationError among them) when the report names no known
        structure, names one that cannot be found from a report alone, or nothing matched; the
        volume's previous Find is then forgotten, so that no candidate of an older report is
        segmented by mistake.
        """
        from MedSegAdaptLib.inference.report_segmentation import find_candidates

        started = time.perf_counter()
        with self._finds_lock:
            self._finds.pop(request.volume_id, None)
        guidance, has_priors = self._report_guidance(progress)
        if progress is not None:
            progress("locating", 0, 1)
        result = find_candidates(guidance, request.volume, request.report, request.structure, request.modality,
                                 has_priors)
        if progress is not None:
            progress("locating", 1, 1)
        found = ReportFind(request, result, result.finding.to_dict(), time.perf_counter() - started)
        with self._finds_lock:
            self._finds[request.volume_id] = found
        return found

    def find_candidates(self, volume_node, report: str, structure: str | None = None, modality: str = "auto",
                        progress: ProgressCallback | None = None) -> ReportFind:
        """The report's ranked candidates in the volume (:meth:`prepare_find` then :meth:`run_find`):
        ``found.candidates`` are dicts (rank, score, reason, region, diameter_mm, volume_ml, centre_ijk,
        ...), ``found.understood`` what the report was understood to say. Main thread."""
        return self.run_find(self.prepare_find(volume_node, report, structure, modality), progress)

    def last_find(self, volume_node) -> ReportFind | None:
        """The last successful Find in this volume node (still in the scene), or None."""
        if volume_node is None:
            return None
        with self._finds_lock:
            found = self._finds.get(volume_node.GetID())
        return found if found is not None and found.request.volume_node is volume_node else None

    def forget_finds(self) -> None:
        """Forget every kept Find (a scene close: node ids are reused by the next scene)."""
        with self._finds_lock:
            self._finds.clear()

    def candidate_centre_ras(self, volume_node, candidate: dict | Sequence[float]) -> tuple[float, float, float]:
        """World RAS position of a candidate's centre (a candidate dict, or its ``centre_ijk``): the volume
        node's IJKToRAS matrix, parent linear transforms included."""
        centre = candidate["centre_ijk"] if isinstance(candidate, dict) else candidate
        return ijk_to_ras_point(volume_node, centre)

    def jump_to_candidate(self, volume_node, candidate: dict | Sequence[float]) -> tuple[float, float, float]:
        """Centre every slice view of the volume's scene on the candidate's centre; returns that RAS
        position. Main thread."""
        if not node_in_scene(volume_node):
            name = volume_node.GetName() if volume_node is not None else "None"
            raise InputError(f"The volume {name} is no longer in the scene; expected a volume in the scene")
        position = self.candidate_centre_ras(volume_node, candidate)
        jump_slices_to(volume_node.GetScene(), position)
        return position

    def run_candidate(self, found: ReportFind, rank: int, progress: ProgressCallback | None = None,
                      method: str = "auto", **segment_options):
        """Segment candidate ``rank`` (1-based) of a Find without localising again; returns the library's
        ``ReportSegmentation`` with ``mask`` on the volume's grid, ``method`` and ``seconds``. Any thread.

        method: 'auto' (a whole structure the localiser outlined keeps its mask, no network runs; a
        lesion is segmented by the backbone from the candidate's box, steered by the report with a
        MedSeg-R checkpoint), 'localiser' or 'backbone' (the library's ``segment_candidate``). segment_options: passed to ``Segmenter.segment`` (axis, options, intensity_cut).
        """
        from MedSegAdaptLib.inference.report_segmentation import segment_candidate

        found.candidate(rank)
        return segment_candidate(found.result, rank - 1, found.volume, found.request.report,
                                 lambda: self._loaded_segmenter(progress), progress, method, **segment_options)

    def apply_candidate(self, result, found: ReportFind, volume_node, segmentation_node,
                        save_undo_state: Callable[[], Any] | None = None) -> str:
        """Write a segmented candidate (:meth:`run_candidate`) into a NEW segment; returns its id. Main thread.

        Never overwrites a segment: a lesion becomes '<structure> N' with the first free N ('lung nodule 1',
        'lung nodule 2', ...: several candidates kept side by side), a whole structure '<structure>' or
        '<structure> (2)'. The segment has the structure's colour and terminology, the report, candidate
        rank, score, reason and method in its tags, and a lesion its volume and longest axial diameter (see
        :attr:`last_measurement`). ``save_undo_state`` is called just before the segmentation changes.
        Refused (nothing written) when a node left the scene or the volume's grid changed since the Find.
        """
        from MedSegAdaptLib.io import default_color, standard_terminology

        _require_in_scene(volume_node, segmentation_node)
        if found.request.volume_node is not volume_node:
            raise InputError(f"The candidates were found in another volume than {volume_node.GetName()}; "
                             "press Find again for this volume")
        geometry = geometry_from_volume_node(volume_node)
        if not geometry.matches(found.volume.geometry):
            raise InputError(f"The volume {volume_node.GetName()} changed since its candidates were found "
                             f"({found.volume.geometry.describe_mismatch(geometry)}); press Find again")
        if result.mask is None or result.mask.shape != geometry.shape:
            raise InputError("The candidate's segmentation does not match the volume's grid")
        structure = found.structure
        rank = result.picked + 1
        candidate = found.candidate(rank)
        name = (unique_segment_name(segmentation_node, structure) if found.is_whole_structure(rank)
                else numbered_segment_name(segmentation_node, structure))
        if not result.mask.any():
            logger.warning("MedSegAdapt: candidate %d of %r segmented to nothing", rank, structure)
        if save_undo_state is not None:
            save_undo_state()
        segment_id = set_segment_mask(segmentation_node, name, result.mask, volume_node, color=default_color(structure),
                                      terminology=standard_terminology(structure), replace=False)
        mark_model_output(segmentation_node, segment_id, result.mask)
        self._keep_model_result(result.mask)
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        for key, value in zip(CANDIDATE_TAGS, (found.request.report, rank, f"{candidate['score']:.4f}",
                                               candidate["reason"], result.method)):
            segment.SetTag(key, tag_text(value))
        self._measure(segmentation_node, segment_id, structure, result.mask, found.volume.geometry)
        return segment_id

    def segment_candidate(self, volume_node, segmentation_node, rank: int = 1,
                          progress: ProgressCallback | None = None, method: str = "auto") -> str:
        """Segment candidate ``rank`` (1-based) of the volume's last Find (:meth:`find_candidates`) into a new
        segment of ``segmentation_node``; returns the segment id (see :meth:`apply_candidate`). Main thread."""
        found = self.last_find(volume_node)
        if found is None:
            name = volume_node.GetName() if volume_node is not None else "the volume"
            raise InputError(f"No candidates found yet in {name}; find a report's candidates first")
        return self.apply_candidate(self.run_candidate(found, rank, progress, method), found, volume_node,
                                    segmentation_node)

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
        box, points = prompts_from_nodes(volume_node, roi_node, points_node, background_points_node)
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
            return suggest_slices(self._loaded_segmenter(progress), request.volume, request.structure, request.budget, request.box,
                                  request.points, axis=axis, options=options, case_id=request.case_id,
                                  progress=progress)
        with _open_store(request.store_path) as store:
            case = store.case(case_id)
            if not case.geometry.matches(request.volume.geometry):
                raise InputError(f"The volume is not the image of case {case_id!r} in {store.root}: "
                                 f"{case.geometry.describe_mismatch(request.volume.geometry)}; "
                                 "expected the case's own image, or another case id")
            return suggest_from_store(store, case_id, request.structure, request.budget, self._loaded_segmenter(progress),
                                      request.box, request.points, axis=axis, options=options, progress=progress)

    def suggest(self, volume_node, structure: str, budget: int, store_path: str | None = None,
                case_id: str | None = None, roi_node=None, progress: ProgressCallback | None = None,
                points_node=None, background_points_node=None, axis: str = "k", purpose: str = "training") -> list:
        """Up to ``budget`` slices of the volume to annotate next for ``structure``, best first, each a
        ``Suggestion`` with its score, DKD, ASD and reason; see :meth:`run_suggestion`.

        The prediction is prompted by the ROI and/or points (or the store's latest label of the
        structure, or nothing with a prompt-free fine-tuned checkpoint). Show a suggestion with
        :meth:`show_slice`.
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

    #: The columns of :meth:`adapt_result_rows`' rows.
    ADAPT_RESULT_COLUMNS = ADAPT_COLUMNS

    def _adapt_results_of(self, store_path: str) -> AdaptResults:
        return self._adapt_results.setdefault(str(_store_folder(store_path).absolute()), AdaptResults())

    def record_samples(self, store_path: str, environment: str, summary: dict) -> None:
        """Keep a finished sample run (:meth:`summarize_samples` of its labels) for the store's result table."""
        self._adapt_results_of(store_path).add_samples(environment, summary)

    def record_fine_tune(self, store_path: str, result) -> None:
        """Keep a finished fine-tuning's ``FineTuneResult`` for the store's result table (it trained on the
        samples of every environment recorded before it)."""
        self._adapt_results_of(store_path).add_fine_tune(result)

    def adapt_result_rows(self, store_path: str | None) -> list[list[str]]:
        """The Adapt panel's result table for the store (columns :attr:`ADAPT_RESULT_COLUMNS`): per environment
        and structure the last run's generated, accepted and queued synthetic labels, then the best
        validation Dice and epochs of the fine-tuning after it ('-' before one); [] without a store."""
        if not str(store_path or "").strip():
            return []
        return self._adapt_results_of(store_path).rows()

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
                                     labels: str = "exact", progress: ProgressCallback | None = None) -> list:
        """Simulate ``count`` samples of ``environment`` (e.g. 'low-dose-ct', with ``settings`` overriding
        its parameters) from the store's corrected cases into the store; returns the ``GeneratedLabel``s.
        Any thread.

        ``labels`` as for the library's generate_samples: 'exact' (default) stores the simulator's own
        labels on the slices the corrections became, no model runs; with 'exact+pseudo' or 'pseudo' the
        pseudo-masks come from an ensemble of the configured model (and the packaged LiteMedSAM when the
        model is a fine-tune of it); those passing every self-validation check (ensemble agreement at
        least ``threshold``, default the library's 0.8) are accepted and train at once, the others wait
        in the review queue. Samples generated before with the same parameters are reused.
        """
        from MedSegAdaptLib.environments import environment as make_environment
        from MedSegAdaptLib.environments import generate_samples
        from MedSegAdaptLib.environments.self_validation import DEFAULT_THRESHOLD

        chosen = make_environment(environment, **(settings or {}))
        members = []
        if labels != "exact":
            members = [self.segmenter()]
            pretrained = self.pretrained_segmenter()
            if pretrained is not None:
                members.append(pretrained)
        with _open_store(store_path) as store:
            return generate_samples(store, chosen, int(count), members, seed=int(seed),
                                    threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                                    labels=labels, progress=progress)

    # corrections

    def submit_correction(self, volume_node, segmentation_node, segment_name: str, store_path: str,
                          case_id: str, annotator: str, slices: dict[str, Sequence[int]] | None = None,
                          comment: str | None = None):
        """Store the segment's current mask as a new correction version; returns the ``LabelVersion``.

        The store is created when ``store_path`` is a new or empty folder. The volume becomes the
        case ``case_id`` the first time (the same image already in the store is recognised, under
        its existing case id). ``slices`` (``{"k": [12, 30]}``) marks a partial annotation. When the
        model wrote the segment in this session, its result is stored first as a prediction of the
        structure (once per store and case): the correction's diff, and the round's agreement
        (:meth:`round_text`), compare the correction with it.
        """
        from MedSegAdaptLib.io import Segment, Segmentation
        from MedSegAdaptLib.store import FineTuningStore, check_slices
        from MedSegAdaptLib.store.validation import check_name

        folder = _store_folder(store_path)
        segment_id = require_segment_id(segmentation_node, segment_name)
        structure = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName().strip()
        volume = volume_from_node(volume_node)
        mask = segment_mask(segmentation_node, segment_id, volume_node)
        predicted = self._model_result(segmentation_node, segment_id, volume.geometry.shape)
        check_name(annotator, "Annotator")  # checked before a prediction is stored: the correction must follow it
        check_slices(slices, volume.geometry.shape)
        with FineTuningStore.init(folder) as store:
            case, _created = store.add_image(volume, case_id=case_id)
            if predicted is not None:
                key = (str(store.root), case.case_id, structure.casefold(), predicted[0])
                if key not in self._predictions_stored:
                    store.add_prediction(case.case_id, Segmentation(volume.geometry, [Segment(structure, predicted[1])]))
                    self._predictions_stored.add(key)
            return store.submit_mask(
                case.case_id, structure, mask, annotator, annotated_slices=slices, comment=comment,
                source=f"3D Slicer segmentation {segmentation_node.GetName()} / segment {structure}",
            )

    @staticmethod
    def history(store_path: str, case_id: str, structure: str | None = None):
        """Every stored version of the case's labels (of one structure if given), oldest first."""
        with _open_store(store_path) as store:
            return store.history(case_id, structure)

    @staticmethod
    def round_text(store_path: str | None, case_id: str | None, structure: str | None) -> str:
        """The Suggestions panel's line on the annotation round of the case's structure in the store, e.g.
        'Round 3 for left lung: the model agreed with your round-2 corrections (k:12,30, 2026-12-02) at Dice
        0.86, +0.05 over round 1.' (see :func:`~MedSegAdaptLogic.loop.describe_rounds`); '' without a
        structure. A store or case not created yet has no corrections."""
        from MedSegAdaptLib.store import annotation_rounds

        structure = (structure or "").strip()
        if not structure:
            return ""
        found = _existing_case(store_path, case_id)
        if found is None:
            return describe_rounds(structure, [])
        with _open_store(store_path) as store:
            return describe_rounds(structure, annotation_rounds(store, found, structure))

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

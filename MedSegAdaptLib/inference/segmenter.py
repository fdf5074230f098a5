"""One entry point for volumetric segmentation: preprocessing, cached encoding, propagation."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.axes import DEFAULT_AXIS
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference.embedding_cache import EmbeddingCache
from MedSegAdaptLib.inference.intensity_cut import cut_to_expected_hu
from MedSegAdaptLib.inference.preprocess import IntensityPreset, preset_for
from MedSegAdaptLib.inference.prompts import Box3D, Point3D
from MedSegAdaptLib.inference.propagation import (
    PropagationOptions,
    PropagationResult,
    VolumePropagator,
    options_for_category,
)
from MedSegAdaptLib.inference.report_guidance import PriorGuidance
from MedSegAdaptLib.inference.slice_encoder import (
    SliceEncoder,
    build_slice_encoder,
    embedding_key,
)
from MedSegAdaptLib.io.modality import resolve_modality
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.knowledge.report_parser import ParsedReport
from MedSegAdaptLib.localization.morphology import largest_component
from MedSegAdaptLib.models.backbone import SamBackbone

__all__ = ["SegmentationOutcome", "Segmenter"]


@dataclass
class SegmentationOutcome:
    """mask: (I, J, K) bool in the volume's geometry (after the intensity cut), plus how it was obtained."""

    mask: np.ndarray
    modality: str
    modality_reason: str
    preset: IntensityPreset
    propagation: PropagationResult
    seconds: float
    slices_encoded: int
    report: ParsedReport | None = None
    """The parsed report or query, when one was given or the backbone has MedSeg-R priors."""
    options: PropagationOptions | None = None
    """The propagation options used (the category preset when none were given)."""


class Segmenter:
    """Segments structures of volumes with a backbone, reusing slice embeddings across prompts.

    A second prompt on the same volume, axis and intensity preset runs only the mask decoder. The
    slicing axis and propagation options are settings of each call, as prompts are.
    text_encoder: folder of the CLIP text encoder for the backbone's MedSeg-R priors, when it is no
    longer where their checkpoint recorded it (None: the recorded one).
    """

    def __init__(self, backbone: SamBackbone, cache: EmbeddingCache | None = None, batch_size: int | None = None,
                 precision: str = "fp32", text_encoder: str | Path | None = None) -> None:
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.cache = cache if cache is not None else EmbeddingCache()
        self.batch_size = batch_size
        self.precision = precision
        self._encoders: dict[str, SliceEncoder] = {}
        self._guidance: PriorGuidance | None = None
        self._checksums: dict[int, tuple[Volume, str]] = {}

    def _checksum(self, volume: Volume) -> str:
        known = self._checksums.get(id(volume))
        if known is None or known[0] is not volume:
            known = (volume, volume.voxel_checksum())
            self._checksums[id(volume)] = known
        return known[1]

    def encoder_for(self, volume: Volume, preset: IntensityPreset, axis: int = DEFAULT_AXIS) -> SliceEncoder:
        """The (memoised) slice encoder of `volume` under `preset` along `axis`."""
        checksum = self._checksum(volume)
        key = embedding_key(checksum, self.backbone.spec.encoder_key, preset, axis)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = build_slice_encoder(self.backbone, self.cache, volume, preset, axis, checksum, self.batch_size,
                                          self.precision)
            self._encoders[key] = encoder
        return encoder

    @staticmethod
    def options_for(structure: str) -> PropagationOptions:
        """The propagation preset of a structure's knowledge-base category (lesions: one component, ...)."""
        return options_for_category(KnowledgeBase.load().category_of(structure))

    @property
    def guidance(self) -> PriorGuidance:
        """Knowledge base and (loaded on first use) text encoder for reports and priors."""
        if self._guidance is None:
            self._guidance = PriorGuidance.for_backbone(self.backbone, self.text_encoder)
        return self._guidance

    def repropagate(self, volume: Volume, structure: str, anchors: dict[int, np.ndarray], box: Box3D | None = None,
                    modality: str = "auto", progress: ProgressCallback | None = None, *, axis: int = DEFAULT_AXIS,
                    options: PropagationOptions | None = None, mode: str = "combined",
                    previous: np.ndarray | None = None) -> SegmentationOutcome:
        """Segment `structure` from annotated slices (anchors: slice index along `axis` -> (H, W) bool mask,
        kept as drawn), optionally within `box`; mode: one of inference.anchored.REPROPAGATION_MODES
        ('interpolation' runs no network). previous: the (I, J, K) bool segmentation the anchors correct;
        the slices re-propagation did not reach (outside the anchors' span and the chains' slices) keep it."""
        from MedSegAdaptLib.inference.anchored import (
            REPROPAGATION_MODES,
            combine_with_interpolation,
            propagate_from_anchors,
        )
        from MedSegAdaptLib.inference.interpolation import interpolate_between_slices

        if mode not in REPROPAGATION_MODES:
            raise InputError(f"unknown re-propagation mode {mode!r}; expected one of {', '.join(REPROPAGATION_MODES)}")

        started = time.perf_counter()
        modality, reason = resolve_modality(modality, volume.array, volume.modality_hint)
        preset = preset_for(structure, modality)
        options = options or self.options_for(structure)
        encoder = self.encoder_for(volume, preset, axis)
        encoded_before = encoder.encoded_count
        interpolated = interpolate_between_slices(anchors, volume.array.shape, axis)
        if mode == "interpolation":
            propagation = PropagationResult(interpolated, min(anchors), stopped_because={"all": "interpolation only"})
        else:
            propagation = propagate_from_anchors(VolumePropagator(encoder, options), anchors, box, progress)
        mask = (combine_with_interpolation(propagation.mask, interpolated, sorted(anchors), axis) if mode == "combined"
                else propagation.mask)
        if previous is not None:
            mask = _keep_unreached(mask, previous, axis, sorted(anchors), propagation.slice_iou)
        # no largest_component here: every annotated slice is kept as drawn, even a separate part
        return SegmentationOutcome(mask, modality, reason, preset, propagation, time.perf_counter() - started,
                                   encoder.encoded_count - encoded_before, None, options)

    def refine(self, volume: Volume, structure: str, previous: np.ndarray, index: int,
               points: tuple[Point3D, ...] | list[Point3D] = (), rect: np.ndarray | None = None,
               box: Box3D | None = None, modality: str = "auto", progress: ProgressCallback | None = None, *,
               axis: int = DEFAULT_AXIS, options: PropagationOptions | None = None, keep: tuple[int, ...] = (),
               propagate: bool = True, intensity_cut: bool = True):
        """Edit slice `index` (along `axis`) of the (I, J, K) bool `previous` segmentation of `structure` with
        points on it and/or a corrected box rect (x0, y0, x1, y1), re-propagating until the change dies out
        (inference.refinement.refine_slice; keep: annotated slices never changed; propagate False: the edited
        slice only; intensity_cut: as segment()'s, on the decoded slices). A RefinementResult."""
        from MedSegAdaptLib.inference.refinement import changed_slices, refine_slice

        modality, _ = resolve_modality(modality, volume.array, volume.modality_hint)
        tokens = None
        if self.backbone.priors is not None:
            self.guidance.check(self.backbone)
            tokens = self.guidance.tokens(self.guidance.parse(structure, modality, structure))
        propagator = VolumePropagator(self.encoder_for(volume, preset_for(structure, modality), axis),
                                      options or self.options_for(structure), tokens)
        result = refine_slice(propagator, previous, index, points, rect, box, keep, progress, propagate)
        if intensity_cut:  # as segment() cuts, on the slices decoded again only
            cut = self._intensity_cut(result.mask, volume, structure, modality)
            span = [slice(None)] * 3
            span[axis] = result.decoded
            result.mask[tuple(span)] = cut[tuple(span)]
            result.changed = changed_slices(result.mask, previous, axis)
        return result

    @staticmethod
    def _intensity_cut(mask: np.ndarray, volume: Volume, structure: str, modality: str) -> np.ndarray:
        """On CT, (I, J, K) `mask` without the voxels far outside the structure's expected HU (not for bone;
        inference.intensity_cut); `mask` itself when nothing applies."""
        entry = KnowledgeBase.load().find_in_text(structure)
        if modality != "ct" or entry is None or entry.category == "bone":
            return mask
        return cut_to_expected_hu(mask, volume.array, entry.hu_ranges())

    def segment(self, volume: Volume, structure: str | None, box: Box3D | None = None,
                points: tuple[Point3D, ...] | list[Point3D] = (), modality: str = "auto",
                progress: ProgressCallback | None = None, report: str | None = None, *, axis: int = DEFAULT_AXIS,
                options: PropagationOptions | None = None, intensity_cut: bool = True) -> SegmentationOutcome:
        """Segment `structure` in `volume` from a 3D box and/or points (IJK), or without a prompt
        when the backbone was fine-tuned prompt-free on that structure.

        modality: 'auto' (from the file's Modality tag, else intensities), 'ct' or 'mr'; with the
        structure name it picks the intensity preset. report: free text (a report or query) parsed
        against the knowledge base; it names the structure when `structure` is None, and with a
        backbone that has MedSeg-R priors its location, texture and shape texts steer the decoder
        (without a report, the knowledge base's description of the structure does). axis: the slicing
        axis (0, 1, 2 for I, J, K); options: how propagation prompts and stops (None: the preset of the
        structure's knowledge-base category, see options_for_category: lesions keep one component);
        intensity_cut: on CT, cut the voxels far outside the structure's expected Hounsfield range
        (inference.intensity_cut; not for bone). The outcome's propagation keeps the uncut mask.
        """
        started = time.perf_counter()
        modality, reason = resolve_modality(modality, volume.array, volume.modality_hint)
        parsed = tokens = None
        if report is not None or self.backbone.priors is not None:
            if report is None and structure is None:
                raise InputError("segmentation needs a structure name or a report")
            parsed = self.guidance.parse(report if report is not None else structure, modality, structure)
            structure = structure or parsed.structure
        if self.backbone.priors is not None:
            self.guidance.check(self.backbone)
            tokens = self.guidance.tokens(parsed)
        preset = preset_for(structure, modality)
        entry = KnowledgeBase.load().find_in_text(structure)  # the structure's category, expected intensity
        if options is None:
            options = options_for_category(entry.category if entry is not None else None)
        encoder = self.encoder_for(volume, preset, axis)
        encoded_before = encoder.encoded_count
        propagator = VolumePropagator(encoder, options, tokens)
        if box is None and not points:
            known = self.backbone.prompt_free_structures
            if structure not in known and (parsed is None or parsed.structure not in known):
                raise InputError(
                    f"structure {structure!r} needs a prompt: give a box or points (prompt-free segmentation "
                    "works for the structures a checkpoint was fine-tuned on with --prompt none or mixed"
                    + (f": {', '.join(known)})" if known else "; this model has none)"))
            propagation = propagator.run_without_prompt(progress)
        else:
            propagation = propagator.run(box, points, progress)
        mask = propagation.mask
        if intensity_cut:
            mask = self._intensity_cut(mask, volume, structure, modality)
            if options.largest_component and mask is not propagation.mask:
                mask = largest_component(mask)
        return SegmentationOutcome(mask, modality, reason, preset, propagation,
                                   time.perf_counter() - started, encoder.encoded_count - encoded_before, parsed, options)


def _keep_unreached(mask: np.ndarray, previous: np.ndarray, axis: int, anchors: list[int], decoded) -> np.ndarray:
    """(I, J, K) bool: `mask` on the anchors' span and the decoded slices, `previous` on every other slice."""
    if previous.shape != mask.shape:
        raise InputError(f"the segmentation to re-propagate has shape {previous.shape}, the volume {mask.shape}")
    reached = np.zeros(mask.shape[axis], dtype=bool)
    reached[anchors[0]:anchors[-1] + 1] = True
    reached[list(decoded)] = True
    merged = np.moveaxis(previous.copy(), axis, 0)
    merged[reached] = np.moveaxis(mask, axis, 0)[reached]
    return np.moveaxis(merged, 0, axis)

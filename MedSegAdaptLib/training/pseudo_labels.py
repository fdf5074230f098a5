"""Selective pseudo-labels for semi-supervised fine-tuning (our design of ASSFT's selective stage).

The ASSFT paper trusts pseudo-labels of unlabeled samples only when the model is confident and the
sample is close to labeled data, without publishing formulas; what follows is ours.

Pseudo-labels: after a first fine-tuning stage on the annotated slices, the model propagates from
every annotated slice of a partial annotation to the unannotated slices around it, each next slice
prompted with the previous mask's box plus the propagation margin (the annotated slice's reference
mask starts the chain). Every unannotated slice is reached from its nearest annotated slice (the
lower one on a tie); a chain stops where the mask vanishes, where the decoder's predicted IoU drops
under PropagationOptions.min_iou, at the next annotated slice, or, beyond the outermost annotated
slices, after half the median gap between annotated slices (rounded up; no limit with one annotated
slice). Past the annotated range nothing says where the structure ends, and a neighbour that looks
alike continues the chain: on CTChest4's thoracic vertebral column, annotated on 3 slices, chains ran
on into the cervical and lumbar vertebrae (pseudo-label Dice 0 there, 0.71-0.93 inside the range).
Slices no chain reaches get no pseudo-label.

Selection, per candidate slice (one with a pseudo-label):
- confidence: 1 - the mean binary entropy (bits) of the foreground probability over the predicted
  mask plus a `band`-pixel band around it (MedSegAdaptLib.inference.uncertainty, as for ASD);
- distance: cosine distance of the slice's pooled encoder embedding to the nearest annotated slice
  of the same volume.
A candidate is accepted when its confidence is at least the `confidence_percentile`-th percentile of
all candidates' confidences and its distance at most the `distance_percentile`-th percentile of
their distances (thresholds relative to the data at hand, so they need no tuning per structure or
scanner). With the default 50/50 about a third of the candidates pass.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from MedSegAdaptLib.core.axes import nearest_slice
from MedSegAdaptLib.inference.propagation import (
    PropagationChain,
    PropagationOptions,
    VolumePropagator,
    mask_vanished,
    predicted_iou_below,
)
from MedSegAdaptLib.inference.slice_encoder import (
    SliceEncoder,
    knowledge_distance,
    pooled_embeddings,
)
from MedSegAdaptLib.inference.uncertainty import slice_difficulty
from MedSegAdaptLib.priors.modules import AttributeTokens

__all__ = [
    "PseudoLabel",
    "SelectionReport",
    "extrapolation_limit",
    "propagate_from_annotations",
    "pseudo_label_volume",
    "select_pseudo_labels",
]


@dataclass
class PseudoLabel:
    """One candidate slice: its mask (H, W) bool on the slice grid, scores and the decision."""

    case_id: str
    structure: str
    axis: int
    index: int
    seed_slice: int
    confidence: float
    distance: float
    accepted: bool = False
    reason: str = ""
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)

    def to_dict(self) -> dict:
        """JSON-ready record without the mask."""
        record = asdict(self)
        del record["mask"]
        record["foreground_pixels"] = int(self.mask.sum())
        return record


@dataclass
class SelectionReport:
    """Which pseudo-labels were accepted, with the thresholds that decided it."""

    candidates: list[PseudoLabel]
    confidence_percentile: float
    distance_percentile: float
    confidence_threshold: float | None = None
    distance_threshold: float | None = None

    @property
    def accepted(self) -> list[PseudoLabel]:
        return [c for c in self.candidates if c.accepted]

    def counts(self) -> dict[str, int]:
        """candidates, accepted, and rejections by cause (a slice can fail both tests)."""
        return {"candidates": len(self.candidates), "accepted": len(self.accepted),
                "low_confidence": sum("low confidence" in c.reason for c in self.candidates),
                "far_from_labeled": sum("far from" in c.reason for c in self.candidates)}

    def summary(self) -> str:
        """One line for people."""
        n = self.counts()
        if not n["candidates"]:
            return "pseudo-labels: no unannotated slice was reached from the annotated ones"
        return (f"pseudo-labels: {n['accepted']} of {n['candidates']} candidate slices accepted "
                f"(confidence >= {self.confidence_threshold:.3f}, embedding distance <= "
                f"{self.distance_threshold:.4f}); rejected: {n['low_confidence']} low confidence, "
                f"{n['far_from_labeled']} far from labeled slices")

    def to_dict(self) -> dict:
        """JSON-ready report (checkpoint metadata, `finetune --semi-supervised` output)."""
        return {"counts": self.counts(), "confidence_percentile": self.confidence_percentile,
                "distance_percentile": self.distance_percentile, "confidence_threshold": self.confidence_threshold,
                "distance_threshold": self.distance_threshold, "slices": [c.to_dict() for c in self.candidates]}


def extrapolation_limit(seeds: list[int]) -> int:
    """Slices a chain may go beyond the outermost annotated slices: half the median gap between the
    sorted annotated `seeds`, rounded up; unlimited (a large number) for a single annotated slice."""
    if len(seeds) < 2:
        return 1 << 30
    return max(1, math.ceil(float(np.median(np.diff(seeds))) / 2))


def propagate_from_annotations(propagator: VolumePropagator, annotated: Mapping[int, np.ndarray],
                               ) -> dict[int, tuple[np.ndarray, int, np.ndarray]]:
    """{unannotated slice: (logits (H, W) float32, seed slice, mask (H, W) bool)} reached by chains
    from the annotated slices' masks (see the module docstring); annotated: {slice: (H, W) bool}."""
    seeds = sorted(annotated)
    reach = extrapolation_limit(seeds)
    lowest, highest = max(0, seeds[0] - reach), min(propagator.shape[propagator.axis] - 1, seeds[-1] + reach)
    opts = propagator.options
    bounds = np.array([0, 0, propagator.width - 1, propagator.height - 1], np.float32)
    stop_rules = (mask_vanished(opts.min_area), predicted_iou_below(opts.min_iou))
    reached: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
    for seed in seeds:
        if annotated[seed].sum() < opts.min_area:
            continue

        def may_enter(index: int, seed: int = seed) -> str | None:
            if not lowest <= index <= highest:
                return f"beyond slices {lowest}..{highest}"
            if index in annotated:
                return f"annotated slice {index}"
            return None if nearest_slice(index, seeds) == seed else f"slice {index} is nearer another annotated slice"

        for step in (1, -1):
            for decoded in PropagationChain(propagator, seed, annotated[seed], step, bounds, may_enter, stop_rules):
                if decoded.stop is None:
                    reached[decoded.index] = (decoded.logits.numpy(), seed, decoded.mask)
    return reached


def pseudo_label_volume(encoder: SliceEncoder, annotated: Mapping[int, np.ndarray], case_id: str, structure: str,
                        band: int = 2, propagation: PropagationOptions = PropagationOptions(),
                        prior_tokens: AttributeTokens | None = None) -> list[PseudoLabel]:
    """Undecided candidates of one volume and structure: pseudo-labels with their confidence and
    embedding distance (select_pseudo_labels decides them). encoder: the volume's slices along the annotation axis, with the
    fine-tuned model as its backbone (slices are encoded when missing from its cache); band: pixels
    around the predicted mask where confidence is measured; propagation: margin and min_iou."""
    propagator = VolumePropagator(encoder, propagation, prior_tokens)
    encoder.ensure(list(range(propagator.shape[propagator.axis])))
    reached = propagate_from_annotations(propagator, annotated)
    if not reached:
        return []
    indices = sorted(reached)
    distance = knowledge_distance(pooled_embeddings(encoder, indices), pooled_embeddings(encoder, sorted(annotated)))
    candidates = []
    for index, dist in zip(indices, distance):
        logits, seed, mask = reached[index]
        entropy = slice_difficulty(torch.from_numpy(logits)[None], band)[0]
        candidates.append(PseudoLabel(case_id, structure, encoder.axis, index, seed, 1.0 - entropy, float(dist),
                                      mask=mask))
    return candidates


def select_pseudo_labels(candidates: list[PseudoLabel], confidence_percentile: float = 50.0,
                         distance_percentile: float = 50.0) -> SelectionReport:
    """Decide every candidate (in place): accepted when its confidence is at least the
    `confidence_percentile`-th percentile of all candidates' and its distance at most the
    `distance_percentile`-th percentile of theirs."""
    if not candidates:
        return SelectionReport([], confidence_percentile, distance_percentile)
    confidence = np.array([c.confidence for c in candidates])
    distance = np.array([c.distance for c in candidates])
    confidence_threshold = float(np.percentile(confidence, confidence_percentile))
    distance_threshold = float(np.percentile(distance, distance_percentile))
    for candidate in candidates:
        reasons = []
        if candidate.confidence < confidence_threshold:
            reasons.append(f"low confidence ({candidate.confidence:.3f} < {confidence_threshold:.3f})")
        if candidate.distance > distance_threshold:
            reasons.append(f"far from labeled slices ({candidate.distance:.4f} > {distance_threshold:.4f})")
        candidate.accepted = not reasons
        candidate.reason = "; ".join(reasons) if reasons else (
            f"confident ({candidate.confidence:.3f}) and close to labeled slice {candidate.seed_slice}")
    return SelectionReport(candidates, confidence_percentile, distance_percentile, confidence_threshold,
                           distance_threshold)

"""Pseudo-masks for generated images: an ensemble of segmentations fused by agreement.

Members: every model given (the current checkpoint, and e.g. the pretrained one) times every box
variant (the prompt box as given, shrunk by one voxel and grown by two in-plane: test-time
augmentation of the prompt, which needs no new encoder pass). Member m is steered by query
m mod len(queries), so the varied clinical queries of a sample enter the ensemble through the
MedSeg-R priors of models that have them.

Uncertainty-aware fusion: each member's weight is its mean Dice with the other members, so a member
that disagrees with the rest (an outlier prediction) counts less; the fused mask is where the
weighted vote reaches one half. The agreement, the mean pairwise Dice of the members, is the
ensemble's confidence that self-validation uses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.core.axes import DEFAULT_AXIS
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import pairwise_dice
from MedSegAdaptLib.inference.prompts import Box3D
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.io import Volume

__all__ = ["IN_PLANE_CHANGES", "EnsembleMask", "box_variants", "ensemble_pseudo_mask", "fuse"]

IN_PLANE_CHANGES = (0, -1, 2)
"""Voxels added to each in-plane side of the prompt box, one ensemble member each."""


@dataclass
class EnsembleMask:
    """mask (I, J, K) bool fused; probability (I, J, K) float32 weighted vote; agreement: mean
    pairwise Dice of the members (1.0 for one member); weights: each member's fusion weight."""

    mask: np.ndarray
    probability: np.ndarray
    agreement: float
    weights: list[float]


def box_variants(box: Box3D, shape: tuple[int, int, int], axis: int = DEFAULT_AXIS,
                 changes: Sequence[int] = IN_PLANE_CHANGES) -> list[Box3D]:
    """The box with each in-plane side moved out by every change in `changes` (kept in the volume, at
    least one voxel wide); the range along `axis` unchanged."""
    variants = []
    for change in changes:
        lo, hi = np.array(box.lo), np.array(box.hi)
        plane = [a for a in range(3) if a != axis]
        lo[plane] = np.maximum(lo[plane] - change, 0)
        hi[plane] = np.minimum(hi[plane] + change, np.array(shape)[plane] - 1)
        hi = np.maximum(hi, lo)
        variants.append(Box3D(tuple(int(v) for v in lo), tuple(int(v) for v in hi)))
    return variants


def fuse(masks: Sequence[np.ndarray]) -> EnsembleMask:
    """Agreement-weighted vote of N (I, J, K) bool masks (see the module docstring)."""
    stack = np.stack([np.asarray(m, bool) for m in masks])
    count = len(stack)
    if count == 1:
        return EnsembleMask(stack[0].copy(), stack[0].astype(np.float32), 1.0, [1.0])
    dice = pairwise_dice(stack, stack)
    off_diagonal = ~np.eye(count, dtype=bool)
    weights = np.array([dice[i][off_diagonal[i]].mean() for i in range(count)])
    if weights.sum() <= 0:
        weights = np.ones(count)
    probability = np.tensordot(weights / weights.sum(), stack.astype(np.float32), axes=1).astype(np.float32)
    return EnsembleMask(probability >= 0.5, probability, float(dice[np.triu_indices(count, 1)].mean()),
                        [float(w) for w in weights])


def ensemble_pseudo_mask(segmenters: Sequence[Segmenter], volume: Volume, structure: str, box: Box3D,
                         queries: Sequence[str] = (), modality: str = "auto", axis: int = DEFAULT_AXIS) -> EnsembleMask:
    """Fused pseudo-mask of `structure` in `volume` from every segmenter and box variant, slicing along
    `axis`; queries (may be empty) steer models with priors, one per member in turn."""
    if not segmenters:
        raise InputError(f"no model to pseudo-label {structure!r} with; expected at least one segmenter")
    members = []
    for variant in box_variants(box, volume.array.shape, axis):
        for segmenter in segmenters:
            report = queries[len(members) % len(queries)] if queries else None
            members.append(segmenter.segment(volume, structure, box=variant, modality=modality, report=report,
                                             axis=axis).mask)
    return fuse(members)

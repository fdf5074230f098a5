"""Per-slice scores for active suggestions: our adaptation of ASSFT's DKD and ASD, plus diversity.

The ASSFT paper ("Adapting Medical Vision Foundation Models for Volumetric Medical Image Segmentation
via Active Learning and Selective Semi-supervised Fine-tuning") names its criteria but publishes no
formulas; the scores below are ours.

- ASD (anatomical segmentation difficulty), per candidate slice: the slice is decoded with its
  prompt box and `augmentations` jittered copies of it (one batched decoder call on the cached
  embedding). entropy: mean binary entropy (bits) of the mean foreground probability over the
  predicted foreground of any decode plus a `band`-pixel band around it (background far from the
  structure is left out, so its noise does not dominate); disagreement: 1 - mean pairwise Dice of
  the decodes' masks. ASD = the rank over the candidates of (entropy + disagreement) / 2, scaled to
  [0, 1] (:func:`normalise`).
- DKD (knowledge divergence): divergence, 1 - Dice of the adapted and the pretrained model's masks
  on the same prompt (when an adapted model is given), and embedding distance, the cosine distance of
  the slice's pooled embedding (mean over the 64x64 grid of its 256-channel embedding) to its nearest
  labeled slice (0 everywhere while nothing is labeled: the distance to the candidates' mean, used
  before, is an outlier score that picked the extreme slices first). Each is rank-normalised over
  the candidates (:func:`normalise`); DKD = divergence_share * divergence + (1 - divergence_share) * distance, or the
  distance alone.
- Presence: slice totals are scaled down towards the ends of the predicted extent (`edge_band`), and
  slices beyond it get 0, because there the structure may not exist at all: the labels are small or
  empty and teach box-prompted fine-tuning nothing (see :func:`presence_weights`).
- Selection, coverage first (`coverage_window` a number, the default): total = (weight_dkd * DKD +
  weight_asd * ASD) * presence; the budget is spread over the unlabeled stretches of the 3D box's
  slice range (or the predicted extent) as evenly spaced target slices, and each pick is the best
  total near its target (see :func:`coverage_targets`, :func:`select_covering`). Picking by total
  alone put every label in the few hardest slices, and letting totals move picks a quarter spacing
  off their targets, trained worse than evenly spaced labels (docs/suggestions.md).
- Selection, greedy (`coverage_window` None, ranking for correction): slices are picked by total, each
  pick multiplying the others' totals by their separation from everything picked or labeled
  (see :func:`select_diverse`), so neighbours are not picked together.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from MedSegAdaptLib.inference.prompts import Point3D
from MedSegAdaptLib.inference.propagation import VolumePropagator
from MedSegAdaptLib.inference.slice_encoder import SliceEncoder, cosine_distances
from MedSegAdaptLib.suggestions.options import ScoringOptions

__all__ = [
    "CoverageTarget",
    "Pick",
    "SliceDecoder",
    "combine_scores",
    "coverage_targets",
    "jittered_rects",
    "normalise",
    "presence_weights",
    "select_covering",
    "select_diverse",
]


@dataclass(frozen=True)
class CoverageTarget:
    """Where one covering pick aims: `position` (a slice position, maybe fractional) inside the unlabeled
    stretch between slices `start` and `end` (ends of the predicted extent or labeled slices), whose
    targets lie `spacing` slices apart and from the stretch's ends."""

    position: float
    spacing: float
    start: int
    end: int


@dataclass(frozen=True)
class Pick:
    """One pick: the slice, its score (greedy: the total after the diversity penalty; covering: the total),
    the nearest slice picked earlier or labeled (greedy: the one that penalised it; None when there was
    none) and, when covering, the target it aimed at."""

    index: int
    score: float
    nearest: int | None
    target: CoverageTarget | None = None


class SliceDecoder:
    """Decodes single slices of one prepared volume with one model, from the cached embeddings."""

    def __init__(self, encoder: SliceEncoder, propagator: VolumePropagator) -> None:
        self.encoder = encoder
        self.propagator = propagator

    def logits(self, index: int, rects: np.ndarray | None, points: Sequence[Point3D] = ()) -> torch.Tensor:
        """(N, H, W) logits on the slice grid for N box prompts rects (N, 4) = x0, y0, x1, y1 in slice
        pixels (one decoder call), or (1, H, W) without a prompt for rects None. Points go to
        backbones trained with them, as in propagation."""
        use_points = points if self.encoder.backbone.spec.point_prompts else ()
        return self.propagator.predict_logits(index, rects, use_points)[0]


def jittered_rects(rect: np.ndarray, count: int, jitter: float, height: int, width: int,
                   rng: np.random.Generator) -> np.ndarray:
    """(count + 1, 4) boxes: `rect` (x0, y0, x1, y1) first, then `count` copies whose corners moved
    by up to `jitter` times the box's width (x) and height (y), kept inside the (height, width) slice."""
    size = np.array([rect[2] - rect[0], rect[3] - rect[1]] * 2, dtype=np.float32) + 1
    moved = rect + rng.uniform(-jitter, jitter, size=(count, 4)).astype(np.float32) * size
    moved = np.clip(moved, 0, np.array([width - 1, height - 1] * 2, dtype=np.float32))
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1)
    return np.concatenate([rect[None].astype(np.float32), moved])






def presence_weights(indices: Sequence[int], predicted: Collection[int], edge_band: float) -> np.ndarray:
    """(N,) weights in [0, 1] of candidate slices `indices`: 0 outside the predicted extent (the range
    of the `predicted` slices), rising inside it as (d + 1) / (band + 1) with d the slice distance to
    the extent's nearer end and band = edge_band * the extent's length, capped at 1. All ones for
    edge_band 0 or nothing predicted (the 3D box is the only extent then)."""
    indices = np.asarray(indices, dtype=np.float64)
    if edge_band <= 0 or not predicted:
        return np.ones(len(indices))
    lo, hi = min(predicted), max(predicted)
    band = edge_band * (hi - lo + 1)
    inside = np.minimum(indices - lo, hi - indices)
    return np.where(inside >= 0, np.minimum(1.0, (inside + 1) / (band + 1)), 0.0)


def normalise(values: Sequence[float]) -> np.ndarray:
    """Rank scaling to [0, 1]: (number of smaller values + half the other equal ones) / (N - 1), so the
    smallest is 0 and the largest 1 however far one value stands out (min-max scaling let one extreme
    slice squeeze every other into the bottom half); all zeros when the values do not vary."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or values.max() - values.min() <= 1e-12:
        return np.zeros_like(values)
    smaller = (values[None, :] < values[:, None]).sum(1)
    equal = (values[None, :] == values[:, None]).sum(1) - 1
    return (smaller + equal / 2) / (values.size - 1)


def combine_scores(difficulty: Sequence[float], distance: Sequence[float], divergence: Sequence[float] | None,
                   options: ScoringOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ASD, DKD, divergence_led, total), each (N,), from N candidates' raw difficulty ((entropy +
    disagreement) / 2), embedding distance and divergence (None without an adapted model), as the module
    docstring says; divergence_led marks where the normalised divergence exceeds the normalised distance."""
    asd = normalise(difficulty)
    dkd = closeness = normalise(distance)
    divergence_led = np.zeros(len(asd), dtype=bool)
    if divergence is not None:
        departure = normalise(divergence)
        divergence_led = departure > closeness
        dkd = options.divergence_share * departure + (1 - options.divergence_share) * closeness
    return asd, dkd, divergence_led, options.weight_dkd * dkd + options.weight_asd * asd


def select_diverse(indices: Sequence[int], totals: Sequence[float], pooled: np.ndarray,
                   labeled: Sequence[int], labeled_pooled: np.ndarray, budget: int,
                   options: ScoringOptions = ScoringOptions(), by_position: bool = True) -> list[Pick]:
    """Greedy k-center-like pick of `budget` candidate slices, returned by score (best first).

    indices, totals: the candidates and their totals in [0, 1]; pooled (N, D), labeled_pooled (M, D):
    pooled embeddings of the candidates and of the `labeled` slices. The separation of slice k from
    an anchor r (picked or labeled) is 0.5 * min(1, |k - r| / spacing) + 0.5 * min(1, cos_dist(k, r)
    / D) with D the median pairwise cosine distance of the candidates; each step picks the largest
    total * min-over-anchors(separation) ** diversity, first skipping candidates within min_gap slices
    of an anchor. Ties go to the lower slice; deterministic. by_position False: indices are distinct
    ids, not slice positions (whole volumes), and the separation is min(1, cos_dist(k, r) / D) alone,
    without spacing or min_gap.
    """
    indices = np.asarray(indices, dtype=int)
    totals = np.asarray(totals, dtype=np.float64)
    anchors = list(labeled)
    anchor_pooled = list(labeled_pooled)
    in_range = sum(1 for r in labeled if indices.size and indices.min() <= r <= indices.max())
    spacing = options.spacing or max(2.0, len(indices) / (budget + in_range + 1))
    pairwise = cosine_distances(pooled, pooled)[np.triu_indices(len(indices), 1)]
    scale = float(np.median(pairwise)) if pairwise.size and np.median(pairwise) > 0 else 1.0
    free = np.ones(len(indices), dtype=bool)
    picks: list[Pick] = []
    while len(picks) < budget and free.any():
        separation = np.ones(len(indices))
        nearest = np.full(len(indices), -1)
        gap = np.full(len(indices), np.inf)
        if anchors:
            combined = np.minimum(1, cosine_distances(pooled, np.stack(anchor_pooled)) / scale)
            if by_position:
                offsets = np.abs(indices[:, None] - np.asarray(anchors)[None])
                combined = 0.5 * np.minimum(1, offsets / spacing) + 0.5 * combined
                gap = offsets.min(1)
            separation, nearest = combined.min(1), np.asarray(anchors)[combined.argmin(1)]
        adjusted = totals * separation ** options.diversity
        allowed = free & (gap > options.min_gap)
        choice = int(np.argmax(np.where(allowed if allowed.any() else free, adjusted, -np.inf)))
        picks.append(Pick(int(indices[choice]), float(adjusted[choice]),
                          int(nearest[choice]) if nearest[choice] >= 0 else None))
        free[choice] = False
        anchors.append(int(indices[choice]))
        anchor_pooled.append(pooled[choice])
    return sorted(picks, key=lambda pick: -pick.score)


def coverage_targets(extent: tuple[int, int], labeled: Collection[int], budget: int) -> list[CoverageTarget]:
    """`budget` target slices spread over `extent` (first, last slice), by position.

    The extent's ends and the labeled slices inside it cut it into stretches; each target in turn goes to
    the stretch whose targets would otherwise lie farthest apart (length / (targets + 1), ties to the lower
    stretch), and a stretch's n targets split it into n + 1 equal parts. With nothing labeled these are
    `uniform_slices`' positions: the extent's ends are left out, where the structure is small."""
    lo, hi = extent
    anchors = sorted({lo, hi} | {int(r) for r in labeled if lo < r < hi})
    stretches = list(zip(anchors[:-1], anchors[1:])) or [(lo, hi)]
    counts = [0] * len(stretches)
    for _ in range(budget):
        widest = max(range(len(stretches)), key=lambda n: (stretches[n][1] - stretches[n][0]) / (counts[n] + 1))
        counts[widest] += 1
    targets = []
    for (start, end), count in zip(stretches, counts):
        spacing = (end - start) / (count + 1)
        targets += [CoverageTarget(start + spacing * j, spacing, start, end) for j in range(1, count + 1)]
    return targets


def select_covering(indices: Sequence[int], totals: Sequence[float], extent: tuple[int, int],
                    labeled: Sequence[int], budget: int, window: float) -> list[Pick]:
    """Up to `budget` candidate slices spread over `extent` (first, last slice), best total first.

    indices, totals: the candidates (labeled slices excluded) and their totals. Each target of
    :func:`coverage_targets` takes the free candidate with the largest total within max(window * spacing,
    0.5) slices of it (so a target between two slices weighs both; ties to the nearer, then the lower
    slice), or the nearest free candidate when that range holds none. Deterministic."""
    total_of = dict(zip((int(k) for k in indices), (float(t) for t in totals)))
    anchors = [int(r) for r in labeled]
    picks: list[Pick] = []
    for target in coverage_targets(extent, labeled, budget):
        free = [k for k in total_of if k not in anchors]
        if not free:
            break
        reach = max(window * target.spacing, 0.5)
        near = [k for k in free if abs(k - target.position) <= reach + 1e-9]
        if near:
            choice = max(near, key=lambda k: (total_of[k], -abs(k - target.position), -k))
        else:
            choice = min(free, key=lambda k: (abs(k - target.position), k))
        nearest = min(anchors, key=lambda r: (abs(r - choice), r)) if anchors else None
        picks.append(Pick(choice, total_of[choice], nearest, target))
        anchors.append(choice)
    return sorted(picks, key=lambda pick: -pick.score)

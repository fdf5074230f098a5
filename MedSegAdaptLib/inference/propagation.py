"""Slice-by-slice volumetric segmentation from a 3D box and/or points.

Starting from the middle slice of the box (or the slice of the foreground points), each next slice
is prompted with the previous slice's mask box plus a margin, clipped to the 3D box (lesions: also
with the 3D box's rectangle, the more confident mask kept); propagation
stops when the mask vanishes, when the decoder's predicted IoU drops under a threshold, when the
intensity inside the mask leaves the start slice's, or at the end of the box. A 2D box (one slice
thick, drawn on one slice) propagates through the whole volume until a stopping rule fires.

Backbones trained with boxes only (LiteMedSAM) get no point prompts: foreground points without a
box become a start box around the region of similar intensity connected to them on their slice.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from skimage.filters import gaussian
from skimage.measure import label as label_components
from skimage.morphology import dilation, disk
from skimage.segmentation import flood

from MedSegAdaptLib.core.axes import in_plane_axes, put_slice, take_slices
from MedSegAdaptLib.core.constants import MIN_MASK_AREA
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference.preprocess import logits_to_slice, slice_scale
from MedSegAdaptLib.inference.prompts import Box3D, Point3D, mask_rect
from MedSegAdaptLib.inference.slice_encoder import SliceEncoder
from MedSegAdaptLib.localization.morphology import largest_component

if TYPE_CHECKING:  # the prior modules import torchvision: only a backbone with priors needs them
    from MedSegAdaptLib.priors.modules import AttributeTokens

__all__ = [
    "BOX_RECT_MODES",
    "LESION_OPTIONS",
    "ChainStep",
    "PropagationChain",
    "PropagationOptions",
    "PropagationResult",
    "StopRule",
    "VolumePropagator",
    "contrast_lost",
    "first_passing",
    "intensity_drift",
    "mask_vanished",
    "next_prompt_rect",
    "options_for_category",
    "predicted_iou_below",
    "prompt_rect",
]


BOX_RECT_MODES = ("off", "rescue", "confident")
"""PropagationOptions.box_rect: when the 3D box's rectangle is tried on each slice (see its docstring)."""


@dataclass(frozen=True)
class PropagationOptions:
    """margin: pixels added around the previous slice's mask box; min_area: a mask with fewer
    pixels counts as vanished; min_iou: predicted IoU under which propagation stops;
    max_intensity_shift: propagation stops when the median intensity inside a slice's mask moves
    further from the start slice's median than this fraction of the clipped intensity range (the
    mask has left the structure, e.g. from lung into liver at the lung base; with the classic lung
    window and no intensity cut it lifted CTChest4's right/left lung from 0.78/0.74 to 0.88/0.81 and cost
    the heterogeneous 'tissue' segment 0.43 -> 0.19; 1.0 switches the rule off); largest_component: keep only the largest 3D
    connected component; flood_tolerance: for box-only backbones, the intensity tolerance (fraction
    of the clipped range) of the region grown from foreground points into a start box;
    min_contrast: propagation stops when the contrast of a slice's mask with the ring around it
    (median inside minus median in a 3-pixel ring) falls under this fraction of the start slice's
    contrast or flips sign (the decoder has filled a box beyond the end of a lesion; 0 switches the
    rule off); box_rect: with a 3D box, whether each slice is also decoded with the box's own rectangle
    (one decoder call for both prompts) and which mask the chain keeps: 'off' (the follow box alone),
    'rescue' (the follow box's mask unless a stop rule ends the chain on it and not on the rectangle's),
    'confident' (the mask of higher predicted IoU, the other when a stop rule ends the chain on that
    one; a structure that grows faster from slice to slice than the margin, as brain1's tumour over
    6.5 mm slices, is caught by the rectangle). `options_for_category` gives the preset of a knowledge-base category
    (docs/segmentation.md has each rule's effect per real target)."""

    margin: int = 3
    min_area: int = MIN_MASK_AREA
    min_iou: float = 0.0
    max_intensity_shift: float = 0.2
    largest_component: bool = False
    flood_tolerance: float = 0.07
    min_contrast: float = 0.0
    box_rect: str = "off"

    def __post_init__(self) -> None:
        if self.box_rect not in BOX_RECT_MODES:
            raise InputError(f"box_rect {self.box_rect!r} is not one of {', '.join(BOX_RECT_MODES)}")


LESION_OPTIONS = PropagationOptions(min_contrast=0.25, largest_component=True, box_rect="confident")
"""Lesions: compact, so the contrast rule, one component and the 3D box's rectangle as a second prompt on
every slice (box_rect 'confident'); the organs' intensity rule (0.2). A tighter 0.1 rule stopped brain1's
chains at correctly segmented slices whenever the start slice's mask was loose (its median is the rule's
reference). The rectangle catches a tumour that grows faster between slices than the follow box's margin:
in rounds of 2 suggested brain1 slices the fine-tuned model's Dice went from 0.35 to 0.81; one box
zero-shot, brain2 0.514 -> 0.604, brain1 0.632 -> 0.594, breast1 0.578 -> 0.563 (docs/segmentation.md,
"A second prompt per slice", and "Stopping rules after fine-tuning")."""


def options_for_category(category: str | None) -> PropagationOptions:
    """The propagation preset for a knowledge-base category ('lesion', 'organ', ...; None: unknown)."""
    return LESION_OPTIONS if category == "lesion" else PropagationOptions()


FLOOD_SCALES = (0.5, 0.75, 1.0, 1.5)
"""Multiples of PropagationOptions.flood_tolerance tried when a point alone starts a box-only backbone."""
POINT_IOU_SLACK = 0.05
"""Predicted IoU a smaller start box may give up against the most confident one."""


@dataclass
class PropagationResult:
    """mask: (I, J, K) bool; slice_iou: decoder's predicted IoU per processed slice index."""

    mask: np.ndarray
    start_slice: int
    slice_iou: dict[int, float] = field(default_factory=dict)
    stopped_because: dict[str, str] = field(default_factory=dict)


def _start_slice(axis: int, box: Box3D | None, points: list[Point3D]) -> int:
    """The middle slice of the box, else the slice holding most foreground points."""
    if box is not None:
        lo, hi = box.slice_range(axis)
        return (lo + hi) // 2
    foreground = Counter(p.ijk[axis] for p in points if p.label == 1)
    if not foreground:
        raise InputError("points without a box need at least one foreground point (label 1)")
    return foreground.most_common(1)[0][0]


def prompt_rect(rect: np.ndarray, grow: float | np.ndarray, bounds: np.ndarray | None = None) -> np.ndarray:
    """The box prompt (x0, y0, x1, y1) float32: `rect` grown outwards by `grow` pixels (one number, or
    one per side as (4,)), clipped to `bounds` (x0, y0, x1, y1) when given and never flipped."""
    grown = np.asarray(rect, np.float32) + np.array([-1, -1, 1, 1], np.float32) * np.asarray(grow, np.float32)
    if bounds is None:
        return grown
    bounds = np.asarray(bounds, np.float32)
    clipped = np.clip(grown, bounds[[0, 1, 0, 1]], bounds[[2, 3, 2, 3]])
    clipped[2:] = np.maximum(clipped[2:], clipped[:2])
    return clipped


def next_prompt_rect(previous: np.ndarray, margin: float, bounds: np.ndarray) -> np.ndarray:
    """The propagation rule: the next slice's box prompt is the (H, W) `previous` mask's bounding box
    plus `margin` pixels, clipped to `bounds` (the 3D box's rectangle, or the whole slice)."""
    return prompt_rect(mask_rect(previous), margin, bounds)


StopRule = Callable[[int, np.ndarray, float], "str | None"]
"""rule(slice index, decoded (H, W) mask, predicted IoU) -> why the chain stops there, or None."""


def mask_vanished(min_area: int) -> StopRule:
    """Stop where the decoded mask has fewer than `min_area` pixels."""
    return lambda index, mask, iou: f"mask vanished at slice {index}" if mask.sum() < min_area else None


def predicted_iou_below(min_iou: float) -> StopRule:
    """Stop where the decoder's predicted IoU drops under `min_iou`."""
    return lambda index, mask, iou: f"predicted IoU {iou:.2f} < {min_iou} at slice {index}" if iou < min_iou else None


def intensity_drift(clipped: np.ndarray, axis: int, reference: float, tolerance: float) -> StopRule:
    """Stop where the median clipped intensity inside the mask leaves `reference` +- `tolerance`."""

    def rule(index: int, mask: np.ndarray, iou: float) -> str | None:
        median = float(np.median(take_slices(clipped, axis, [index])[0][mask]))
        if abs(median - reference) > tolerance:
            return f"median intensity {median:.0f} left {reference:.0f} +- {tolerance:.0f} at slice {index}"
        return None

    return rule


def _ring_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Median of (H, W) `image` inside `mask` minus its median in the 3-pixel ring around it."""
    ring = dilation(mask, disk(3)) & ~mask
    return float(np.median(image[mask]) - np.median(image[ring])) if ring.any() else 0.0


def contrast_lost(clipped: np.ndarray, axis: int, start_contrast: float, fraction: float) -> StopRule:
    """Stop where the mask's contrast with its surrounding ring falls under `fraction` of `start_contrast`
    (same sign), i.e. the mask no longer stands out from its surroundings as the structure did."""

    def rule(index: int, mask: np.ndarray, iou: float) -> str | None:
        contrast = _ring_contrast(take_slices(clipped, axis, [index])[0], mask)
        if contrast * np.sign(start_contrast) < fraction * abs(start_contrast):
            return f"contrast with the surroundings {contrast:.0f} < {fraction} x {start_contrast:.0f} at slice {index}"
        return None

    return rule


def first_passing(index: int, masks: np.ndarray, iou: np.ndarray, stop_rules: Sequence[StopRule],
                  confident_first: bool) -> tuple[int, str | None]:
    """Which of one slice's N decoded masks (N, H, W) bool, predicted IoU (N,), a chain keeps, and why it
    stops there (None: it goes on): the first mask that no stop rule ends, in prompt order (the follow
    box, then the 3D box's rectangle) or, with `confident_first`, by descending predicted IoU; when every
    mask ends the chain, the first in that order with its reason."""
    order = [int(n) for n in np.argsort(-iou, kind="stable")] if confident_first else list(range(len(masks)))
    reasons = []
    for candidate in order:
        reason = next((why for rule in stop_rules if (why := rule(index, masks[candidate], float(iou[candidate]))) is not None), None)
        if reason is None:
            return candidate, None
        reasons.append(reason)
    return order[0], reasons[0]


@dataclass
class ChainStep:
    """One decoded slice of a chain: logits (H, W) float32 on the CPU, mask (H, W) bool, predicted IoU,
    and `stop`, the reason the chain ends here (the slice is then not part of the result), else None."""

    index: int
    logits: torch.Tensor
    mask: np.ndarray
    iou: float
    stop: str | None = None


class PropagationChain:
    """Slices decoded one after another from a seed slice's mask, in one direction (`step` +1 or -1).

    Each next slice is prompted by next_prompt_rect of the previous mask (points on that slice, if any,
    go with the box) and, when `box_rect` is given and options.box_rect is not 'off', also by that
    rectangle (first_passing picks the mask; a follow box equal to it is decoded once). Before a slice is
    decoded, `may_enter(index)` may refuse it (end of range, an annotated slice, ...); after, the first of
    `stop_rules` that fires ends the chain there. Iterating yields every decoded slice, the one that
    stopped the chain last (with its `stop`); `stopped_because` then says why the chain ended.
    """

    def __init__(self, propagator: VolumePropagator, seed_index: int, seed_mask: np.ndarray, step: int,
                 bounds: np.ndarray, may_enter: Callable[[int], str | None], stop_rules: Sequence[StopRule],
                 points_on: Mapping[int, list[Point3D]] | None = None, box_rect: np.ndarray | None = None) -> None:
        self.propagator = propagator
        self.box_rect = None if propagator.options.box_rect == "off" else box_rect
        self.seed_index, self.seed_mask, self.step = seed_index, seed_mask, step
        self.bounds, self.may_enter, self.stop_rules = bounds, may_enter, stop_rules
        self.points_on = points_on or {}
        self.stopped_because = ""

    def __iter__(self) -> Iterator[ChainStep]:
        encoder, step = self.propagator.encoder, self.step
        previous, index = self.seed_mask, self.seed_index + step
        while True:
            refused = self.may_enter(index)
            if refused is not None:
                self.stopped_because = refused
                return
            encoder.ensure([i for i in range(index, index + step * encoder.batch_size, step) if self.may_enter(i) is None])
            rect = next_prompt_rect(previous, self.propagator.options.margin, self.bounds)
            same = self.box_rect is None or np.array_equal(rect, self.box_rect)  # the follow box fills the 3D box
            rects = rect[None] if same else np.stack([rect, self.box_rect])
            logits, iou = self.propagator.predict_logits(index, rects, self.points_on.get(index, []))
            masks, scores = (logits > 0).numpy(), iou.float().cpu().numpy()
            best, stop = first_passing(index, masks, scores, self.stop_rules,
                                       confident_first=self.propagator.options.box_rect == "confident")
            mask, score = masks[best], float(scores[best])
            yield ChainStep(index, logits[best], mask, score, stop)
            if stop is not None:
                self.stopped_because = stop
                return
            previous, index = mask, index + step


class VolumePropagator:
    """Runs the decoder slice by slice over cached embeddings of one prepared volume."""

    def __init__(self, encoder: SliceEncoder, options: PropagationOptions = PropagationOptions(),
                 prior_tokens: AttributeTokens | None = None) -> None:
        """prior_tokens: MedSeg-R attribute tokens for a backbone with priors (see MedSegAdaptLib.priors)."""
        self.encoder = encoder
        self.options = options
        self.prior_tokens = prior_tokens
        self.axis = encoder.axis
        self.shape = encoder.clipped.shape
        x_axis, y_axis = in_plane_axes(self.axis)
        self.height, self.width = self.shape[y_axis], self.shape[x_axis]
        self.scale = slice_scale(self.height, self.width, encoder.backbone.spec.image_size)

    @torch.inference_mode()
    def predict_logits(self, index: int, rects: np.ndarray | None,
                       points: Sequence[Point3D] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, H, W) float32 on the CPU, on the slice grid, and predicted IoU (N,) for one slice
        decoded with N box prompts rects (N, 4) x0, y0, x1, y1 in slice pixels (one decoder call), or
        once without a box for rects None; the same points (if any) go with every box."""
        backbone = self.encoder.backbone
        device = backbone.device
        count = 1 if rects is None else len(rects)
        boxes = None if rects is None else torch.as_tensor(rects * self.scale, dtype=torch.float32, device=device)
        coords = labels = None
        if points:
            coords = torch.tensor([[p.xy(self.axis) for p in points]], dtype=torch.float32, device=device) * self.scale
            labels = torch.tensor([[p.label for p in points]], dtype=torch.int64, device=device)
            coords, labels = coords.expand(count, -1, -1), labels.expand(count, -1)
        logits, iou = backbone.decode(self.encoder.embedding(index), boxes=boxes, points=coords, point_labels=labels,
                                      prior_tokens=self.prior_tokens)
        return logits_to_slice(logits, self.height, self.width, backbone.spec.image_size).float().cpu(), iou[:, 0]

    def predict_slice(self, index: int, rect: np.ndarray | None, points: Sequence[Point3D] = ()) -> tuple[np.ndarray, float]:
        """(H, W) bool mask and predicted IoU for one slice; rect (x0, y0, x1, y1) in slice pixels."""
        logits, iou = self.predict_logits(index, None if rect is None else rect[None], points)
        return (logits[0] > 0).numpy(), float(iou[0])

    def point_start_rect(self, index: int, seeds: list[Point3D]) -> np.ndarray:
        """The start box (x0, y0, x1, y1) for foreground points on a box-only backbone. Regions of similar
        intensity connected to the seeds are grown at FLOOD_SCALES x `options.flood_tolerance` (of the
        slice's clipped range); each region's box plus the margin is decoded (one decoder call). Among the
        boxes whose mask holds every seed (else all), those within POINT_IOU_SLACK of the best predicted IoU
        are kept and the smallest wins: one tolerance alone either stops at texture inside an organ or leaks
        out of it (into the other lung through the mediastinum), and the decoder is as sure of both lungs
        as of one."""
        image = gaussian(take_slices(self.encoder.clipped, self.axis, [index])[0], sigma=1.0, preserve_range=True)
        spread = float(image.max() - image.min())
        rects = []
        for scale in FLOOD_SCALES:
            region = np.zeros(image.shape, dtype=bool)
            for seed in seeds:
                x, y = seed.xy(self.axis)
                region |= flood(image, (y, x), tolerance=scale * self.options.flood_tolerance * spread)
            rects.append(prompt_rect(mask_rect(region), self.options.margin))
        rects = np.unique(np.stack(rects), axis=0)
        self.encoder.ensure([index])
        logits, iou = self.predict_logits(index, rects)
        holds = np.array([all(bool(logits[n, p.xy(self.axis)[1], p.xy(self.axis)[0]] > 0) for p in seeds)
                          for n in range(len(rects))])
        iou = iou.float().cpu().numpy()
        candidates = np.flatnonzero(holds) if holds.any() else np.arange(len(rects))
        confident = candidates[iou[candidates] >= iou[candidates].max() - POINT_IOU_SLACK]
        areas = (rects[confident, 2] - rects[confident, 0]) * (rects[confident, 3] - rects[confident, 1])
        return rects[confident[int(np.argmin(areas))]]

    def stop_rules(self, seed_index: int, seed_mask: np.ndarray) -> list[StopRule]:
        """The options' stopping rules for chains seeded with the (H, W) `seed_mask` on slice `seed_index`
        (intensity and contrast are measured against the seed)."""
        opts, axis, clipped = self.options, self.axis, self.encoder.clipped
        seed_image = take_slices(clipped, axis, [seed_index])[0]
        tolerance = opts.max_intensity_shift * float(clipped.max() - clipped.min())
        rules = [mask_vanished(opts.min_area), predicted_iou_below(opts.min_iou),
                 intensity_drift(clipped, axis, float(np.median(seed_image[seed_mask])), tolerance)]
        if opts.min_contrast > 0:
            rules.append(contrast_lost(clipped, axis, _ring_contrast(seed_image, seed_mask), opts.min_contrast))
        return rules

    def run_without_prompt(self, progress: ProgressCallback | None = None) -> PropagationResult:
        """Prompt-free segmentation (a decoder fine-tuned for it): every slice decoded without a
        prompt, masks under min_area dropped, then the largest 3D connected component kept."""
        count = self.shape[self.axis]
        result = PropagationResult(np.zeros(self.shape, dtype=bool), count // 2)
        self.encoder.ensure(list(range(count)), progress)  # every slice is needed: encode in batches
        for index in range(count):
            mask, iou = self.predict_slice(index, None, [])
            result.slice_iou[index] = iou
            if mask.sum() >= self.options.min_area:
                put_slice(result.mask, self.axis, index, mask)
            if progress is not None:
                progress("decoding without prompt", index + 1, count)
        result.mask = largest_component(result.mask)
        result.stopped_because["all"] = "every slice decoded without a prompt"
        return result

    def run(self, box: Box3D | None = None, points: tuple[Point3D, ...] | list[Point3D] = (),
            progress: ProgressCallback | None = None) -> PropagationResult:
        """Segment the structure inside `box` and/or marked by `points` (IJK)."""
        points = list(points)
        if box is None and not points:
            raise InputError("segmentation needs a box or at least one point")
        if box is not None:
            box.validate(self.shape)
        for point in points:
            point.validate(self.shape)
        axis, opts = self.axis, self.options
        whole_volume = box is None or box.is_2d(axis)
        lo, hi = (0, self.shape[axis] - 1) if whole_volume else box.slice_range(axis)
        bounds = np.array([0, 0, self.width - 1, self.height - 1], np.float32) if whole_volume else box.rect(axis)
        start = _start_slice(axis, box, points)
        first_rect = box.rect(axis) if box is not None else None
        seeds = [p for p in points if p.label == 1 and p.ijk[axis] == start]
        if not self.encoder.backbone.spec.point_prompts:
            if box is None:
                first_rect = self.point_start_rect(start, seeds)
            points = []
        points_on = {k: [p for p in points if p.ijk[axis] == k] for k in {p.ijk[axis] for p in points}}

        result = PropagationResult(np.zeros(self.shape, dtype=bool), start)
        self.encoder.ensure([start], progress)
        mask, iou = self.predict_slice(start, first_rect, points_on.get(start, []))
        if box is None:  # a point marks one structure: keep the parts of the mask that hold a seed
            mask = _components_holding(mask, [p.xy(axis) for p in seeds])
        result.slice_iou[start] = iou
        if mask.sum() < opts.min_area:
            result.stopped_because["start"] = f"empty mask on the start slice {start}"
            return result
        put_slice(result.mask, axis, start, mask)
        stop_rules = self.stop_rules(start, mask)

        done, total = 1, hi - lo + 1
        for step, name in ((1, "up"), (-1, "down")):
            def within(index: int, step: int = step) -> str | None:
                return None if lo <= index <= hi else f"end of range at slice {index - step}"

            chain = PropagationChain(self, start, mask, step, bounds, within, stop_rules, points_on,
                                     None if whole_volume else bounds)
            for decoded in chain:
                result.slice_iou[decoded.index] = decoded.iou
                done += 1
                if progress is not None:
                    progress("propagating", done, total)
                if decoded.stop is None:
                    put_slice(result.mask, axis, decoded.index, decoded.mask)
            result.stopped_because[name] = chain.stopped_because
        if opts.largest_component:
            result.mask = largest_component(result.mask)
        return result


def _components_holding(mask: np.ndarray, seeds_xy: Sequence[tuple[int, int]]) -> np.ndarray:
    """The 8-connected components of an (H, W) mask that hold one of the (x, y) seeds (the mask itself
    when none does)."""
    labels = label_components(mask, connectivity=2)
    kept = {int(labels[y, x]) for x, y in seeds_xy} - {0}
    return np.isin(labels, list(kept)) if kept else mask



"""Prompts on one slice that re-propagate: a positive or negative point, or a corrected 2D box, on any slice
of an existing segmentation updates that slice, then its neighbours one after another until the change
dies out; the untouched rest is not decoded again.

The edit on its slice becomes a new box prompt (and, for backbones with point prompts, points). Then, each
way from the edited slice:
- when the slice had a mask before, what moves to the neighbours is the change of the box, not the new
  mask (a chain seeded by a small edited mask at the end of a lung shrank every good slice after it):
  each neighbour is decoded from its own previous mask's box plus the margin, each side the edit pulled
  in pulled in to the edited box's side, each side it pushed out pushed out to it (moving the sides by
  the same amount instead cut brain1's neighbours: 0.619 on the redrawn slice alone, 0.369 so). The run
  ends at the first neighbour whose box the edit does not move, and at one whose new mask agrees less with
  the slice before it than its previous mask did, over the whole slice (Dice) or where the box moved
  (share of equal pixels): without the first check a click on the thoracic column's worst slice cost
  0.08 Dice, without the second a leak beside the lung survived on the slices next to a negative click,
  and the decoder's predicted IoU kept it too; it ends too at a slice the structure did not reach
  before (extending brain2's lesion from a click inside it cost 0.17 Dice), and at once when the edit left
  the box where it was (a local erase, below);
- when the slice was empty before (the edit adds the structure where it was missing), the run goes
  outwards through the slices that were empty too, each prompted from the new mask next to it as
  propagation does, until a stopping rule (measured against the edited slice) says the structure ends,
  and stops at the first slice that had a mask.
Both end where the new mask agrees with the previous one (Dice >= SETTLED_DICE: the change has died out),
before a kept (annotated) slice, and at the edge of the box or volume; the previous slices are kept from
there on.

Box-only backbones (LiteMedSAM was trained with boxes alone) take points as box changes (`edit_slice`):
- positive point outside the slice's mask: the box grown to hold it (by 1, 2 or 4 times the margin); on a
  slice with no mask, the box of the nearest mask within NEARBY_SLICES grown so, else the box a point prompt
  starts from (VolumePropagator.point_start_rect; one started so on lung2's first empty slice flooded the
  lung and dropped its Dice from 0.90 to 0.33);
- negative point inside the mask: the box as it is, or with one side moved to the pixel past the point;
of those candidates, decoded in one call, the mask that obeys the point and changes the slice least wins.
When even that changes more than MAX_NEGATIVE_CHANGE of the slice's mask (a click on a thin rim of false
mask: every box that leaves the point out cuts the structure), the point erases locally instead: the disc
around it reaching the mask's nearest edge. Backbones with point prompts (SAM, MedSAM checkpoints) get the
points as they are, with the box.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import distance_transform_edt

from MedSegAdaptLib.core.axes import (
    nearest_slice,
    occupied_slices,
    put_slice,
    take_slices,
)
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference.prompts import Box3D, Point3D, mask_rect
from MedSegAdaptLib.inference.propagation import (
    VolumePropagator,
    next_prompt_rect,
    prompt_rect,
)

__all__ = ["MAX_NEGATIVE_CHANGE", "SETTLED_DICE", "RefinementResult", "changed_slices", "edit_slice", "refine_slice"]

SETTLED_DICE = 0.95
"""A re-propagated slice whose mask has at least this Dice with the previous segmentation's ends the run."""
NEARBY_SLICES = 2
"""On an empty slice, a positive point grows the box of the previous mask on a slice at most this far away."""
MAX_NEGATIVE_CHANGE = 0.2
"""A negative point's box change may drop at most this fraction of Dice on its slice before it erases locally."""


@dataclass
class RefinementResult:
    """mask: (I, J, K) bool, the previous segmentation with the re-propagated slices replaced.
    prompt_rect: the box (x0, y0, x1, y1) decoded on the edited slice; changed: slices whose mask differs
    from before (ascending); decoded: slices the decoder ran on; stopped_because: why each way ended."""

    mask: np.ndarray
    index: int
    prompt_rect: np.ndarray
    changed: list[int]
    decoded: list[int]
    stopped_because: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _candidate_rects(rect: np.ndarray, point: Point3D, axis: int, margin: int, bounds: np.ndarray) -> list[np.ndarray]:
    """Boxes that answer one point: for a positive one, `rect` grown to hold it with 1, 2 and 4 times `margin`;
    for a negative one, `rect` and the boxes with one side moved to the pixel past it."""
    x, y = point.xy(axis)
    if point.label == 1:
        grown = []
        for scale in (1, 2, 4):
            around = prompt_rect([x, y, x, y], scale * margin, bounds)
            grown.append(np.concatenate([np.minimum(rect[:2], around[:2]), np.maximum(rect[2:], around[2:])]))
        return grown
    x0, y0, x1, y1 = rect
    moved = [np.array(r, np.float32) for r in ((x0, y0, x - 1, y1), (x + 1, y0, x1, y1), (x0, y0, x1, y - 1),
                                               (x0, y + 1, x1, y1))]
    return [rect] + [r for r in moved if r[2] >= r[0] and r[3] >= r[1]]


def _erase_around(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """(H, W) mask without the disc around (x, y) whose radius reaches the mask's nearest edge (at least 1 pixel)."""
    radius = max(float(distance_transform_edt(np.pad(mask, 1))[y + 1, x + 1]), 1.0)
    rows, cols = np.ogrid[:mask.shape[0], :mask.shape[1]]
    return mask & ((rows - y) ** 2 + (cols - x) ** 2 > radius ** 2)


def edit_slice(propagator: VolumePropagator, index: int, current: np.ndarray, points: Sequence[Point3D],
               rect: np.ndarray | None, bounds: np.ndarray,
               nearby: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new (H, W) bool mask, box prompt (x0, y0, x1, y1)) of slice `index` after the edit: `rect` (a corrected
    box, else the (H, W) `current` mask's box plus the margin) and the points, applied in turn (module text),
    prompts kept within `bounds` (x0, y0, x1, y1). nearby: the (H, W) mask of the nearest slice that has one;
    on an empty slice a positive point grows its box (the structure goes on here) rather than starting one from
    the intensities. InputError when there is neither a box nor a mask nor a positive point to start from."""
    axis, margin = propagator.axis, propagator.options.margin
    box = rect if rect is not None else (None if not current.any() else prompt_rect(mask_rect(current), margin, bounds))
    if box is None and nearby is not None and nearby.any() and any(p.label == 1 for p in points):
        box = prompt_rect(mask_rect(nearby), margin, bounds)
    if propagator.encoder.backbone.spec.point_prompts:
        propagator.encoder.ensure([index])
        mask, _ = propagator.predict_slice(index, box, list(points))
        return mask, np.asarray(box if box is not None else bounds, np.float32)
    mask, erase = None, []
    for point in points:
        x, y = point.xy(axis)
        if box is None:
            if point.label == 1:
                box = prompt_rect(propagator.point_start_rect(index, [point]), 0, bounds)
            continue
        if mask is None and bool(current[y, x]) == bool(point.label) and rect is None:
            continue  # the mask already obeys the point
        rects = np.stack(_candidate_rects(np.asarray(box, np.float32), point, axis, margin, bounds))
        propagator.encoder.ensure([index])
        masks = (propagator.predict_logits(index, rects)[0] > 0).numpy()
        obeys = np.flatnonzero(masks[:, y, x] == bool(point.label))
        choices = obeys if obeys.size else np.arange(len(rects))
        like = current if current.any() or nearby is None else nearby  # the mask the edit should change least
        best = max(choices, key=lambda n: dice(masks[n], like))
        if point.label == 0 and current.any() and dice(masks[best], current) < 1 - MAX_NEGATIVE_CHANGE:
            erase.append((x, y))
        else:
            box, mask = rects[best], masks[best]
    if box is None:
        raise InputError(f"slice {index} has no mask to correct: give a positive point or a box on it")
    if mask is None:
        propagator.encoder.ensure([index])
        mask = propagator.predict_slice(index, box)[0] if rect is not None or not current.any() else current
    for x, y in erase:
        mask = _erase_around(mask, x, y)
    return mask, np.asarray(box, np.float32)


def refine_slice(propagator: VolumePropagator, previous: np.ndarray, index: int, points: Sequence[Point3D] = (),
                 rect: np.ndarray | None = None, box: Box3D | None = None, keep: Iterable[int] = (),
                 progress: ProgressCallback | None = None, propagate: bool = True) -> RefinementResult:
    """Apply an edit on slice `index` (points on that slice and/or a corrected box rect (x0, y0, x1, y1) in slice
    pixels) to the (I, J, K) bool `previous` segmentation and re-propagate it until the change dies out.

    box: bounds prompts and the slice range (None: the whole volume); keep: slices never changed (annotated);
    propagate: False changes the edited slice only.
    """
    started = time.perf_counter()
    axis, shape, margin = propagator.axis, propagator.shape, propagator.options.margin
    if previous.shape != shape:
        raise InputError(f"the segmentation to refine has shape {previous.shape}, the volume {shape}")
    if not 0 <= index < shape[axis]:
        raise InputError(f"edited slice {index} is outside the volume (0..{shape[axis] - 1} along the slicing axis)")
    if not points and rect is None:
        raise InputError("an edit needs a point or a box on the slice")
    for point in points:
        point.validate(shape)
        if point.ijk[axis] != index:
            raise InputError(f"point {point.ijk} is not on the edited slice {index}")
    keep = set(keep)
    if index in keep:
        raise InputError(f"slice {index} is annotated and kept as drawn; edit it by painting")
    low, high, bounds = 0, shape[axis] - 1, np.array([0, 0, propagator.width - 1, propagator.height - 1], np.float32)
    if box is not None:
        box.validate(shape)
        low, high = box.slice_range(axis)
        bounds = box.rect(axis)
        if not low <= index <= high:
            raise InputError(f"edited slice {index} is outside the box's slices {low}..{high}")

    def old(k: int) -> np.ndarray:
        return take_slices(previous, axis, [k])[0]

    current = old(index)
    occupied = occupied_slices(previous, axis)
    nearby = old(nearest_slice(index, occupied)) if occupied.size and abs(nearest_slice(index, occupied) - index) <= \
        NEARBY_SLICES else None
    mask, prompt = edit_slice(propagator, index, current, points, rect, bounds, nearby)
    result = previous.copy()
    put_slice(result, axis, index, mask)
    decoded, stopped = [index], {}
    # the box change on the edited slice, side by side; None when the previous mask was empty there
    shift = prompt - prompt_rect(mask_rect(current), margin, bounds) if current.any() else None
    if not propagate:
        stopped["all"] = "the edited slice only"
    elif shift is not None and not shift.any():
        stopped["all"] = "the edit did not move the box: nothing to carry to the neighbours"
    elif mask.sum() < propagator.options.min_area:
        stopped["all"] = f"the edit left slice {index} empty: nothing to propagate"
    else:
        rules = propagator.stop_rules(index, mask)
        for step, name in ((1, "up"), (-1, "down")):
            stopped[name] = _run_one_way(propagator, previous, result, index, mask, step, prompt, shift, bounds,
                                         (low, high), keep, rules, decoded)
            if progress is not None:
                progress("re-propagating the edit", len(decoded), high - low + 1)
    return RefinementResult(result, index, prompt, changed_slices(result, previous, axis), sorted(decoded), stopped,
                            time.perf_counter() - started)


def changed_slices(first: np.ndarray, second: np.ndarray, axis: int) -> list[int]:
    """Slices along `axis` (ascending) where the (I, J, K) masks differ."""
    other = tuple(a for a in range(3) if a != axis)
    return [int(k) for k in np.flatnonzero((first != second).any(axis=other))]


def _follow_edit(rect: np.ndarray, edited: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """A neighbour's box (x0, y0, x1, y1) after the edit moved the edited slice's box by `shift` to `edited`:
    each side the edit pulled in is pulled in to the edited box's side (not past its own), each side the
    edit pushed out is pushed out to it; sides the edit left alone stay."""
    moved = rect.copy()
    shrunk = np.concatenate([shift[:2] > 0, shift[2:] < 0])
    grown = np.concatenate([shift[:2] < 0, shift[2:] > 0])
    inward = np.concatenate([np.maximum(rect[:2], edited[:2]), np.minimum(rect[2:], edited[2:])])
    outward = np.concatenate([np.minimum(rect[:2], edited[:2]), np.maximum(rect[2:], edited[2:])])
    moved[shrunk], moved[grown] = inward[shrunk], outward[grown]
    moved[2:] = np.maximum(moved[2:], moved[:2])
    return moved


def _between(first: np.ndarray, second: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels inside one of two boxes (x0, y0, x1, y1) and not the other."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]

    def inside(rect: np.ndarray) -> np.ndarray:
        return (cols >= rect[0]) & (cols <= rect[2]) & (rows >= rect[1]) & (rows <= rect[3])

    return inside(first) ^ inside(second)


def _run_one_way(propagator: VolumePropagator, previous: np.ndarray, result: np.ndarray, index: int, mask: np.ndarray,
                 step: int, edited: np.ndarray, shift: np.ndarray | None, bounds: np.ndarray,
                 slice_range: tuple[int, int], keep: set[int], rules: list, decoded: list[int]) -> str:
    """Re-decode the slices after `index` in direction `step` into `result` (I, J, K) in place (`edited`: the
    edited slice's box, `shift` its change); why it ended."""
    axis, margin, encoder = propagator.axis, propagator.options.margin, propagator.encoder
    low, high = slice_range
    k, last = index + step, mask
    while True:
        if not low <= k <= high:
            return f"end of range at slice {k - step}"
        if k in keep:
            return f"kept slice {k}"
        before = take_slices(previous, axis, [k])[0]
        if before.any():
            if shift is None:
                return f"the previous mask kept from slice {k} (the edited slice had none)"
            own = prompt_rect(mask_rect(before), margin, bounds)
            rect = _follow_edit(own, edited, shift)
            if np.array_equal(rect, own):
                return f"the edit does not move the box of slice {k}: kept from there on"
            band = _between(own, rect, before.shape)
        elif shift is not None:
            return f"the structure ended before slice {k} and still does"
        else:
            rect = next_prompt_rect(last, margin, bounds)
        encoder.ensure([k])
        new, iou = propagator.predict_slice(k, rect)
        decoded.append(k)
        if before.any():
            if new.sum() < propagator.options.min_area:
                return f"mask vanished at slice {k}: the previous slices kept from there on"
            if (dice(new, last) < dice(before, last)
                    or (new[band] == last[band]).mean() < (before[band] == last[band]).mean()):
                return f"the previous mask of slice {k} agrees better with slice {k - step}: kept from there on"
        else:
            stop = next((reason for rule in rules if (reason := rule(k, new, iou)) is not None), None)
            if stop is not None:
                return stop
        put_slice(result, axis, k, new)
        if dice(new, before) >= SETTLED_DICE:
            return f"change died out at slice {k}"
        k, last = k + step, new

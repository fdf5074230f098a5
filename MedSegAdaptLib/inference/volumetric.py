"""Slice-by-slice volumetric segmentation from a 3D box and/or points.

Starting from the middle slice of the box (or the slice of the foreground points), each next slice
is prompted with the previous slice's mask box plus a margin, clipped to the 3D box; propagation
stops when the mask vanishes, when the decoder's predicted IoU drops under a threshold, when the
intensity inside the mask leaves the start slice's, or at the end of the box.

Backbones trained with boxes only (LiteMedSAM) get no point prompts: foreground points without a
box become a start box around the region of similar intensity connected to them on their slice.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from skimage.measure import label as label_components
from skimage.filters import gaussian
from skimage.segmentation import flood

from ..errors import InputError
from ..priors.modules import AttributeTokens
from .encoder import ProgressCallback, SliceEncoder
from .preprocess import logits_to_slice, slice_scale
from .prompts import Box3D, Point3D, in_plane_axes, mask_rect, put_slice, take_slices


@dataclass(frozen=True)
class PropagationOptions:
    """margin: pixels added around the previous slice's mask box; min_area: a mask with fewer
    pixels counts as vanished; min_iou: predicted IoU under which propagation stops;
    max_intensity_shift: propagation stops when the median intensity inside a slice's mask moves
    further from the start slice's median than this fraction of the clipped intensity range (the
    mask has left the structure, e.g. from lung into liver at the lung base; on CTChest4 this lifts
    right/left lung Dice from 0.78/0.74 to 0.88/0.81 and costs the heterogeneous 'tissue' segment
    0.43 -> 0.19; 1.0 switches the rule off); largest_component: keep only the largest 3D
    connected component; flood_tolerance: for box-only backbones, the intensity tolerance (fraction
    of the clipped range) of the region grown from foreground points into a start box."""

    margin: int = 3
    min_area: int = 5
    min_iou: float = 0.0
    max_intensity_shift: float = 0.2
    largest_component: bool = False
    flood_tolerance: float = 0.07


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


def grow_rect(rect: np.ndarray, margin: int) -> np.ndarray:
    return rect + np.array([-1, -1, 1, 1], np.float32) * margin


def clip_rect(rect: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    return np.array([max(rect[0], bounds[0]), max(rect[1], bounds[1]),
                     min(rect[2], bounds[2]), min(rect[3], bounds[3])], dtype=np.float32)


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

    def predict_slice(self, index: int, rect: np.ndarray | None, points: list[Point3D]) -> tuple[np.ndarray, float]:
        """(H, W) bool mask and predicted IoU for one slice; rect (x0, y0, x1, y1) in slice pixels."""
        logits, iou = self.predict_logits(index, None if rect is None else rect[None], points)
        return (logits[0] > 0).numpy(), float(iou[0])

    def _flood_rect(self, index: int, seeds: list[Point3D]) -> np.ndarray:
        """Box (x0, y0, x1, y1) around the regions of similar intensity connected to the seeds."""
        image = gaussian(take_slices(self.encoder.clipped, self.axis, [index])[0], sigma=1.0, preserve_range=True)
        tolerance = self.options.flood_tolerance * float(image.max() - image.min())
        region = np.zeros(image.shape, dtype=bool)
        for seed in seeds:
            x, y = seed.xy(self.axis)
            region |= flood(image, (y, x), tolerance=tolerance)
        return grow_rect(mask_rect(region), self.options.margin)

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
        lo, hi = box.slice_range(axis) if box is not None else (0, self.shape[axis] - 1)
        bounds = box.rect(axis) if box is not None else np.array([0, 0, self.width - 1, self.height - 1], np.float32)
        start = _start_slice(axis, box, points)
        first_rect = bounds if box is not None else None
        if not self.encoder.backbone.spec.point_prompts:
            if box is None:
                first_rect = self._flood_rect(start, [p for p in points if p.label == 1 and p.ijk[axis] == start])
            points = []
        points_on = {k: [p for p in points if p.ijk[axis] == k] for k in {p.ijk[axis] for p in points}}

        result = PropagationResult(np.zeros(self.shape, dtype=bool), start)
        self.encoder.ensure([start], progress)
        mask, iou = self.predict_slice(start, first_rect, points_on.get(start, []))
        result.slice_iou[start] = iou
        if mask.sum() < opts.min_area:
            result.stopped_because["start"] = f"empty mask on the start slice {start}"
            return result
        put_slice(result.mask, axis, start, mask)
        clipped = self.encoder.clipped
        start_median = float(np.median(take_slices(clipped, axis, [start])[0][mask]))
        tolerance = opts.max_intensity_shift * float(clipped.max() - clipped.min())

        done, total = 1, hi - lo + 1
        for step, name in ((1, "up"), (-1, "down")):
            previous, index = mask, start + step
            while True:
                if not lo <= index <= hi:
                    result.stopped_because[name] = f"end of range at slice {index - step}"
                    break
                self.encoder.ensure([i for i in range(index, index + step * self.encoder.batch_size, step)
                                     if lo <= i <= hi])
                rect = clip_rect(grow_rect(mask_rect(previous), opts.margin), bounds)
                current, iou = self.predict_slice(index, rect, points_on.get(index, []))
                result.slice_iou[index] = iou
                done += 1
                if progress is not None:
                    progress("propagating", done, total)
                if current.sum() < opts.min_area:
                    result.stopped_because[name] = f"mask vanished at slice {index}"
                    break
                if iou < opts.min_iou:
                    result.stopped_because[name] = f"predicted IoU {iou:.2f} < {opts.min_iou} at slice {index}"
                    break
                median = float(np.median(take_slices(clipped, axis, [index])[0][current]))
                if abs(median - start_median) > tolerance:
                    result.stopped_because[name] = (f"median intensity {median:.0f} left {start_median:.0f} "
                                                    f"+- {tolerance:.0f} at slice {index}")
                    break
                put_slice(result.mask, axis, index, current)
                previous, index = current, index + step
        if opts.largest_component:
            result.mask = largest_component(result.mask)
        return result


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of an (I, J, K) bool mask."""
    labels = label_components(mask, connectivity=3)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()

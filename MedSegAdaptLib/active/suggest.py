"""Which slices an annotator should correct next, and why (our adaptation of ASSFT's active learning).

:func:`suggest_slices` segments the structure once (cached embeddings), scores the candidate slices
with :mod:`.scoring` (ASD, DKD) and picks a diverse set; :func:`suggest_from_store` does the same for
a case of a fine-tuning store, skipping the slices already annotated there.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from ..inference import Box3D, Point3D, Segmenter
from ..inference.encoder import ProgressCallback
from ..inference.prompts import AXIS_NAMES, mask_rect, take_slices
from ..inference.segmenter import SegmentationOutcome
from ..inference.volumetric import VolumePropagator, clip_rect, grow_rect
from ..io import Volume, read_volume
from ..store import FineTuningStore
from .scoring import (ScoringOptions, SliceDecoder, jittered_rects, knowledge_distance, mask_dice, normalise,
                      pooled_embeddings, select_diverse, slice_difficulty)

BOX_MARGIN_VOXELS = 2
"""Margin around a store label's bounding box when it becomes the prompt."""


@dataclass(frozen=True)
class Suggestion:
    """One slice to annotate: axis is 'i', 'j' or 'k'; score (the total after the diversity penalty),
    dkd and asd in [0, 1]; components: the raw parts (entropy, disagreement, divergence,
    embedding_distance, total, foreground_pixels)."""

    case_id: str | None
    image: str | None
    axis: str
    index: int
    score: float
    dkd: float
    asd: float
    reason: str
    components: dict[str, float | None] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        """JSON-ready dict with every field."""
        return asdict(self)


def check_budget(budget: int) -> int:
    """`budget` when it is a whole number of slices >= 1; InputError otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InputError(f"budget {budget!r} is not a number of slices to suggest; expected 1 or more")
    return int(budget)


def _on_axis(segmenter: Segmenter, axis: int) -> Segmenter:
    """`segmenter`, or one sharing its model and embedding cache that slices along `axis`."""
    if segmenter.axis == axis:
        return segmenter
    return Segmenter(segmenter.backbone, segmenter.cache, axis, segmenter.batch_size, segmenter.precision,
                     segmenter.options)


def _decoder(segmenter: Segmenter, volume: Volume, outcome: SegmentationOutcome, structure: str) -> SliceDecoder:
    """Slice decoder of `segmenter` on `volume`, prepared as in `outcome` (preset, report for priors)."""
    encoder = segmenter.encoder_for(volume, outcome.preset)
    tokens = None
    if segmenter.backbone.priors is not None:
        report = outcome.report or segmenter.guidance.parse(structure, outcome.modality, structure)
        tokens = segmenter.guidance.tokens(report)
    return SliceDecoder(encoder, VolumePropagator(encoder, segmenter.options, tokens))


def _candidate_prompts(mask: np.ndarray, axis: int, box: Box3D | None, propagator: VolumePropagator,
                       margin: int, options: ScoringOptions, structure: str) -> tuple[dict[int, np.ndarray], set[int]]:
    """({slice: box (x0, y0, x1, y1)} for the candidate slices, the slices with a prediction).

    Candidates: the predicted extent +- slice_margin (inside the 3D box), or every slice. A slice's
    box is its nearest predicted slice's mask box plus `margin` pixels, clipped to the 3D box, as
    propagation prompts it; the 3D box where nothing was predicted."""
    count = mask.shape[axis]
    planes = take_slices(mask, axis, np.arange(count))
    present = np.flatnonzero(planes.any(axis=(1, 2)))
    lo, hi = box.slice_range(axis) if box is not None else (0, count - 1)
    if options.all_slices:
        span = range(count)
    elif present.size:
        span = range(max(lo, present[0] - options.slice_margin), min(hi, present[-1] + options.slice_margin) + 1)
    elif box is not None:
        span = range(lo, hi + 1)
    else:
        raise InputError(f"the model predicts no {structure!r} anywhere in the volume; give a box around it")
    bounds = (box.rect(axis) if box is not None
              else np.array([0, 0, propagator.width - 1, propagator.height - 1], np.float32))
    if not present.size:
        return {k: bounds for k in span}, set()
    nearest = {k: present[np.argmin(np.abs(present - k))] for k in span}
    return ({k: clip_rect(grow_rect(mask_rect(planes[nearest[k]]), margin), bounds) for k in span},
            {int(k) for k in present})


def _slice_parts(decoder: SliceDecoder, base: SliceDecoder | None, index: int, prompt: np.ndarray | None,
                 base_prompt: np.ndarray, points: list[Point3D], seed: int,
                 options: ScoringOptions) -> dict[str, float | None]:
    """Raw scores of one slice: entropy and disagreement (ASD), divergence from the pretrained model
    (None without one) and foreground pixels. prompt: the box, None to decode without a prompt;
    base_prompt: the box the pretrained model gets."""
    height, width = decoder.propagator.height, decoder.propagator.width
    rects = None
    if prompt is not None:
        rng = np.random.default_rng([seed, index])
        rects = jittered_rects(prompt, options.augmentations, options.jitter, height, width, rng)
    logits = decoder.logits(index, rects, points)
    entropy, disagreement, foreground = slice_difficulty(logits, options.band)
    divergence = None
    if base is not None:
        base_mask = base.logits(index, base_prompt[None], points)[0].numpy() > 0
        divergence = float(1 - mask_dice(logits[:1].numpy() > 0, base_mask[None])[0, 0])
    return {"entropy": entropy, "disagreement": disagreement, "divergence": divergence,
            "foreground_pixels": foreground}


def _reason(structure: str, asd: float, dkd: float, predicted: bool, options: ScoringOptions, labeled: bool,
            divergence_led: bool, nearest: int | None, index: int, anchors: Collection[int]) -> str:
    """One line saying why a slice was suggested, its larger contribution first."""
    if not predicted:
        difficulty = f"just beyond the predicted {structure} (ASD {asd:.2f})"
    elif asd >= 0.5:
        difficulty = f"uncertain boundary of {structure} (ASD {asd:.2f})"
    else:
        difficulty = f"fairly certain {structure} boundary (ASD {asd:.2f})"
    high = dkd >= 0.5
    if divergence_led:
        knowledge = "adapted model departs from the pretrained one" if high else "adapted and pretrained models agree"
    elif labeled:
        knowledge = "far from labeled slices" if high else "close to labeled slices"
    else:
        knowledge = "unlike the rest of the structure" if high else "typical of the structure"
    pieces = [difficulty, f"{knowledge} (DKD {dkd:.2f})"]
    if options.weight_dkd * dkd > options.weight_asd * asd:
        pieces.reverse()
    line = ", ".join(pieces)
    if nearest is not None:
        kind = "labeled" if nearest in anchors else "suggested"
        line += f"; {abs(index - nearest)} slices from {kind} slice {nearest}"
    return line


def suggest_slices(segmenter: Segmenter, volume: Volume, structure: str, budget: int, box: Box3D | None = None,
                   points: Sequence[Point3D] = (), annotated: Collection[int] = frozenset(),
                   adapted_segmenter: Segmenter | None = None, axis: int = 2, seed: int = 0, modality: str = "auto",
                   options: ScoringOptions = ScoringOptions(), case_id: str | None = None,
                   progress: ProgressCallback | None = None) -> list[Suggestion]:
    """Up to `budget` slices along `axis` of `volume` to annotate next for `structure`, best first.

    segmenter: the pretrained model; adapted_segmenter: the current fine-tuned one, which then makes
    the prediction and whose divergence from `segmenter` enters DKD. The prediction comes from the
    3D box and/or points (IJK), or without a prompt when the model is prompt-free for `structure`.
    annotated: slice indices along `axis` already labeled; they are never suggested and anchor DKD's
    embedding distance and the diversity. Fewer than `budget` come back when fewer candidates remain
    (none when all are annotated). Deterministic for a fixed `seed` (box jitter).
    """
    budget = check_budget(budget)
    if axis not in (0, 1, 2):
        raise InputError(f"axis {axis!r} is not a volume axis; expected 0, 1 or 2 (i, j, k)")
    size = volume.array.shape[axis]
    labeled = sorted({int(i) for i in annotated})
    outside = [i for i in labeled if not 0 <= i < size]
    if outside:
        raise InputError(f"annotated slice(s) {outside} are outside the {size} slices along {AXIS_NAMES[axis]}; "
                         f"expected 0..{size - 1}")
    current = _on_axis(adapted_segmenter or segmenter, axis)
    outcome = current.segment(volume, structure, box, points, modality, progress)
    decoder = _decoder(current, volume, outcome, structure)
    base = None if adapted_segmenter is None else _decoder(_on_axis(segmenter, axis), volume, outcome, structure)
    prompts, predicted = _candidate_prompts(outcome.mask, axis, box, decoder.propagator, current.options.margin,
                                            options, structure)
    candidates = [k for k in prompts if k not in set(labeled)]
    if not candidates:
        return []
    decoder.encoder.ensure(candidates + labeled, progress)
    prompt_free = box is None and not points
    parts: dict[int, dict[str, float | None]] = {}
    for number, index in enumerate(candidates):
        parts[index] = _slice_parts(decoder, base, index, None if prompt_free else prompts[index], prompts[index],
                                    [p for p in points if p.ijk[axis] == index], seed, options)
        if progress is not None:
            progress("scoring slices", number + 1, len(candidates))
    pooled = pooled_embeddings(decoder.encoder, candidates)
    labeled_pooled = pooled_embeddings(decoder.encoder, labeled)
    distance = knowledge_distance(pooled, labeled_pooled)
    asd = normalise([(parts[k]["entropy"] + parts[k]["disagreement"]) / 2 for k in candidates])
    dkd = closeness = normalise(distance)
    divergence_led = np.zeros(len(candidates), dtype=bool)
    if base is not None:
        divergence = normalise([parts[k]["divergence"] for k in candidates])
        divergence_led = divergence > closeness
        dkd = options.divergence_share * divergence + (1 - options.divergence_share) * closeness
    totals = options.weight_dkd * dkd + options.weight_asd * asd
    position = {k: n for n, k in enumerate(candidates)}
    suggestions = []
    for pick in select_diverse(candidates, totals, pooled, labeled, labeled_pooled, budget, options):
        n = position[pick.index]
        values = {**parts[pick.index], "embedding_distance": float(distance[n]), "total": float(totals[n])}
        reason = _reason(structure, asd[n], dkd[n], pick.index in predicted, options, bool(labeled),
                         bool(divergence_led[n]), pick.nearest, pick.index, labeled)
        suggestions.append(Suggestion(case_id, volume.path, AXIS_NAMES[axis], pick.index, pick.score, float(dkd[n]),
                                      float(asd[n]), reason, values))
    return suggestions


def suggest_from_store(store: FineTuningStore, case_id: str, structure: str, budget: int, segmenter: Segmenter,
                       box: Box3D | None = None, points: Sequence[Point3D] = (), annotated: Collection[int] = (),
                       adapted_segmenter: Segmenter | None = None, axis: int = 2, seed: int = 0,
                       options: ScoringOptions = ScoringOptions(),
                       progress: ProgressCallback | None = None) -> list[Suggestion]:
    """:func:`suggest_slices` on a store's case, skipping the slices along `axis` that its corrections
    and accepted labels of `structure` annotate (annotations along other axes are not counted) and
    the `annotated` ones.

    Without a box, the prompt is the bounding box (+2 voxels) of the latest prediction or correction of
    `structure`. InputError for an unknown case, for a structure the case has no label of when no prompt
    is given, and when a whole-volume correction leaves nothing to suggest.
    """
    budget = check_budget(budget)
    case = store.case(case_id)
    try:
        labels = store.history(case.case_id, structure)
    except InputError:
        if box is None and not points:
            raise
        labels = []
    trained = [label for label in labels if label.trains]
    whole = next((label for label in reversed(trained) if label.annotated_slices is None), None)
    if whole is not None:
        raise InputError(f"case {case.case_id!r}: {whole.structure!r} version {whole.version} is a whole-volume "
                         f"{whole.kind}, so every slice is annotated; nothing is left to suggest")
    annotated = set(annotated) | {i for label in trained for i in label.annotated_slices.get(AXIS_NAMES[axis], [])}
    if box is None:
        prompts = [label for label in labels if label.kind in ("prediction", "correction")]
        if prompts:
            latest = prompts[-1]
            mask = read_volume(latest.file).array != 0
            if not mask.any():
                raise InputError(f"case {case.case_id!r}: {latest.structure!r} version {latest.version} is empty, "
                                 "so it gives no box; expected a box (--box-ijk)")
            box = Box3D.around(mask, BOX_MARGIN_VOXELS)
    return suggest_slices(segmenter, read_volume(case.image), structure, budget, box, points, annotated,
                          adapted_segmenter, axis, seed, case.modality or "auto", options, case.case_id, progress)

"""Which slices an annotator should correct next, and why (our adaptation of ASSFT's active learning).

:func:`suggest_slices` segments the structure once (cached embeddings), scores the candidate slices
with :mod:`.scoring` (ASD, DKD, presence) and picks slices spread evenly over the 3D box's slices or the
prediction (or, ranking for correction, the best scores kept apart); :func:`suggest_from_store` does the same for
a case of a fine-tuning store, skipping the slices already annotated there.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from MedSegAdaptLib.core.axes import AXIS_NAMES, take_slices
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation.metrics import pairwise_dice
from MedSegAdaptLib.inference import Box3D, Point3D, Segmenter
from MedSegAdaptLib.inference.propagation import (
    PropagationOptions,
    VolumePropagator,
    next_prompt_rect,
)
from MedSegAdaptLib.inference.segmenter import SegmentationOutcome
from MedSegAdaptLib.inference.slice_encoder import knowledge_distance, pooled_embeddings
from MedSegAdaptLib.inference.uncertainty import slice_difficulty
from MedSegAdaptLib.io import Volume, read_volume
from MedSegAdaptLib.store import FineTuningStore, LabelVersion
from MedSegAdaptLib.suggestions.options import ScoringOptions
from MedSegAdaptLib.suggestions.scoring import (
    Pick,
    SliceDecoder,
    combine_scores,
    jittered_rects,
    presence_weights,
    select_covering,
    select_diverse,
)

__all__ = [
    "Suggestion",
    "candidate_prompts",
    "check_axis",
    "check_budget",
    "explain_scores",
    "labeling_extent",
    "localised_box",
    "prompt_box",
    "score_slices",
    "segment_for_scoring",
    "suggest_from_store",
    "suggest_slices",
    "whole_volume_label",
]



@dataclass(frozen=True)
class Suggestion:
    """One slice to annotate: axis is 'i', 'j' or 'k'; score (the total; picked greedily: after the
    diversity penalty), dkd and asd in [0, 1]; components: the raw parts (entropy, disagreement,
    divergence, embedding_distance, presence, total, foreground_pixels)."""

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


def check_budget(budget: int, unit: str = "slices") -> int:
    """`budget` when it is a whole number (of `unit`) >= 1; InputError otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InputError(f"budget {budget!r} is not a number of {unit} to suggest; expected 1 or more")
    return int(budget)


def check_axis(axis: int) -> int:
    """`axis` when it is 0, 1 or 2 (i, j, k); InputError otherwise."""
    if axis not in (0, 1, 2):
        raise InputError(f"axis {axis!r} is not a volume axis; expected 0, 1 or 2 (i, j, k)")
    return axis




def _decoder(segmenter: Segmenter, volume: Volume, outcome: SegmentationOutcome, structure: str,
             axis: int) -> SliceDecoder:
    """Slice decoder of `segmenter` on `volume` along `axis`, prepared as in `outcome` (preset, report for priors)."""
    encoder = segmenter.encoder_for(volume, outcome.preset, axis)
    tokens = None
    if segmenter.backbone.priors is not None:
        report = outcome.report or segmenter.guidance.parse(structure, outcome.modality, structure)
        tokens = segmenter.guidance.tokens(report)
    return SliceDecoder(encoder, VolumePropagator(encoder, PropagationOptions(), tokens))


def candidate_prompts(mask: np.ndarray, axis: int, box: Box3D | None, propagator: VolumePropagator,
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
    return ({k: next_prompt_rect(planes[nearest[k]], margin, bounds) for k in span},
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
        divergence = float(1 - pairwise_dice(logits[:1].numpy() > 0, base_mask[None])[0, 0])
    return {"entropy": entropy, "disagreement": disagreement, "divergence": divergence,
            "foreground_pixels": foreground}


def segment_for_scoring(segmenter: Segmenter, adapted_segmenter: Segmenter | None, volume: Volume, structure: str,
                        box: Box3D | None, points: Sequence[Point3D], axis: int, modality: str,
                        progress: ProgressCallback | None
                        ) -> tuple[SegmentationOutcome, SliceDecoder, SliceDecoder | None]:
    """Segment `structure` along `axis` with the adapted model, else the pretrained one; returns the outcome,
    that model's slice decoder and, with an adapted model, the pretrained one's, both prepared as in the outcome."""
    current = adapted_segmenter or segmenter
    outcome = current.segment(volume, structure, box, points, modality, progress, axis=axis)
    decoder = _decoder(current, volume, outcome, structure, axis)
    base = None if adapted_segmenter is None else _decoder(segmenter, volume, outcome, structure, axis)
    return outcome, decoder, base


def score_slices(decoder: SliceDecoder, base: SliceDecoder | None, prompts: Mapping[int, np.ndarray],
                 prompt_free: bool, points: Sequence[Point3D], seed: int, options: ScoringOptions,
                 progress: ProgressCallback | None) -> dict[int, dict[str, float | None]]:
    """Raw scores (see :func:`_slice_parts`) of each slice of `prompts` {index: box (x0, y0, x1, y1)}, in its
    order; prompt_free: decode without the box (the pretrained model still gets it)."""
    parts: dict[int, dict[str, float | None]] = {}
    for number, (index, prompt) in enumerate(prompts.items()):
        parts[index] = _slice_parts(decoder, base, index, None if prompt_free else prompt, prompt,
                                    [p for p in points if p.ijk[decoder.encoder.axis] == index], seed, options)
        if progress is not None:
            progress("scoring slices", number + 1, len(prompts))
    return parts


def explain_scores(difficulty: str, asd: float, dkd: float, divergence_led: bool, labeled: bool, unit: str,
                   options: ScoringOptions) -> str:
    """`difficulty` (ASD's part of a reason) and DKD's part, the larger weighted contribution first; DKD is
    read against the adapted model's divergence or the labeled `unit` ('slices'); with neither it is 0."""
    high = dkd >= 0.5
    if divergence_led:
        knowledge = "adapted model departs from the pretrained one" if high else "adapted and pretrained models agree"
    elif labeled:
        knowledge = f"far from labeled {unit}" if high else f"close to labeled {unit}"
    else:
        knowledge = f"no labeled {unit} yet"
    pieces = [difficulty, f"{knowledge} (DKD {dkd:.2f})"]
    if options.weight_dkd * dkd > options.weight_asd * asd:
        pieces.reverse()
    return ", ".join(pieces)


def _reason(structure: str, asd: float, dkd: float, predicted: bool, presence: float, options: ScoringOptions,
            labeled: bool, divergence_led: bool, pick: Pick, anchors: Collection[int]) -> str:
    """One line saying why a slice was suggested, its larger contribution first."""
    if not predicted:
        difficulty = f"just beyond the predicted {structure} (ASD {asd:.2f})"
    elif asd >= 0.5:
        difficulty = f"uncertain boundary of {structure} (ASD {asd:.2f})"
    else:
        difficulty = f"fairly certain {structure} boundary (ASD {asd:.2f})"
    line = explain_scores(difficulty, asd, dkd, divergence_led, labeled, "slices", options)
    if presence < 1:
        line += f"; near the end of the predicted {structure} (weight {presence:.2f})"
    if pick.target is not None:
        target = pick.target
        line += f"; spreads labels evenly between slices {target.start} and {target.end} (target {target.position:.1f})"
    elif pick.nearest is not None:
        kind = "labeled" if pick.nearest in anchors else "suggested"
        line += f"; {abs(pick.index - pick.nearest)} slices from {kind} slice {pick.nearest}"
    return line


def labeling_extent(box: Box3D | None, axis: int, predicted: Collection[int], candidates: Collection[int]
                    ) -> tuple[int, int]:
    """(first, last) slice along `axis` that covering picks spread over: the 3D box's range, where whoever drew
    it says the structure is (the prediction often stops short of its thin ends, where labels teach most);
    without a box the predicted extent, or the candidates' range when nothing is predicted."""
    if box is not None:
        return box.slice_range(axis)
    chosen = predicted or candidates
    return min(chosen), max(chosen)


def suggest_slices(segmenter: Segmenter, volume: Volume, structure: str, budget: int, box: Box3D | None = None,
                   points: Sequence[Point3D] = (), annotated: Collection[int] = frozenset(),
                   adapted_segmenter: Segmenter | None = None, axis: int = 2, seed: int = 0, modality: str = "auto",
                   options: ScoringOptions = ScoringOptions(), case_id: str | None = None,
                   progress: ProgressCallback | None = None) -> list[Suggestion]:
    """Up to `budget` slices along `axis` of `volume` to annotate next for `structure`, best first.

    segmenter: the pretrained model; adapted_segmenter: the current fine-tuned one, which then makes
    the prediction and whose divergence from `segmenter` enters DKD. The prediction comes from the
    3D box and/or points (IJK), or without a prompt when the model is prompt-free for `structure`.
    annotated: slice indices along `axis` already labeled; they are never suggested, anchor DKD's
    embedding distance and cut the predicted extent into the stretches picks spread over (or, greedy,
    anchor the diversity). Fewer than `budget` come back when fewer candidates remain
    (none when all are annotated). Deterministic for a fixed `seed` (box jitter).
    """
    budget = check_budget(budget)
    size = volume.array.shape[check_axis(axis)]
    labeled = sorted({int(i) for i in annotated})
    outside = [i for i in labeled if not 0 <= i < size]
    if outside:
        raise InputError(f"annotated slice(s) {outside} are outside the {size} slices along {AXIS_NAMES[axis]}; "
                         f"expected 0..{size - 1}")
    outcome, decoder, base = segment_for_scoring(segmenter, adapted_segmenter, volume, structure, box, points, axis,
                                                 modality, progress)
    prompts, predicted = candidate_prompts(outcome.mask, axis, box, decoder.propagator,
                                           decoder.propagator.options.margin, options, structure)
    candidates = [k for k in prompts if k not in set(labeled)]
    if not candidates:
        return []
    decoder.encoder.ensure(candidates + labeled, progress)
    parts = score_slices(decoder, base, {k: prompts[k] for k in candidates}, box is None and not points, points, seed,
                         options, progress)
    pooled = pooled_embeddings(decoder.encoder, candidates)
    labeled_pooled = pooled_embeddings(decoder.encoder, labeled)
    distance = knowledge_distance(pooled, labeled_pooled)
    asd, dkd, divergence_led, totals = combine_scores(
        [(parts[k]["entropy"] + parts[k]["disagreement"]) / 2 for k in candidates], distance,
        None if base is None else [parts[k]["divergence"] for k in candidates], options)
    presence = presence_weights(candidates, predicted, options.edge_band)
    totals = totals * presence
    position = {k: n for n, k in enumerate(candidates)}
    suggestions = []
    if options.coverage_window is None:
        picks = select_diverse(candidates, totals, pooled, labeled, labeled_pooled, budget, options)
    else:
        picks = select_covering(candidates, totals, labeling_extent(box, axis, predicted, prompts), labeled, budget,
                                options.coverage_window)
    for pick in picks:
        n = position[pick.index]
        values = {**parts[pick.index], "embedding_distance": float(distance[n]), "presence": float(presence[n]),
                  "total": float(totals[n])}
        reason = _reason(structure, asd[n], dkd[n], pick.index in predicted, float(presence[n]), options,
                         bool(labeled), bool(divergence_led[n]), pick, labeled)
        suggestions.append(Suggestion(case_id, volume.path, AXIS_NAMES[axis], pick.index, pick.score, float(dkd[n]),
                                      float(asd[n]), reason, values))
    return suggestions


def whole_volume_label(labels: Sequence[LabelVersion]) -> LabelVersion | None:
    """The latest version among `labels` (one case and structure, oldest first) that trains (a correction or
    an accepted label) and annotates the whole volume; None when there is none."""
    return next((label for label in reversed(labels) if label.trains and label.annotated_slices is None), None)


def prompt_box(labels: Sequence[LabelVersion]) -> Box3D | None:
    """Bounding box (+ REFERENCE_BOX_MARGIN) of the latest prediction or correction among `labels` (one case and
    structure, oldest first); None when there is neither, InputError when that version is empty."""
    prompts = [label for label in labels if label.kind in ("prediction", "correction")]
    if not prompts:
        return None
    latest = prompts[-1]
    mask = read_volume(latest.file).array != 0
    if not mask.any():
        raise InputError(f"case {latest.case_id!r}: {latest.structure!r} version {latest.version} is empty, "
                         "so it gives no box; expected a box around the structure")
    return Box3D.around(mask, REFERENCE_BOX_MARGIN)


def suggest_from_store(store: FineTuningStore, case_id: str, structure: str, budget: int, segmenter: Segmenter,
                       box: Box3D | None = None, points: Sequence[Point3D] = (), annotated: Collection[int] = (),
                       adapted_segmenter: Segmenter | None = None, axis: int = 2, seed: int = 0,
                       options: ScoringOptions = ScoringOptions(),
                       progress: ProgressCallback | None = None) -> list[Suggestion]:
    """:func:`suggest_slices` on a store's case, skipping the slices along `axis` that its corrections
    and accepted labels of `structure` annotate (annotations along other axes are not counted) and
    the `annotated` ones.

    Without a box, the prompt is the bounding box (+2 voxels) of the latest prediction or correction of
    `structure`; on a case with no label of it yet (the cold start), the box of the anatomical localiser's
    top candidate for it (localised_box). InputError for an unknown case, for a structure the case has no
    label of that the localiser cannot place either when no prompt is given, and when a whole-volume
    correction leaves nothing to suggest.
    """
    budget = check_budget(budget)
    case = store.case(case_id)
    volume = None
    try:
        labels = store.history(case.case_id, structure)
    except InputError as missing:
        if box is None and not points:
            volume = read_volume(case.image)
            box = localised_box(volume, structure, case.modality or "auto", case.case_id, missing)
        labels = []
    whole = whole_volume_label(labels)
    if whole is not None:
        raise InputError(f"case {case.case_id!r}: {whole.structure!r} version {whole.version} is a whole-volume "
                         f"{whole.kind}, so every slice is annotated; nothing is left to suggest")
    annotated = set(annotated) | {i for label in labels if label.trains
                                  for i in label.annotated_slices.get(AXIS_NAMES[axis], [])}
    if box is None:
        box = prompt_box(labels)
    return suggest_slices(segmenter, volume or read_volume(case.image), structure, budget, box, points, annotated,
                          adapted_segmenter, axis, seed, case.modality or "auto", options, case.case_id, progress)


def localised_box(volume: Volume, structure: str, modality: str, case_id: str, missing: InputError) -> Box3D:
    """The cold start of a case with no label of `structure`: the box of the anatomical localiser's top
    candidate for it (no network runs). InputError saying a box is needed when the localiser cannot place
    it (`missing`: why the store had no label)."""
    from MedSegAdaptLib.inference.report_guidance import PriorGuidance
    from MedSegAdaptLib.inference.report_segmentation import (
        candidate_box,
        find_candidates,
    )

    try:
        found = find_candidates(PriorGuidance(), volume, structure, structure, modality)
    except InputError as error:
        raise InputError(f"case {case_id!r} has no label of {structure!r} yet ({missing}), and the anatomical "
                         f"localiser cannot place it ({error}); give --box-ijk or --point-ijk around it, or "
                         "segment it first") from error
    return candidate_box(found.finding, 0)

"""Which whole volumes of a cohort an expert should annotate next, and why (volume query units).

The scores are ours, like the slice scores of :mod:`.scoring`: the ASSFT paper names its criteria but
publishes no formulas.

- Candidates: each volume is segmented for the structure from its 3D box (a store case: the bounding
  box + 2 voxels of its latest prediction or correction of the structure, as
  :func:`.suggest.suggest_from_store` prompts), or without a prompt when the model is prompt-free for the
  structure. A volume with neither, or in which the model predicts nothing, is skipped with a note. A store
  case with a whole-volume training label of the structure (a correction, or an accepted pseudo-label or
  synthetic label) is never a candidate: it is a labeled volume. A partial annotation leaves its case a
  candidate (its remaining slices are `suggest`'s job).
- ASD: every predicted slice (a slice with foreground along the axis) is decoded with its box (its mask box
  plus the propagation margin) and `augmentations` jittered copies, as candidate slices are; the volume's
  raw difficulty is the mean over its predicted slices of (entropy + disagreement) / 2
  (:func:`MedSegAdaptLib.inference.uncertainty.slice_difficulty`).
- DKD: a volume's embedding is the mean of its predicted slices' pooled embeddings (a labeled volume's:
  over the slices of its label's extent); its embedding distance is the cosine distance to the nearest
  labeled volume, 0 for every volume while none is labeled. With an adapted model, its divergence
  is the mean over its predicted slices of 1 - Dice(adapted, pretrained mask). Normalised over the
  candidates and combined as for slices (:func:`.scoring.combine_scores`).
- Diversity: total = weight_dkd * DKD + weight_asd * ASD; volumes are picked greedily, each pick
  multiplying the others' totals by min(1, cosine distance / D) ** diversity to the nearest picked or
  labeled volume, D the median pairwise distance of the candidates (:func:`.scoring.select_diverse`
  without its slice-position term), so a near-duplicate of a labeled or picked volume comes last.
- Defaults (:data:`.options.VOLUME_RANKING`): ASD alone (weight_dkd 0, diversity 0), which won the volume
  ranking benchmark; DKD is still computed and reported with each suggestion, and weighs in with other
  options.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.errors import InputError, unknown_name
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference import Box3D, Segmenter
from MedSegAdaptLib.inference.preprocess import preset_for
from MedSegAdaptLib.inference.slice_encoder import knowledge_distance, pooled_embeddings
from MedSegAdaptLib.io import Volume, read_volume
from MedSegAdaptLib.io.modality import detect_modality
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions.options import VOLUME_RANKING, ScoringOptions
from MedSegAdaptLib.suggestions.scoring import combine_scores, select_diverse
from MedSegAdaptLib.suggestions.slices import (
    candidate_prompts,
    check_axis,
    check_budget,
    explain_scores,
    prompt_box,
    score_slices,
    segment_for_scoring,
    whole_volume_label,
)

__all__ = [
    "CohortVolume",
    "VolumeRanking",
    "VolumeSuggestion",
    "suggest_volumes",
    "suggest_volumes_from_store",
]


@dataclass(frozen=True)
class CohortVolume:
    """One volume of a cohort: image (a file, a DICOM folder or a Volume), its 3D box in IJK (a candidate's
    prompt, None for prompt-free segmentation; a labeled volume's label extent, None for every slice),
    case_id (the name in the output; needed for an in-memory Volume without a path), modality ('auto',
    'ct' or 'mr') and structure: what to segment in this volume when it differs from the ranking's
    structure (a cohort of lesions, each case with its own finding: 'lung nodule', 'brain tumor'); None:
    the ranking's."""

    image: str | Path | Volume
    box: Box3D | None = None
    case_id: str | None = None
    modality: str = "auto"
    structure: str | None = None

    def __post_init__(self) -> None:
        if self.case_id is None and isinstance(self.image, Volume) and self.image.path is None:
            raise InputError("an in-memory volume of a cohort needs a case id; "
                             "expected CohortVolume(..., case_id='...')")

    @property
    def name(self) -> str:
        """The case id, else the image's file name."""
        if self.case_id is not None:
            return self.case_id
        return Path(self.image.path if isinstance(self.image, Volume) else self.image).name

    def read(self) -> Volume:
        """The image as a Volume."""
        return self.image if isinstance(self.image, Volume) else read_volume(self.image)


@dataclass(frozen=True)
class VolumeSuggestion:
    """One volume to annotate in full: score (the total after the diversity penalty), dkd and asd in [0, 1];
    components: the raw parts (slices: predicted slices scored; entropy, disagreement and divergence: their
    means over those slices, divergence None without an adapted model; embedding_distance; total)."""

    case_id: str | None
    image: str | None
    score: float
    dkd: float
    asd: float
    reason: str
    components: dict[str, float | None] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        """JSON-ready dict with every field."""
        return asdict(self)


@dataclass(frozen=True)
class VolumeRanking:
    """suggestions: at most the budget, best first; skipped: one line per volume left out, saying why."""

    suggestions: list[VolumeSuggestion]
    skipped: list[str]


def _prompt_free(segmenter: Segmenter, structure: str) -> bool:
    """Whether `segmenter`'s model was fine-tuned to segment `structure` without a prompt."""
    return structure.strip().casefold() in {name.casefold() for name in segmenter.backbone.prompt_free_structures}


def _candidate_parts(segmenter: Segmenter, adapted_segmenter: Segmenter | None, volume: Volume, structure: str,
                     item: CohortVolume, axis: int, seed: int, options: ScoringOptions,
                     progress: ProgressCallback | None) -> tuple[np.ndarray, dict[str, float | None]] | None:
    """(the (D,) mean pooled embedding over the predicted slices, the raw parts) of one candidate volume;
    None when the model predicts no `structure` in it."""
    structure = item.structure or structure
    outcome, decoder, base = segment_for_scoring(segmenter, adapted_segmenter, volume, structure, item.box, (), axis,
                                                 item.modality, progress)
    if not outcome.mask.any():
        return None
    prompts, predicted = candidate_prompts(outcome.mask, axis, item.box, decoder.propagator,
                                           decoder.propagator.options.margin, options, structure)
    indices = sorted(predicted)
    decoder.encoder.ensure(indices, progress)
    slices = score_slices(decoder, base, {k: prompts[k] for k in indices}, item.box is None, (), seed, options,
                          progress)

    def mean(key: str) -> float:
        return float(np.mean([parts[key] for parts in slices.values()]))

    parts = {"slices": len(indices), "entropy": mean("entropy"), "disagreement": mean("disagreement"),
             "divergence": None if base is None else mean("divergence")}
    return pooled_embeddings(decoder.encoder, indices).mean(0), parts


def _labeled_embedding(segmenter: Segmenter, item: CohortVolume, structure: str, axis: int) -> np.ndarray:
    """(D,) mean pooled embedding of a labeled volume over the slices of its box along `axis` (every slice
    without one), with the intensity preset its candidates get."""
    volume = item.read()
    structure = item.structure or structure
    modality = item.modality
    if modality == "auto":
        modality = detect_modality(volume.array, volume.modality_hint)[0]
    if item.box is not None:
        item.box.validate(volume.array.shape, item.name)
    lo, hi = item.box.slice_range(axis) if item.box is not None else (0, volume.array.shape[axis] - 1)
    encoder = segmenter.encoder_for(volume, preset_for(structure, modality), axis)
    return pooled_embeddings(encoder, range(lo, hi + 1)).mean(0)


def _reason(structure: str, asd: float, dkd: float, slices: int, divergence_led: bool, labeled: bool,
            nearest: str | None, nearest_labeled: bool, options: ScoringOptions) -> str:
    """One line saying why a volume was suggested, its larger contribution first."""
    certainty = "uncertain" if asd >= 0.5 else "fairly certain"
    difficulty = f"{certainty} {structure} boundary on {slices} slices (ASD {asd:.2f})"
    line = explain_scores(difficulty, asd, dkd, divergence_led, labeled, "volumes", options)
    if nearest is not None:
        line += f"; nearest {'labeled' if nearest_labeled else 'suggested'} volume: {nearest}"
    return line


def _rank(segmenter: Segmenter, cohort: list[CohortVolume], structure: str, budget: int,
          labeled: Sequence[CohortVolume], adapted_segmenter: Segmenter | None, axis: int, seed: int,
          options: ScoringOptions, progress: ProgressCallback | None, skipped: list[str],
          where: str) -> VolumeRanking:
    """Score and pick among `cohort` (every volume with a prompt); `skipped` collects the notes."""
    if len(cohort) < 2:
        raise InputError(f"{len(cohort)} volume(s) of {where} can be ranked for {structure!r}; expected 2 or more"
                         + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
    kept: list[tuple[CohortVolume, str | None, dict[str, float | None]]] = []
    pooled = []
    for number, item in enumerate(cohort):
        volume = item.read()
        scored = _candidate_parts(segmenter, adapted_segmenter, volume, structure, item, axis, seed, options, progress)
        if scored is None:
            skipped.append(f"{item.name}: the model predicts no {(item.structure or structure)!r} in it")
        else:
            pooled.append(scored[0])
            kept.append((item, volume.path, scored[1]))
        if progress is not None:
            progress("ranking volumes", number + 1, len(cohort))
    if not kept:
        return VolumeRanking([], skipped)
    current = adapted_segmenter or segmenter
    pooled = np.stack(pooled)
    labeled_pooled = (np.stack([_labeled_embedding(current, item, structure, axis) for item in labeled]) if labeled
                      else np.zeros((0, pooled.shape[1])))
    distance = knowledge_distance(pooled, labeled_pooled)
    parts = [entry[2] for entry in kept]
    asd, dkd, divergence_led, totals = combine_scores(
        [(p["entropy"] + p["disagreement"]) / 2 for p in parts], distance,
        None if adapted_segmenter is None else [p["divergence"] for p in parts], options)
    names = [item.name for item, _, _ in kept] + [item.name for item in labeled]
    suggestions = []
    for pick in select_diverse(range(len(kept)), totals, pooled, range(len(kept), len(names)), labeled_pooled,
                               budget, options, by_position=False):
        n = pick.index
        item, image, values = kept[n]
        nearest = None if pick.nearest is None else names[pick.nearest]
        reason = _reason(item.structure or structure, asd[n], dkd[n], int(values["slices"]), bool(divergence_led[n]),
                         bool(labeled), nearest, pick.nearest is not None and pick.nearest >= len(kept), options)
        suggestions.append(VolumeSuggestion(item.case_id, image, pick.score, float(dkd[n]), float(asd[n]), reason,
                                            {**values, "embedding_distance": float(distance[n]),
                                             "total": float(totals[n])}))
    return VolumeRanking(suggestions, skipped)


def suggest_volumes(segmenter: Segmenter, cohort: Sequence[CohortVolume], structure: str, budget: int,
                    labeled: Sequence[CohortVolume] = (), adapted_segmenter: Segmenter | None = None, axis: int = 2,
                    seed: int = 0, options: ScoringOptions = VOLUME_RANKING,
                    progress: ProgressCallback | None = None) -> VolumeRanking:
    """Up to `budget` volumes of `cohort` to annotate in full next for `structure`, best first (see the module
    docstring), and notes on the volumes skipped.

    cohort: the candidates, each with its box (or none when the model is prompt-free for its structure: its
    own, else `structure`);
    labeled: the volumes already annotated in full, each with its label's extent as box; they anchor DKD and
    the diversity. segmenter: the pretrained model; adapted_segmenter: the current fine-tuned one, which then
    segments and whose divergence from `segmenter` enters DKD. Slices run along `axis`. Deterministic for a
    fixed `seed` (box jitter). InputError when fewer than 2 candidates have a prompt.
    """
    budget = check_budget(budget, "volumes")
    check_axis(axis)
    current = adapted_segmenter or segmenter
    usable, skipped = [], []
    for item in cohort:
        own = item.structure or structure
        if item.box is not None or _prompt_free(current, own):
            usable.append(item)
        else:
            skipped.append(f"{item.name}: no box, and the model needs a prompt for {own!r}")
    return _rank(segmenter, usable, structure, budget, labeled, adapted_segmenter, axis, seed, options, progress,
                 skipped, "the cohort")


def suggest_volumes_from_store(store: FineTuningStore, structure: str, budget: int, segmenter: Segmenter,
                               adapted_segmenter: Segmenter | None = None, axis: int = 2, seed: int = 0,
                               options: ScoringOptions = VOLUME_RANKING,
                               progress: ProgressCallback | None = None) -> VolumeRanking:
    """:func:`suggest_volumes` on the cases of a fine-tuning store, by case id.

    A case with a whole-volume correction or accepted label of `structure` is labeled, never suggested; the
    others are prompted by the bounding box (+2 voxels) of their latest prediction or correction of it
    (skipped with a note without one, unless the model is prompt-free for `structure`). InputError when no
    case has a label of `structure` and the model needs a prompt (close names suggested), and when fewer than
    2 cases can be ranked.
    """
    budget = check_budget(budget, "volumes")
    check_axis(axis)
    prompt_free = _prompt_free(adapted_segmenter or segmenter, structure)
    cohort, labeled, skipped = [], [], []
    named = False
    for case in store.cases():
        try:
            labels = store.history(case.case_id, structure)
        except InputError:  # the case has no label of the structure
            labels = []
        named = named or bool(labels)
        modality = case.modality or "auto"
        whole = whole_volume_label(labels)
        if whole is not None:
            mask = read_volume(whole.file).array != 0
            labeled.append(CohortVolume(case.image, Box3D.around(mask) if mask.any() else None, case.case_id, modality))
            accepted = "an accepted" if whole.review_status == "accepted" else "a"
            skipped.append(f"{case.case_id}: annotated in full ({whole.structure!r} version {whole.version} is "
                           f"{accepted} whole-volume {whole.kind})")
            continue
        try:
            box = prompt_box(labels)
        except InputError as error:  # its latest prediction or correction is empty
            skipped.append(str(error))
            continue
        if box is None and not prompt_free:
            skipped.append(f"{case.case_id}: no prediction or correction of {structure!r} to take a box from")
            continue
        cohort.append(CohortVolume(case.image, box, case.case_id, modality))
    if not named and not prompt_free:
        names = sorted({label.structure for case in store.cases() for label in store.history(case.case_id)})
        raise unknown_name("structure", structure, names, str(store.root))
    return _rank(segmenter, cohort, structure, budget, labeled, adapted_segmenter, axis, seed, options, progress,
                 skipped, str(store.root))

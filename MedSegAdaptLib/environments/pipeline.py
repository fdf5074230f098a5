"""MedSeg-Adapt for one imaging environment: generate, label, (self-validate), store, fine-tune.

For each of `count` samples, a source case of the store (one with corrections, in turn) goes through
the environment simulator with its corrected labels, and 2-3 clinical queries are written for every
structure. The sample's image joins the store as a new case, its labels as 'synthetic' labels whose
comment records the environment, its drawn parameters, the queries and (for pseudo-masks) the checks.

What a sample is trained on (``labels``):

- 'exact' (default): the simulator's own labels where they are known: on the slices of the sample
  that the source's annotated slices became (every slice for a whole-volume correction or a lesion the
  simulator inserted), as a partial label accepted by reviewer 'simulator'. No model runs.
- 'exact+pseudo': also, for a partially annotated structure, an ensemble pseudo-mask over the whole
  volume (MedSegAdaptLib.environments.ensemble_masks, prompted with the box + 2 voxels of the
  transformed label) with the exact slices pasted in, self-validated
  (MedSegAdaptLib.environments.self_validation): a passing one is accepted by 'self-validation' and
  replaces the partial label in the training view, a failing one waits for an expert.
- 'pseudo': the ensemble pseudo-mask alone for every structure (the method before 'exact'; kept as the
  baseline the benchmark compares with).

Why 'exact' is the default (docs/environments.md): pseudo-masks of the pretrained model teach it its
own predictions, and on every slice they outnumbered the corrected slices 58 to 2 with 4 samples.

Samples are cached by their parameters: each sample draws from its own generator (seed, number), and
its labels record a generation key (environment and parameters, seed, number, the source's image and
label versions, the label mode, the models and hooks); running ``generate_samples`` again with the same
key returns the stored sample instead of generating it again.

Two optional hooks stand in for the paper's generative models: ``generator(sample, rng)``, any
user-supplied image model (e.g. a local diffusion model used image-to-image), returns a new (I, J, K)
image for the simulated sample on the same grid, so the simulated labels stay valid; ``llm(prompt)``
rewrites the template queries (MedSegAdaptLib.environments.queries). Their names join the sample's provenance.

Where the source label is known on every slice, self-validation gets the expected share of the body
(measured on the generated image, so CT and MR-like bodies are compared alike) and each pseudo-mask's
Dice against it is reported (`reference_dice`); for a partial source, that Dice is over its known slices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.axes import AXIS_NAMES
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.environments.ensemble_masks import ensemble_pseudo_mask
from MedSegAdaptLib.environments.queries import sample_queries
from MedSegAdaptLib.environments.self_validation import (
    DEFAULT_THRESHOLD,
    Validation,
    body_mask,
    self_validate,
    volume_share,
)
from MedSegAdaptLib.environments.simulators import Environment, SimulatedSample
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference.prompts import Box3D
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.io import Volume, read_volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.store.records import LabelVersion
from MedSegAdaptLib.store.slices import annotated_region
from MedSegAdaptLib.store.store import FineTuningStore

__all__ = [
    "ANNOTATOR",
    "KNOWN_FRACTION",
    "LABEL_MODES",
    "REVIEWER",
    "SIMULATOR",
    "GeneratedLabel",
    "Generator",
    "Source",
    "correction_sources",
    "generate_samples",
    "generation_key",
    "load_hook",
    "regenerate",
    "simulate_with_known_slices",
    "summarize",
]

ANNOTATOR = "medsegadapt-adapt"
REVIEWER = "self-validation"
SIMULATOR = "simulator"  # the reviewer (and label kind) of a simulator's exact label
LABEL_MODES = ("exact", "exact+pseudo", "pseudo")


@dataclass
class GeneratedLabel:
    """One synthetic label: where it went in the store and how it was judged. label: 'simulator' (exact,
    validation None) or 'ensemble pseudo-mask'; annotated_slices: {axis: slices} of a partial label;
    cached: True when the sample was found in the store instead of generated."""

    case_id: str
    structure: str
    label_id: int
    queries: list[str]
    validation: Validation | None
    accepted: bool
    reference_dice: float | None
    label: str = "ensemble pseudo-mask"
    annotated_slices: dict[str, list[int]] | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        validation = self.validation
        return {"case_id": self.case_id, "structure": self.structure, "label_id": self.label_id,
                "label": self.label, "queries": self.queries,
                "score": None if validation is None else round(validation.score, 4),
                "failed_checks": [] if validation is None else validation.failed(), "accepted": self.accepted,
                "reference_dice": None if self.reference_dice is None else round(self.reference_dice, 4),
                "annotated_slices": self.annotated_slices, "cached": self.cached}


@dataclass
class Source:
    """A store case with corrected labels: {structure: (I, J, K) bool}; annotated: {structure: {axis:
    slices}} of partial corrections, None for whole-volume ones; versions: {structure: label SHA-256}."""

    case_id: str
    image: Path
    image_sha256: str
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    annotated: dict[str, dict[str, list[int]] | None] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def correction_sources(store: FineTuningStore, structures: Sequence[str] | None = None) -> list[Source]:
    """The store's real cases whose training view holds corrections (of `structures` if given)."""
    wanted = None if structures is None else {s.casefold() for s in structures}
    grouped: dict[str, Source] = {}
    for row in store.training_view():
        if row.kind != "correction" or (wanted is not None and row.structure.casefold() not in wanted):
            continue
        source = grouped.setdefault(row.case_id, Source(row.case_id, row.image, row.image_sha256))
        source.labels[row.structure] = read_volume(row.label).array != 0
        source.annotated[row.structure] = row.annotated_slices
        source.versions[row.structure] = row.label_sha256
    if not grouped:
        which = "" if structures is None else f" of {', '.join(structures)}"
        raise InputError(f"store {store.root} has no corrections{which} to adapt from; submit corrections of real "
                         "cases first (`medsegadapt store submit`)")
    return [grouped[case_id] for case_id in sorted(grouped)]


Generator = Callable[[SimulatedSample, np.random.Generator], np.ndarray]
"""A user-supplied image model: (simulated sample, rng) -> its new (I, J, K) image on the same grid."""


def load_hook(spec: str, what: str) -> Callable:
    """The callable named by ``spec`` ('package.module:function'), for the ``what`` hook; clear errors."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise InputError(f"{what} {spec!r}: expected MODULE:FUNCTION, e.g. my_models.diffusion:refine")
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as error:
        raise InputError(f"{what} {spec!r}: cannot import module {module_name.strip()!r} ({error})") from error
    hook = getattr(module, attribute.strip(), None)
    if not callable(hook):
        raise InputError(f"{what} {spec!r}: module {module_name.strip()!r} has no function {attribute.strip()!r}")
    return hook


def _hook_name(hook: Callable) -> str:
    return f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', type(hook).__name__)}"


def regenerate(sample: SimulatedSample, generator: Generator, rng: np.random.Generator) -> SimulatedSample:
    """``sample`` with its image replaced by ``generator``'s, which must keep the (I, J, K) shape and be finite."""
    name = _hook_name(generator)
    image = np.asarray(generator(sample, rng), dtype=np.float32)
    if image.shape != sample.volume.array.shape or not np.isfinite(image).all():
        raise InputError(f"generator {name} returned an image of shape {image.shape}"
                         f"{'' if np.isfinite(image).all() else ' with non-finite voxels'}; expected finite values "
                         f"of the simulated image's shape {sample.volume.array.shape}")
    volume = dataclasses.replace(sample.volume, array=image)
    return dataclasses.replace(sample, volume=volume, parameters=sample.parameters | {"generator": name})


def _new_case_id(store: FineTuningStore, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... : the first id not taken in the store."""
    taken = {case.case_id.casefold() for case in store.cases()}
    candidate, number = base, 1
    while candidate.casefold() in taken:
        number += 1
        candidate = f"{base}-{number}"
    return candidate


_KNOWN = "\0known:"  # prefix of the indicator masks sent through the simulator (never a structure name)
_INSIDE = "\0inside"  # the indicator of the whole source volume
KNOWN_FRACTION = 0.95  # share of a sample slice's voxels from inside the source that annotated slices must cover


def simulate_with_known_slices(environment: Environment, volume: Volume, source: Source,
                               rng: np.random.Generator) -> tuple[SimulatedSample, dict[str, dict[str, list[int]] | None]]:
    """The environment applied to `source` and, per label of the sample, the slices where it is exact:
    {axis: sample slices} for a partial correction, None where known everywhere (whole-volume
    corrections, inserted lesions). Each partial correction's annotated slices travel through the
    simulator as an indicator mask (resampled with the labels by the environments that change the grid),
    beside one of the whole source; a sample slice is known where the annotated slices cover
    KNOWN_FRACTION of its voxels that come from inside the source (outside is air, its label empty),
    and the label is cut to the annotated slices' indicator."""
    indicators = {_KNOWN + structure: annotated_region(volume.array.shape, annotated)
                  for structure, annotated in source.annotated.items() if annotated is not None}
    if indicators:
        indicators[_INSIDE] = np.ones(volume.array.shape, bool)
    sample = environment.apply(volume, source.labels | indicators, rng)
    labels = {name: mask for name, mask in sample.labels.items() if not name.startswith("\0")}
    known: dict[str, dict[str, list[int]] | None] = {}
    for name, mask in list(labels.items()):
        indicator = sample.labels.get(_KNOWN + name)
        if indicator is None:
            known[name] = None
            continue
        inside = sample.labels[_INSIDE]
        known[name] = {}
        for axis in source.annotated[name]:
            others = tuple(a for a in range(3) if a != AXIS_NAMES.index(axis))
            covered = (indicator & inside).sum(axis=others) >= KNOWN_FRACTION * np.maximum(inside.sum(axis=others), 1)
            known[name][axis] = [int(i) for i in np.flatnonzero(covered & inside.any(axis=others))]
        labels[name] = mask & indicator
    return dataclasses.replace(sample, labels=labels), known


def generation_key(environment: Environment, source: Source, seed: int, number: int, labels: str,
                   extra: Sequence[str] = ()) -> str:
    """16 hex digits naming one sample by everything that makes it: same key, same sample."""
    content = {"environment": environment.name, "parameters": environment.parameters(), "seed": seed,
               "number": number, "source": source.image_sha256, "labels": labels, "extra": list(extra),
               "versions": sorted(source.versions.items())}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached_samples(store: FineTuningStore) -> dict[str, list[LabelVersion]]:
    """generation key -> the synthetic labels of the stored sample that carries it."""
    cached: dict[str, list[LabelVersion]] = defaultdict(list)
    for case in store.cases():
        for version in store.history(case.case_id):
            if version.kind != "synthetic" or version.annotator != ANNOTATOR or not version.comment:
                continue
            key = json.loads(version.comment).get("generation_key")
            if key is not None:
                cached[key].append(version)
    return cached


def _from_store(version: LabelVersion) -> GeneratedLabel:
    """A stored synthetic label as a GeneratedLabel (its current review decides `accepted`)."""
    comment = json.loads(version.comment)
    validation = None if comment["label"] == "simulator" else \
        Validation(comment["score"], comment["checks"], all(c["passed"] for c in comment["checks"].values()))
    return GeneratedLabel(version.case_id, version.structure, version.label_id, comment["queries"], validation,
                          version.review_status == "accepted", comment.get("reference_dice"), comment["label"],
                          version.annotated_slices, cached=True)


@dataclass
class _Judged:
    """One label of a sample, computed before anything is written."""

    structure: str
    mask: np.ndarray
    label: str
    annotated_slices: dict[str, list[int]] | None
    validation: Validation | None = None
    reference_dice: float | None = None


def _known_dice(mask: np.ndarray, exact: np.ndarray, known: dict[str, list[int]] | None) -> float:
    """Dice of `mask` against the exact label over its known slices (every slice for None)."""
    keep = annotated_region(mask.shape, known)
    return dice(mask & keep, exact & keep)


def _judge_sample(sample: SimulatedSample, known: dict[str, dict[str, list[int]] | None], queries: dict,
                  labels: str, segmenters: Sequence[Segmenter], threshold: float,
                  knowledge: KnowledgeBase) -> list[_Judged]:
    """The labels of one sample to store, by the label mode (see the module docstring)."""
    judged = []
    body = None
    for structure, exact in sample.labels.items():
        if not exact.any():
            continue
        slices = known[structure]
        if labels != "pseudo":
            judged.append(_Judged(structure, exact, SIMULATOR, slices))
            if labels == "exact" or slices is None:
                continue
        if not segmenters:
            raise InputError(f"no model to pseudo-label {structure!r}: give at least one segmenter, or labels='exact'")
        body = body_mask(sample.volume) if body is None else body
        share = volume_share(exact, body) if slices is None else None
        ensemble = ensemble_pseudo_mask(segmenters, sample.volume, structure, Box3D.around(exact, REFERENCE_BOX_MARGIN),
                                        queries.get(structure, ()), sample.modality)
        mask = ensemble.mask.copy()
        if labels == "exact+pseudo":
            known_voxels = annotated_region(mask.shape, slices)
            mask[known_voxels] = exact[known_voxels]
        validation = self_validate(mask, sample.volume, sample.modality, knowledge.structure(structure),
                                   ensemble.agreement, share, threshold)
        judged.append(_Judged(structure, mask, "ensemble pseudo-mask", None, validation,
                              _known_dice(ensemble.mask, exact, slices)))
    return judged


def generate_samples(store: FineTuningStore, environment: Environment, count: int, segmenters: Sequence[Segmenter],
                     seed: int = 0, threshold: float = DEFAULT_THRESHOLD, self_validation: bool = True,
                     structures: Sequence[str] | None = None, generator: Generator | None = None,
                     llm: Callable[[str], str] | None = None, labels: str = "exact",
                     progress: ProgressCallback | None = None) -> list[GeneratedLabel]:
    """Generate `count` samples of `environment` from the store's corrected cases into the store, or find
    them there (see the module docstring). labels: 'exact', 'exact+pseudo' or 'pseudo'; segmenters: the
    ensemble's models (needed unless labels is 'exact'); self_validation False accepts every pseudo-mask
    (the ablation); generator and llm are the optional hooks."""
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    if not 0 <= threshold <= 1:
        raise InputError(f"self-validation threshold must be in [0, 1], got {threshold}")
    if labels not in LABEL_MODES:
        raise InputError(f"labels {labels!r}: expected one of {', '.join(LABEL_MODES)}")
    sources = correction_sources(store, structures)
    knowledge = KnowledgeBase.load()
    extra = [] if labels == "exact" else [f"threshold={threshold}", f"self_validation={self_validation}",
                                          *(f"{s.backbone.spec.name}:{s.backbone.spec.weights_sha256}" for s in segmenters)]
    extra += [_hook_name(hook) for hook in (generator, llm) if hook is not None]
    cached = _cached_samples(store)
    generated: list[GeneratedLabel] = []
    read: dict[str, Volume] = {}
    for number in range(count):
        if progress is not None:  # may raise to stop between samples
            progress(f"generating {environment.name} samples", number, count)
        source = sources[number % len(sources)]
        key = generation_key(environment, source, seed, number, labels, extra)
        if key in cached:
            generated += [_from_store(version) for version in cached[key]]
            continue
        if source.case_id not in read:
            read[source.case_id] = read_volume(source.image)
        rng = np.random.default_rng([seed, number])
        sample, known = simulate_with_known_slices(environment, read[source.case_id], source, rng)
        if generator is not None:
            sample = regenerate(sample, generator, rng)
        if llm is not None:
            sample = dataclasses.replace(sample, parameters=sample.parameters | {"llm": _hook_name(llm)})
        queries = sample_queries(sample, rng, llm=llm)
        judged = _judge_sample(sample, known, queries, labels, segmenters, threshold, knowledge)
        if not judged:  # every label of this source was empty on its known slices
            continue
        # everything is computed before the store is written, so a failure leaves no half sample
        case, _ = store.add_image(sample.volume, _new_case_id(store, f"{source.case_id}-{environment.name}-{number:03d}"),
                                  modality=sample.modality)
        for item in judged:
            checks = None if item.validation is None else item.validation.checks
            comment = json.dumps({"environment": environment.name, "source_case": source.case_id,
                                  "parameters": sample.parameters, "queries": queries.get(item.structure, []),
                                  "label": item.label, "generation_key": key, "reference_dice": item.reference_dice,
                                  "score": None if item.validation is None else item.validation.score,
                                  "checks": checks}, default=str)
            stored = store.submit_mask(case.case_id, item.structure, item.mask, ANNOTATOR, kind="synthetic",
                                       annotated_slices=item.annotated_slices, comment=comment,
                                       source=f"{environment.name} of {source.case_id}")
            exact = item.label == SIMULATOR
            accepted = exact or item.validation.passed or not self_validation
            if exact:
                store.review(stored.label_id, True, SIMULATOR, "the simulator's exact label")
            elif accepted:
                store.review(stored.label_id, True, REVIEWER,
                             f"consistency {item.validation.score:.2f}" + ("" if self_validation else " (not validated)"))
            generated.append(GeneratedLabel(case.case_id, item.structure, stored.label_id,
                                            queries.get(item.structure, []), item.validation, accepted,
                                            item.reference_dice, item.label, item.annotated_slices))
    if progress is not None:
        progress(f"generating {environment.name} samples", count, count)
    return generated


def summarize(generated: Sequence[GeneratedLabel]) -> dict:
    """Counts per structure: generated, exact (the simulator's labels), accepted, queued for review, mean
    reference Dice of each group (pseudo-masks only)."""
    by_structure: dict[str, list[GeneratedLabel]] = defaultdict(list)
    for label in generated:
        by_structure[label.structure].append(label)

    def mean_dice(labels: list[GeneratedLabel]) -> float | None:
        values = [label.reference_dice for label in labels if label.reference_dice is not None]
        return float(np.mean(values)) if values else None

    return {name: {"generated": len(labels), "exact": sum(label.label == SIMULATOR for label in labels),
                   "accepted": sum(label.accepted for label in labels),
                   "queued": sum(not label.accepted for label in labels),
                   "accepted_reference_dice": mean_dice([label for label in labels if label.accepted]),
                   "queued_reference_dice": mean_dice([label for label in labels if not label.accepted])}
            for name, labels in sorted(by_structure.items())}

"""MedSeg-Adapt for one imaging environment: generate, pseudo-mask, self-validate, store, fine-tune.

For each of `count` samples, a source case of the store (one with corrections, in turn) goes through
the environment simulator with its corrected labels; 2-3 clinical queries are written for every
structure; every structure gets an ensemble pseudo-mask (MedSegAdaptLib.environments.ensemble_masks), prompted
with the box (+2 voxels) of its transformed source label; self-validation scores it
(MedSegAdaptLib.environments.self_validation). The sample's image joins the store as a new case and each
pseudo-mask as a 'synthetic' label whose comment records the environment, its drawn parameters, the
queries and the checks. A passing pseudo-mask is accepted by reviewer 'self-validation' and joins the
training view; the others wait in the review queue for an expert. Fine-tuning then runs on the
training view: the expert corrections plus every accepted synthetic label.

Two optional hooks stand in for the paper's generative models: ``generator(sample, rng)``, any
user-supplied image model (e.g. a local diffusion model used image-to-image), returns a new (I, J, K)
image for the simulated sample on the same grid, so the simulated labels stay valid; ``llm(prompt)``
rewrites the template queries (MedSegAdaptLib.environments.queries). Their names join the sample's provenance.

The transformed source labels only place the prompt boxes and, where they are known on every slice
(a whole-volume source label, or a lesion the simulator inserted), give self-validation the expected
share of the body (measured on the generated image, so CT and MR-like bodies are compared alike) and
measure each pseudo-mask's Dice against them (`reference_dice`, for reports); they are trained on only
with ``simulated_labels``, which stores such a known label itself, accepted by 'simulator', in place
of the pseudo-mask.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
from MedSegAdaptLib.store.store import FineTuningStore

__all__ = [
    "ANNOTATOR",
    "REVIEWER",
    "SIMULATOR",
    "GeneratedLabel",
    "Generator",
    "Source",
    "correction_sources",
    "generate_samples",
    "load_hook",
    "regenerate",
    "summarize",
]

ANNOTATOR = "medsegadapt-adapt"
REVIEWER = "self-validation"
SIMULATOR = "simulator"  # the reviewer of a simulator's exact label (simulated_labels)


@dataclass
class GeneratedLabel:
    """One synthetic label: where it went in the store and how it was judged."""

    case_id: str
    structure: str
    label_id: int
    queries: list[str]
    validation: Validation
    accepted: bool
    reference_dice: float | None

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "structure": self.structure, "label_id": self.label_id,
                "queries": self.queries, "score": round(self.validation.score, 4),
                "failed_checks": self.validation.failed(), "accepted": self.accepted,
                "reference_dice": None if self.reference_dice is None else round(self.reference_dice, 4)}


@dataclass
class Source:
    """A store case with corrected labels: {structure: (I, J, K) bool}, whole: structures labeled on every slice."""

    case_id: str
    image: Path
    labels: dict[str, np.ndarray]
    whole: set[str] = field(default_factory=set)


def correction_sources(store: FineTuningStore, structures: Sequence[str] | None = None) -> list[Source]:
    """The store's real cases whose training view holds corrections (of `structures` if given)."""
    wanted = None if structures is None else {s.casefold() for s in structures}
    grouped: dict[str, Source] = {}
    for row in store.training_view():
        if row.kind != "correction" or (wanted is not None and row.structure.casefold() not in wanted):
            continue
        source = grouped.setdefault(row.case_id, Source(row.case_id, row.image, {}))
        source.labels[row.structure] = read_volume(row.label).array != 0
        if row.annotated_slices is None:
            source.whole.add(row.structure)
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


def generate_samples(store: FineTuningStore, environment: Environment, count: int, segmenters: Sequence[Segmenter],
                     seed: int = 0, threshold: float = DEFAULT_THRESHOLD, self_validation: bool = True,
                     structures: Sequence[str] | None = None, generator: Generator | None = None,
                     llm: Callable[[str], str] | None = None, simulated_labels: bool = False,
                     progress: ProgressCallback | None = None) -> list[GeneratedLabel]:
    """Generate `count` samples of `environment` from the store's corrected cases into the store (see the
    module docstring). self_validation False accepts every pseudo-mask (the ablation); generator and llm
    are the optional hooks. simulated_labels: where the simulator's label is known on every slice, store
    it instead of the ensemble pseudo-mask, accepted by 'simulator' (the exact labels a simulator can
    give, which a generative model could not; pseudo-masks remain for partially annotated sources)."""
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    if not 0 <= threshold <= 1:
        raise InputError(f"self-validation threshold must be in [0, 1], got {threshold}")
    sources = correction_sources(store, structures)
    rng = np.random.default_rng(seed)
    knowledge = KnowledgeBase.load()
    generated: list[GeneratedLabel] = []
    read: dict[str, Volume] = {}
    for number in range(count):
        if progress is not None:  # may raise to stop between samples
            progress(f"generating {environment.name} samples", number, count)
        source = sources[number % len(sources)]
        if source.case_id not in read:
            read[source.case_id] = read_volume(source.image)
        volume = read[source.case_id]
        sample = environment.apply(volume, source.labels, rng)
        if generator is not None:
            sample = regenerate(sample, generator, rng)
        if llm is not None:
            sample = dataclasses.replace(sample, parameters=sample.parameters | {"llm": _hook_name(llm)})
        queries = sample_queries(sample, rng, llm=llm)
        body = body_mask(sample.volume)
        judged = []  # everything is computed before the store is written, so a failure leaves no half sample
        for structure, reference in sample.labels.items():
            if not reference.any():
                continue
            # known on every slice: a whole-volume source label, or a lesion the simulator inserted
            known = structure in source.whole or structure not in source.labels
            share = volume_share(reference, body) if known else None
            rule = knowledge.structure(structure)
            if simulated_labels and known:
                validation = self_validate(reference, sample.volume, sample.modality, rule, 1.0, share, threshold)
                judged.append((structure, reference, validation, 1.0, True))
                continue
            ensemble = ensemble_pseudo_mask(segmenters, sample.volume, structure, Box3D.around(reference, REFERENCE_BOX_MARGIN),
                                            queries.get(structure, ()), sample.modality)
            validation = self_validate(ensemble.mask, sample.volume, sample.modality, rule, ensemble.agreement, share,
                                       threshold)
            judged.append((structure, ensemble.mask, validation, dice(ensemble.mask, reference) if known else None,
                           False))
        case, _ = store.add_image(sample.volume, _new_case_id(store, f"{source.case_id}-{environment.name}-{number:03d}"),
                                  modality=sample.modality)
        for structure, mask, validation, reference_dice, exact in judged:
            comment = json.dumps({"environment": environment.name, "source_case": source.case_id,
                                  "parameters": sample.parameters, "queries": queries.get(structure, []),
                                  "label": "simulator" if exact else "ensemble pseudo-mask",
                                  "score": validation.score, "checks": validation.checks}, default=str)
            label = store.submit_mask(case.case_id, structure, mask, ANNOTATOR, kind="synthetic",
                                      comment=comment, source=f"{environment.name} of {source.case_id}")
            accepted = exact or validation.passed or not self_validation
            if exact:
                store.review(label.label_id, True, SIMULATOR, "the simulator's exact label")
            elif accepted:
                store.review(label.label_id, True, REVIEWER,
                             f"consistency {validation.score:.2f}" + ("" if self_validation else " (not validated)"))
            generated.append(GeneratedLabel(case.case_id, structure, label.label_id, queries.get(structure, []),
                                            validation, accepted, reference_dice))
    if progress is not None:
        progress(f"generating {environment.name} samples", count, count)
    return generated


def summarize(generated: Sequence[GeneratedLabel]) -> dict:
    """Counts per structure: generated, accepted, queued for review, mean reference Dice of each group."""
    by_structure: dict[str, list[GeneratedLabel]] = defaultdict(list)
    for label in generated:
        by_structure[label.structure].append(label)

    def mean_dice(labels: list[GeneratedLabel]) -> float | None:
        values = [label.reference_dice for label in labels if label.reference_dice is not None]
        return float(np.mean(values)) if values else None

    return {name: {"generated": len(labels), "accepted": sum(label.accepted for label in labels),
                   "queued": sum(not label.accepted for label in labels),
                   "accepted_reference_dice": mean_dice([label for label in labels if label.accepted]),
                   "queued_reference_dice": mean_dice([label for label in labels if not label.accepted])}
            for name, labels in sorted(by_structure.items())}

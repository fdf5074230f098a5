"""Clinical queries for generated images: varied requests built from templates and the knowledge base.

Each query names the structure by its canonical name or a synonym, with laterality words, the
environment's name for the scan ('LDCT', 'pediatric CT', ...) and report-like phrasing (a heading,
the knowledge base's location, a lesion's size and host organ). Every query reads back, through
:func:`MedSegAdaptLib.priors.parse_report`, as the structure it was made for.

An optional ``llm`` (any ``Callable[[str], str]``, e.g. a local model's generate function) rewrites
each template query; a rewrite that no longer reads as the same structure is replaced by the
template query, with a warning. Nothing is downloaded.
"""
from __future__ import annotations

import re
import warnings
from typing import Callable

import numpy as np

from MedSegAdaptLib.core.errors import InputError, unknown_name
from MedSegAdaptLib.environments.simulators import (
    ENVIRONMENTS,
    SimulatedSample,
    names_site,
)
from MedSegAdaptLib.io.modality import MODALITIES
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase, Structure, normalize
from MedSegAdaptLib.knowledge.report_parser import parse_report

__all__ = ["clinical_queries", "sample_queries"]

#: Words that name a part of an organ: a synonym containing one ('right upper lobe', 'pancreatic head')
#: is a place in the structure, not the whole structure, and would mislead a query for its mask.
_PART = re.compile(r"\b(lobe|lingula|head|neck|body|tail|fundus|antrum|uncinate|wall|arch|ascending|descending"
                   r"|abdominal|portal vein|splenic vein|lateral ventricles|cortex|nuclei)\b")
#: Adjectival terms ('right pulmonary', 'esophageal') and inverted ones ('kidney right') read badly in a sentence.
_ADJECTIVE = re.compile(r"(al|ar|ary|ic|\bright|\bleft)$")

_TEMPLATES = (
    "{Scan}: {term}",
    "Segment the {side}{term} on this {scan}.",
    "{Scan}. Please outline the {side}{term}.",
    "{Term}, {where} ({scan}).",
    "Where is the {side}{term} in this {scan}?",
)
_LESION_TEMPLATES = (
    "{Scan}: {size}{word} in the {site}",
    "{Term} in the {site}{size_after} ({scan}).",
    "Segment the {term} on this {scan}.",
    "{Scan}. Findings: {size}{word} in the {site}; please outline it.",
)
_SIDES = {"bilateral": "bilateral "}
_LLM_PROMPT = ("Rewrite this radiology segmentation request in different words, keeping the anatomical "
               "target '{structure}' and any side, size and location. Answer with the request only.\n"
               "Request: {query}\nRewritten:")


def clinical_queries(
    structure: str,
    environment: str,
    rng: np.random.Generator,
    count: int = 3,
    modality: str | None = None,
    host: str | None = None,
    size_mm: float | None = None,
    llm: Callable[[str], str] | None = None,
) -> list[str]:
    """``count`` different queries asking for ``structure`` on an image of ``environment`` (a name in
    ENVIRONMENTS); count is 1 to 5, or 1 to 4 for a lesion with a site.

    modality: 'ct' or 'mr' (default: the environment's, CT where it keeps the input's); it picks the
    scan words and the knowledge-base texts. host / size_mm: for a lesion, the label it lies in
    (gives side and site, e.g. 'right lung') and its size; ignored for other structures.
    Unknown structures, environments or modalities raise InputError.
    """
    kb = KnowledgeBase.load()
    target = kb.structure(structure)
    environment = environment.strip().lower()
    if environment not in ENVIRONMENTS:
        raise unknown_name("environment", environment, ENVIRONMENTS, "MedSeg-Adapt's environments")
    modality = modality or ENVIRONMENTS[environment].modality or "ct"
    if modality not in MODALITIES:
        raise InputError(f"Unknown modality {modality!r} for clinical queries; expected one of {MODALITIES}")
    site = _site(target, kb.structure(host) if host else None, rng) if target.category == "lesion" else None
    lesion = site is not None
    templates = _LESION_TEMPLATES if lesion else _TEMPLATES
    if not 1 <= count <= len(templates):
        raise InputError(f"count {count} of clinical queries must be 1 to {len(templates)}")
    scans = [n.format(modality=modality.upper().replace("MR", "MRI"))
             for n in ENVIRONMENTS[environment].report_names]
    size = f"{size_mm:.0f} mm " if size_mm else ""
    queries = []
    for index in rng.permutation(len(templates))[:count]:
        scan = scans[int(rng.integers(len(scans)))]
        term = _pick(_terms(target), rng)
        text = templates[index].format(
            scan=scan, Scan=_capital(scan), term=term, Term=_capital(term), side=_SIDES.get(target.laterality, ""),
            where=_first_clause(target.describe(modality).location), site=site, size=size,
            size_after=f", {size.strip()}" if size else "",
            word=_pick(target.lesion_terms, rng) if target.lesion_terms else term,
        )
        queries.append(_rewrite(text, target.name, modality, llm) if llm else text)
    return queries


def sample_queries(sample: SimulatedSample, rng: np.random.Generator, count: int = 3,
                   llm: Callable[[str], str] | None = None) -> dict[str, list[str]]:
    """Queries for every knowledge-base structure labelled in ``sample`` (label name -> queries).

    Lesions inserted by the pathology environment are placed in their host when they share one and
    sized when there is one lesion (from the sample's parameters).
    """
    kb = KnowledgeBase.load()
    lesions = sample.parameters.get("lesions", [])
    hosts = {lesion["host"] for lesion in lesions}
    queries = {}
    for name in sample.labels:
        try:
            structure = kb.structure(name)
        except InputError:
            continue
        details = {}
        if structure.category == "lesion" and lesions:
            details["host"] = next(iter(hosts)) if len(hosts) == 1 else None
            details["size_mm"] = 2 * max(lesions[0]["semi_axes_mm"]) if len(lesions) == 1 else None
        queries[name] = clinical_queries(name, sample.environment, rng, count, sample.modality, llm=llm, **details)
    return queries


def _terms(structure: Structure) -> list[str]:
    """The name and the synonyms that name the whole structure as a noun."""
    kept = [structure.name]
    for term in structure.synonyms:
        plain = normalize(term)
        if _PART.search(plain) or _ADJECTIVE.search(plain) or _abbreviates_a_part(term, structure):
            continue
        kept.append(term)
    return kept


def _abbreviates_a_part(term: str, structure: Structure) -> bool:
    """True for an abbreviation ('RUL') of a part synonym ('right upper lobe') of ``structure``."""
    if term.upper() != term:
        return False
    initials = {"".join(w[0] for w in normalize(t).split()) for t in structure.terms if _PART.search(normalize(t))}
    return term.lower() in initials


def _site(lesion: Structure, host: Structure | None, rng: np.random.Generator) -> str | None:
    """Where the lesion is: a host term with a site word of the lesion ('right lung'), else one of the
    lesion's site nouns, else None."""
    if host is not None:
        return _pick([t for t in _terms(host) if names_site(lesion, t)] or [host.name], rng)
    nouns = [s for s in lesion.site_terms if not _ADJECTIVE.search(normalize(s))]
    return _pick(nouns, rng) if nouns else None


def _rewrite(query: str, structure: str, modality: str, llm: Callable[[str], str]) -> str:
    """The model's rewrite of ``query`` if it still reads as ``structure``, else ``query`` (warning)."""
    answer = str(llm(_LLM_PROMPT.format(structure=structure, query=query))).strip()
    try:
        if answer and parse_report(answer, modality).structure == structure:
            return answer
    except InputError:
        pass
    warnings.warn(f"The language model's rewrite {answer[:80]!r} of {query!r} does not name {structure!r}; "
                  "kept the template query", RuntimeWarning, stacklevel=3)
    return query


def _pick(options: list[str] | tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _first_clause(sentence: str) -> str:
    """The sentence up to its first comma, colon or semicolon, starting lower case."""
    clause = re.split(r"[,:;]", sentence.rstrip("."), maxsplit=1)[0].strip()
    return clause[:1].lower() + clause[1:] if not clause[:2].isupper() else clause

"""Curated anatomical knowledge base: names, synonyms, terminology and default attribute texts.

The knowledge base ships as ``knowledge_base.json`` next to this module. Each structure has a canonical
lower-case name, synonyms, a laterality, a category and, per modality ('ct', 'mr'), default
``location``, ``texture`` and ``shape`` sentences that fill in whatever a report does not say.
Structures with a standard entry in :mod:`MedSegAdaptLib.io.terminology` take their SNOMED CT codes
from there; the JSON carries codes only for the others (and none where no code is certain).
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.modality import MODALITIES
from MedSegAdaptLib.io.terminology import standard_names, standard_terminology

__all__ = [
    "ATTRIBUTES",
    "CATEGORIES",
    "LATERALITIES",
    "PRIORS",
    "Attributes",
    "KnowledgeBase",
    "Structure",
    "normalize",
]

ATTRIBUTES = ("location", "texture", "shape")
"""The three clinical attributes every structure is described by, and a report is parsed into."""
PRIORS = ATTRIBUTES + ("semantic",)
"""The MedSeg-R priors: one per attribute plus the semantic prior over all three."""
LATERALITIES = ("left", "right", "midline", "bilateral", "none")
CATEGORIES = ("organ", "vessel", "bone", "tissue", "brain tissue", "lesion")

_PACKAGED = "MedSegAdaptLib/knowledge/knowledge_base.json"
_HU_RANGE = re.compile(r"(-?\d+)\s*(?:-|to)\s*(-?\d+)\s*HU\b")
_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_CODE_KEYS = ("category", "type", "typeModifier", "anatomicRegion", "anatomicRegionModifier")
_ENTRY_KEYS = {"name", "synonyms", "laterality", "category", "terminology", "lesion_terms", "site_terms",
               "attributes"}


def normalize(term: str) -> str:
    """Lower case, hyphens and underscores as spaces, runs of white space as one space."""
    return re.sub(r"[\s_\-]+", " ", term).strip().lower()


@dataclass(frozen=True)
class Attributes:
    """Default texts for one structure and modality."""

    location: str
    texture: str
    shape: str


@dataclass(frozen=True)
class Structure:
    """One knowledge-base entry.

    lesion_terms / site_terms (lesions only): a report naming a lesion word ("mass") together with a site
    word ("renal") is about this lesion even without one of its synonyms.
    codes: SNOMED CT triples from the JSON (category, type, ...); None for standard names and unknown codes.
    """

    name: str
    synonyms: tuple[str, ...]
    laterality: str
    category: str
    attributes: Mapping[str, Attributes]
    lesion_terms: tuple[str, ...] = ()
    site_terms: tuple[str, ...] = ()
    codes: Mapping[str, tuple[str, str, str]] | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        """The name followed by its synonyms."""
        return (self.name, *self.synonyms)

    def describe(self, modality: str) -> Attributes:
        """Default location, texture and shape texts for 'ct' or 'mr'."""
        if modality not in self.attributes:
            raise InputError(f"Unknown modality {modality!r} for {self.name!r}; expected one of {MODALITIES}")
        return self.attributes[modality]

    def hu_ranges(self) -> list[tuple[float, float]]:
        """The 'a-b HU' / 'a to b HU' ranges named in the CT texture text, in order (may be empty)."""
        return [(float(lo), float(hi)) for lo, hi in _HU_RANGE.findall(self.describe("ct").texture)]

    def terminology(self) -> dict | None:
        """Slicer terminology entry (slicerio layout): io.terminology's for standard names, else the KB's codes."""
        standard = standard_terminology(self.name)
        if standard is not None or self.codes is None:
            return standard
        entry: dict = {"contextName": _CONTEXT}
        entry.update({key: list(code) for key, code in self.codes.items()})
        entry["anatomicContextName"] = _ANATOMIC_CONTEXT
        return copy.deepcopy(entry)


@dataclass(frozen=True)
class _Match:
    structure: Structure
    term: str
    start: int
    rank: int  # 0: lesion synonym, 1: lesion word + site word, 2: anatomy synonym


@dataclass(frozen=True)
class KnowledgeBase:
    """Structures by canonical name, with look-up by name or synonym and detection in free text."""

    structures: tuple[Structure, ...]
    json_version: str
    digest: str
    source: str
    _by_term: dict[str, Structure] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_term", {normalize(t): s for s in self.structures for t in s.terms})

    @classmethod
    def load(cls) -> KnowledgeBase:
        """The knowledge base shipped with the package (read once)."""
        return _packaged()

    @classmethod
    def from_file(cls, path: str | Path) -> KnowledgeBase:
        """A knowledge base from a JSON file with the packaged file's layout."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InputError(f"Cannot read knowledge base {path}: {error.strerror or error}") from error
        return _parse(data, str(path))

    @property
    def version(self) -> str:
        """The JSON's version plus a short SHA-256 of its content, e.g. '1.0.0+3fa2b1c4d5e6'."""
        return f"{self.json_version}+{self.digest[:12]}"

    def names(self) -> tuple[str, ...]:
        """Canonical structure names in file order."""
        return tuple(s.name for s in self.structures)

    def structure(self, name: str) -> Structure:
        """The structure called ``name`` or one of its synonyms, ignoring case and spacing.

        Unknown names raise InputError suggesting the closest known names.
        """
        key = normalize(name)
        if key in self._by_term:
            return self._by_term[key]
        close = difflib.get_close_matches(key, list(self._by_term), n=6, cutoff=0.6)
        suggestions = list(dict.fromkeys(self._by_term[term].name for term in close))[:3]
        hint = (f"closest matches: {', '.join(repr(n) for n in suggestions)}" if suggestions
                else f"known structures: {', '.join(self.names())}")
        raise InputError(f"Unknown structure {name!r} in the knowledge base ({self.source}); {hint}")

    def category_of(self, name: str) -> str | None:
        """The category ('organ', 'lesion', ...) of the structure a name or query is about; None when unknown."""
        found = self.find_in_text(name)
        return found.category if found is not None else None

    def find_in_text(self, text: str) -> Structure | None:
        """The structure a free-text report is about, or None.

        Synonyms match whole words (plural -s/-es allowed; all-capital abbreviations such as 'IVC' only in
        capitals). A lesion wins over the organ it lies in: first a lesion synonym ('renal cyst'), then a
        lesion word with a site word ('nodule' ... 'upper lobe'), then an anatomical synonym. Within each
        rank the earliest match wins (the report's subject comes first), the longest among those starting
        at the same place. Negated clauses ('no nodule') are ignored.
        """
        matches = self._matches(text)
        if not matches:
            return None
        return min(matches, key=lambda m: (m.rank, m.start, -len(m.term))).structure

    def mentions(self, text: str) -> tuple[tuple[Structure, str], ...]:
        """Non-lesion structures named in ``text``, each with the term that matched, in order of appearance."""
        first: dict[str, tuple[Structure, str]] = {}
        for match in sorted(self._matches(text), key=lambda m: (m.start, -len(m.term))):
            if match.rank == 2:
                first.setdefault(match.structure.name, (match.structure, match.term))
        return tuple(first.values())

    def _matches(self, text: str) -> list[_Match]:
        spaced = _blank_negations(re.sub(r"[\s_\-]+", " ", text))
        matches = []
        for structure in self.structures:
            lesion = structure.category == "lesion"
            for term in structure.terms:
                start = _find(term, spaced)
                if start is not None:
                    matches.append(_Match(structure, term, start, 0 if lesion else 2))
            words = [(w, p) for w in structure.lesion_terms if (p := _find(w, spaced)) is not None]
            sites = [w for w in structure.site_terms if _find(w, spaced) is not None]
            if words and sites:
                word, start = max(words, key=lambda wp: len(wp[0]))
                matches.append(_Match(structure, f"{word} {max(sites, key=len)}", start, 1))
        return matches


_NEGATION = re.compile(r"(?<!\w)(?:no evidence of|negative for|free of|absence of|without|no|not)(?!\w)[^.;:,]*",
                       re.IGNORECASE)


def _blank_negations(text: str) -> str:
    """`text` with each negated clause ('no nodule', 'without effusion') blanked out (same length, so
    positions stay valid): a finding the report rules out is not the target. The clause ends at
    . ; : or a comma; 'no change in the nodule' is blanked too (a known limit of this rule)."""
    return _NEGATION.sub(lambda m: " " * len(m.group()), text)


def _find(term: str, spaced_text: str) -> int | None:
    """Start of ``term`` as whole words (optional plural) in text whose separators are single spaces."""
    is_abbreviation = term.upper() == term and any(c.isalpha() for c in term)
    pattern = rf"(?<!\w){re.escape(normalize(term) if not is_abbreviation else term)}(?:s|es)?(?!\w)"
    found = re.search(pattern, spaced_text, 0 if is_abbreviation else re.IGNORECASE)
    return found.start() if found else None


@functools.cache
def _packaged() -> KnowledgeBase:
    return _parse(files("MedSegAdaptLib.knowledge").joinpath("knowledge_base.json").read_bytes(), _PACKAGED)


def _parse(data: bytes, source: str) -> KnowledgeBase:
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"Knowledge base {source} is not valid UTF-8 JSON: {error}") from error
    if not isinstance(content, dict) or set(content) != {"version", "structures"}:
        raise InputError(f"Knowledge base {source}: expected an object with exactly 'version' and 'structures'")
    if not isinstance(content["version"], str) or not content["version"].strip():
        raise InputError(f"Knowledge base {source}: 'version' must be a non-empty string")
    entries = content["structures"]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"Knowledge base {source}: 'structures' must be a non-empty list")
    structures = tuple(_structure(entry, f"Knowledge base {source}, structure #{i}") for i, entry in enumerate(entries))
    owner: dict[str, str] = {}
    for structure in structures:
        for term in structure.terms:
            other = owner.setdefault(normalize(term), structure.name)
            if other != structure.name:
                raise InputError(f"Knowledge base {source}: {term!r} names both {other!r} and {structure.name!r}")
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return KnowledgeBase(structures, content["version"].strip(), digest, source)


def _structure(entry: object, where: str) -> Structure:
    """One validated entry; ``where`` names the file and entry in error messages."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or name != normalize(name):
        raise InputError(f"{where}: 'name' must be a lower-case name with single spaces, got {name!r}")
    where = f"{where} ({name!r})"
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_ENTRY_KEYS)}")
    synonyms = _strings(entry.get("synonyms"), f"{where}: 'synonyms'")
    if entry.get("laterality") not in LATERALITIES:
        raise InputError(f"{where}: laterality {entry.get('laterality')!r} is not one of {LATERALITIES}")
    if entry.get("category") not in CATEGORIES:
        raise InputError(f"{where}: category {entry.get('category')!r} is not one of {CATEGORIES}")
    lesion_terms = _strings(entry.get("lesion_terms", []), f"{where}: 'lesion_terms'")
    site_terms = _strings(entry.get("site_terms", []), f"{where}: 'site_terms'")
    if bool(lesion_terms) != bool(site_terms) or (lesion_terms and entry["category"] != "lesion"):
        raise InputError(f"{where}: 'lesion_terms' and 'site_terms' go together, on lesions only")
    return Structure(
        name=name,
        synonyms=synonyms,
        laterality=entry["laterality"],
        category=entry["category"],
        attributes=_attributes(entry.get("attributes"), where),
        lesion_terms=lesion_terms,
        site_terms=site_terms,
        codes=_codes(entry.get("terminology"), name, where),
    )


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"{where} must be a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _attributes(value: object, where: str) -> Mapping[str, Attributes]:
    if not isinstance(value, dict) or set(value) != set(MODALITIES):
        raise InputError(f"{where}: 'attributes' must have exactly the modalities {MODALITIES}")
    result = {}
    for modality, texts in value.items():
        if not isinstance(texts, dict) or set(texts) != set(ATTRIBUTES):
            raise InputError(f"{where}: attributes for {modality!r} must have exactly {ATTRIBUTES}")
        for attribute, text in texts.items():
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: {modality} {attribute} must be a non-empty sentence, got {text!r}")
        result[modality] = Attributes(**{a: texts[a].strip() for a in ATTRIBUTES})
    return MappingProxyType(result)


def _codes(value: object, name: str, where: str) -> Mapping[str, tuple[str, str, str]] | None:
    if value is None:
        return None
    if name in standard_names():
        raise InputError(f"{where}: terminology for {name!r} comes from io/terminology.py; remove it here")
    if not isinstance(value, dict) or not {"category", "type"} <= set(value) or not set(value) <= set(_CODE_KEYS):
        raise InputError(f"{where}: 'terminology' needs 'category' and 'type', optionally {_CODE_KEYS[2:]}")
    codes = {}
    for key in (k for k in _CODE_KEYS if k in value):
        code = value[key]
        if not (isinstance(code, list) and len(code) == 3 and all(isinstance(c, str) and c for c in code)):
            raise InputError(f"{where}: terminology {key} must be [scheme, code, meaning], got {code!r}")
        codes[key] = tuple(code)
    return MappingProxyType(codes)

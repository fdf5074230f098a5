"""Report parsing for report-guided segmentation: which structure a text is about, and its attributes.

:func:`parse_report` turns a free-text report sentence or a short query ("left lung") into the
structure's canonical name and three attribute texts (location, texture, shape). What the report
says comes first; the knowledge base's default sentence for the modality completes it, and
``sources`` records which of the two each attribute came from. The rules are small regex tables,
one function per attribute, and run offline.

An optional local language model can replace the rules for the attribute texts: pass the folder of
a ``transformers`` causal LM as ``backend``. It is loaded from that folder only
(``local_files_only=True``); an answer that is not the expected JSON falls back to the rules with a
warning. No model is installed in this project, so only the missing-folder error is tested.
"""
from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.modality import MODALITIES
from MedSegAdaptLib.knowledge.knowledge_base import (
    ATTRIBUTES,
    KnowledgeBase,
    Structure,
    normalize,
)

__all__ = ["BOTH", "KNOWLEDGE_BASE", "REPORT", "NamedStructure", "ParsedReport", "parse_report", "structures_named"]

REPORT = "report"
KNOWLEDGE_BASE = "knowledge base"
BOTH = "report + knowledge base"


@dataclass(frozen=True)
class ParsedReport:
    """A report reduced to a structure and its location, texture and shape texts.

    sources: attribute -> 'report', 'knowledge base' or 'report + knowledge base'.
    findings: what the rules extracted (size_mm, dimensions_mm, size_class, laterality, lobe, segment,
    region, relations, density, signal, hu, margin, shape); only keys that were found.
    """

    structure: str
    modality: str
    location: str
    texture: str
    shape: str
    sources: Mapping[str, str]
    findings: Mapping[str, Any]
    knowledge_base_version: str

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {
            "structure": self.structure,
            "modality": self.modality,
            "location": self.location,
            "texture": self.texture,
            "shape": self.shape,
            "sources": dict(self.sources),
            "findings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.findings.items()},
            "knowledge_base_version": self.knowledge_base_version,
        }


def parse_report(
    text: str,
    modality: str = "ct",
    kb: KnowledgeBase | None = None,
    structure: str | None = None,
    backend: str | Path = "rules",
    kb_defaults: bool = True,
) -> ParsedReport:
    """Parse ``text`` into a :class:`ParsedReport`.

    structure: a name or synonym that overrides the one detected in the text (attributes are still read
    from the text). backend: 'rules', or the folder of a local transformers causal LM (loaded with
    ``local_files_only=True``; unusable answers fall back to the rules with a warning; findings always
    come from the rules). kb_defaults: False keeps report-only texts where the report says something.
    """
    if not isinstance(text, str):
        raise InputError(f"Report text must be a string, got {type(text).__name__}")
    modality = str(modality).strip().lower()
    if modality not in MODALITIES:
        raise InputError(f"Unknown modality {modality!r} for report parsing; expected one of {MODALITIES}")
    kb = kb or KnowledgeBase.load()
    folder = None if str(backend) == "rules" else _llm_folder(backend)
    findings = _location_findings(text) | _texture_findings(text) | _shape_findings(text)
    target = kb.structure(structure) if structure is not None else None
    answer = _ask_llm(text, folder, kb) if folder is not None else None
    named = _known(answer["structure"], kb) if answer else None
    if folder is not None and (answer is None or (target is None and named is None)):
        warnings.warn(f"The language model in {folder} gave no usable JSON answer; the report was parsed with "
                      "rules instead", RuntimeWarning, stacklevel=2)
        answer = None
    target = target or named or kb.find_in_text(text) or _no_structure(text, kb)
    if answer is not None:
        parts = {attribute: [answer[attribute]] if answer[attribute] else [] for attribute in ATTRIBUTES}
    else:
        parts = {
            "location": _location_phrases(findings, target, kb.mentions(text)),
            "texture": _texture_phrases(findings),
            "shape": _shape_phrases(findings),
        }
    defaults = target.describe(modality)
    texts, sources = {}, {}
    for attribute in ATTRIBUTES:
        texts[attribute], sources[attribute] = _combine(parts[attribute], getattr(defaults, attribute), kb_defaults)
    return ParsedReport(
        structure=target.name,
        modality=modality,
        sources=MappingProxyType(sources),
        findings=MappingProxyType(findings),
        knowledge_base_version=kb.version,
        **texts,
    )


@dataclass(frozen=True)
class NamedStructure:
    """A structure a report names (its canonical name) and the report's sentences about it."""

    structure: str
    text: str


_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\s*\n\s*")


def structures_named(text: str, kb: KnowledgeBase | None = None) -> list[NamedStructure]:
    """The known structures a report names, in order of first mention, each with its sentences.

    The text is split into lines and sentences (at '.', ';', '!' or '?' followed by a space, so '14.5 mm'
    stays whole); each sentence is about the structure :meth:`KnowledgeBase.find_in_text` finds in it (a
    lesion before its host organ, negated clauses such as 'no effusion' ignored). A sentence that names
    none ('It measures 14 mm.') continues the finding before it; one before any finding is dropped.
    Sentences about the same structure are joined, so each structure appears once.
    """
    if not isinstance(text, str):
        raise InputError(f"Report text must be a string, got {type(text).__name__}")
    kb = kb or KnowledgeBase.load()
    sentences: dict[str, list[str]] = {}
    current = None
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence.strip():
            continue
        found = kb.find_in_text(sentence)
        current = found.name if found is not None else current
        if current is not None:
            sentences.setdefault(current, []).append(sentence.strip())
    return [NamedStructure(name, " ".join(parts)) for name, parts in sentences.items()]


def _known(name: str, kb: KnowledgeBase) -> Structure | None:
    try:
        return kb.structure(name)
    except InputError:
        return None


def _no_structure(text: str, kb: KnowledgeBase) -> Structure:
    examples = list(dict.fromkeys(s.category for s in kb.structures))
    names = [next(s.name for s in kb.structures if s.category == c) for c in examples]
    snippet = text.strip() if len(text.strip()) <= 80 else text.strip()[:77] + "..."
    raise InputError(
        f"No known structure is named in the report text {snippet!r}; name one (for example "
        f"{', '.join(repr(n) for n in names)}) or give the structure explicitly"
    )


def _combine(parts: list[str], default: str, kb_defaults: bool) -> tuple[str, str]:
    """The report's phrases as a sentence, followed by the knowledge base's default sentence."""
    if not parts:
        return default, KNOWLEDGE_BASE
    phrase = ", ".join(parts).strip().rstrip(" .")
    phrase = f"{phrase[0].upper()}{phrase[1:]}."
    return (f"{phrase} {default}", BOTH) if kb_defaults else (phrase, REPORT)


def _words(words: tuple[str, ...]) -> tuple[re.Pattern, dict[str, str]]:
    """A whole-word regex for ``words`` (hyphen, space or nothing between parts; longest first) and a
    map from the matched text without separators to the canonical word."""
    ordered = sorted(words, key=len, reverse=True)
    pattern = "|".join(re.escape(w).replace(r"\-", r"[\s-]?") for w in ordered)
    return re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE), {re.sub(r"[\s-]", "", w): w for w in words}


def _find_words(table: tuple[re.Pattern, dict[str, str]], text: str) -> tuple[str, ...]:
    regex, canonical = table
    found = (canonical[re.sub(r"[\s-]", "", m.group(0).lower())] for m in regex.finditer(text))
    return tuple(dict.fromkeys(found))


# Location ----------------------------------------------------------------------------------------

_SIDE = re.compile(r"\b(left|right|bilateral|both)\b", re.IGNORECASE)
_LOBE = re.compile(
    r"\b(?:(right|left)\s+)?(upper|middle|lower)\s+lobe\b|\b(lingula)r?\b|(?-i:\b(RUL|RML|RLL|LUL|LLL)\b)",
    re.IGNORECASE,
)
_LOBE_ABBREVIATIONS = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
                       "LUL": "left upper lobe", "LLL": "left lower lobe"}
_SEGMENT = re.compile(
    r"\bsegments?\s+((?-i:[IVX]+)|[1-8])\b"
    r"|\b((?:apical|apicoposterior|anterior|posterior|superior|lateral|medial|anteromedial)"
    r"(?:\s+basal)?\s+segment)\b",
    re.IGNORECASE,
)
_REGION = re.compile(
    r"\b(?:(?:left|right)\s+)?(?:(?:upper|lower)\s+pole|interpolar|renal\s+(?:hilum|sinus)|exophytic|endophytic"
    r"|(?:head|neck|body|tail)\s+of\s+the\s+pancreas|pancreatic\s+(?:head|neck|body|tail)|uncinate\s+process"
    r"|(?:frontal|parietal|temporal|occipital|insular)\s+lobe|periventricular|subcortical|juxtacortical"
    r"|basal\s+ganglia|thalamus|corpus\s+callosum|cerebellar\s+hemisphere|cerebellum|brainstem"
    r"|(?:supra|infra)tentorial|subpleural|perihilar|perifissural"
    r"|caudate\s+lobe|hepatic\s+lobe|lobe\s+of\s+the\s+liver|subcapsular|hepatic\s+dome"
    r"|(?:mediastinal|hilar|paratracheal|subcarinal|supraclavicular|axillary|retroperitoneal|mesenteric"
    r"|para[\s-]?aortic|inguinal)(?=\s+(?:lymph\s+)?(?:nodes?|lymphadenopathy|adenopathy)\b))\b",
    re.IGNORECASE,
)
_RELATION = re.compile(
    r"\b(?:abutting|contacting|in\s+contact\s+with|adjacent\s+to|invading|encasing|compressing|displacing"
    r"|arising\s+from|extending\s+(?:into|to)|involving|bordering|tethered\s+to|inseparable\s+from|obstructing"
    r"|surrounding)\s+(?:the\s+)?[a-z][a-z\s-]*?"
    r"(?=\s*(?:[,.;:()]|$|\b(?:and|with|which|measuring|without|but)\b))",
    re.IGNORECASE,
)


def _clean(phrase: str) -> str:
    return re.sub(r"\s+", " ", phrase).strip()


def _location_findings(text: str) -> dict[str, Any]:
    """Lobe, segment, regions, relations and laterality stated in the text."""
    findings: dict[str, Any] = {}
    lobe = _LOBE.search(text)
    if lobe:
        side, level, lingula, abbreviation = lobe.groups()
        findings["lobe"] = (_LOBE_ABBREVIATIONS[abbreviation] if abbreviation else "lingula" if lingula
                            else " ".join(w.lower() for w in (side, level, "lobe") if w))
    segment = _SEGMENT.search(text)
    if segment:
        findings["segment"] = f"segment {segment.group(1)}" if segment.group(1) else _clean(segment.group(2)).lower()
    regions = tuple(dict.fromkeys(_clean(m.group(0)).lower() for m in _REGION.finditer(text)))
    if regions:
        findings["region"] = regions
    relations = tuple(dict.fromkeys(_clean(m.group(0)) for m in _RELATION.finditer(text)))
    if relations:
        findings["relations"] = relations
    side = _laterality(text, findings.get("lobe"))
    if side:
        findings["laterality"] = side
    return findings


def _laterality(text: str, lobe: str | None) -> str | None:
    """The lobe's side, else 'bilateral' when both sides are named, else the one side named."""
    if lobe and lobe.split()[0] in ("left", "right"):
        return lobe.split()[0]
    if lobe == "lingula":
        return "left"
    sides = {"bilateral" if s.lower() == "both" else s.lower() for s in _SIDE.findall(text)}
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return sides.pop() if sides else None


def _location_phrases(findings: Mapping[str, Any], structure: Structure,
                      mentions: tuple[tuple[Structure, str], ...]) -> list[str]:
    """Report phrases for the location: host organ (lesions), lobe, segment, regions, side, relations."""
    parts = [findings[key] for key in ("lobe", "segment") if key in findings]
    parts += list(findings.get("region", ()))
    if structure.category == "lesion" and mentions:
        organ, term = mentions[0]
        said = [normalize(p) for p in parts + list(findings.get("relations", ()))]
        if not any(p in map(normalize, organ.terms) or normalize(term) in p for p in said):
            parts.insert(0, organ.name)
    side = findings.get("laterality")
    if side and structure.laterality not in ("left", "right") and not any(side in p.split() for p in parts):
        parts.insert(0, "bilateral" if side == "bilateral" else f"{side} side")
    return parts + list(findings.get("relations", ()))


# Texture -----------------------------------------------------------------------------------------

_DENSITY = _words((
    "part-solid", "ground-glass", "subsolid", "solid", "non-calcified", "calcified", "cystic", "fat-containing",
    "necrotic", "cavitary", "cavitating", "hypodense", "hyperdense", "isodense", "hypoattenuating",
    "hyperattenuating", "low-attenuation", "high-attenuation", "non-enhancing", "rim-enhancing",
    "ring-enhancing", "enhancing", "hypervascular", "hypovascular", "heterogeneous", "homogeneous",
    "hemorrhagic", "haemorrhagic",
))
_SIGNAL_SEQUENCE = re.compile(
    r"(?-i:\b(T1|T2|FLAIR)\b)[\s-]*(?:weighted\s+)?(hyper|hypo|iso)[\s-]?intense\b"
    r"|\b(hyper|hypo|iso)[\s-]?intense\s+on\s+(?-i:(T1|T2|FLAIR)\b)",
    re.IGNORECASE,
)
_SIGNAL_PLAIN = re.compile(r"\b(hyper|hypo|iso)[\s-]?intense\b|\b(restricted\s+diffusion|diffusion\s+restriction)\b",
                           re.IGNORECASE)
_HU = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:HU\b|hounsfield\s+units?\b)", re.IGNORECASE)


def _texture_findings(text: str) -> dict[str, Any]:
    """Density words (CT), signal words (MR) and attenuation values in HU."""
    findings: dict[str, Any] = {}
    density = _find_words(_DENSITY, text)
    if density:
        findings["density"] = density
    signal = []
    for match in _SIGNAL_SEQUENCE.finditer(text):
        sequence, level = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
        signal.append(f"{sequence} {level.lower()}intense")
    rest = _SIGNAL_SEQUENCE.sub(" ", text)
    for match in _SIGNAL_PLAIN.finditer(rest):
        signal.append(f"{match.group(1).lower()}intense" if match.group(1) else "restricted diffusion")
    if signal:
        findings["signal"] = tuple(dict.fromkeys(signal))
    hu = tuple(float(v) for v in _HU.findall(text))
    if hu:
        findings["hu"] = hu
    return findings


def _texture_phrases(findings: Mapping[str, Any]) -> list[str]:
    """Report phrases for the texture: density and signal words, then HU values."""
    return [*findings.get("density", ()), *findings.get("signal", ()),
            *(f"{v:g} HU" for v in findings.get("hu", ()))]


# Shape -------------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"(?:mm|cm)"
_SIZE = re.compile(
    rf"\b({_NUMBER})\s*({_UNIT})?(?:\s*[x×*]\s*({_NUMBER})\s*({_UNIT})?)?(?:\s*[x×*]\s*({_NUMBER}))?"
    rf"\s*-?\s*({_UNIT})\b",
    re.IGNORECASE,
)
_MARGIN = _words((
    "well-circumscribed", "circumscribed", "well-defined", "ill-defined", "poorly defined", "microlobulated",
    "lobulated", "spiculated", "irregular", "smooth", "infiltrative",
))
_SIZE_CLASS = re.compile(r"\b(nodul(?:e|es|ar)|mass(?:es)?)\b", re.IGNORECASE)
"""'nodule' (up to 3 cm) or 'mass' (over 3 cm), the Fleischner Society glossary's size classes."""
_SHAPE = _words(("rounded", "round", "oval", "ovoid", "elongated", "wedge-shaped", "tubular", "polypoid",
                 "triangular", "bean-shaped"))


def _shape_findings(text: str) -> dict[str, Any]:
    """The first size (in mm; size_mm is its largest dimension), the size class ('nodule' or 'mass', the
    first named), margin words and shape words."""
    findings: dict[str, Any] = {}
    size = _SIZE.search(text)
    if size:
        number_1, unit_1, number_2, unit_2, number_3, unit = size.groups()
        dims = [(n, u or unit) for n, u in ((number_1, unit_1), (number_2, unit_2), (number_3, None)) if n]
        mm = tuple(round(float(n) * (10.0 if u.lower() == "cm" else 1.0), 2) for n, u in dims)
        findings["dimensions_mm"] = mm
        findings["size_mm"] = max(mm)
    size_class = _SIZE_CLASS.search(text)
    if size_class:
        findings["size_class"] = "nodule" if size_class.group(1).lower().startswith("nodul") else "mass"
    margin = _find_words(_MARGIN, text)
    if margin:
        findings["margin"] = margin
    shape = _find_words(_SHAPE, text)
    if shape:
        findings["shape"] = shape
    return findings


def _shape_phrases(findings: Mapping[str, Any]) -> list[str]:
    """Report phrases for the shape: size, margin, shape words."""
    parts = []
    if "dimensions_mm" in findings:
        parts.append(" x ".join(f"{d:g}" for d in findings["dimensions_mm"]) + " mm")
    margin = findings.get("margin", ())
    if margin:
        parts.append(f"{', '.join(margin)} margin{'s' if len(margin) > 1 else ''}")
    return parts + list(findings.get("shape", ()))


# Optional local language model -------------------------------------------------------------------

_LLM_PROMPT = (
    "Read the radiology text and name the structure to segment and what the text says about its location, "
    "texture and shape. Answer with one JSON object with the string keys \"structure\", \"location\", "
    "\"texture\" and \"shape\" (an empty string where the text says nothing). The structure must be one of: "
    "{names}.\nText: {text}\nJSON:"
)


def _llm_folder(backend: str | Path) -> Path:
    folder = Path(backend).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(
            f"Report backend {str(backend)!r} is neither 'rules' nor a local transformers model folder "
            f"({folder / 'config.json'} does not exist)"
        )
    return folder


@functools.lru_cache(maxsize=1)
def _load_llm(folder: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot load a causal language model from {folder}: {error}") from error
    return tokenizer, model.eval()


def _ask_llm(text: str, folder: Path, kb: KnowledgeBase) -> dict[str, str] | None:
    """The model's answer as {'structure', 'location', 'texture', 'shape'}, or None if it is not such JSON."""
    import torch

    tokenizer, model = _load_llm(str(folder))
    inputs = tokenizer(_LLM_PROMPT.format(names=", ".join(kb.names()), text=text.strip()), return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=256, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    found = re.search(r"\{.*?\}", answer, re.DOTALL)
    try:
        value = json.loads(found.group(0)) if found else None
    except json.JSONDecodeError:
        return None
    keys = ("structure", *ATTRIBUTES)
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in keys):
        return None
    return {k: value[k].strip() for k in keys}

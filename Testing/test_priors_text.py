"""MedSegAdaptLib.priors text side: the packaged knowledge base and the rule-based report parser."""
from __future__ import annotations

import dataclasses
import json
from importlib.resources import files
from pathlib import Path

import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.terminology import standard_names, standard_terminology
from MedSegAdaptLib.knowledge import (
    KnowledgeBase,
    NamedStructure,
    ParsedReport,
    parse_report,
    structures_named,
)
from MedSegAdaptLib.knowledge.knowledge_base import normalize

NODULE = "Right upper lobe: 14 mm spiculated nodule abutting the pleura"
REQUIRED = [
    # CTChest4
    "right lung", "left lung", "ribs", "cervical vertebral column", "thoracic vertebral column",
    "lumbar vertebral column", "tissue",
    # Synapse abdomen
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic vein", "pancreas", "right adrenal gland", "left adrenal gland",
    # brain tissues and lesions
    "white matter", "gray matter", "cerebrospinal fluid", "lung nodule", "liver lesion", "kidney tumor",
    "kidney cyst", "brain tumor", "pancreatic tumor", "lymph node",
]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load()


@pytest.fixture()
def raw() -> dict:
    return json.loads(files("MedSegAdaptLib.knowledge").joinpath("knowledge_base.json").read_text("utf-8"))


def write(tmp_path: Path, content: dict, indent: int | None = 2) -> Path:
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(content, indent=indent), encoding="utf-8")
    return path


def entry(content: dict, name: str) -> dict:
    return next(e for e in content["structures"] if e["name"] == name)


# Knowledge base ----------------------------------------------------------------------------------


def test_covers_the_required_structures(kb):
    assert set(REQUIRED) <= set(kb.names())
    assert len(kb.names()) == len(set(kb.names()))
    assert kb.structure("gallbladder").laterality == "right"
    assert kb.structure("aorta").laterality == "midline"
    assert kb.structure("lung nodule").category == "lesion"


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_every_structure_has_three_attribute_sentences(kb, modality):
    for structure in kb.structures:
        texts = structure.describe(modality)
        for attribute in ("location", "texture", "shape"):
            text = getattr(texts, attribute)
            assert len(text) > 30 and text.endswith("."), (structure.name, modality, attribute, text)
    assert "HU" in kb.structure("liver").describe("ct").texture
    assert "T2" in kb.structure("kidney cyst").describe("mr").texture


def test_no_term_names_two_structures(raw):
    owners: dict[str, set[str]] = {}
    for item in raw["structures"]:
        for term in [item["name"], *item["synonyms"]]:
            owners.setdefault(normalize(term), set()).add(item["name"])
    assert {term: names for term, names in owners.items() if len(names) > 1} == {}


def test_duplicate_synonym_is_rejected(tmp_path, raw):
    entry(raw, "left lung")["synonyms"].append("RUL")
    with pytest.raises(InputError, match=r"kb\.json.*'RUL' names both 'right lung' and 'left lung'"):
        KnowledgeBase.from_file(write(tmp_path, raw))


def test_terminology_is_io_terminology_for_standard_names(kb, raw):
    assert set(standard_names()) <= set(kb.names())
    for name in standard_names():
        assert kb.structure(name).terminology() == standard_terminology(name)
        assert "terminology" not in entry(raw, name), f"{name} duplicates io/terminology.py codes"
    adrenal = kb.structure("right adrenal gland").terminology()
    assert adrenal["type"] == ["SCT", "23451007", "Adrenal gland"]
    assert adrenal["typeModifier"] == ["SCT", "24028007", "Right"]
    assert kb.structure("lung nodule").terminology()["category"][1] == "49755003"
    assert kb.structure("white matter").terminology() is None  # no code we are sure of


def test_terminology_for_a_standard_name_in_the_json_is_rejected(tmp_path, raw):
    entry(raw, "liver")["terminology"] = {"category": ["SCT", "123037004", "Anatomical Structure"],
                                          "type": ["SCT", "10200004", "Liver"]}
    with pytest.raises(InputError, match=r"kb\.json.*'liver'.*io/terminology\.py"):
        KnowledgeBase.from_file(write(tmp_path, raw))


def test_bad_entries_name_the_file_and_entry(tmp_path, raw):
    del entry(raw, "spleen")["attributes"]["mr"]["texture"]
    with pytest.raises(InputError, match=r"kb\.json, structure #\d+ \('spleen'\).*'mr'"):
        KnowledgeBase.from_file(write(tmp_path, raw))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="broken.json is not valid UTF-8 JSON"):
        KnowledgeBase.from_file(broken)
    with pytest.raises(InputError, match="Cannot read knowledge base"):
        KnowledgeBase.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("  Right   LUNG ", "right lung"),
        ("RUL", "right lung"),
        ("ivc", "inferior vena cava"),
        ("C-spine", "cervical vertebral column"),
        ("grey_matter", "gray matter"),
        ("Splenic vein", "portal and splenic vein"),
        ("glioma", "brain tumor"),
    ],
)
def test_lookup_by_name_or_synonym_ignores_case_and_spacing(kb, query, name):
    assert kb.structure(query).name == name


def test_unknown_name_suggests_closest(kb):
    with pytest.raises(InputError, match=r"Unknown structure 'rigth lung'.*closest matches: 'right lung'"):
        kb.structure("rigth lung")
    with pytest.raises(InputError, match="known structures: right lung, left lung"):
        kb.structure("qqqqqq")


def test_find_in_text(kb):
    assert kb.find_in_text("thrombus in the IVC").name == "inferior vena cava"
    assert kb.find_in_text("we'll see the ivc later") is None  # abbreviations match only in capitals
    assert kb.find_in_text("dilated splenic vein").name == "portal and splenic vein"  # longest synonym
    assert kb.find_in_text("bilateral renal cysts").name == "kidney cyst"  # plural
    assert kb.find_in_text("mass in the pancreatic tail").name == "pancreatic tumor"  # lesion beats organ
    assert kb.find_in_text("nodule in the upper lobe").name == "lung nodule"
    assert kb.find_in_text("the frontal lobe") is None
    assert kb.find_in_text("spiculated") is None


@pytest.mark.parametrize("text, name", [
    ("LEFT LUNG: no nodule, no effusion. Right lung clear.", "left lung"),  # ruled-out finding, subject first
    ("No liver lesion. Left kidney cyst of 2 cm.", "kidney cyst"),
    ("Liver without focal lesion; spleen normal.", "liver"),
    ("Negative for pulmonary nodules. Right lung clear.", "right lung"),
])
def test_negated_findings_are_not_the_target(kb, text, name):
    assert kb.find_in_text(text).name == name


def test_version_follows_the_content(tmp_path, kb, raw):
    assert kb.version.startswith(raw["version"] + "+") and len(kb.version) == len(raw["version"]) + 13
    assert KnowledgeBase.from_file(write(tmp_path, raw, indent=None)).version == kb.version  # layout only
    entry(raw, "liver")["attributes"]["ct"]["texture"] = "Homogeneous parenchyma of about 60 HU."
    changed = KnowledgeBase.from_file(write(tmp_path, raw))
    assert changed.version != kb.version and changed.version.startswith(raw["version"] + "+")
    assert changed.structure("liver").describe("ct").texture == "Homogeneous parenchyma of about 60 HU."


# Report parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Right upper lobe: 14 mm spiculated nodule. The left lung is otherwise clear.",
     [("lung nodule", "Right upper lobe: 14 mm spiculated nodule."), ("left lung", "The left lung is otherwise clear.")]),
    # a sentence naming nothing continues the finding before; lines split too; '14.5 mm' stays whole;
    # the same structure named again joins its first mention; a negated finding names nothing
    ("FINDINGS:\nNodule of 14.5 mm in the RUL. It is spiculated.\nLiver: normal; no kidney cyst.\nIMPRESSION: RUL nodule.",
     [("lung nodule", "Nodule of 14.5 mm in the RUL. It is spiculated. IMPRESSION: RUL nodule."),
      ("liver", "Liver: normal; no kidney cyst.")]),
    ("segment the left lung", [("left lung", "segment the left lung")]),
    ("Unremarkable study.", []),
])
def test_structures_named_splits_a_report_by_structure(kb, text, expected):
    assert structures_named(text, kb) == [NamedStructure(name, said) for name, said in expected]



def test_nodule_report(kb):
    parsed = parse_report(NODULE, kb=kb)
    assert parsed.structure == "lung nodule"
    assert parsed.findings["size_mm"] == 14.0
    assert parsed.findings["margin"] == ("spiculated",)
    assert parsed.findings["lobe"] == "right upper lobe"
    assert parsed.findings["laterality"] == "right"
    assert parsed.findings["relations"] == ("abutting the pleura",)
    default = kb.structure("lung nodule").describe("ct")
    assert parsed.location == f"Right upper lobe, abutting the pleura. {default.location}"
    assert parsed.shape == f"14 mm, spiculated margin. {default.shape}"
    assert parsed.texture == default.texture
    assert dict(parsed.sources) == {"location": "report + knowledge base", "texture": "knowledge base",
                                    "shape": "report + knowledge base"}
    assert parsed.knowledge_base_version == kb.version


def test_pure_query_takes_everything_from_the_knowledge_base(kb):
    parsed = parse_report("left lung", kb=kb)
    default = kb.structure("left lung").describe("ct")
    assert (parsed.structure, parsed.location, parsed.texture, parsed.shape) == (
        "left lung", default.location, default.texture, default.shape)
    assert set(parsed.sources.values()) == {"knowledge base"}


def test_explicit_structure_wins_but_attributes_are_still_read(kb):
    parsed = parse_report(NODULE, kb=kb, structure="Right Lung")
    assert parsed.structure == "right lung"
    assert parsed.findings["size_mm"] == 14.0
    assert parsed.shape.startswith("14 mm, spiculated margin. ")
    with pytest.raises(InputError, match="closest matches: 'left lung'"):
        parse_report(NODULE, kb=kb, structure="lefft lung")


def test_laterality_of_a_lesion(kb):
    parsed = parse_report("left kidney cyst", kb=kb)
    assert parsed.structure == "kidney cyst"
    assert parsed.findings["laterality"] == "left"
    assert parsed.location.startswith("Left kidney. ")
    assert parse_report("cysts in both kidneys", kb=kb).findings["laterality"] == "bilateral"


def test_texture_size_and_mr_words(kb):
    parsed = parse_report("2.1 x 1.8 cm part-solid ground glass nodule in the LLL, 35 HU", kb=kb)
    assert parsed.structure == "lung nodule"
    assert parsed.findings["dimensions_mm"] == (21.0, 18.0) and parsed.findings["size_mm"] == 21.0
    assert parsed.findings["density"] == ("part-solid", "ground-glass")
    assert parsed.findings["hu"] == (35.0,)
    assert parsed.texture.startswith("Part-solid, ground-glass, 35 HU. ")
    assert parsed.location.startswith("Left lower lobe. ")
    brain = parse_report("Ring-enhancing mass in the right temporal lobe, hyperintense on T2", modality="MR", kb=kb)
    assert brain.structure == "brain tumor" and brain.modality == "mr"
    assert brain.findings["signal"] == ("T2 hyperintense",)
    assert brain.findings["region"] == ("right temporal lobe",)
    assert brain.texture.endswith(kb.structure("brain tumor").describe("mr").texture)


def test_report_only_texts_without_kb_defaults(kb):
    parsed = parse_report(NODULE, kb=kb, kb_defaults=False)
    assert parsed.shape == "14 mm, spiculated margin."
    assert parsed.sources["shape"] == "report" and parsed.sources["texture"] == "knowledge base"


def test_no_structure_is_an_input_error(kb):
    with pytest.raises(InputError, match=r"No known structure.*'14 mm spiculated'.*'right lung'"):
        parse_report("14 mm spiculated", kb=kb)
    with pytest.raises(InputError, match="Unknown modality 'pet'"):
        parse_report("left lung", modality="pet", kb=kb)


def test_parsed_report_is_frozen_and_json_ready(kb):
    parsed = parse_report(NODULE, kb=kb)
    assert isinstance(parsed, ParsedReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.structure = "liver"  # type: ignore[misc]
    as_dict = json.loads(json.dumps(parsed.to_dict()))
    assert as_dict["findings"]["relations"] == ["abutting the pleura"]
    assert as_dict["sources"]["texture"] == "knowledge base"


def test_missing_llm_folder_is_an_input_error(tmp_path, kb):
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match=r"neither 'rules' nor a local transformers model folder.*config\.json"):
        parse_report(NODULE, kb=kb, backend=missing)
    with pytest.raises(InputError, match="config.json does not exist"):
        parse_report(NODULE, kb=kb, backend=str(tmp_path))  # a folder, but no model in it

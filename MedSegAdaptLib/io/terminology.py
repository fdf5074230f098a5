"""Standard terminology (SNOMED CT codes, as 3D Slicer stores them) and display colours for structures.

Entries use the layout of slicerio's terminology dicts. The seven structures of slicerio's
``Segmentation.seg.nrrd`` carry that file's codes and colours; the abdominal and cardiac organs use
the codes and recommended colours of 3D Slicer's General Anatomy list. Look-ups ignore case.
"""
from __future__ import annotations

import colorsys
import copy
import hashlib

__all__ = ["Color", "default_color", "standard_names", "standard_terminology"]

_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ANATOMICAL_STRUCTURE = ["SCT", "123037004", "Anatomical Structure"]
_RIGHT = ["SCT", "24028007", "Right"]
_LEFT = ["SCT", "7771000", "Left"]

Color = tuple[float, float, float]


def _entry(
    code: str,
    meaning: str,
    modifier: list[str] | None = None,
    category: list[str] = _ANATOMICAL_STRUCTURE,
) -> dict:
    entry = {
        "contextName": _CONTEXT,
        "category": list(category),
        "type": ["SCT", code, meaning],
        "anatomicContextName": _ANATOMIC_CONTEXT,
    }
    if modifier:
        entry["typeModifier"] = list(modifier)
    return entry


def _rgb(red: int, green: int, blue: int) -> Color:
    return (red / 255.0, green / 255.0, blue / 255.0)


_STRUCTURES: dict[str, tuple[dict, Color]] = {
    # Codes and colours as stored in slicerio's Segmentation.seg.nrrd.
    "ribs": (_entry("113197003", "Rib"), (0.992157, 0.909804, 0.619608)),
    "cervical vertebral column": (_entry("122494005", "Cervical spine"), (1.0, 1.0, 0.811765)),
    "thoracic vertebral column": (
        _entry("122495006", "Thoracic spine"),
        (0.886275, 0.792157, 0.52549),
    ),
    "lumbar vertebral column": (_entry("122496007", "Lumbar spine"), (0.831373, 0.737255, 0.4)),
    "right lung": (_entry("39607008", "Lung", _RIGHT), (0.0862745, 0.772549, 0.278431)),
    "left lung": (_entry("39607008", "Lung", _LEFT), (0.772549, 0.0980392, 0.388235)),
    "tissue": (
        _entry("85756007", "Tissue", category=["SCT", "85756007", "Tissue"]),
        (0.501961, 0.682353, 0.501961),
    ),
    # 3D Slicer General Anatomy list.
    "liver": (_entry("10200004", "Liver"), _rgb(221, 130, 101)),
    "spleen": (_entry("78961009", "Spleen"), _rgb(157, 108, 162)),
    "right kidney": (_entry("64033007", "Kidney", _RIGHT), _rgb(185, 102, 83)),
    "left kidney": (_entry("64033007", "Kidney", _LEFT), _rgb(185, 102, 83)),
    "heart": (_entry("80891009", "Heart"), _rgb(206, 110, 84)),
    "aorta": (_entry("15825003", "Aorta"), _rgb(224, 97, 76)),
    "pancreas": (_entry("15776009", "Pancreas"), _rgb(249, 180, 111)),
    "stomach": (_entry("69695003", "Stomach"), _rgb(216, 132, 105)),
    "gallbladder": (_entry("28231008", "Gallbladder"), _rgb(139, 150, 98)),
}


def standard_names() -> tuple[str, ...]:
    """Structure names that have a standard terminology entry (lower case)."""
    return tuple(_STRUCTURES)


def standard_terminology(name: str) -> dict | None:
    """A fresh copy of the terminology entry for ``name`` (any case), or None if unknown."""
    known = _STRUCTURES.get(name.strip().lower())
    return copy.deepcopy(known[0]) if known else None


def default_color(name: str) -> Color:
    """Recommended RGB colour (0..1) for ``name``; unknown names get a stable colour from the name."""
    key = name.strip().lower()
    if key in _STRUCTURES:
        return _STRUCTURES[key][1]
    hue = hashlib.sha256(key.encode("utf-8")).digest()[0] / 256.0
    return colorsys.hsv_to_rgb(hue, 0.6, 0.9)

"""Evaluation of segmentations against references: Dice (and pairwise mask Dice), HD95, tables and
overlay pictures."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "compare_segmentations": "metrics",
    "dice": "metrics",
    "format_table": "metrics",
    "hd95_mm": "metrics",
    "pairwise_dice": "metrics",
})

"""Evaluation of segmentations against references: Dice, HD95 and per-structure tables."""
from MedSegAdaptLib.evaluation.metrics import compare_segmentations, dice, format_table, hd95_mm

__all__ = ["compare_segmentations", "dice", "format_table", "hd95_mm"]

"""Fine-tuning set: versioned labels with provenance that are never overwritten or lost.

:class:`FineTuningStore` keeps cases, model predictions, expert corrections, pseudo-labels and
synthetic labels in a folder (SQLite manifest plus NRRD files), with review, verify and a
MONAI-style export of the training view.
"""
from MedSegAdaptLib.store.records import KINDS, Case, LabelVersion, Review, TrainingRow, VerifyReport
from MedSegAdaptLib.store.slices import AXES, annotated_region, check_slices, parse_slices
from MedSegAdaptLib.store.store import FineTuningStore

__all__ = [
    "AXES",
    "KINDS",
    "Case",
    "FineTuningStore",
    "LabelVersion",
    "Review",
    "TrainingRow",
    "VerifyReport",
    "annotated_region",
    "check_slices",
    "parse_slices",
]

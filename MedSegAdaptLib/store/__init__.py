"""Fine-tuning set: versioned labels with provenance that are never overwritten or lost.

:class:`FineTuningStore` keeps cases, model predictions, expert corrections, pseudo-labels and
synthetic labels in a folder (SQLite manifest plus NRRD files), with review, verify, a MONAI-style
export of the training view and the annotation rounds of a case's structure (:func:`annotation_rounds`).
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "AnnotationRound": "rounds",
    "Case": "records",
    "FineTuningStore": "store",
    "KINDS": "records",
    "LabelVersion": "records",
    "Review": "records",
    "TrainingRow": "records",
    "VerifyReport": "records",
    "annotated_region": "slices",
    "annotation_rounds": "rounds",
    "check_slices": "slices",
    "format_slices": "slices",
    "last_round_gain": "rounds",
    "parse_slices": "slices",
})

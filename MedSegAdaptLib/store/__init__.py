"""Fine-tuning set: versioned labels with provenance that are never overwritten or lost.

:class:`FineTuningStore` keeps cases, model predictions, expert corrections, pseudo-labels and
synthetic labels in a folder (SQLite manifest plus NRRD files), with review, verify and a
MONAI-style export of the training view.
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Case": "records",
    "FineTuningStore": "store",
    "KINDS": "records",
    "LabelVersion": "records",
    "Review": "records",
    "TrainingRow": "records",
    "VerifyReport": "records",
    "annotated_region": "slices",
    "check_slices": "slices",
    "parse_slices": "slices",
})

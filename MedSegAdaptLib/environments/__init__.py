"""MedSeg-Adapt: environment-specific image variants (low-dose CT, higher-resolution CT, varying-field
MRI, pediatric, pathology) with their labels, clinical queries for them, ensemble pseudo-masks and their
self-validation, and the pipeline that adds them to the store.

Names are imported on first use (PEP 562), so that command-line parsers build without these imports.
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ENVIRONMENTS": "simulators",
    "Environment": "simulators",
    "HighResCT": "simulators",
    "LowDoseCT": "simulators",
    "Pathology": "simulators",
    "Pediatric": "simulators",
    "SimulatedSample": "simulators",
    "VaryingFieldMRI": "simulators",
    "environment": "simulators",
    "environment_catalog": "simulators",
    "generate_samples": "pipeline",
    "summarize": "pipeline",
    "clinical_queries": "queries",
    "sample_queries": "queries",
})

"""MedSeg-Adapt: environment-specific image variants (low-dose CT, higher-resolution CT, varying-field
MRI, pediatric, pathology) with their labels, and clinical queries for them.

Names are imported on first use (PEP 562), so that command-line parsers build without these imports.
"""
from __future__ import annotations

from ..lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ENVIRONMENTS": "environments",
    "Environment": "environments",
    "HighResCT": "environments",
    "LowDoseCT": "environments",
    "Pathology": "environments",
    "Pediatric": "environments",
    "SimulatedSample": "environments",
    "VaryingFieldMRI": "environments",
    "environment": "environments",
    "environment_catalog": "environments",
    "generate_samples": "pipeline",
    "summarize": "pipeline",
    "clinical_queries": "queries",
    "sample_queries": "queries",
})

"""The anatomical localiser: from a parsed report to a region of the volume and ranked lesion candidates.

Thresholds, connected components, morphology and symmetry on a ~1.5 mm working grid (no network):
``ct_anatomy`` (body, lungs, lobes by position, spine), ``mr_anatomy`` (head, brain, hemispheres),
``candidates`` (blobs and their scores), ``localizer.locate`` (what the report asks for).
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "LOCATABLE": "localizer",
    "Candidate": "candidates",
    "ChestCT": "ct_anatomy",
    "Finding": "localizer",
    "HeadMR": "mr_anatomy",
    "LocalizationError": "localizer",
    "Region": "regions",
    "locate": "localizer",
})

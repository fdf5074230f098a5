"""Active suggestions: which slices or whole volumes to annotate next, and why (our adaptation of ASSFT's DKD
and ASD).

Names are imported on first use (PEP 562), so that `MedSegAdaptLib.active.cli` builds its parser
without importing torch.
"""
from __future__ import annotations

from ..lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "CohortVolume": "volumes",
    "ScoringOptions": "options",
    "Suggestion": "suggest",
    "VolumeRanking": "volumes",
    "VolumeSuggestion": "volumes",
    "suggest_from_store": "suggest",
    "suggest_slices": "suggest",
    "suggest_volumes": "volumes",
    "suggest_volumes_from_store": "volumes",
})

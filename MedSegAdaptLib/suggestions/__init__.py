"""Active suggestions: which slices or whole volumes to annotate next, and why (our adaptation of ASSFT's DKD
and ASD).

Names are imported on first use (PEP 562), so that the command line's parser builds without torch.
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "CohortVolume": "volumes",
    "ScoringOptions": "options",
    "Suggestion": "slices",
    "VolumeRanking": "volumes",
    "VolumeSuggestion": "volumes",
    "suggest_from_store": "slices",
    "suggest_slices": "slices",
    "suggest_volumes": "volumes",
    "suggest_volumes_from_store": "volumes",
})

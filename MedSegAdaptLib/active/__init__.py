"""Active suggestions: which slices to annotate next, and why (our adaptation of ASSFT's DKD and ASD).

Names are imported on first use (PEP 562), so that `MedSegAdaptLib.active.cli` builds its parser
without importing torch.
"""
from __future__ import annotations

import importlib

_NAMES = {
    "ScoringOptions": "scoring",
    "Suggestion": "suggest",
    "suggest_from_store": "suggest",
    "suggest_slices": "suggest",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)

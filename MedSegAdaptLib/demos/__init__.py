"""`medsegadapt demo`: the quick demo on CTChest4 and the expert feedback loop demo."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "run_demo": "quick",
    "run_demo_feedback_loop": "quick",
    "run_feedback_loop": "feedback_loop",
})

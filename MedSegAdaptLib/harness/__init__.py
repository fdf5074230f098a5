"""The evaluation harness over every real target (CTChest4's structures, the clinical lesions)."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "PROMPT_KINDS": "real_cases",
    "RealTarget": "real_cases",
    "ReportResult": "report_cases",
    "corrected_box": "simulated_edits",
    "corrected_slices": "real_cases",
    "corrections_store": "real_cases",
    "corrective_click": "simulated_edits",
    "evaluate_report": "report_cases",
    "report_phrasings": "report_cases",
    "evaluate_target": "real_cases",
    "held_out_box_dice": "real_cases",
    "real_targets": "real_cases",
    "reference_prompt": "real_cases",
    "worst_slice": "simulated_edits",
})

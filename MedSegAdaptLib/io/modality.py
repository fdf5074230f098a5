"""Which modality an image is: from its DICOM Modality tag, else from its intensities."""
from __future__ import annotations

import numpy as np

__all__ = ["MODALITIES", "detect_modality", "resolve_modality"]

MODALITIES = ("ct", "mr")


def detect_modality(array: np.ndarray, modality_hint: str | None) -> tuple[str, str]:
    """('ct' | 'mr', reason) from the file's Modality tag when present, else from intensities.

    CT in Hounsfield units has air near -1000: a 1st percentile under -500 means CT.
    """
    if modality_hint:
        hint = modality_hint.strip().upper()
        if hint in ("CT", "MR"):
            return hint.lower(), f"Modality tag is {hint}"
    p1 = float(np.percentile(array, 1))
    if p1 < -500:
        return "ct", f"1st intensity percentile {p1:.0f} < -500 (air in Hounsfield units)"
    return "mr", f"1st intensity percentile {p1:.0f} >= -500 (no air in Hounsfield units)"


def resolve_modality(modality: str, array: np.ndarray, modality_hint: str | None) -> tuple[str, str]:
    """(modality, reason): detect_modality's answer for 'auto', else the given one "given by the user"."""
    if modality == "auto":
        return detect_modality(array, modality_hint)
    return modality, "given by the user"

"""How a label differs from the model prediction it corrects."""
from __future__ import annotations

import numpy as np

from MedSegAdaptLib.store.slices import AnnotatedSlices, annotated_region

__all__ = ["label_diff"]


def label_diff(
    label: np.ndarray, prediction: np.ndarray, prediction_version: int, slices: AnnotatedSlices | None
) -> dict:
    """Voxels added and removed relative to ``prediction`` and Dice to it, over the annotated slices.

    For a partial annotation only the annotated slices are compared: the rest of the label is
    unknown, not a statement about the prediction.
    """
    # Imported here: MedSegAdaptLib.evaluation.metrics loads torch and MONAI (seconds), which the
    # store's other operations do not need.
    from MedSegAdaptLib.evaluation.metrics import dice

    region = annotated_region(label.shape, slices)
    mine, theirs = label[region], prediction[region]
    return {
        "against_version": prediction_version,
        "region": "whole volume" if slices is None else "annotated slices",
        "voxels_added": int(np.count_nonzero(mine & ~theirs)),
        "voxels_removed": int(np.count_nonzero(theirs & ~mine)),
        "dice": round(dice(mine, theirs), 6),
    }

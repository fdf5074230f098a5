"""How sure the model is about a decoded slice: entropy over the foreground and disagreement between
several decodes (ASD's raw parts for suggestions, the confidence of pseudo-labels)."""
from __future__ import annotations

import numpy as np
import torch
from skimage.morphology import dilation, disk

from MedSegAdaptLib.evaluation.metrics import pairwise_dice

__all__ = ["slice_difficulty"]


def slice_difficulty(logits: torch.Tensor, band: int) -> tuple[float, float, int]:
    """ASD's raw parts for one slice decoded N times; logits (N, H, W), the unjittered prompt first.

    Returns (entropy in bits of the mean probability over foreground plus band, 1 - mean pairwise
    Dice of the N masks (0 for N = 1), foreground pixels of the first decode).
    """
    probability = torch.sigmoid(logits).numpy()
    masks = probability > 0.5
    region = dilation(masks.any(0), disk(band)) if band > 0 else masks.any(0)
    if not region.any():
        return 0.0, 0.0, 0
    mean = np.clip(probability.mean(0)[region], 1e-6, 1 - 1e-6)
    entropy = float(np.mean(-(mean * np.log2(mean) + (1 - mean) * np.log2(1 - mean))))
    count = len(masks)
    disagreement = 0.0
    if count > 1:
        pairwise = pairwise_dice(masks, masks)[np.triu_indices(count, 1)]
        disagreement = float(1 - pairwise.mean())
    return entropy, disagreement, int(masks[0].sum())

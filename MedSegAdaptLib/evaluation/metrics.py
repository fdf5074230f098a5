"""Overlap and surface-distance metrics between predicted and reference segmentations."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.segmentation import Segmentation

__all__ = ["compare_segmentations", "dice", "format_table", "hd95_mm", "pairwise_dice"]


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise InputError(f"Prediction mask shape {pred.shape} differs from reference mask shape {ref.shape}")
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both masks are empty."""
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def pairwise_dice(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) Dice between the (N, H, W) and (M, H, W) bool masks; 1 where both are empty."""
    a = first.reshape(len(first), -1).astype(np.float32)
    b = second.reshape(len(second), -1).astype(np.float32)
    total = a.sum(1)[:, None] + b.sum(1)[None, :]
    return np.where(total > 0, 2 * (a @ b.T) / np.maximum(total, 1), 1.0)

def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in millimetres (MONAI, Euclidean, with spacing).

    Returns NaN when either mask is empty: the distance to an empty surface is undefined.
    """
    pred, ref = _pair(pred, ref)
    if not pred.any() or not ref.any():
        return math.nan
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument that its own code passes; nothing a caller can change.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(pred[np.newaxis, np.newaxis]),
            torch.from_numpy(ref[np.newaxis, np.newaxis]),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(distance[0, 0])


def compare_segmentations(
    pred: Segmentation, ref: Segmentation, names: Sequence[str] | None = None
) -> list[dict]:
    """Dice and HD95 per structure, segments matched by name ignoring case.

    Without ``names``, every segment of ``pred`` that ``ref`` also has is compared (others are
    skipped); with ``names``, each must exist in both or InputError is raised. Rows are
    ``{name, dice, hd95_mm, pred_voxels, ref_voxels}`` with the reference's spelling of the name.
    """
    if not pred.geometry.matches(ref.geometry):
        raise InputError(
            f"Geometry of {pred.path or 'prediction'} differs from {ref.path or 'reference'}: "
            f"{pred.geometry.describe_mismatch(ref.geometry)}"
        )
    if names is None:
        pairs = [(s, ref.find(s.name)) for s in pred.segments]
        pairs = [(p, r) for p, r in pairs if r is not None]
    else:
        pairs = [(pred.get(name), ref.get(name)) for name in names]
    return [
        {
            "name": r.name,
            "dice": dice(p.mask, r.mask),
            "hd95_mm": hd95_mm(p.mask, r.mask, ref.geometry.spacing),
            "pred_voxels": int(p.mask.sum()),
            "ref_voxels": int(r.mask.sum()),
        }
        for p, r in pairs
    ]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table of ``rows`` (columns from the first row; text left, numbers right)."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [not isinstance(rows[0][c], str) for c in columns]
    lines = [
        "  ".join(
            text.rjust(width) if is_number else text.ljust(width)
            for text, width, is_number in zip(line, widths, numeric)
        ).rstrip()
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)

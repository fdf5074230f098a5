"""LiteMedSAM preprocessing: intensity presets, per-slice normalisation, resize and padding.

CT is clipped to a window chosen from the structure (lung, bone, soft tissue, brain); MR to the
volume's 0.5-99.5 percentiles. Each slice is then min-max scaled to [0, 1], resized so that its
longest side equals the encoder input size, and padded bottom/right. Boxes and points are scaled
by the same factor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.modality import MODALITIES

__all__ = [
    "CT_WINDOWS",
    "MR_PERCENTILES",
    "IntensityPreset",
    "clip_intensities",
    "logits_to_slice",
    "preset_for",
    "slice_scale",
    "slices_to_input",
]

# (level, width) in HU. Lung: -1000..400 HU, air to enhanced soft tissue. The classic reading window
# L-600/W1500 spends a fifth of its range below air (-1350 HU) and clips soft tissue at 150 HU; chosen on
# all four lung targets (CTChest4's lungs, lung1, lung2), see docs/segmentation.md.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-300.0, 1400.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (40.0, 400.0),
    "brain": (40.0, 80.0),
}

# Keywords that select a CT window; the first window with a matching keyword wins.
_WINDOW_KEYWORDS: dict[str, tuple[str, ...]] = {
    "lung": ("lung", "pulmonary", "airway", "bronch", "trachea", "lobe"),
    "bone": ("rib", "vertebra", "spine", "spinal column", "bone", "skull", "pelvi", "femur", "sacrum",
             "clavicle", "scapula", "sternum", "humerus"),
    "brain": ("brain", "cerebr", "cerebell", "ventricle", "white matter", "grey matter", "gray matter"),
}

MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityPreset:
    """How raw intensities are clipped before per-slice normalisation.

    modality: 'ct' (window level/width in HU) or 'mr' (percentile clipping, no window).
    """

    name: str
    modality: str
    level: float | None = None
    width: float | None = None

    @property
    def key(self) -> str:
        """Identifies the preprocessing for the embedding cache."""
        if self.modality == "ct":
            return f"ct-{self.name}-L{self.level:g}-W{self.width:g}"
        return f"mr-p{MR_PERCENTILES[0]:g}-{MR_PERCENTILES[1]:g}"


def preset_for(structure: str, modality: str) -> IntensityPreset:
    """The intensity preset for a structure name (free text) and a modality ('ct' or 'mr')."""
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if modality == "mr":
        return IntensityPreset("percentile", "mr")
    text = structure.lower()
    for window, keywords in _WINDOW_KEYWORDS.items():
        if any(word in text for word in keywords):
            break
    else:
        window = "soft_tissue"
    level, width = CT_WINDOWS[window]
    return IntensityPreset(window, "ct", level, width)


def clip_intensities(array: np.ndarray, preset: IntensityPreset) -> np.ndarray:
    """Window (CT) or percentile-clip (MR) a volume; returns float32 of the same shape."""
    data = array.astype(np.float32, copy=False)
    if preset.modality == "ct":
        low, high = preset.level - preset.width / 2, preset.level + preset.width / 2
    else:
        foreground = data[data > 0]
        sample = foreground if foreground.size else data
        low, high = np.percentile(sample, MR_PERCENTILES)
    return np.clip(data, low, high)


def slice_scale(height: int, width: int, image_size: int) -> float:
    """Factor that maps a slice's longest side onto the encoder input size."""
    return image_size / max(height, width)


def slices_to_input(slices: np.ndarray, image_size: int) -> torch.Tensor:
    """Encoder input for a stack of 2D slices.

    slices: (N, H, W) clipped intensities. Returns (N, 3, S, S) float32 in [0, 1]: each slice
    min-max scaled on its own, resized so that max(H, W) = S, zero-padded bottom/right.
    """
    images = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    low = images.amin(dim=(1, 2), keepdim=True)
    high = images.amax(dim=(1, 2), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    height, width = images.shape[1:]
    scale = slice_scale(height, width, image_size)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(images[:, None], size=new_size, mode="bilinear", align_corners=False,
                            antialias=scale < 1).clamp_(0, 1)
    padded = F.pad(resized, (0, image_size - new_size[1], 0, image_size - new_size[0]))
    return padded.expand(-1, 3, -1, -1).contiguous()


def logits_to_slice(logits: torch.Tensor, height: int, width: int, image_size: int) -> torch.Tensor:
    """Decoder logits back on the slice grid.

    logits: (N, 1, 256, 256) over the padded encoder input. Returns (N, H, W) logits: the padding
    is cropped off and the rest resized bilinearly to (H, W).
    """
    scale = slice_scale(height, width, image_size) * logits.shape[-1] / image_size
    valid = (max(1, round(height * scale)), max(1, round(width * scale)))
    cropped = logits[..., : valid[0], : valid[1]]
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)[:, 0]

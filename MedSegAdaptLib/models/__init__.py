"""SAM-family backbones: LiteMedSAM (default) and SAM ViT-B / MedSAM from a user checkpoint, their
checkpoint files, inference-time encoder optimisations and the choice of torch device.

Names are imported on first use (PEP 562), so that the checkpoint format or the device choice can be
read without building segment-anything's modules.
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "BACKBONES": "checkpoint",
    "SamBackbone": "backbone",
    "fine_tunes_packaged_litemedsam": "loading",
    "load_backbone": "loading",
    "resolve_device": "device",
})

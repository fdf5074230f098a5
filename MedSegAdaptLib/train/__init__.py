"""Fine-tuning on the store's training view: annotated slices over cached embeddings of a frozen
image encoder, mask decoder trained with DiceCE loss, atomic resumable checkpoints.

Names are imported on first use (PEP 562), so that `MedSegAdaptLib.train.cli` builds its parser
without importing torch.
"""
from __future__ import annotations

import importlib

_NAMES = {
    "CHECKPOINT_FORMAT": "checkpoint",
    "CHECKPOINT_VERSION": "checkpoint",
    "load_checkpoint": "checkpoint",
    "make_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "SliceDataset": "dataset",
    "TrainingSlice": "dataset",
    "FineTuneOptions": "options",
    "FineTuneResult": "trainer",
    "FineTuner": "trainer",
    "fine_tune": "trainer",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)

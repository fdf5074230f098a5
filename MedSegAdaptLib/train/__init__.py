"""Fine-tuning on the store's training view: annotated slices over cached embeddings of a frozen
image encoder, mask decoder trained with DiceCE loss, atomic resumable checkpoints.

Names are imported on first use (PEP 562), so that `MedSegAdaptLib.train.cli` builds its parser
without importing torch.
"""
from __future__ import annotations

from ..lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
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
})

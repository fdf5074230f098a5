"""Fine-tuning on the store's training view: annotated slices over cached embeddings of a frozen image
encoder, mask decoder trained with DiceCE loss, atomic resumable checkpoints (MedSegAdaptLib.models.checkpoint),
selective pseudo-labels and data-parallel training under torchrun.

Names are imported on first use (PEP 562), so that the command line's parser builds without torch.
"""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "SliceDataset": "dataset",
    "TrainingSlice": "dataset",
    "FineTuneOptions": "options",
    "FineTuneResult": "trainer",
    "FineTuner": "trainer",
    "fine_tune": "trainer",
})

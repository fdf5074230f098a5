"""Batched, cached encoding of volume slices."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..models.backbone import SamBackbone
from .embedding_cache import EmbeddingCache
from .preprocess import slices_to_input
from .prompts import take_slices

ProgressCallback = Callable[[str, int, int], None]
"""progress(stage, done, total); it may raise (for example a Cancelled error) to stop the work."""

PRECISIONS = ("fp32", "bf16")


def default_batch_size(device: torch.device) -> int:
    """Slices per encoder call: 1 on CPU (larger batches were no faster per slice on 2 cores), 16 on GPU."""
    return 16 if device.type == "cuda" else 1


class SliceEncoder:
    """Encodes slices of one prepared volume through a backbone, filling an EmbeddingCache.

    clipped: (I, J, K) float32 intensities after the preset's clipping; key: the cache's volume key.
    """

    def __init__(self, backbone: SamBackbone, cache: EmbeddingCache, clipped: np.ndarray, key: str, axis: int,
                 batch_size: int | None = None, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
        self.backbone = backbone
        self.cache = cache
        self.clipped = clipped
        self.key = key
        self.axis = axis
        self.batch_size = batch_size or default_batch_size(backbone.device)
        self.precision = precision
        self.encoded_count = 0

    def _encode(self, indices: Sequence[int]) -> None:
        device = self.backbone.device
        images = slices_to_input(take_slices(self.clipped, self.axis, list(indices)), self.backbone.spec.image_size)
        images = images.to(device)
        if device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            embeddings = self.backbone.encode(images).float()
        for index, embedding in zip(indices, embeddings):
            self.cache.put(self.key, int(index), embedding)
        self.encoded_count += len(indices)

    def ensure(self, indices: Sequence[int], progress: ProgressCallback | None = None) -> None:
        """Encode whichever of `indices` are not cached yet, in batches."""
        missing = [int(i) for i in indices if self.cache.get(self.key, int(i)) is None]
        for start in range(0, len(missing), self.batch_size):
            self._encode(missing[start:start + self.batch_size])
            if progress is not None:
                progress("encoding slices", min(start + self.batch_size, len(missing)), len(missing))

    def embedding(self, index: int) -> torch.Tensor:
        """(1, 256, 64, 64) float32 embedding of one slice on the backbone's device."""
        self.ensure([index])
        return self.cache.get(self.key, index).to(self.backbone.device, torch.float32)[None]

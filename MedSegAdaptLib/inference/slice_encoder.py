"""Slice embeddings of a volume: the one recipe that builds a slice encoder (intensity preset, clipping,
cache key), batched and cached encoding, and pooled-embedding statistics."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference.embedding_cache import EmbeddingCache, volume_key
from MedSegAdaptLib.inference.preprocess import (
    IntensityPreset,
    clip_intensities,
    slices_to_input,
)
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.models.backbone import SamBackbone

__all__ = [
    "PRECISIONS",
    "SliceEncoder",
    "build_slice_encoder",
    "cosine_distances",
    "default_batch_size",
    "embedding_key",
    "knowledge_distance",
    "pooled_embeddings",
]

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



def embedding_key(volume_checksum: str, encoder_weights_sha256: str, preset: IntensityPreset, axis: int) -> str:
    """The cache key of one volume's slices encoded by one image encoder under one preset along one axis."""
    return volume_key(volume_checksum, encoder_weights_sha256, preset.key, axis)


def build_slice_encoder(backbone: SamBackbone, cache: EmbeddingCache, volume: Volume, preset: IntensityPreset,
                        axis: int, volume_checksum: str | None = None, batch_size: int | None = None,
                        precision: str = "fp32") -> SliceEncoder:
    """The slice encoder of `volume` clipped by `preset`, along `axis`, through `backbone`'s image encoder,
    reading and filling `cache` under embedding_key (volume_checksum: volume.voxel_checksum(), when known)."""
    checksum = volume_checksum if volume_checksum is not None else volume.voxel_checksum()
    key = embedding_key(checksum, backbone.spec.encoder_key, preset, axis)
    return SliceEncoder(backbone, cache, clip_intensities(volume.array, preset), key, axis, batch_size, precision)

def pooled_embeddings(encoder: SliceEncoder, indices: Sequence[int]) -> np.ndarray:
    """(N, 256) float64 mean over the 64x64 grid of each slice's cached embedding (encoded when missing)."""
    encoder.ensure(list(indices))
    rows = [encoder.embedding(i)[0].double().mean(dim=(1, 2)).cpu().numpy() for i in indices]
    return np.stack(rows) if rows else np.zeros((0, 256), np.float64)


def cosine_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) cosine distances 1 - cos between rows of (N, D) and (M, D), in float64.

    Pooled embeddings of slices of one scan are nearly parallel (distances of 1e-4 to 1e-3), so in float32
    1 - cos keeps three or four significant digits and a rounding difference upstream shows: two rankings
    of the same volumes gave 0.0006799698 and 0.0006800890. float64 leaves about twelve."""
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(1 - a @ b.T, 0, 2)


def knowledge_distance(candidates: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """(N,) cosine distance of each (N, D) pooled candidate embedding to its nearest (M, D) labeled
    one; zeros when M = 0 (nothing labeled, nothing to depart from)."""
    if not len(labeled):
        return np.zeros(len(candidates))
    return cosine_distances(candidates, labeled).min(1)

"""Slice embeddings kept so that re-prompting, suggesting and fine-tuning run only the decoder.

Entries are keyed by a volume key (volume checksum, backbone weights, intensity preset, slice axis)
and a slice index. Kept in memory as float16 (2 MiB a slice for a 256x64x64 embedding) and, when a
directory is given, also on disk, one `.npy` per slice written atomically, so a later process on
the same volume skips the encoder.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["EmbeddingCache", "volume_key"]


def volume_key(volume_checksum: str, weights_sha256: str, preset_key: str, axis: int) -> str:
    """Identifies one way of encoding one volume."""
    text = f"{volume_checksum}|{weights_sha256}|{preset_key}|axis{axis}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class EmbeddingCache:
    """In-memory (and optionally on-disk) store of (256, 64, 64) slice embeddings."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._memory)

    def _file(self, key: str, index: int) -> Path:
        return self.directory / key / f"slice_{index:05d}.npy"

    def get(self, key: str, index: int) -> torch.Tensor | None:
        """The cached (256, 64, 64) float16 embedding, or None."""
        cached = self._memory.get((key, index))
        if cached is None and self.directory is not None:
            path = self._file(key, index)
            if path.is_file():
                cached = torch.from_numpy(np.load(path))
                self._memory[(key, index)] = cached
        return cached

    def put(self, key: str, index: int, embedding: torch.Tensor) -> None:
        """Keep a (256, 64, 64) embedding (stored as float16 on the CPU)."""
        stored = embedding.detach().to("cpu", torch.float16).contiguous()
        self._memory[(key, index)] = stored
        if self.directory is not None:
            path = self._file(key, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
            with os.fdopen(handle, "wb") as file:
                np.save(file, stored.numpy())
            os.replace(temp, path)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        self._memory.clear()

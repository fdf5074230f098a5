"""MedSeg-R's neural priors (cognitive and perceptual stages as nn.Modules) and the text encoder that
turns attribute texts into their tokens."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "AttributeTokens": "modules",
    "MedSegRPriors": "modules",
    "TextEncoder": "text_encoder",
    "attach_priors": "modules",
})

"""MedSeg-R priors on a backbone: attach the prior modules, and turn a report into their input tokens.

A backbone with priors (``backbone.priors`` set) modulates every image embedding with the attribute
tokens of a parsed report before the mask decoder (SamBackbone.decode's ``prior_tokens``). Untrained
priors leave the embedding unchanged, so only a checkpoint fine-tuned with priors (``medsegadapt
finetune --priors``) makes a report change the result. ``backbone.prior_metadata`` records which
priors, text encoder and knowledge base the checkpoint was trained with.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from ..models.backbone import SamBackbone
from .knowledge import KnowledgeBase
from .modules import ATTRIBUTES, PRIORS, AttributeTokens, MedSegRPriors
from .report_parser import ParsedReport, parse_report

if TYPE_CHECKING:
    from .text_encoder import TextEncoder


def attach_priors(backbone: SamBackbone, use: Collection[str] = PRIORS, text_dim: int = 384,
                  seed: int = 0) -> SamBackbone:
    """Give `backbone` fresh (identity) MedSeg-R prior modules on its device, in place; their random
    initialisation depends only on `seed`."""
    unknown = sorted(set(use) - set(PRIORS))
    if unknown or not use:
        raise InputError(f"priors {unknown or 'none'}: expected a non-empty subset of {', '.join(PRIORS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        priors = MedSegRPriors(text_dim=text_dim, use=[p for p in PRIORS if p in use])
    backbone.priors = priors.to(backbone.device)
    return backbone


class PriorGuidance:
    """Reports -> attribute tokens for a backbone's priors, with the text encoder and knowledge base
    loaded once (the text encoder caches every text it has seen)."""

    def __init__(self, text_encoder: TextEncoder | None = None, knowledge_base: KnowledgeBase | None = None) -> None:
        self._text_encoder = text_encoder
        self.knowledge_base = knowledge_base or KnowledgeBase.load()

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            from .text_encoder import TextEncoder  # imports transformers (seconds): only when a prior needs it

            self._text_encoder = TextEncoder()
        return self._text_encoder

    def parse(self, text: str, modality: str, structure: str | None = None) -> ParsedReport:
        """The report (or a bare structure name used as the query) parsed against the knowledge base."""
        return parse_report(text, modality, self.knowledge_base, structure=structure)

    def tokens(self, report: ParsedReport) -> AttributeTokens:
        """attribute -> (tokens (1, L, text_dim), mask (1, L)) for the report's three attribute texts."""
        return {attribute: self.text_encoder.encode_tokens([getattr(report, attribute)]) for attribute in ATTRIBUTES}

    def metadata(self, use: Collection[str]) -> dict:
        """What a checkpoint records about its priors."""
        return {"use": [p for p in PRIORS if p in use], "text_encoder": self.text_encoder.identity,
                "knowledge_base": self.knowledge_base.version}

    def check(self, backbone: SamBackbone) -> None:
        """InputError when `backbone`'s priors were trained with another text encoder."""
        recorded = (backbone.prior_metadata or {}).get("text_encoder")
        if recorded is not None and recorded != self.text_encoder.identity:
            raise InputError(f"the checkpoint's priors were trained with text encoder {recorded}, "
                             f"but {self.text_encoder.identity} is loaded; use the same text encoder")

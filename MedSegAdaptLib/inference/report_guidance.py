"""MedSeg-R guidance: a report (or query) parsed against the knowledge base and turned into the attribute
tokens of a backbone's priors, with the text encoder its checkpoint was trained with.

A backbone with priors (``backbone.priors`` set) modulates every image embedding with the attribute
tokens of a parsed report before the mask decoder (SamBackbone.decode's ``prior_tokens``). Untrained
priors leave the embedding unchanged, so only a checkpoint fine-tuned with priors (``medsegadapt
finetune --priors``) makes a report change the result. ``backbone.prior_metadata`` records which
priors, text encoder and knowledge base the checkpoint was trained with.

Text encoder: the packaged all-MiniLM-L6-v2, or a CLIP text encoder from a local folder (``finetune
--text-encoder PATH``). A checkpoint records the encoder's kind, token width, identity (name and
weights' SHA-256) and, for CLIP, its folder; `PriorGuidance.for_backbone` loads the same encoder again
(from another folder when given, e.g. ``segment --text-encoder PATH`` after the folder moved).
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.knowledge.knowledge_base import ATTRIBUTES, PRIORS, KnowledgeBase
from MedSegAdaptLib.knowledge.report_parser import ParsedReport, parse_report
from MedSegAdaptLib.models.backbone import SamBackbone

if TYPE_CHECKING:  # the prior modules import torchvision: only a backbone with priors needs them
    from MedSegAdaptLib.priors.modules import AttributeTokens
    from MedSegAdaptLib.priors.text_encoder import TextEncoder

__all__ = ["PriorGuidance"]




def _weights_digest(identity: str) -> str:
    """The weights' SHA-256 prefix of a text encoder identity ('<name>@<digest>'): a moved or renamed
    folder holds the same encoder."""
    return identity.rpartition("@")[2]


class PriorGuidance:
    """Reports -> attribute tokens for a backbone's priors, with the text encoder and knowledge base
    loaded once (the text encoder caches every text it has seen).

    text_encoder: a loaded encoder; without one, the CLIP text encoder in folder `clip_path` (or, without
    that, all-MiniLM-L6-v2) is loaded on first use.
    """

    def __init__(self, text_encoder: TextEncoder | None = None, knowledge_base: KnowledgeBase | None = None,
                 clip_path: str | Path | None = None) -> None:
        self._text_encoder = text_encoder
        self.clip_path = None if clip_path is None else Path(clip_path)
        self.knowledge_base = knowledge_base or KnowledgeBase.load()

    @classmethod
    def for_backbone(cls, backbone: SamBackbone, clip_path: str | Path | None = None) -> PriorGuidance:
        """Guidance with the text encoder `backbone`'s checkpoint recorded: the CLIP text encoder in
        `clip_path` when given, else in the folder recorded at training, else all-MiniLM-L6-v2.
        InputError when the priors need a CLIP encoder whose recorded folder is gone and none is given."""
        recorded = backbone.prior_metadata or {}
        if clip_path is None and recorded.get("text_encoder_kind") == "clip":
            clip_path = recorded.get("text_encoder_path")
            if clip_path is None or not Path(clip_path).is_dir():
                raise InputError(
                    f"the checkpoint's priors were trained with the CLIP text encoder {recorded['text_encoder']} "
                    f"({recorded['text_dim']}-dimensional tokens) from folder {clip_path}, which is not there; "
                    "give that encoder's folder with --text-encoder PATH")
        return cls(clip_path=clip_path)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            from MedSegAdaptLib.priors.text_encoder import (
                TextEncoder,  # imports transformers (seconds): only when a prior needs it
            )

            self._text_encoder = TextEncoder(self.clip_path)
        return self._text_encoder

    def parse(self, text: str, modality: str, structure: str | None = None) -> ParsedReport:
        """The report (or a bare structure name used as the query) parsed against the knowledge base."""
        return parse_report(text, modality, self.knowledge_base, structure=structure)

    def tokens(self, report: ParsedReport) -> AttributeTokens:
        """attribute -> (tokens (1, L, text_dim), mask (1, L)) for the report's three attribute texts."""
        return {attribute: self.text_encoder.encode_tokens([getattr(report, attribute)]) for attribute in ATTRIBUTES}

    def metadata(self, use: Collection[str]) -> dict:
        """What a checkpoint records about its priors: the priors used, the text encoder (identity, kind,
        token width and, for CLIP, its folder) and the knowledge base's version."""
        encoder = self.text_encoder
        return {"use": [p for p in PRIORS if p in use], "text_encoder": encoder.identity,
                "text_encoder_kind": encoder.kind, "text_dim": encoder.dim,
                "text_encoder_path": str(encoder.folder.resolve()) if encoder.kind == "clip" else None,
                "knowledge_base": self.knowledge_base.version}

    def check(self, backbone: SamBackbone) -> None:
        """InputError when `backbone`'s priors take tokens of another width than the text encoder gives,
        or were trained with another text encoder (other weights)."""
        encoder = self.text_encoder
        recorded = (backbone.prior_metadata or {}).get("text_encoder")
        text_dim = backbone.priors.cognitive.text_dim
        if encoder.dim != text_dim:
            trained = f" (trained with {recorded})" if recorded is not None else ""
            raise InputError(f"the priors take {text_dim}-dimensional text tokens{trained}, but text encoder "
                             f"{encoder.identity} from {encoder.folder} gives {encoder.dim}-dimensional ones; "
                             "use the text encoder the priors were trained with")
        if recorded is not None and _weights_digest(recorded) != _weights_digest(encoder.identity):
            raise InputError(f"the checkpoint's priors were trained with text encoder {recorded}, "
                             f"but {encoder.identity} is loaded; use the same text encoder")

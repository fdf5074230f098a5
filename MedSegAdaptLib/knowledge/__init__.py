"""The clinical knowledge base (structures, synonyms, location / texture / shape per modality) and the
report parser that reads a query or a pasted report against it. Free of torch."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ATTRIBUTES": "knowledge_base",
    "KnowledgeBase": "knowledge_base",
    "NamedStructure": "report_parser",
    "PRIORS": "knowledge_base",
    "ParsedReport": "report_parser",
    "Structure": "knowledge_base",
    "parse_report": "report_parser",
    "structures_named": "report_parser",
})

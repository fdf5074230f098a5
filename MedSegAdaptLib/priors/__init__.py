"""Report-guided priors (MedSeg-R cognitive stage): knowledge base and report parsing."""
from MedSegAdaptLib.priors.knowledge import KnowledgeBase
from MedSegAdaptLib.priors.report_parser import ParsedReport, parse_report

__all__ = ["KnowledgeBase", "ParsedReport", "parse_report"]

"""Report-driven segmentation over every real target: several phrasings each, no box drawn.

For each phrasing: whether the top candidate overlaps the reference (hit), the rank of the first
candidate that does, the Dice of the top candidate's segmentation and the seconds taken (localising
and segmenting). CTChest4's structures are asked for by name and by synonym; the clinical lesions by
the four report phrasings of io.clinical_cases.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.real_cases import RealTarget
from MedSegAdaptLib.inference.report_segmentation import (
    candidate_overlaps,
    find_candidates,
    segment_from_report,
)
from MedSegAdaptLib.inference.segmenter import Segmenter

__all__ = ["CTCHEST4_QUERIES", "ReportResult", "evaluate_report", "report_phrasings"]

CTCHEST4_QUERIES = {
    "right lung": ("right lung", "segment the right lung", "right pulmonary parenchyma"),
    "left lung": ("left lung", "segment the left lung", "left lung parenchyma"),
    "thoracic vertebral column": ("thoracic vertebral column", "segment the thoracic spine", "T-spine"),
    "cervical vertebral column": ("cervical vertebral column", "segment the cervical spine"),
    "lumbar vertebral column": ("lumbar vertebral column", "segment the lumbar spine"),
}
"""The CTChest4 structures the localiser knows, each with the queries asked."""


@dataclass(frozen=True)
class ReportResult:
    """One phrasing on one target: rank of the first overlapping candidate (None: none overlaps or refused),
    Dice of the top candidate's segmentation (None: refused), the top reason or the refusal."""

    target: str
    report: str
    candidates: int
    rank: int | None
    dice: float | None
    seconds: float
    reason: str

    @property
    def hit(self) -> bool:
        """Whether the top candidate overlaps the reference."""
        return self.rank == 1


def report_phrasings(target: RealTarget) -> tuple[str, ...]:
    """The phrasings asked of a target (CTChest4: CTCHEST4_QUERIES; clinical: the case's reports)."""
    if target.name.startswith("CTChest4"):
        return CTCHEST4_QUERIES.get(target.structure, ())
    from MedSegAdaptLib.io.clinical_cases import clinical_cases

    return next(c.reports for c in clinical_cases() if c.name == target.name)


def evaluate_report(segmenter: Segmenter, target: RealTarget, report: str, segment: bool = True,
                    method: str = "auto") -> ReportResult:
    """Localise, rank and (segment=True) segment the top candidate of one phrasing on one target
    (method: see report_segmentation.METHODS)."""
    started = time.perf_counter()
    try:
        if segment:
            found = segment_from_report(segmenter, target.volume, report, modality=target.modality, method=method)
        else:
            found = find_candidates(segmenter.guidance, target.volume, report, modality=target.modality)
    except InputError as refusal:
        return ReportResult(target.name, report, 0, None, None, time.perf_counter() - started, f"refused: {refusal}")
    overlaps = candidate_overlaps(found, target.reference)
    rank = overlaps.index(True) + 1 if any(overlaps) else None
    score = dice(found.mask, target.reference) if found.mask is not None else None
    return ReportResult(target.name, report, len(overlaps), rank, score, time.perf_counter() - started,
                        found.finding.candidates[0][0].reason)

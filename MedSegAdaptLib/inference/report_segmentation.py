"""Report-driven segmentation: a typed query or pasted report to a 3D segmentation, no box needed.

The report is parsed (knowledge.report_parser), the localiser finds the region it names and the ranked
candidates in it (localization.locate), and the picked candidate is segmented:

- a lesion (a blob inside a region): by the backbone from the candidate's box (its extent plus
  REFERENCE_BOX_MARGIN voxels); with a MedSeg-R checkpoint the report's texts also steer the decoder;
- a whole structure the localiser outlines itself (lungs, spine segments): by default its own mask,
  which scored higher than the backbone from the same box on four of CTChest4's five such structures
  (mean Dice 0.842 against 0.757; the lumbar column is the exception, 0.732 against 0.783; see
  docs/segmentation.md); `method='backbone'` runs the backbone from its box instead.

The ranking always comes from the knowledge base's expectations and the report's size, side and lobe.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference.prompts import Box3D
from MedSegAdaptLib.inference.report_guidance import PriorGuidance
from MedSegAdaptLib.inference.segmenter import SegmentationOutcome, Segmenter
from MedSegAdaptLib.io.modality import resolve_modality
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.knowledge.report_parser import ParsedReport
from MedSegAdaptLib.localization.localizer import Finding, locate

__all__ = ["METHODS", "ReportSegmentation", "candidate_box", "candidate_overlaps", "find_candidates",
           "segment_candidate", "segment_from_report"]

RANKED_BY = "knowledge base and report (size, side, lobe, intensity)"
METHODS = ("auto", "backbone", "localiser")
"""How the picked candidate is segmented: auto (localiser for whole structures, backbone for lesions)."""


@dataclass
class ReportSegmentation:
    """The report's finding (regions, ranked candidates) and, once segmented: picked (0-based rank), box,
    mask ((I, J, K) bool on the volume's grid), method ('backbone' or 'localiser'), the backbone's
    outcome when it ran, seconds, and steered_by (what steered the decoder)."""

    report: ParsedReport
    modality: str
    finding: Finding
    steered_by: str
    picked: int | None = None
    box: Box3D | None = None
    mask: np.ndarray | None = None
    method: str | None = None
    outcome: SegmentationOutcome | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary: the report, the candidates, which was segmented and how."""
        return {"report": self.report.to_dict(), "modality": self.modality, "ranked_by": RANKED_BY,
                "steered_by": self.steered_by if self.method != "localiser" else "not used (localiser mask)",
                "candidates": self.finding.to_dict(), "picked_rank": None if self.picked is None else self.picked + 1,
                "method": self.method, "box_ijk": None if self.box is None else [*self.box.lo, *self.box.hi]}


def candidate_box(finding: Finding, index: int) -> Box3D:
    """The IJK box of candidate `index` (0-based) on the volume's grid, grown by REFERENCE_BOX_MARGIN voxels."""
    candidate, region = finding.candidates[index]
    return Box3D.around(region.grid.up(candidate.mask), REFERENCE_BOX_MARGIN)


def find_candidates(guidance: PriorGuidance, volume: Volume, report: str, structure: str | None = None,
                    modality: str = "auto", has_priors: bool = False) -> ReportSegmentation:
    """Parse `report` with `guidance` (a Segmenter's, or PriorGuidance() for the packaged knowledge base) and
    rank the candidates for it in `volume`; no network runs. has_priors: whether the backbone that will
    segment has MedSeg-R priors (recorded in steered_by)."""
    modality, _ = resolve_modality(modality, volume.array, volume.modality_hint)
    parsed = guidance.parse(report, modality, structure)
    steered = ("MedSeg-R priors from the report's texts" if has_priors
               else "box only (no MedSeg-R priors in this checkpoint)")
    return ReportSegmentation(parsed, modality, locate(volume, parsed, modality), steered)


def segment_candidate(found: ReportSegmentation, pick: int, volume: Volume, report: str,
                      segmenter: Callable[[], Segmenter], progress: ProgressCallback | None = None,
                      method: str = "auto", **segment_options) -> ReportSegmentation:
    """A copy of `found` with its candidate at 0-based rank `pick` segmented (see METHODS); `found` itself
    is not changed, so another candidate can be segmented from the same Find.

    segmenter: called for the Segmenter only when the backbone runs (a whole structure's own mask needs
    none). segment_options: passed to Segmenter.segment (axis, options, intensity_cut).
    """
    if method not in METHODS:
        raise InputError(f"unknown segmentation method {method!r}; expected one of {', '.join(METHODS)}")
    count = len(found.finding.candidates)
    if not 0 <= pick < count:
        raise InputError(f"candidate {pick + 1} does not exist: the report gave {count} candidate(s)")
    started = time.perf_counter()
    candidate, region = found.finding.candidates[pick]
    result = replace(found, picked=pick, box=candidate_box(found.finding, pick))
    result.method = method if method != "auto" else "localiser" if candidate.whole_region else "backbone"
    if result.method == "localiser":
        result.mask = region.grid.up(candidate.mask)
    else:
        result.outcome = segmenter().segment(volume, found.report.structure, result.box, (), found.modality, progress,
                                             report, **segment_options)
        result.mask = result.outcome.mask
    result.seconds = time.perf_counter() - started
    return result


def segment_from_report(segmenter: Segmenter, volume: Volume, report: str, structure: str | None = None,
                        pick: int = 0, modality: str = "auto", progress: ProgressCallback | None = None,
                        method: str = "auto", **segment_options) -> ReportSegmentation:
    """Find the report's candidates and segment the one at 0-based rank `pick` (segment_candidate);
    seconds include finding."""
    started = time.perf_counter()
    found = find_candidates(segmenter.guidance, volume, report, structure, modality,
                            segmenter.backbone.priors is not None)
    result = segment_candidate(found, pick, volume, report, lambda: segmenter, progress, method, **segment_options)
    result.seconds = time.perf_counter() - started
    return result


def candidate_overlaps(found: ReportSegmentation, reference: np.ndarray) -> list[bool]:
    """Whether each candidate (on the volume's grid) overlaps an (I, J, K) reference mask."""
    return [bool((region.grid.up(c.mask) & reference).any()) for c, region in found.finding.candidates]

"""Report-driven segmentation in the panel: what a Find hands to the worker and back, and its texts.

A pasted report (or a typed query) is parsed and its candidates are ranked in the volume with no network
(``MedSegAdaptLib.inference.report_segmentation.find_candidates``); the panel lists them, jumps the
slice views to one, and segments the ones the user keeps, each into a new segment. This module holds
the plain data of that round trip and the texts the panel shows; the Logic (:mod:`.logic`) does the work.
No Qt, no MRML access: :class:`ReportFind` crosses the worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import Volume

__all__ = ["ReportFind", "ReportRequest", "candidate_rows", "candidate_text", "understood_text"]


@dataclass
class ReportRequest:
    """What finding a report's candidates needs, read from the scene on the main thread.

    volume_id: the volume node's id, the key of the Logic's cache of finds; volume_node: the node itself,
    kept (never touched off the main thread) so that a later node with the same id after a scene
    close is not mistaken for it.
    """

    volume: Volume
    volume_id: str
    volume_node: Any
    report: str
    structure: str | None = None
    modality: str = "auto"


@dataclass
class ReportFind:
    """A report's ranked candidates in one volume, kept so that segmenting one does not localise again.

    result: the library's ``ReportSegmentation`` (parsed report, finding, steering) before any candidate
    is segmented; candidates: ``result.finding.to_dict()``, best first, each with rank (1-based), score,
    reason, region, region_method, diameter_mm, volume_ml, centre_ijk (I, J, K on the volume's grid)
    and terms; seconds: how long the Find took (model loading included).
    """

    request: ReportRequest
    result: Any
    candidates: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def volume(self) -> Volume:
        return self.request.volume

    @property
    def structure(self) -> str:
        """The canonical structure the report names ('lung nodule', 'left lung')."""
        return self.result.report.structure

    @property
    def modality(self) -> str:
        return self.result.modality

    @property
    def understood(self) -> dict:
        """What was understood: the parsed report (structure, findings, location / texture / shape texts),
        the modality, what ranks the candidates and what would steer the model."""
        from MedSegAdaptLib.inference.report_segmentation import RANKED_BY

        return {"report": self.result.report.to_dict(), "modality": self.modality, "ranked_by": RANKED_BY,
                "steered_by": self.result.steered_by}

    def candidate(self, rank: int) -> dict:
        """Candidate ``rank`` (1-based, as in the table); InputError when there is no such candidate."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= len(self.candidates):
            raise InputError(f"candidate {rank!r} does not exist: the report gave {len(self.candidates)} "
                             f"candidate(s); expected 1..{len(self.candidates)}")
        return self.candidates[rank - 1]

    def is_whole_structure(self, rank: int) -> bool:
        """Whether candidate ``rank`` is a whole localised structure (a lung, a spine segment), not a lesion."""
        self.candidate(rank)
        return bool(self.result.finding.candidates[rank - 1][0].whole_region)


def _finding_text(key: str, value) -> str:
    """'size 14 mm', 'lobe right upper lobe', 'density solid' for one of a parsed report's findings."""
    unit = ""
    if key.endswith("_mm"):
        key, unit = key.removesuffix("_mm"), " mm"
    values = value if isinstance(value, (list, tuple)) else [value]
    text = " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) if unit else ", ".join(
        str(v) for v in values)
    return f"{key.replace('_', ' ')} {text}{unit}"


def understood_text(found: ReportFind) -> str:
    """One line: the structure and what the report said of it, e.g. 'lung nodule on CT (lobe right upper
    lobe; laterality right; density solid; size 14 mm; size class nodule)'."""
    findings = dict(found.result.report.findings)
    if list(findings.get("dimensions_mm", ())) == [findings.get("size_mm")]:
        del findings["dimensions_mm"]  # one dimension: the size itself
    said = "; ".join(_finding_text(key, value) for key, value in findings.items())
    return f"{found.structure} on {found.modality.upper()}" + (f" ({said})" if said else "")


def candidate_text(candidate: dict) -> str:
    """'Candidate 1 (score 0.42, 11.0 mm, 0.28 mL): <reason>'."""
    return (f"Candidate {candidate['rank']} (score {candidate['score']:.2f}, {candidate['diameter_mm']:.1f} mm, "
            f"{candidate['volume_ml']:.2f} mL): {candidate['reason']}")


def candidate_rows(found: ReportFind | None) -> list[list[str]]:
    """The panel table's rows, one per candidate: rank, score, size (longest axial diameter, volume), reason."""
    if found is None:
        return []
    return [[str(c["rank"]), f"{c['score']:.2f}", f"{c['diameter_mm']:.1f} mm, {c['volume_ml']:.2f} mL", c["reason"]]
            for c in found.candidates]

"""From a parsed report to a region of the volume and the ranked candidates inside it, before any network runs.

`locate(volume, parsed)` is the cognitive stage made operational: the report's structure, side, lobe and
size pick the anatomy to search (ct_anatomy, mr_anatomy) and, for lesions, the blobs to rank
(candidates). Organs give one candidate, the region itself. A side named in the report is a hard limit:
nothing on the other side is ever offered. What is not modelled says so (`LocalizationError`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.knowledge.report_parser import ParsedReport
from MedSegAdaptLib.localization.candidates import (
    Candidate,
    LesionQuery,
    ct_lung_candidates,
    mr_asymmetry_candidates,
    mr_bright_candidates,
    rank_candidates,
)
from MedSegAdaptLib.localization.ct_anatomy import LUNG_LEVEL_FRACTION, ChestCT
from MedSegAdaptLib.localization.morphology import close_mm, fill_holes_per_slice
from MedSegAdaptLib.localization.mr_anatomy import HeadMR
from MedSegAdaptLib.localization.regions import Region

__all__ = ["LOCATABLE", "Finding", "LocalizationError", "locate"]

LOCATABLE = {
    "ct": ("right lung", "left lung", "cervical vertebral column", "thoracic vertebral column",
           "lumbar vertebral column", "lung nodule"),
    "mr": ("brain tumor", "breast lesion"),
}
"""The structures each modality's localiser finds from a report alone."""

SPINE_CLOSING_MM = 3.0
"""The spine's bone mask is closed by this disk (cancellous gaps); raised CTChest4's column Dice by 0.02-0.04."""
_SPINE_LEVELS = {"cervical vertebral column": "above", "thoracic vertebral column": "at",
                 "lumbar vertebral column": "below"}


class LocalizationError(InputError):
    """The report names something the localiser cannot find (not modelled, or nothing matched)."""


@dataclass(frozen=True)
class Finding:
    """regions: the searched regions (one per side searched); candidates: best first, each with its region."""

    structure: str
    query: LesionQuery
    regions: tuple[Region, ...]
    candidates: tuple[tuple[Candidate, Region], ...]

    def to_dict(self) -> list[dict]:
        """The candidates as JSON-ready dicts (rank, score, reason, region, diameter, volume, terms)."""
        return [{"rank": rank, "score": round(c.score, 4), "reason": c.reason, "region": r.name,
                 "region_method": r.method, "diameter_mm": round(c.diameter_mm, 1),
                 "volume_ml": round(c.volume_ml, 2), "centre_ijk": list(c.centre_ijk(r)),
                 "terms": {k: round(v, 3) for k, v in c.terms.items()}}
                for rank, (c, r) in enumerate(self.candidates, start=1)]


def lesion_query(parsed: ParsedReport, kb: KnowledgeBase | None = None) -> LesionQuery:
    """The search terms of a parsed report: side, lobe or region, size and size class, expected HU."""
    kb = kb or KnowledgeBase.load()
    findings = parsed.findings
    side = findings.get("laterality")
    structure = kb.structure(parsed.structure)
    if side not in ("left", "right"):
        side = structure.laterality if structure.laterality in ("left", "right") else None
    regions = findings.get("region", ())
    return LesionQuery(parsed.structure, side, findings.get("lobe") or (regions[0] if regions else None),
                       findings.get("size_mm"), findings.get("size_class"), tuple(structure.hu_ranges()))


def locate(volume: Volume, parsed: ParsedReport, modality: str) -> Finding:
    """The regions and ranked candidates for the report's structure in `volume` ('ct' or 'mr')."""
    query = lesion_query(parsed)
    if parsed.structure not in LOCATABLE.get(modality, ()):
        known = ", ".join(LOCATABLE.get(modality, ()))
        raise LocalizationError(
            f"finding {parsed.structure!r} from a report alone is not available on {modality.upper()} (it is for: "
            f"{known}); draw a box or click a point for it")
    anatomy = _anatomy(volume, modality)
    return _locate_ct(anatomy, query) if modality == "ct" else _locate_mr(anatomy, query)


_last_anatomy: list[tuple[str, ChestCT | HeadMR]] = []


def _anatomy(volume: Volume, modality: str) -> ChestCT | HeadMR:
    """The anatomy of `volume`, reused while the same voxels are asked about again (another phrasing, a
    second Find in the panel): one volume is kept."""
    key = f"{modality}:{volume.voxel_checksum()}:{volume.geometry!r}"  # the sides depend on the geometry
    if _last_anatomy and _last_anatomy[0][0] == key:
        return _last_anatomy[0][1]
    anatomy = ChestCT(volume) if modality == "ct" else HeadMR(volume)
    _last_anatomy[:] = [(key, anatomy)]
    return anatomy


def _sides(query: LesionQuery) -> tuple[str, ...]:
    return (query.side,) if query.side else ("right", "left")


def _whole(region: Region) -> tuple[Candidate, Region]:
    from MedSegAdaptLib.evaluation.lesion_measures import measure_lesion

    measured = measure_lesion(region.mask, region.grid.geometry)
    return (Candidate(region.mask, 1.0, f"the {region.name}: {region.method}", measured.longest_axial_diameter_mm,
                      measured.volume_ml, whole_region=True), region)


def _locate_ct(anatomy: ChestCT, query: LesionQuery) -> Finding:
    if query.structure in ("right lung", "left lung"):
        region = anatomy.lung(query.structure.split()[0])
        return _finding(query, (region,), [_whole(region)] if not region.empty else [],
                        "an air-filled lung inside the body")
    if query.structure in _SPINE_LEVELS:
        levels = anatomy.thoracic_levels()
        where = _SPINE_LEVELS[query.structure]
        if where == "at":
            keep = levels
        else:
            ks = np.flatnonzero(levels)
            index = np.arange(levels.size)
            superior = anatomy.z[0, 0, -1] > anatomy.z[0, 0, 0]
            above = (index > ks.max()) if superior else (index < ks.min())
            keep = above if where == "above" else ~above & ~levels
        mask = anatomy.spine & keep[None, None, :] if levels.any() else np.zeros_like(anatomy.spine)
        mask = fill_holes_per_slice(close_mm(mask, SPINE_CLOSING_MM, anatomy.spacing))
        region = anatomy.region(query.structure, mask,
                                f"bone above 200 HU near the mid-sagittal plane behind the body's centre, closed by "
                                f"{SPINE_CLOSING_MM:g} mm, on the slices {where} the lungs' levels (their cross-section "
                                f"over {LUNG_LEVEL_FRACTION:.0%} of its largest)")
        return _finding(query, (region,), [_whole(region)] if not region.empty else [],
                        "spine bone at the right levels")
    regions, found = [], []
    for side in _sides(query):
        region = anatomy.lung_region(side, query.expected_mm)
        regions.append(region)
        blobs, hosts = ct_lung_candidates(anatomy.hu, region, query)
        lobe = anatomy.lobe_mask(query.lobe, region.mask) if query.lobe and "lobe" in query.lobe else None
        found += [(c, region) for c in rank_candidates(blobs, anatomy.hu, region, query, "ct", lobe, hosts)]
    return _finding(query, tuple(regions), found, f"solid blobs above -300 HU in the {' or '.join(r.name for r in regions)}")


def _locate_mr(anatomy: HeadMR, query: LesionQuery) -> Finding:
    regions, found = [], []
    for side in _sides(query):
        region = anatomy.side(side)
        regions.append(region)
        if anatomy.midline_shift is not None:
            blobs = mr_asymmetry_candidates(anatomy.image, anatomy.mirror(anatomy.image), region, query)
        else:
            blobs = mr_bright_candidates(anatomy.image, region, query)
        found += [(c, region) for c in rank_candidates(blobs, anatomy.image, region, query, "mr")]
    how = "brighter than the mirrored side" if anatomy.midline_shift is not None else "among the brightest voxels"
    return _finding(query, tuple(regions), found, f"blobs {how} in the {' or '.join(r.name for r in regions)}")


def _finding(query: LesionQuery, regions: tuple[Region, ...], found: list, looked_for: str) -> Finding:
    if not found:
        size = f" of about {query.size_mm:g} mm" if query.size_mm else ""
        raise LocalizationError(f"no {query.structure}{size} found: looked for {looked_for}"
                                + ("" if all(not r.empty for r in regions) else
                                   f" ({', '.join(r.name for r in regions if r.empty)} not found)"))
    return Finding(query.structure, query, regions, tuple(sorted(found, key=lambda item: -item[0].score)))

"""Lesion candidates inside a localised region, each scored against the report and the knowledge base.

Candidates come from the image, not from a network:

- CT lung: solid voxels (above SOLID_HU) inside the lung region, opened by a disk a fifth of the
  expected size (vessels thinner than that go), 3D components;
- MR with a midline: voxels of the named hemisphere brighter than their mirror image across the
  mid-sagittal plane by ASYMMETRY_MADS robust deviations and brighter than the hemisphere's median;
- MR without a midline (a breast crop): the brightest BRIGHT_PERCENTILE voxels of the region.

Each candidate is scored by a product of terms in (0, 1] (see `score_terms`): size against the report
(or no preference without a size), slice extent against the in-plane size (a one-slice sheet is not a
12 mm ball), compactness, isolation from the vessel tree (CT lung), position in the named lobe, and
intensity (the knowledge base's HU range on CT, contrast to a ring around it on MR).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label, regionprops

from MedSegAdaptLib.evaluation.lesion_measures import measure_lesion
from MedSegAdaptLib.localization.morphology import dilate_mm, open_mm
from MedSegAdaptLib.localization.regions import Region

__all__ = [
    "ASYMMETRY_MADS",
    "BRIGHT_PERCENTILE",
    "SOLID_HU",
    "Candidate",
    "LesionQuery",
    "ct_lung_candidates",
    "mr_asymmetry_candidates",
    "mr_bright_candidates",
    "rank_candidates",
]

SOLID_HU = -300.0
ASYMMETRY_MADS = 2.0
BRIGHT_PERCENTILE = 95.0
SIZE_TOLERANCE = 0.4
"""Standard deviation of log(diameter / reported size) in the size term (0.4: 14 mm reported, 10 or 21 mm score 0.6)."""
DEFAULT_SIZE_MM = 10.0
"""The expected size when the report gives neither a size nor a size class (sets the opening radius and the
smallest candidate only, not the score)."""
SIZE_CLASSES_MM = {"nodule": (3.0, 30.0), "mass": (30.0, 100.0)}
"""Diameter ranges of the size classes (Fleischner Society glossary: a nodule is up to 3 cm, a mass larger)."""
MR_FULL_CONTRAST = 0.3
"""MR intensity term: 1 for a blob this much brighter than a 3 mm ring around it (0.3: 30 %; 0.6 moved brain1 from rank 1 to 2), less below."""
MIN_DIAMETER_FRACTION = 0.3
"""Blobs narrower than this share of the expected size are not candidates."""


@dataclass(frozen=True)
class LesionQuery:
    """What the report says to look for: side ('left', 'right' or None), lobe or region words, size in mm,
    size class ('nodule', 'mass' or None), and the knowledge base's HU range for CT (empty when unknown)."""

    structure: str
    side: str | None = None
    lobe: str | None = None
    size_mm: float | None = None
    size_class: str | None = None
    hu_ranges: tuple[tuple[float, float], ...] = ()

    @property
    def expected_mm(self) -> float:
        """The reported size, else the middle of the size class's range, else DEFAULT_SIZE_MM."""
        if self.size_mm:
            return self.size_mm
        if self.size_class in SIZE_CLASSES_MM:
            return float(np.mean(SIZE_CLASSES_MM[self.size_class]))
        return DEFAULT_SIZE_MM

    def size_term(self, diameter_mm: float) -> float | None:
        """How well a diameter fits the reported size (log-normal, SIZE_TOLERANCE) or the size class's range
        (1 inside, log-normal fall-off outside); None when the report says neither."""
        if self.size_mm:
            return float(np.exp(-np.log(diameter_mm / self.size_mm) ** 2 / (2 * SIZE_TOLERANCE ** 2)))
        if self.size_class not in SIZE_CLASSES_MM:
            return None
        low, high = SIZE_CLASSES_MM[self.size_class]
        outside = np.log(low / diameter_mm) if diameter_mm < low else np.log(diameter_mm / high) if diameter_mm > high else 0.0
        return float(np.exp(-outside ** 2 / (2 * SIZE_TOLERANCE ** 2)))


@dataclass(frozen=True)
class Candidate:
    """One blob: mask (I, J, K) bool on the region's working grid; score in (0, 1]; reason, one line;
    terms: each score term; diameter_mm / volume_ml as measured on the working grid; whole_region: the
    candidate is a whole localised structure (an organ, a spine segment), not a blob inside one."""

    mask: np.ndarray
    score: float
    reason: str
    diameter_mm: float
    volume_ml: float
    terms: dict[str, float] = field(default_factory=dict)
    whole_region: bool = False

    def centre_ijk(self, region: Region) -> tuple[int, int, int]:
        """The candidate's centre of mass as a voxel of the volume's own grid."""
        centre = np.argwhere(self.mask).mean(axis=0)
        factors = np.asarray(region.grid.factors)
        return tuple(int(v) for v in np.minimum(centre * factors + (factors - 1) / 2,
                                                np.asarray(region.grid.fine.shape) - 1).round())


def _components(mask: np.ndarray, query: LesionQuery, spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Bool masks of the 3D components at least MIN_DIAMETER_FRACTION of the expected size wide."""
    labels = label(mask, connectivity=3)
    found = []
    for blob in regionprops(labels):
        extent = [(s.stop - s.start) * d for s, d in zip(blob.slice, spacing)]
        if max(extent[:2]) >= MIN_DIAMETER_FRACTION * query.expected_mm:
            found.append(labels == blob.label)
    return found


def ct_lung_candidates(hu: np.ndarray, region: Region, query: LesionQuery) -> tuple[list[np.ndarray], np.ndarray]:
    """Solid blobs in a lung region, and the (I, J, K) labels of the solid components before opening (the
    hosts whose size the isolation term compares a blob with)."""
    spacing = region.grid.geometry.spacing
    solid = region.mask & (hu > SOLID_HU)
    opened = open_mm(solid, float(np.clip(query.expected_mm / 5.0, 1.5, 6.0)), spacing)
    return _components(opened, query, spacing), label(solid, connectivity=3)


def mr_asymmetry_candidates(image: np.ndarray, mirrored: np.ndarray, region: Region,
                            query: LesionQuery) -> list[np.ndarray]:
    """Blobs of the region brighter than their mirror image and than the region's median."""
    spacing = region.grid.geometry.spacing
    sigma = [1.5 / spacing[0], 1.5 / spacing[1], 0.0]
    difference = ndi.gaussian_filter(image, sigma) - ndi.gaussian_filter(mirrored, sigma)
    values = difference[region.mask]
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre))) or 1.0
    bright = region.mask & (difference > centre + ASYMMETRY_MADS * spread) & (image > np.median(image[region.mask]))
    opened = open_mm(bright, float(np.clip(query.expected_mm / 4.0, 1.5, 6.0)), spacing)
    return _components(opened, query, spacing)


def mr_bright_candidates(image: np.ndarray, region: Region, query: LesionQuery) -> list[np.ndarray]:
    """Blobs of the region's brightest BRIGHT_PERCENTILE voxels."""
    spacing = region.grid.geometry.spacing
    bright = region.mask & (image > np.percentile(image[region.mask], BRIGHT_PERCENTILE))
    opened = open_mm(bright, float(np.clip(query.expected_mm / 4.0, 1.5, 6.0)), spacing)
    return _components(opened, query, spacing)


def score_terms(blob: np.ndarray, image: np.ndarray, region: Region, query: LesionQuery, modality: str,
                lobe: np.ndarray | None = None, host: np.ndarray | None = None) -> tuple[dict[str, float], float, float]:
    """({term: value in (0, 1]}, longest axial diameter mm, volume mL) of one blob."""
    geometry = region.grid.geometry
    spacing = geometry.spacing
    measured = measure_lesion(blob, geometry)
    diameter, volume = measured.longest_axial_diameter_mm, measured.volume_ml
    terms: dict[str, float] = {}
    size = query.size_term(diameter)
    if size is not None:
        terms["size"] = size
    box = [s.stop - s.start for s in ndi.find_objects(blob.astype(np.uint8))[0]]
    slice_mm = spacing[measured.axial_axis]
    terms["extent"] = float(min(1.0, (box[measured.axial_axis] * slice_mm + slice_mm) / max(diameter, 1e-6)))
    terms["compactness"] = float(min(1.0, blob.sum() / (np.pi / 6 * np.prod(box)) / 0.5))
    if host is not None:
        hosts = host[blob]
        tree = np.count_nonzero(host == np.bincount(hosts[hosts > 0]).argmax()) if hosts.any() else blob.sum()
        terms["isolation"] = float(np.clip(blob.sum() / tree / 0.25, 0.05, 1.0))
    if lobe is not None:
        terms["lobe"] = 0.5 + 0.5 * float(lobe[blob].mean())
    values = image[blob]
    if modality == "ct" and query.hu_ranges:
        inside = np.zeros(values.shape, bool)
        for low, high in query.hu_ranges:
            inside |= (values >= low) & (values <= high)
        terms["intensity"] = 0.5 + 0.5 * float(inside.mean())
    elif modality == "mr":
        ring = dilate_mm(blob, 3.0, spacing) & ~blob & region.mask
        around = float(image[ring].mean()) if ring.any() else float(np.median(image[region.mask]))
        contrast = (float(values.mean()) - around) / max(abs(around), 1e-6)
        terms["intensity"] = float(np.clip(contrast / MR_FULL_CONTRAST, 0.05, 1.0))
    return terms, diameter, volume


def _reason(query: LesionQuery, region: Region, diameter: float, terms: dict[str, float], modality: str) -> str:
    kind = "solid" if modality == "ct" else "bright"
    text = f"{kind} {diameter:.0f} mm blob in the {region.name}"
    if query.lobe and "lobe" in terms:
        text += f" ({'in' if terms['lobe'] > 0.75 else 'partly in' if terms['lobe'] > 0.55 else 'outside'} "
        text += f"the {query.lobe} by position)"
    if query.size_mm:
        text += f", {'matches' if terms['size'] > 0.6 else 'reported'} {query.size_mm:g} mm"
    elif "size" in terms:
        low, high = SIZE_CLASSES_MM[query.size_class]
        text += f", {'fits' if terms['size'] > 0.6 else 'outside'} a {query.size_class}'s {low:g}-{high:g} mm"
    weak = [name for name, value in terms.items() if value < 0.5 and name not in ("size", "lobe")]
    if weak:
        text += f"; weak on {', '.join(weak)}"
    return text


def rank_candidates(blobs: list[np.ndarray], image: np.ndarray, region: Region, query: LesionQuery, modality: str,
                    lobe: np.ndarray | None = None, host: np.ndarray | None = None) -> list[Candidate]:
    """Candidates of `blobs`, best score first."""
    found = []
    for blob in blobs:
        terms, diameter, volume = score_terms(blob, image, region, query, modality, lobe, host)
        score = float(np.prod(list(terms.values())))
        found.append(Candidate(blob, score, _reason(query, region, diameter, terms, modality), diameter, volume, terms))
    return sorted(found, key=lambda c: -c.score)

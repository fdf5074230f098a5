"""Segmentations as named binary masks, read from and written to 3D Slicer ``.seg.nrrd`` files."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nrrd
import numpy as np
import slicerio

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.atomic import atomic_output
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.io.terminology import default_color, standard_terminology

__all__ = ["SEGMENTATION_SUFFIX", "Segment", "Segmentation", "read_segmentation", "write_segmentation"]

SEGMENTATION_SUFFIX = ".seg.nrrd"


@dataclass
class Segment:
    """One structure: a boolean (I, J, K) mask with a name, an RGB colour in 0..1, a terminology and tags
    (free key-value text kept in the .seg.nrrd, e.g. a lesion's measurements; keys without ':' or '|').

    A missing colour becomes :func:`default_color` of the name and a missing terminology the
    :func:`standard_terminology` of the name (None when the name is not a standard structure).
    """

    name: str
    mask: np.ndarray
    color: tuple[float, float, float] | None = None
    terminology: dict | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        for key, value in self.tags.items():
            if not key or set(key) & {":", "|"} or "|" in str(value):
                raise InputError(f"Segment {self.name!r} has tag {key!r}: {value!r}; expected a key without ':' "
                                 "or '|' and a value without '|'")
        if self.color is None:
            self.color = default_color(self.name)
        self.color = tuple(float(c) for c in self.color)
        if len(self.color) != 3 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise InputError(f"Segment {self.name!r} has colour {self.color}; expected 3 values in 0..1")
        if self.terminology is None:
            self.terminology = standard_terminology(self.name)
        elif not {"category", "type"} <= self.terminology.keys():
            raise InputError(
                f"Segment {self.name!r} has terminology {self.terminology}; "
                "expected at least 'category' and 'type' codes"
            )


@dataclass
class Segmentation:
    """Segments on one voxel grid; names are unique ignoring case. ``path`` is the source file, if any."""

    geometry: Geometry
    segments: list[Segment] = field(default_factory=list)
    path: str | None = None

    def _source(self) -> str:
        return self.path or "segmentation"

    def names(self) -> list[str]:
        """Segment names in order."""
        return [segment.name for segment in self.segments]

    def find(self, name: str) -> Segment | None:
        """The segment called ``name`` ignoring case, or None."""
        key = name.strip().casefold()
        return next((s for s in self.segments if s.name.strip().casefold() == key), None)

    def get(self, name: str) -> Segment:
        """The segment called ``name`` ignoring case; InputError naming the available ones otherwise."""
        segment = self.find(name)
        if segment is not None:
            return segment
        by_key = {n.casefold(): n for n in self.names()}
        close = difflib.get_close_matches(name.casefold(), list(by_key), n=1, cutoff=0.5)
        hint = f"; closest match: {by_key[close[0]]!r}" if close else ""
        raise InputError(
            f"No segment named {name!r} in {self._source()}; "
            f"available: {', '.join(repr(n) for n in self.names()) or 'none'}{hint}"
        )

    def add(self, segment: Segment, replace: bool = False) -> None:
        """Append ``segment``; a segment of the same name (ignoring case) is an error unless ``replace``."""
        self._check(segment)
        existing = self.find(segment.name)
        if existing is None:
            self.segments.append(segment)
        elif replace:
            self.segments[self.segments.index(existing)] = segment
        else:
            raise InputError(
                f"{self._source()} already has a segment named {existing.name!r}; "
                "pass replace=True to replace it"
            )

    def _check(self, segment: Segment) -> None:
        if not segment.name.strip():
            raise InputError(f"{self._source()} has a segment with an empty name; expected a name")
        if segment.mask.shape != self.geometry.shape:
            raise InputError(
                f"Segment {segment.name!r} of {self._source()} has mask shape {segment.mask.shape}; "
                f"expected the geometry's shape {self.geometry.shape}"
            )

    def validate(self) -> None:
        """InputError unless every segment has a name, the geometry's shape and a unique name."""
        seen: set[str] = set()
        for segment in self.segments:
            self._check(segment)
            key = segment.name.strip().casefold()
            if key in seen:
                raise InputError(
                    f"{self._source()} has more than one segment named {segment.name!r}; "
                    "expected unique names"
                )
            seen.add(key)


def read_segmentation(path: str | os.PathLike[str]) -> Segmentation:
    """Read a 3D Slicer segmentation (``.seg.nrrd``), overlapping segments (several layers) included.

    Masks are full-size on the file's voxel grid. Slicer may store a segmentation cropped to part of
    its reference image (``Segmentation_ReferenceImageExtentOffset`` not zero): the masks and the
    geometry are then those of the stored, cropped grid, whose origin places every voxel correctly in
    LPS; such a segmentation does not ``match`` the reference volume's geometry and must be resampled
    or padded onto it by the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Segmentation not found: {path}; expected an existing {SEGMENTATION_SUFFIX} file")
    try:
        data = slicerio.read_segmentation(str(path))
        if not data.get("segments") and "masterRepresentation" not in data:
            raise ValueError("no segmentation fields in the header")
        geometry = Geometry.from_ijk_to_lps(data["ijkToLPS"], data["voxels"].shape[-3:])
        segments = [
            Segment(
                name=entry.get("name", entry["id"]),
                mask=slicerio.segment_mask(data, entry),
                color=entry.get("color"),
                terminology=entry.get("terminology"),
                tags=dict(entry.get("tags", {})),
            )
            for entry in data["segments"]
        ]
    except (OSError, ImportError, ValueError, KeyError, IndexError, nrrd.NRRDError) as error:
        raise InputError(
            f"Cannot read {path} as a segmentation ({error}); expected a 3D Slicer {SEGMENTATION_SUFFIX} file"
        ) from error
    segmentation = Segmentation(geometry, segments, str(path))
    segmentation.validate()
    return segmentation


def write_segmentation(path: str | os.PathLike[str], segmentation: Segmentation) -> None:
    """Write ``segmentation`` atomically as a 3D Slicer ``.seg.nrrd``.

    Segments that do not overlap share a layer; overlapping ones go to further layers, as Slicer
    stores them. Names, colours, terminology and tags are written; the grid is exactly ``geometry``.
    """
    path = Path(path)
    if not path.name.lower().endswith(SEGMENTATION_SUFFIX):
        raise InputError(f"Cannot write segmentation to {path}: expected a {SEGMENTATION_SUFFIX} file name")
    segmentation.validate()
    shape = segmentation.geometry.shape
    data = slicerio.create_segmentation(shape, segmentation.geometry.ijk_to_lps())
    data["containedRepresentationNames"] = ["Binary labelmap"]
    # Every segment gets the full extent, as Slicer writes them: some Slicer versions crop all
    # segments of a layer to the extent of the layer's first segment.
    full_extent = [0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1]
    for index, segment in enumerate(segmentation.segments):
        fields = {
            "id": f"Segment_{index + 1}",
            "name": segment.name,
            "nameAutoGenerated": False,
            "color": list(segment.color),
            "colorAutoGenerated": False,
        }
        if segment.terminology is not None:
            fields["terminology"] = segment.terminology
        if segment.tags:
            fields["tags"] = {key: str(value) for key, value in segment.tags.items()}
        slicerio.add_segment(data, segment.mask, fields)["extent"] = full_extent
    with atomic_output(path) as temporary:
        slicerio.write_segmentation(str(temporary), data)

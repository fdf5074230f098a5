"""What the store hands back: cases, label versions with provenance, training rows, verify reports."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from MedSegAdaptLib.io import Geometry

__all__ = ["KINDS", "REVIEWED_KINDS", "Case", "LabelVersion", "Review", "TrainingRow", "VerifyReport"]

#: Label kinds. Predictions come from a model; the others are what the model may learn from.
KINDS = ("prediction", "correction", "pseudo-label", "synthetic")
#: Kinds that enter 'pending' and count for training only once a reviewer accepts them.
REVIEWED_KINDS = ("pseudo-label", "synthetic")


@dataclass(frozen=True)
class Case:
    """One image in the store."""

    case_id: str
    image: Path
    modality: str | None
    geometry: Geometry
    image_sha256: str
    voxel_sha256: str
    source: str
    added_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row, root: Path) -> Case:
        return cls(
            case_id=row["case_id"],
            image=root / row["image_file"],
            modality=row["modality"],
            geometry=Geometry(**json.loads(row["geometry"])),
            image_sha256=row["image_sha256"],
            voxel_sha256=row["voxel_sha256"],
            source=row["source"],
            added_at=row["added_at"],
        )


@dataclass(frozen=True)
class Review:
    """One review decision ('accepted' or 'rejected') on a pseudo-label or synthetic label."""

    decision: str
    reviewer: str
    time: str
    comment: str | None


@dataclass(frozen=True)
class LabelVersion:
    """One version of one structure's label on one case, with its provenance and reviews.

    ``review_status`` is 'pending', 'accepted' or 'rejected' (the latest review) for pseudo-labels
    and synthetic labels, None for predictions and corrections (which are never reviewed).
    ``annotated_slices`` is ``{"k": [12, 30]}`` for a partial annotation, None for the whole
    volume. ``diff`` compares the label with the latest prediction of the same structure at the
    time of submission (None when there was no prediction).
    """

    label_id: int
    case_id: str
    structure: str
    version: int
    kind: str
    file: Path
    file_sha256: str
    voxels: int
    annotator: str | None
    time: str
    checkpoint_sha256: str | None
    source: str
    comment: str | None
    annotated_slices: dict[str, list[int]] | None
    diff: dict | None
    reviews: tuple[Review, ...] = field(default=())

    @property
    def review_status(self) -> str | None:
        if self.kind not in REVIEWED_KINDS:
            return None
        return self.reviews[-1].decision if self.reviews else "pending"

    @property
    def trains(self) -> bool:
        """True when this version may be a training label: a correction or an accepted review."""
        return self.kind == "correction" or self.review_status == "accepted"

    @classmethod
    def from_row(cls, row: sqlite3.Row, root: Path, reviews: tuple[Review, ...]) -> LabelVersion:
        return cls(
            label_id=row["label_id"],
            case_id=row["case_id"],
            structure=row["structure"],
            version=row["version"],
            kind=row["kind"],
            file=root / row["file"],
            file_sha256=row["file_sha256"],
            voxels=row["voxels"],
            annotator=row["annotator"],
            time=row["time"],
            checkpoint_sha256=row["checkpoint_sha256"],
            source=row["source"],
            comment=row["comment"],
            annotated_slices=json.loads(row["annotated_slices"]) if row["annotated_slices"] else None,
            diff=json.loads(row["diff"]) if row["diff"] else None,
            reviews=reviews,
        )

    def to_dict(self) -> dict:
        """JSON-ready dict (paths as strings) including ``review_status``."""
        values = asdict(self)
        values["file"] = str(self.file)
        values["reviews"] = [asdict(review) for review in self.reviews]
        values["review_status"] = self.review_status
        return values


@dataclass(frozen=True)
class TrainingRow:
    """One entry of the training view: the latest trainable label of one case and structure."""

    case_id: str
    structure: str
    label_version: int
    kind: str
    image: Path
    label: Path
    modality: str | None
    annotated_slices: dict[str, list[int]] | None
    label_sha256: str
    image_sha256: str

    def datalist_entry(self) -> dict:
        """The MONAI-style datalist entry (absolute paths)."""
        return {
            "image": str(self.image),
            "label": str(self.label),
            "case_id": self.case_id,
            "structure": self.structure,
            "label_version": self.label_version,
            "kind": self.kind,
            "modality": self.modality,
            "annotated_slices": self.annotated_slices,
        }


@dataclass
class VerifyReport:
    """Outcome of :meth:`FineTuningStore.verify`.

    ``problems`` are inconsistencies (missing or changed files, a damaged manifest): the store is
    not sound. ``leftovers`` are files the manifest does not reference, left by an interrupted
    write (a temporary file, or a complete file whose manifest row never committed): harmless, and
    removed by ``repair`` when there are no problems (then listed in ``removed``).
    """

    checked_files: int = 0
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

"""The fine-tuning store: cases, versioned labels with provenance, review, verify and export.

Guarantees:

- Nothing is overwritten: every label version is its own file (the name carries the structure, the
  version and a random token) and manifest rows are only ever added.
- A write holds the manifest's write lock (``BEGIN IMMEDIATE``) while it writes its files
  atomically (temporary name, fsync, rename, folder fsync) and inserts their rows; the commit comes
  last. A crash at any instant therefore leaves either the whole operation or none of it in the
  manifest, plus at most some unreferenced files that :meth:`FineTuningStore.verify` reports as
  harmless leftovers (and removes with ``repair=True``).
- Writers in several processes queue on the lock (SQLite busy timeout), so none of them is lost.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.errors import InputError, unknown_name
from MedSegAdaptLib.core.hashing import sha256_file
from MedSegAdaptLib.io import (
    Segmentation,
    Volume,
    atomic_output,
    read_segmentation,
    read_volume,
    volume_from_array,
    write_volume,
)
from MedSegAdaptLib.io.modality import detect_modality
from MedSegAdaptLib.store import layout
from MedSegAdaptLib.store.diff import label_diff
from MedSegAdaptLib.store.manifest import (
    open_manifest,
    read_transaction,
    write_transaction,
)
from MedSegAdaptLib.store.records import (
    KINDS,
    REVIEWED_KINDS,
    Case,
    LabelVersion,
    Review,
    TrainingRow,
    VerifyReport,
)
from MedSegAdaptLib.store.slices import check_slices
from MedSegAdaptLib.store.validation import (
    binary_mask,
    case_id_from_path,
    check_case_id,
    check_geometry,
    check_label_values,
    check_modality,
    check_name,
    check_sha256,
)
from MedSegAdaptLib.store.verify import verify_store

__all__ = ["FineTuningStore"]

PathLike = str | os.PathLike[str]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _voxel_sha256(volume: Volume) -> str:
    """SHA-256 of the voxel values and shape, independent of the file's voxel type.

    Unlike ``Volume.checksum`` it leaves out the geometry, which is compared with a tolerance
    instead: a NRRD or NIfTI round trip changes the last digits of spacing and origin.
    """
    wide = np.int64 if np.issubdtype(volume.array.dtype, np.integer) else np.float64
    digest = hashlib.sha256(np.ascontiguousarray(volume.array, dtype=wide).data)
    digest.update(repr(volume.array.shape).encode())
    return digest.hexdigest()


class FineTuningStore:
    """A fine-tuning set in a folder: a SQLite manifest plus compressed NRRD images and labels.

    Open an existing store with ``FineTuningStore(path)`` and make one with
    :meth:`FineTuningStore.init`. One object per thread; any number of processes may share a store.
    """

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root).absolute()
        manifest = self.root / layout.MANIFEST_NAME
        if not manifest.is_file():
            raise InputError(
                f"{self.root} is not a MedSegAdapt fine-tuning store (no {layout.MANIFEST_NAME}); "
                "expected a folder made by `medsegadapt store init`"
            )
        self._db = open_manifest(manifest)

    @classmethod
    def init(cls, root: PathLike) -> FineTuningStore:
        """Create a store in ``root`` (missing or empty folder); an existing store is just opened."""
        root = Path(root).absolute()
        manifest = root / layout.MANIFEST_NAME
        if root.exists() and not root.is_dir():
            raise InputError(f"Cannot create a store at {root}: it is a file; expected a folder")
        if root.is_dir() and not manifest.exists() and any(root.iterdir()):
            raise InputError(
                f"Cannot create a store in {root}: the folder is not empty and not a store; "
                "expected a new or empty folder"
            )
        for folder in (root / layout.IMAGES, root / layout.LABELS):
            layout.make_dir(folder)
        open_manifest(manifest, create=True).close()
        return cls(root)

    def close(self) -> None:
        """Close the manifest connection."""
        self._db.close()

    def __enter__(self) -> FineTuningStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- cases -----------------------------------------------------------------------------------

    def add_image(
        self, image: PathLike | Volume, case_id: str | None = None, modality: str | None = None
    ) -> tuple[Case, bool]:
        """Copy an image into the store as a new case; returns ``(case, created)``.

        The same image (voxel values and geometry, in any file format) added again is recognised:
        the existing case is returned with ``created`` False. ``case_id`` defaults to the file name
        without extension, ``modality`` ('ct' or 'mr') to the file's DICOM modality when it has one,
        else to what the intensities say (io.modality.detect_modality).
        """
        volume = image if isinstance(image, Volume) else read_volume(image)
        if case_id is None:
            if volume.path is None:
                raise InputError("An in-memory image needs a case id; expected case_id='...'")
            case_id = case_id_from_path(Path(volume.path))
        case_id = check_case_id(case_id)
        modality = check_modality(modality) or detect_modality(volume.array, volume.modality_hint)[0]
        voxels = _voxel_sha256(volume)
        with write_transaction(self._db):
            for row in self._db.execute("SELECT * FROM cases WHERE voxel_sha256 = ?", (voxels,)).fetchall():
                same = Case.from_row(row, self.root)
                if same.geometry.matches(volume.geometry):
                    return same, False
            taken = self._db.execute("SELECT case_id FROM cases WHERE case_id = ?", (case_id,)).fetchone()
            if taken is not None:
                raise InputError(
                    f"Case id {taken[0]!r} is already used in {self.root} by a different image; "
                    "expected a new case id (--case-id)"
                )
            relative = layout.image_file(case_id)
            write_volume(self.root / relative, volume)
            self._db.execute(
                "INSERT INTO cases (case_id, image_file, image_sha256, voxel_sha256, modality, "
                "geometry, source, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    case_id,
                    relative,
                    sha256_file(self.root / relative),
                    voxels,
                    modality,
                    json.dumps(dataclasses.asdict(volume.geometry)),
                    volume.path or "array",
                    _now(),
                ),
            )
        return self.case(case_id), True

    def case(self, case_id: str) -> Case:
        """The case ``case_id`` (any case of letters); InputError naming the known cases otherwise."""
        row = self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self._db.execute("SELECT case_id FROM cases ORDER BY case_id")]
            raise unknown_name("case", case_id, known, str(self.root))
        return Case.from_row(row, self.root)

    def cases(self) -> list[Case]:
        """All cases, by case id."""
        rows = self._db.execute("SELECT * FROM cases ORDER BY case_id").fetchall()
        return [Case.from_row(row, self.root) for row in rows]

    # --- adding labels ---------------------------------------------------------------------------

    def add_prediction(
        self,
        case_id: str,
        prediction: PathLike | Segmentation,
        checkpoint_sha256: str | None = None,
        structures: Iterable[str] | None = None,
    ) -> list[LabelVersion]:
        """Store a model's segmentation (every segment, or those named) as prediction versions."""
        case = self.case(case_id)
        masks, source = self._segments(case, prediction, structures)
        return self._add_labels(
            case,
            masks,
            kind="prediction",
            annotator=None,
            source=source,
            slices=None,
            comment=None,
            checkpoint_sha256=check_sha256(checkpoint_sha256),
        )

    def submit_segmentation(
        self,
        case_id: str,
        segmentation: PathLike | Segmentation,
        annotator: str,
        structures: Iterable[str] | None = None,
        annotated_slices: Mapping[str, Iterable[int]] | None = None,
        kind: str = "correction",
        comment: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> list[LabelVersion]:
        """Submit the segments of a ``.seg.nrrd`` (every one, or those named) as new versions, all or none.

        ``annotated_slices`` (``{"k": [12, 30]}``) marks a partial annotation; None means the
        whole volume was annotated. ``kind`` is 'correction' (counts for training at once),
        'pseudo-label' or 'synthetic' (enter the review queue as pending).
        """
        case = self.case(case_id)
        masks, source = self._segments(case, segmentation, structures)
        return self._submit(
            case, masks, annotator, source, annotated_slices, kind, comment, checkpoint_sha256
        )

    def submit_mask(
        self,
        case_id: str,
        structure: str,
        mask: np.ndarray | Volume,
        annotator: str,
        annotated_slices: Mapping[str, Iterable[int]] | None = None,
        kind: str = "correction",
        comment: str | None = None,
        checkpoint_sha256: str | None = None,
        source: str | None = None,
    ) -> LabelVersion:
        """Submit one structure's label as a 0/1 or bool (I, J, K) array, or a label Volume.

        A Volume's geometry must match the case image; an array must have its shape.
        """
        case = self.case(case_id)
        structure = check_name(structure, "Structure name")
        what = f"label for {structure!r}"
        if isinstance(mask, Volume):
            what = mask.path or what
            check_geometry(mask.geometry, case.geometry, what, case.case_id)
            source = source or mask.path
            mask = mask.array
        masks = [(structure, binary_mask(mask, case.geometry.shape, what))]
        return self._submit(
            case, masks, annotator, source or "array", annotated_slices, kind, comment, checkpoint_sha256
        )[0]

    def revert(
        self, case_id: str, structure: str, version: int, annotator: str, comment: str | None = None
    ) -> LabelVersion:
        """Make version ``version``'s label the latest again, as a new correction version.

        A revert is an expert's decision, so the new version is a correction (it counts for
        training) whatever the kind of the version it copies; its annotated slices are copied.
        """
        history = self.history(case_id, structure)
        old = next((label for label in history if label.version == version), None)
        if old is None:
            versions = ", ".join(str(label.version) for label in history)
            raise InputError(
                f"Case {history[0].case_id!r} has no version {version} of {history[0].structure!r}; "
                f"expected one of {versions}"
            )
        mask = read_volume(old.file).array != 0
        case = self.case(case_id)
        return self._submit(
            case,
            [(old.structure, mask)],
            annotator,
            f"revert to version {version}",
            old.annotated_slices,
            "correction",
            comment,
            None,
        )[0]

    def _segments(
        self, case: Case, segmentation: PathLike | Segmentation, structures: Iterable[str] | None
    ) -> tuple[list[tuple[str, np.ndarray]], str]:
        """The chosen segments' masks of a segmentation on the case's grid, and its source text."""
        if not isinstance(segmentation, Segmentation):
            path = Path(segmentation)
            segmentation = read_segmentation(path)
            check_label_values(path)
        source = segmentation.path or "segmentation"
        check_geometry(segmentation.geometry, case.geometry, source, case.case_id)
        if structures is None:
            chosen = list(segmentation.segments)
        else:
            named = (segmentation.get(name) for name in structures)
            chosen = list({segment.name: segment for segment in named}.values())
        if not chosen:
            raise InputError(f"{source} has no segments; expected at least one segment to store")
        return [(segment.name, segment.mask) for segment in chosen], source

    def _submit(
        self,
        case: Case,
        masks: list[tuple[str, np.ndarray]],
        annotator: str,
        source: str,
        annotated_slices: Mapping[str, Iterable[int]] | None,
        kind: str,
        comment: str | None,
        checkpoint_sha256: str | None,
    ) -> list[LabelVersion]:
        if kind not in KINDS or kind == "prediction":
            raise InputError(
                f"Label kind {kind!r} cannot be submitted; expected correction, pseudo-label or "
                "synthetic (predictions go through add_prediction)"
            )
        return self._add_labels(
            case,
            masks,
            kind=kind,
            annotator=check_name(annotator, "Annotator"),
            source=source,
            slices=check_slices(annotated_slices, case.geometry.shape),
            comment=(comment or "").strip() or None,
            checkpoint_sha256=check_sha256(checkpoint_sha256),
        )

    def _latest_prediction(self, case_id: str, structure: str) -> sqlite3.Row | None:
        return self._db.execute(
            "SELECT file, version FROM label_rows WHERE case_id = ? AND structure = ? "
            "AND kind = 'prediction' ORDER BY version DESC LIMIT 1",
            (case_id, structure),
        ).fetchone()

    def _add_labels(
        self,
        case: Case,
        masks: list[tuple[str, np.ndarray]],
        kind: str,
        annotator: str | None,
        source: str,
        slices: dict[str, list[int]] | None,
        comment: str | None,
        checkpoint_sha256: str | None,
    ) -> list[LabelVersion]:
        """Write one new version per (structure, mask) and commit them together."""
        time = _now()
        diffs = []
        for structure, mask in masks:
            prediction = None if kind == "prediction" else self._latest_prediction(case.case_id, structure)
            diffs.append(
                None
                if prediction is None
                else label_diff(
                    mask,
                    read_volume(self.root / prediction["file"]).array != 0,
                    prediction["version"],
                    slices,
                )
            )
        label_ids = []
        with write_transaction(self._db):
            for (structure, mask), diff in zip(masks, diffs, strict=True):
                structure_id = self._structure_id(structure)
                version = (
                    1
                    + self._db.execute(
                        "SELECT coalesce(max(version), 0) FROM labels WHERE case_id = ? AND structure_id = ?",
                        (case.case_id, structure_id),
                    ).fetchone()[0]
                )
                relative = layout.label_file(case.case_id, structure, version)
                path = self.root / relative
                layout.make_dir(path.parent)
                write_volume(path, volume_from_array(mask.astype(np.uint8), case.geometry))
                label_id = self._db.execute(
                    "INSERT INTO labels (case_id, structure_id, version, kind, file, file_sha256, "
                    "voxels, annotated_slices, diff) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        case.case_id,
                        structure_id,
                        version,
                        kind,
                        relative,
                        sha256_file(path),
                        int(np.count_nonzero(mask)),
                        json.dumps(slices) if slices else None,
                        json.dumps(diff) if diff else None,
                    ),
                ).lastrowid
                self._db.execute(
                    "INSERT INTO provenance (label_id, annotator, time, checkpoint_sha256, source, "
                    "comment) VALUES (?, ?, ?, ?, ?, ?)",
                    (label_id, annotator, time, checkpoint_sha256, source, comment),
                )
                label_ids.append(label_id)
        return [self.label(label_id) for label_id in label_ids]

    def _structure_id(self, name: str) -> int:
        """Id of structure ``name`` (matched ignoring case), added when new; inside a write transaction."""
        row = self._db.execute("SELECT structure_id FROM structures WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        return self._db.execute("INSERT INTO structures (name) VALUES (?)", (name,)).lastrowid

    # --- reading labels --------------------------------------------------------------------------

    def _labels(self, where: str, parameters: tuple) -> list[LabelVersion]:
        with read_transaction(self._db):
            rows = self._db.execute(
                f"SELECT * FROM label_rows WHERE {where} ORDER BY case_id, structure, version", parameters
            ).fetchall()
            reviews: dict[int, list[Review]] = defaultdict(list)
            for review in self._db.execute(
                "SELECT label_id, decision, reviewer, time, comment FROM reviews WHERE label_id IN "
                f"(SELECT label_id FROM label_rows WHERE {where}) ORDER BY review_id",
                parameters,
            ):
                reviews[review["label_id"]].append(Review(*tuple(review)[1:]))
        return [LabelVersion.from_row(row, self.root, tuple(reviews[row["label_id"]])) for row in rows]

    def label(self, label_id: int) -> LabelVersion:
        """The label version with id ``label_id``."""
        found = self._labels("label_id = ?", (label_id,))
        if not found:
            raise InputError(
                f"No label with id {label_id} in {self.root}; expected an id from the review list"
            )
        return found[0]

    def history(self, case_id: str, structure: str | None = None) -> list[LabelVersion]:
        """Every version of the case's labels (of one structure if given), oldest first per structure."""
        case = self.case(case_id)
        labels = self._labels("case_id = ?", (case.case_id,))
        if structure is None:
            return labels
        chosen = [label for label in labels if label.structure.casefold() == structure.strip().casefold()]
        if not chosen:
            names = sorted({label.structure for label in labels})
            raise unknown_name("structure", structure, names, f"case {case.case_id!r}")
        return chosen

    # --- review ----------------------------------------------------------------------------------

    def review_queue(self, include_reviewed: bool = False) -> list[LabelVersion]:
        """Pseudo-labels and synthetic labels awaiting review (with ``include_reviewed``, all of them)."""
        labels = self._labels(f"kind IN {REVIEWED_KINDS!r}", ())
        return [label for label in labels if include_reviewed or label.review_status == "pending"]

    def review(self, label_id: int, accept: bool, reviewer: str, comment: str | None = None) -> LabelVersion:
        """Accept or reject a pseudo-label or synthetic label; a later decision replaces an earlier one."""
        reviewer = check_name(reviewer, "Reviewer")
        label = self.label(label_id)
        if label.kind not in REVIEWED_KINDS:
            raise InputError(
                f"Label {label_id} is a {label.kind}, which is not reviewed; expected the id of a "
                "pseudo-label or synthetic label (see `store review STORE list`)"
            )
        with write_transaction(self._db):
            self._db.execute(
                "INSERT INTO reviews (label_id, decision, reviewer, time, comment) VALUES (?, ?, ?, ?, ?)",
                (
                    label_id,
                    "accepted" if accept else "rejected",
                    reviewer,
                    _now(),
                    (comment or "").strip() or None,
                ),
            )
        return self.label(label_id)

    # --- training view ---------------------------------------------------------------------------

    def training_view(self) -> list[TrainingRow]:
        """Per case and structure, the latest version that trains (a correction or an accepted review).

        Predictions never train, and neither do pending or rejected pseudo-labels and synthetic
        labels; a newer prediction does not displace an older correction.
        """
        with read_transaction(self._db):
            cases = {case.case_id: case for case in self.cases()}
            labels = self._labels("kind != 'prediction'", ())
        latest: dict[tuple[str, str], LabelVersion] = {}
        for label in labels:  # ordered by version within (case, structure)
            if label.trains:
                latest[(label.case_id, label.structure)] = label
        return [
            TrainingRow(
                case_id=label.case_id,
                structure=label.structure,
                label_version=label.version,
                kind=label.kind,
                image=cases[label.case_id].image,
                label=label.file,
                modality=cases[label.case_id].modality,
                annotated_slices=label.annotated_slices,
                label_sha256=label.file_sha256,
                image_sha256=cases[label.case_id].image_sha256,
            )
            for label in latest.values()
        ]

    @staticmethod
    def _view_version(rows: list[TrainingRow]) -> str:
        content = [
            [r.case_id, r.structure, r.label_version, r.label_sha256, r.image_sha256, r.annotated_slices]
            for r in rows
        ]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def training_set_version(self) -> str:
        """16 hex digits over the training view's rows: changes whenever the training view changes."""
        return self._view_version(self.training_view())

    def export(self, path: PathLike) -> tuple[str, int]:
        """Write the training view as a MONAI-style datalist JSON; returns (training set version, rows).

        ``{"training_set_version": ..., "store": ..., "training": [{"image", "label", "case_id",
        "structure", "label_version", "kind", "modality", "annotated_slices"}, ...]}`` with absolute
        paths; ``annotated_slices`` is null when the whole volume was annotated.
        """
        rows = self.training_view()
        version = self._view_version(rows)
        datalist = {
            "training_set_version": version,
            "store": str(self.root),
            "training": [row.datalist_entry() for row in rows],
        }
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(datalist, indent=2) + "\n", encoding="utf-8")
        return version, len(rows)

    # --- verify ----------------------------------------------------------------------------------

    def verify(self, repair: bool = False) -> VerifyReport:
        """Check the manifest and every file's SHA-256, and find leftovers; see :func:`verify_store`."""
        return verify_store(self._db, self.root, repair)

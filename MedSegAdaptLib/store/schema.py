"""The store manifest's SQLite schema and its migrations.

The schema version is SQLite's ``user_version``. ``MIGRATIONS[n]`` takes a manifest from version
``n`` to ``n + 1``; a new schema change is a new entry at the end, never an edit of an old one.
"""
from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STORE_FORMAT", "migrate", "schema_version"]

#: Value of ``store_info.format``: what marks a SQLite file as a MedSegAdapt fine-tuning store.
STORE_FORMAT = "medsegadapt-fine-tuning-store"

_V1 = (
    """CREATE TABLE store_info (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    f"INSERT INTO store_info (key, value) VALUES ('format', '{STORE_FORMAT}')",
    # One row per image. voxel_sha256 (voxel values) plus a geometry match recognise the same image
    # added twice, whatever its file format; image_sha256 is over the stored file's bytes, for verify.
    """CREATE TABLE cases (
        case_id TEXT PRIMARY KEY COLLATE NOCASE,
        image_file TEXT NOT NULL UNIQUE,
        image_sha256 TEXT NOT NULL,
        voxel_sha256 TEXT NOT NULL,
        modality TEXT CHECK (modality IN ('ct', 'mr')),
        geometry TEXT NOT NULL,
        source TEXT NOT NULL,
        added_at TEXT NOT NULL
    )""",
    "CREATE INDEX cases_by_voxels ON cases (voxel_sha256)",
    """CREATE TABLE structures (
        structure_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE
    )""",
    # Every label version has its own file; rows are never updated or deleted.
    # annotated_slices: JSON {"k": [12, 30]} for a partial annotation, NULL for the whole volume.
    # diff: JSON difference to the prediction it corrects, NULL when there was none.
    """CREATE TABLE labels (
        label_id INTEGER PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases (case_id),
        structure_id INTEGER NOT NULL REFERENCES structures (structure_id),
        version INTEGER NOT NULL CHECK (version >= 1),
        kind TEXT NOT NULL CHECK (kind IN ('prediction', 'correction', 'pseudo-label', 'synthetic')),
        file TEXT NOT NULL UNIQUE,
        file_sha256 TEXT NOT NULL,
        voxels INTEGER NOT NULL,
        annotated_slices TEXT,
        diff TEXT,
        UNIQUE (case_id, structure_id, version)
    )""",
    """CREATE TABLE provenance (
        label_id INTEGER PRIMARY KEY REFERENCES labels (label_id),
        annotator TEXT,
        time TEXT NOT NULL,
        checkpoint_sha256 TEXT,
        source TEXT NOT NULL,
        comment TEXT
    )""",
    # Review decisions on pseudo-labels and synthetic labels, appended (a later decision wins).
    """CREATE TABLE reviews (
        review_id INTEGER PRIMARY KEY,
        label_id INTEGER NOT NULL REFERENCES labels (label_id),
        decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
        reviewer TEXT NOT NULL,
        time TEXT NOT NULL,
        comment TEXT
    )""",
    "CREATE INDEX reviews_by_label ON reviews (label_id, review_id)",
    """CREATE VIEW label_rows AS
        SELECT labels.label_id, labels.case_id, structures.name AS structure, labels.version,
               labels.kind, labels.file, labels.file_sha256, labels.voxels,
               labels.annotated_slices, labels.diff, provenance.annotator, provenance.time,
               provenance.checkpoint_sha256, provenance.source, provenance.comment
        FROM labels
        JOIN structures USING (structure_id)
        JOIN provenance USING (label_id)""",
)

#: Statements per migration step; index n upgrades schema version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)

#: The schema version this code writes and reads.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(connection: sqlite3.Connection) -> int:
    """The manifest's schema version (0 for an empty database)."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def migrate(connection: sqlite3.Connection) -> None:
    """Apply the pending migrations; call inside a write transaction (``user_version`` is transactional)."""
    for version in range(schema_version(connection), SCHEMA_VERSION):
        for statement in MIGRATIONS[version]:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {version + 1}")

"""Checking a store: the manifest, every file's SHA-256, and files the manifest does not reference."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from MedSegAdaptLib.core.hashing import sha256_file
from MedSegAdaptLib.store import layout
from MedSegAdaptLib.store.manifest import write_transaction
from MedSegAdaptLib.store.records import VerifyReport

__all__ = ["verify_store"]


def _manifest_problems(connection: sqlite3.Connection) -> list[str]:
    problems = [
        f"manifest: {message}"
        for (message,) in connection.execute("PRAGMA integrity_check")
        if message != "ok"
    ]
    problems += [
        f"manifest: row {row[1]} of table {row[0]} refers to a missing {row[2]}"
        for row in connection.execute("PRAGMA foreign_key_check")
    ]
    return problems


def _referenced_files(connection: sqlite3.Connection, report: VerifyReport) -> dict[str, tuple[str, str]]:
    """Store-relative path -> (SHA-256, what the file is) for every file the manifest references."""
    files = {
        row["image_file"]: (row["image_sha256"], f"image of case {row['case_id']!r}")
        for row in connection.execute("SELECT case_id, image_file, image_sha256 FROM cases")
    }
    for row in connection.execute(
        "SELECT label_id, case_id, name, version, file, file_sha256, "
        "label_id IN (SELECT label_id FROM provenance) AS has_provenance "
        "FROM labels LEFT JOIN structures USING (structure_id)"
    ):
        what = f"case {row['case_id']!r} {row['name']!r} version {row['version']}"
        files[row["file"]] = (row["file_sha256"], what)
        if not row["has_provenance"]:
            report.problems.append(f"{what}: manifest has no provenance for label {row['label_id']}")
    return files


def verify_store(connection: sqlite3.Connection, root: Path, repair: bool = False) -> VerifyReport:
    """Check the manifest and every file's SHA-256; find files the manifest does not reference.

    Runs under the write lock, so no other writer is between writing a file and committing its
    row: an unreferenced file is a leftover of an interrupted operation, never one in progress.
    ``repair`` removes the leftovers (and empty label folders), but only when no problem was
    found: a damaged manifest is no guide to what is garbage. It cannot restore missing files.
    """
    report = VerifyReport()
    with write_transaction(connection):
        report.problems += _manifest_problems(connection)
        expected = _referenced_files(connection, report)
        for relative, (sha256, what) in sorted(expected.items()):
            path = root / relative
            report.checked_files += 1
            if not path.is_file():
                report.problems.append(f"{what}: file {relative} is missing")
            elif sha256_file(path) != sha256:
                report.problems.append(f"{what}: file {relative} has changed since it was stored")
        report.leftovers = sorted(layout.data_files(root) - expected.keys())
        if repair and report.ok:
            for relative in report.leftovers:
                (root / relative).unlink()
                report.removed.append(relative)
            layout.remove_empty_label_folders(root)
    return report

"""Opening the store's SQLite manifest and running transactions on it.

The manifest runs in WAL mode with ``synchronous = FULL`` (a commit that returned is on disk) and a
busy timeout, so several processes can use one store: every write is a ``BEGIN IMMEDIATE``
transaction, which waits for the write lock instead of failing when another process holds it.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.store.schema import (
    SCHEMA_VERSION,
    STORE_FORMAT,
    migrate,
    schema_version,
)

__all__ = ["BUSY_TIMEOUT_S", "open_manifest", "read_transaction", "write_transaction"]

#: How long a writer waits for another process's write lock before giving up (SQLite busy_timeout).
BUSY_TIMEOUT_S = 60.0


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the body or the commit raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


@contextmanager
def read_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One consistent snapshot for several queries; inside an open transaction, that one."""
    if connection.in_transaction:
        yield
        return
    connection.execute("BEGIN")
    try:
        yield
    finally:
        connection.execute("COMMIT")


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    # timeout sets SQLite's busy_timeout; isolation_level None leaves transactions to us.
    connection = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA synchronous = FULL")
    return connection


def _is_store(connection: sqlite3.Connection) -> bool:
    has_info = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_info'"
    ).fetchone()
    if not has_info:
        return False
    row = connection.execute("SELECT value FROM store_info WHERE key = 'format'").fetchone()
    return row is not None and row[0] == STORE_FORMAT


def _is_empty(connection: sqlite3.Connection) -> bool:
    return connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def _prepare(connection: sqlite3.Connection, store: Path, create: bool) -> None:
    not_a_store = InputError(
        f"{store} is not a MedSegAdapt fine-tuning store (its manifest is not a store manifest); "
        "expected a folder made by `medsegadapt store init`"
    )
    if create:
        connection.execute("PRAGMA journal_mode = WAL")
    version = schema_version(connection)
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{store} has store schema version {version}, newer than this MedSegAdapt reads "
            f"({SCHEMA_VERSION}); expected an upgraded MedSegAdapt"
        )
    if version < SCHEMA_VERSION:
        with write_transaction(connection):
            if not ((create and _is_empty(connection)) or _is_store(connection)):
                raise not_a_store
            migrate(connection)
    if not _is_store(connection):
        raise not_a_store


def open_manifest(path: Path, create: bool = False) -> sqlite3.Connection:
    """Connection to the manifest at ``path``, migrated to :data:`SCHEMA_VERSION`.

    With ``create`` a missing or empty database (an ``init`` interrupted before its commit) is
    created; otherwise ``path`` must be an existing store manifest. InputError for anything else,
    and for a manifest written by a newer MedSegAdapt.
    """
    try:
        connection = _connect(path, "rwc" if create else "rw")
        try:
            _prepare(connection, path.parent, create)
        except BaseException:
            connection.close()
            raise
    except sqlite3.DatabaseError as error:
        raise InputError(
            f"Cannot open {path} as a store manifest ({error}); expected a folder made by "
            "`medsegadapt store init`"
        ) from error
    return connection

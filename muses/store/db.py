"""The store's SQLite file: documents, sentence spans, pooled token spans, their vectors, and store metadata.

SQLite is the source of truth (the FAISS indexes are rebuilt from it): every add, update or delete is one
transaction, in WAL mode, so a process killed at any point leaves the file at its last commit. ``generation`` in
the ``meta`` table increases with every commit, so readers know when their indexes are stale.

Durability: with ``synchronous=NORMAL`` (the default) a commit survives a killed process; a power loss or OS crash
may lose the last commits, and the file stays consistent. ``durable=True`` sets ``synchronous=FULL``: every commit
is fsynced before it returns (slower writes).

A file that SQLite cannot read (corrupt, truncated, not SQLite) raises :class:`~muses.errors.InputError` naming the
file and the fix, through :func:`readable`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from muses.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sentences (
    row INTEGER PRIMARY KEY,
    doc INTEGER NOT NULL REFERENCES documents(row) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sentences_doc ON sentences(doc);
CREATE TABLE IF NOT EXISTS tokens (
    row INTEGER PRIMARY KEY,
    doc INTEGER NOT NULL REFERENCES documents(row) ON DELETE CASCADE,
    sentence INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_doc ON tokens(doc);
"""
TABLES = frozenset({"meta", "documents", "sentences", "tokens"})
"""The tables of :data:`SCHEMA`."""


@contextmanager
def readable(path: Path) -> Iterator[None]:
    """SQLite errors about ``path`` ("not a database", "malformed") as one-line :class:`~muses.errors.InputError`.

    Constraint and programming errors (``IntegrityError``, ``ProgrammingError``) pass through unchanged.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.DatabaseError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise InputError(f"{path} is locked by another process ({e}); try again when it is done.") from None
        raise InputError(
            f"{path} is not a readable SQLite database ({e}): it is corrupt, truncated or another kind of file. "
            "Restore it from a backup, or move it away and build the store again (muses index add)."
        ) from None


def connect(path: Path, readonly: bool = False, durable: bool = False) -> sqlite3.Connection:
    """Open the store's database (WAL mode, foreign keys on). Writers commit explicitly.

    Args:
        readonly: open without creating the schema (for inspecting a file).
        durable: ``synchronous=FULL`` (every commit fsynced) instead of ``NORMAL``; see :func:`set_durable`.
    """
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        with readable(path):
            con.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                con.execute("PRAGMA journal_mode = WAL")
                set_durable(con, durable)
                con.executescript(SCHEMA)
    except BaseException:
        con.close()
        raise
    return con


def set_durable(con: sqlite3.Connection, durable: bool) -> None:
    """``synchronous=FULL`` if ``durable``, else ``NORMAL``.

    In WAL mode, NORMAL keeps every commit across a killed process, but a power loss or OS crash may lose the last
    commits (the file stays consistent); FULL fsyncs the log at every commit, so a commit survives power loss.
    """
    con.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")


def tables(con: sqlite3.Connection) -> set[str]:
    """The names of the database's tables."""
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def get_meta(con: sqlite3.Connection) -> dict[str, Any]:
    """All ``meta`` entries, JSON-decoded."""
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}


def set_meta(con: sqlite3.Connection, **values: Any) -> None:
    """Insert or replace ``meta`` entries (inside the caller's transaction)."""
    con.executemany(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
    )


def generation(con: sqlite3.Connection) -> int:
    """The commit counter (0 for an empty store)."""
    row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(json.loads(row[0])) if row else 0


def to_blob(x: np.ndarray) -> bytes:
    """A float vector as float32 bytes."""
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """``N`` float32 blobs -> ``[N, dim]``."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()

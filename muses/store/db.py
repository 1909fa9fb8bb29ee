"""The store's SQLite file: documents, sentence spans, pooled token spans, their vectors, and store metadata.

SQLite is the source of truth: every add, update or delete is one transaction, in WAL mode, so a process killed at
any point leaves the file at its last commit. ``generation`` in the ``meta`` table increases with every commit, and
the ``changes`` table logs which document rows each commit added (``add``) or removed (``del``), so a process whose
indexes are at an older generation brings them up to date from the log instead of rebuilding them. ``log_start``
is the generation through which the log was pruned (after an index snapshot). Document rows are never reused
(``next_row``), so a row names one document for the life of the store.

Durability: with ``synchronous=NORMAL`` (the default) a commit survives a killed process; a power loss or OS crash
may lose the last commits, and the file stays consistent. ``durable=True`` sets ``synchronous=FULL``: every commit
is fsynced before it returns (slower writes).

A file that SQLite cannot read (corrupt, truncated, not SQLite) raises :class:`~muses.errors.InputError` naming the
file and the fix, through :func:`readable`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
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
CREATE TABLE IF NOT EXISTS changes (gen INTEGER NOT NULL, op TEXT NOT NULL, doc INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_gen ON changes(gen);
"""
TABLES = frozenset({"meta", "documents", "sentences", "tokens", "changes"})
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


def log_start(con: sqlite3.Connection) -> int:
    """The generation through which the change log was pruned: changes of later commits are all in the log."""
    row = con.execute("SELECT value FROM meta WHERE key = 'log_start'").fetchone()
    return int(json.loads(row[0])) if row else 0


def next_row(con: sqlite3.Connection) -> int:
    """A document row never used before in this store (inside the caller's write transaction)."""
    row = con.execute("SELECT value FROM meta WHERE key = 'next_row'").fetchone()
    top = con.execute("SELECT COALESCE(MAX(row), 0) FROM documents").fetchone()[0]
    nxt = max(int(json.loads(row[0])) if row else 1, int(top) + 1)
    set_meta(con, next_row=nxt + 1)
    return nxt


def log_changes(con: sqlite3.Connection, gen: int, ops: list[tuple[str, int]]) -> None:
    """Log commit ``gen``'s ``(op, document row)`` changes (``op``: ``add`` or ``del``)."""
    con.executemany("INSERT INTO changes(gen, op, doc) VALUES (?, ?, ?)", [(gen, op, row) for op, row in ops])


def changes_since(con: sqlite3.Connection, gen: int) -> dict[int, str]:
    """Each document row changed by a commit after ``gen``, with its last operation (``add`` or ``del``)."""
    found = con.execute("SELECT op, doc FROM changes WHERE gen > ? ORDER BY gen, rowid", (gen,))
    return {int(doc): op for op, doc in found}


def prune_log(con: sqlite3.Connection, through: int) -> None:
    """Drop the changes of commits up to ``through`` (an index snapshot covers them); one transaction."""
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("DELETE FROM changes WHERE gen <= ?", (through,))
        set_meta(con, log_start=through)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def in_rows(rows: Iterable[int]) -> str:
    """``rows`` as one JSON parameter, for ``... IN (SELECT value FROM json_each(?))`` (no bound on the count)."""
    return json.dumps([int(r) for r in rows])


TOKEN_DTYPES = ("float32", "int8")


def to_int8(x: np.ndarray) -> np.ndarray:
    """``[..., D]`` -> ``[..., D]`` int8: each vector times ``127 / max|x|``, rounded (a zero vector stays zero).
    Idempotent on its own output read back as float (the peak is 127 already)."""
    x = np.asarray(x, dtype=np.float32)
    peak = np.abs(x).max(axis=-1, keepdims=True, initial=0.0)
    scale = np.divide(127.0, peak, out=np.zeros_like(peak), where=peak > 0)
    return np.round(x * scale).astype(np.int8)


def to_blob(x: np.ndarray, dtype: str = "float32") -> bytes:
    """A vector as float32 bytes, or as int8 (:func:`to_int8`): 4x smaller. The int8 vector's length is lost, which
    cosine scoring does not need (vectors are renormalised when scored)."""
    if dtype == "int8":
        return to_int8(x).tobytes()
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def from_blobs(blobs: list[bytes], dim: int, dtype: str = "float32") -> np.ndarray:
    """``N`` blobs of :func:`to_blob`'s ``dtype`` -> ``[N, dim]`` float32."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    if dtype == "int8":
        return np.frombuffer(b"".join(blobs), dtype=np.int8).reshape(len(blobs), dim).astype(np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()

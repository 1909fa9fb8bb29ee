"""The store's SQLite file: documents, sentence spans, pooled token spans, their vectors, and store metadata.

SQLite is the source of truth (the FAISS indexes are rebuilt from it): every add, update or delete is one
transaction, in WAL mode, so a process killed at any point leaves the file at its last commit. ``generation`` in
the ``meta`` table increases with every commit, so readers know when their indexes are stale.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

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


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the store's database (WAL mode, foreign keys on). Writers commit explicitly."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a killed process
        con.executescript(SCHEMA)
    return con


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

"""A persistent multi-scale memory: add documents once, search them at document, sentence or token scale, zoom.

A store is a folder: ``store.sqlite`` (documents, spans, metadata, vectors, and which model and dim built it)
and ``write.lock``. Vectors are kept at one Matryoshka dim ``D``; searches may use any smaller prefix.

- Writes (add, update, delete) encode outside the lock, then take the folder's file lock and commit one SQLite
  transaction: one writer at a time across processes, any number of readers (WAL), and a process killed mid-add
  leaves every earlier commit intact and nothing half-written. A power loss may lose the last commits (the file
  stays consistent) unless the store is ``durable`` (``StoreConfig(durable=True)``: every commit fsynced).
- FAISS indexes, one per scale (:mod:`muses.store.vectors`), follow every commit incrementally: the writer applies
  its own changes, and another process applies the commits it has not seen from SQLite's change log at its next
  search. They are saved as a snapshot in ``index/`` beside the database once enough has changed (and on
  :meth:`MemoryStore.close`), so opening a large store loads them instead of rebuilding them. The snapshot records
  the commit counter it reflects; one left behind (a writer killed before saving it) is brought up to date from
  the log, and a missing or damaged one is rebuilt from SQLite (:meth:`MemoryStore.rebuild` does it on request).
- Candidates at every scale come from an index: documents and sentences from ANN at ``funnel_dim`` (a small
  Matryoshka prefix; default: the stored dim) rescored exactly at the query's dim; token MaxSim on the documents of
  the best documents, sentences and token vectors. Filters apply inside candidate generation.
- The token scale stores pooled token vectors: the mean of ``token_pool`` consecutive tokens of one sentence, with
  their character span, which bounds memory and still locates the words that match; ``token_dtype="int8"`` stores
  them 4x smaller.

Example::

    store = MemoryStore.create("mem/", MultiScaleEncoder.from_base(), StoreConfig(dim=256))
    store.add([{"id": "a", "text": "Leaves make oxygen. Roots take up water.", "metadata": {"topic": "bio"}}])
    store.search("where is water absorbed?", scale="sentence", k=3)
    store.zoom("where is water absorbed?")          # documents -> sentences -> highlighted words
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from muses.backends import Backend
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError, UnknownIdError
from muses.scoring import fuse, prefix_normalize, segment_max, token_maxsim
from muses.store import db
from muses.store.base import (
    EncodedQuery,
    Hit,
    StoreBase,
    StoreConfig,
    ZoomResult,
    check_conflicts,
    check_task,
    load_recorded_model,
    resolve_model,
)
from muses.store.vectors import INDEX_FOLDER, IndexSet, Layout, ScaleIndex, make_ids, ordinals, owners
from muses.types import Document, MultiScaleEmbedding
from muses.validation import check_id

DB_FILE = "store.sqlite"
LOCK_FILE = "write.lock"
_STORE_FILES = frozenset({DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", LOCK_FILE, INDEX_FOLDER})
EXACT_FILTER_DOCS = 2000
"""A filter matching at most this many documents is scored exactly over their vectors (read from SQLite); a broader
one filters the index's results (over-fetching)."""
TOKEN_CANDIDATES = 32
"""Nearest stored token vectors per query token whose documents join the token and fusion candidates."""
POOL_FUNNEL_DEPTH = 4
"""Funnel candidates per result when the fusion and token pool ranks its top documents and sentences: the pool is
hundreds deep and rescored at every scale anyway, so ``funnel_depth`` (tuned for a top 10) would read thousands of
documents back from SQLite per query."""


@dataclass
class _Rows:
    """Stored vectors of one scale read from SQLite: ``ids`` ``[n]``, ``doc`` ``[n]`` document rows, ``sub`` ``[n]``
    sentence index (sentences: their position), ``spans`` ``[n, 2]``, ``vectors`` ``[n, D]`` float32."""

    ids: np.ndarray
    doc: np.ndarray
    sub: np.ndarray
    spans: np.ndarray
    vectors: np.ndarray


@dataclass
class _Changes:
    """The document rows one write transaction adds and removes, logged with its commit."""

    con: Any
    ops: list[tuple[str, int]] = field(default_factory=list)


def pool_tokens(emb: MultiScaleEmbedding, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool runs of ``size`` consecutive tokens of one sentence: ``([P, D] vectors, [P] sentence, [P, 2] spans)``."""
    assert emb.tokens is not None
    vecs, sents, spans = [], [], []
    for s, (a, b) in enumerate(emb.sentence_token_ranges.tolist()):
        for i in range(a, b, size):
            j = min(i + size, b)
            v = emb.tokens[i:j].mean(axis=0)
            vecs.append(v / max(float(np.linalg.norm(v)), 1e-12))
            sents.append(s)
            spans.append((int(emb.token_offsets[i, 0]), int(emb.token_offsets[j - 1, 1])))
    dim = emb.tokens.shape[1]
    return (
        np.asarray(vecs, dtype=np.float32).reshape(-1, dim),
        np.asarray(sents, dtype=np.int64),
        np.asarray(spans, dtype=np.int64).reshape(-1, 2),
    )


def _best(scores: np.ndarray, ids: np.ndarray, k: int, finite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest ``[n]`` scores and their ``[n]`` ids, best first (ties in id order); ``finite``: drop
    ``-inf``."""
    order = np.lexsort((ids, -scores))[:k]
    if finite:
        order = order[np.isfinite(scores[order])]
    return scores[order].astype(np.float32), ids[order]


class StoreExistsError(InputError):
    """:meth:`MemoryStore.create` found a finished store in the folder (e.g. another process created it first)."""


def _recorded(folder: Path) -> dict[str, Any] | None:
    """The settings recorded in the store in ``folder``, or None when there is none yet: no database, or an
    unfinished creation (a database without settings and without documents, left by a creation that was killed
    before its first commit; :meth:`MemoryStore.create` takes it over).

    Raises:
        InputError: the file is not a readable SQLite database, or not a MuSES store.
    """
    file = folder / DB_FILE
    if not file.exists():
        return None
    if not file.is_file():
        raise InputError(f"{file} is not a file; move it away, or give another folder for the store.")
    con = db.connect(file, readonly=True)
    try:
        with db.readable(file):
            found = db.tables(con)
            foreign = sorted(found - db.TABLES)
            if foreign:
                raise InputError(
                    f"{file} is not a MuSES store (it holds the tables {foreign[:5]}); give another folder for the "
                    "store, or move the file away."
                )
            meta = db.get_meta(con) if "meta" in found else {}
            if "model" in meta:
                return meta
            has_docs = "documents" in found and con.execute("SELECT 1 FROM documents LIMIT 1").fetchone()
    finally:
        con.close()
    if has_docs:
        raise InputError(
            f"{file} holds documents but no recorded model, so it is damaged; restore it from a backup, or move it "
            "away and build the store again."
        )
    return None


def _check_settings(folder: Path, meta: Mapping[str, Any], model: str | None, settings: Mapping[str, Any]) -> None:
    """Refuse ``model`` and ``settings`` (``dim`` and :class:`StoreConfig` fields) that differ from ``meta``'s."""
    recorded = StoreConfig.model_validate(meta["config"]).model_dump()
    recorded["dim"] = meta["dim"]
    recorded["task"] = meta.get("task")
    check_conflicts(folder, recorded, meta["model"], model, settings, "another folder")


class MemoryStore(StoreBase):
    """A multi-scale document memory in a folder. Build with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path, encoder: MultiScaleEncoder, model_name: str) -> None:
        self.path = path
        self.encoder = encoder
        self._con = db.connect(path / DB_FILE)
        with db.readable(path / DB_FILE):
            meta = db.get_meta(self._con)
            self.config = StoreConfig.model_validate(meta["config"])
            db.set_durable(self._con, self.config.durable)
        self.model_name: str = meta["model"]
        self.dim: int = meta["dim"]
        self.fingerprint: str = meta["fingerprint"]
        self.backend: str = meta.get("backend", "torch")
        self.task: str | None = meta.get("task")  # the task adapter the store's vectors were made with
        given = encoder.fingerprint()
        if given != self.fingerprint:
            check_task(path, self.task, encoder)  # the likeliest cause, named first
        if given != self.fingerprint and encoder.backend != self.backend:
            raise ModelError(
                f"store {path} was built with the {self.backend} backend; the model given runs on {encoder.backend}, "
                f"whose weights differ (fingerprint {given}, the store's {self.fingerprint}). Open it with --backend "
                f"{self.backend}, or build a new store with --backend {encoder.backend}."
            )
        if given != self.fingerprint:
            raise ModelError(
                f"store {path} was built with model {self.model_name!r} (fingerprint {self.fingerprint}); the model "
                f"given, {model_name!r}, is another (fingerprint {given}). Its vectors would "
                "not be comparable: open the store with the model that built it, or build a new store."
            )
        self._lock = FileLock(str(path / LOCK_FILE))  # one writer across processes
        self._mutex = threading.RLock()  # one thread at a time on the connection and the in-memory vectors
        self._ix: IndexSet | None = None  # the indexes, at some generation (brought up to date by _sync)

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        encoder: MultiScaleEncoder,
        config: StoreConfig | None = None,
        model: str = "",
        exist_ok: bool = False,
    ) -> MemoryStore:
        """A new, empty store in ``path`` (an empty or missing folder) for ``encoder``.

        Checking the folder and creating the store happen under the folder's file lock, so concurrent creators
        are safe: one creates the store, the others find it. A database left by a creation that was killed
        before its first commit (no settings, no documents) is taken over.

        Args:
            model: how to load the encoder again (a path or name for ``MultiScaleEncoder.from_base``); recorded
                so that :meth:`open` can load it, a local folder as an absolute path.
            exist_ok: if ``path`` already holds a store (another process may have created it first), open it,
                provided it has the same model, dim and config; otherwise an :class:`InputError` names the
                differences. Without ``exist_ok``, an existing store raises :class:`StoreExistsError`.
        """
        folder = Path(path)
        config = config or StoreConfig()
        dim = config.dim or encoder.embed_dim
        if dim not in encoder.dims:
            raise InputError(f"store dim {dim} is not one of the model's Matryoshka dims {encoder.dims}.")
        for name in ("funnel_dim", "token_index_dim"):
            value = getattr(config, name)
            if value is not None and (value not in encoder.dims or value > dim):
                usable = [x for x in encoder.dims if x <= dim]
                raise InputError(f"{name} {value} is not a Matryoshka dim of this store; use one of {usable}.")
        model = resolve_model(model or encoder.base_name)
        cls._check_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / LOCK_FILE)):  # check-and-create in one step: concurrent creators queue here
            meta = _recorded(folder)
            if meta is None:
                cls._initialise(folder, encoder, config, model, dim)
        if meta is None:
            return cls(folder, encoder, model)
        if not exist_ok:
            raise StoreExistsError(f"{folder} already holds a store; open it with MemoryStore.open (or `muses index`).")
        given: dict[str, Any] = {**config.model_dump(exclude={"dim"}), "dim": dim}
        if "task" in meta:  # a store from before tasks were recorded: the fingerprint, checked on open, decides
            given["task"] = encoder.task
        _check_settings(folder, meta, None, given)
        return cls(folder, encoder, meta["model"])  # a model with another fingerprint is refused there

    @staticmethod
    def _check_folder(folder: Path) -> None:
        """Refuse a file, or a folder holding anything but a store's own files."""
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is a file; give a new or empty folder for the store.")
        others = sorted(f.name for f in folder.iterdir() if f.name not in _STORE_FILES) if folder.exists() else []
        if others:
            raise InputError(f"{folder} is not empty (it holds {others[:3]}); give a new folder for the store.")

    @staticmethod
    def _initialise(folder: Path, encoder: MultiScaleEncoder, config: StoreConfig, model: str, dim: int) -> None:
        """Write the store's schema and settings in one commit (the caller holds the folder's lock)."""
        file = folder / DB_FILE
        con = db.connect(file, durable=config.durable)
        try:
            with db.readable(file):
                con.execute("BEGIN IMMEDIATE")
                db.set_meta(
                    con,
                    model=model,
                    fingerprint=encoder.fingerprint(),
                    backend=encoder.backend,
                    task=encoder.task,
                    dim=dim,
                    config=config.model_dump(),
                    generation=0,
                )
                con.execute("COMMIT")
        finally:
            con.close()

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a finished store (False for a missing folder or an unfinished creation).

        Raises:
            InputError: ``path`` holds a database that is corrupt or not a MuSES store.
        """
        return _recorded(Path(path)) is not None

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], encoder: MultiScaleEncoder | None = None, backend: Backend | None = None
    ) -> MemoryStore:
        """Reopen a store; without ``encoder``, load the model recorded in it, on ``backend`` (default: the backend
        that built the store; an fp32 backend may replace another, an int8 one only itself)."""
        folder = Path(path)
        if not (folder / DB_FILE).exists():
            raise InputError(f"{folder} holds no MuSES store ({DB_FILE} is missing); create one first.")
        meta = _recorded(folder)
        if meta is None:
            raise InputError(
                f"{folder / DB_FILE} holds no finished store: its creation was interrupted before the first commit. "
                f"Create the store again in {folder} (muses index add, or MemoryStore.create): it takes the file over."
            )
        if encoder is None:
            encoder = load_recorded_model(meta, backend)
        return cls(folder, encoder, meta["model"])

    def check_settings(self, model: str | None = None, **settings: Any) -> None:
        """Refuse settings that differ from this store's: ``model`` (a name or path), ``dim``, ``task`` (its task
        adapter), and any :class:`StoreConfig` field. Only the settings given are compared.

        Raises:
            InputError: naming every conflict, and the fix.
        """
        meta = {"model": self.model_name, "dim": self.dim, "task": self.task, "config": self.config.model_dump()}
        _check_settings(self.path, meta, model, settings)

    def close(self) -> None:
        """Save the indexes if commits are not in the snapshot yet (when no other process is writing), and close the
        database connection."""
        with self._mutex:
            try:
                if self._ix is not None and self._unsaved() > 0:
                    with self._lock.acquire(timeout=0):
                        self._snapshot(self._sync())
            except (TimeoutError, OSError):
                pass  # another writer holds the lock, or the disk refused: the next open replays the log instead
            self._con.close()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One thread at a time on the connection and the in-memory vectors; a database SQLite cannot read (corrupt
        or truncated, found on any query) is a one-line :class:`InputError`."""
        with self._mutex, db.readable(self.path / DB_FILE):
            yield

    # ------------------------------------------------------------------ writes
    @contextmanager
    def _write(self) -> Iterator[_Changes]:
        """One commit: the caller's changes, logged, and the generation advanced; then the indexes follow it."""
        with self._reading(), self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            changes = _Changes(self._con)
            try:
                yield changes
                gen = db.generation(self._con) + 1
                db.log_changes(self._con, gen, changes.ops)
                db.set_meta(self._con, generation=gen)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._after_commit()

    def _commit(self, docs: Sequence[Document], embs: Sequence[MultiScaleEmbedding], upsert: bool) -> None:
        with self._write() as changes:
            con = changes.con
            for doc, emb in zip(docs, embs, strict=True):
                found = con.execute("SELECT row FROM documents WHERE id = ?", (doc.id,)).fetchone()
                if found and not upsert:
                    raise InputError(f"document id {doc.id!r} is already in the store; use update (or --upsert).")
                if found:
                    con.execute("DELETE FROM documents WHERE row = ?", (found[0],))
                    changes.ops.append(("del", int(found[0])))
                changes.ops.append(("add", self._insert(con, doc, emb)))

    def _insert(self, con: Any, doc: Document, emb: MultiScaleEmbedding) -> int:
        """Insert one document, its sentences and its pooled token vectors; returns its (new) row."""
        row = db.next_row(con)
        con.execute(
            "INSERT INTO documents(row, id, text, metadata, vector) VALUES (?, ?, ?, ?, ?)",
            (row, doc.id, doc.text, json.dumps(doc.metadata), db.to_blob(emb.document)),
        )
        con.executemany(
            "INSERT INTO sentences(doc, pos, start, end, vector) VALUES (?, ?, ?, ?, ?)",
            [
                (row, i, s.start, s.end, db.to_blob(v))
                for i, (s, v) in enumerate(zip(doc.sentences, emb.sentences, strict=True))
            ],
        )
        if self.config.token_pool and emb.tokens is not None:
            vecs, sents, spans = pool_tokens(emb, self.config.token_pool)
            con.executemany(
                "INSERT INTO tokens(doc, sentence, start, end, vector) VALUES (?, ?, ?, ?, ?)",
                [
                    (row, int(s), int(a), int(b), db.to_blob(v, self.config.token_dtype))
                    for v, s, (a, b) in zip(vecs, sents, spans.tolist(), strict=True)
                ],
            )
        return row

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (one commit); returns how many were deleted (an id given twice counts once).
        Unknown ids are an error, and then nothing is deleted."""
        if isinstance(ids, str):
            raise InputError(f"pass a list of ids, not one string; wrap it in a list: [{ids[:30]!r}].")
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        with self._write() as changes:
            con = changes.con
            found = {i: con.execute("SELECT row FROM documents WHERE id = ?", (i,)).fetchone() for i in unique}
            missing = [i for i, row in found.items() if row is None]
            if missing:
                raise UnknownIdError(f"unknown document id(s): {missing[:5]}; nothing was deleted.")
            con.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in unique])
            changes.ops.extend(("del", int(row[0])) for row in found.values())
        return len(unique)

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        with self._reading():
            return int(self._con.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def get(self, doc_id: str) -> dict[str, Any]:
        """A stored document: id, text, metadata and sentence spans."""
        check_id(doc_id)
        with self._reading():
            return self._get(doc_id)

    def _get(self, doc_id: str) -> dict[str, Any]:
        row = self._con.execute("SELECT row, text, metadata FROM documents WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise UnknownIdError(f"unknown document id: {doc_id!r}")
        spans = self._con.execute("SELECT start, end FROM sentences WHERE doc = ? ORDER BY pos", (row[0],)).fetchall()
        return {"id": doc_id, "text": row[1], "metadata": json.loads(row[2]), "sentences": [list(s) for s in spans]}

    # ------------------------------------------------------------------ indexes
    def _layouts(self) -> dict[str, Layout]:
        """Each scale's index, from the store's config."""
        c = self.config
        opts = {"hnsw_m": c.hnsw_m, "ef_search": c.ef_search, "nlist": c.nlist, "pq_m": c.pq_m, "nprobe": c.nprobe}
        if c.hnsw_ef_construction:  # only when set, so the stores made before the setting keep their layout
            opts["hnsw_ef_construction"] = c.hnsw_ef_construction
        top, full = c.funnel_dim or self.dim, self.dim
        out = {
            "document": Layout(top, c.index, opts, stored_dim=full),
            "sentence": Layout(top, c.index, opts, stored_dim=full),
        }
        if c.token_pool:
            out["token"] = Layout(
                c.token_index_dim or top, c.token_index or c.index, opts, stored_dim=full, stored_dtype=c.token_dtype
            )
        return out

    def _sync(self) -> IndexSet:
        """The indexes at the database's current generation: kept in memory, else loaded from the snapshot, else
        built from SQLite; then the commits since (this process's or another's) applied from the change log.
        The caller holds ``_mutex``."""
        con = self._con
        built = False
        with db.readable(self.path / DB_FILE):
            con.execute("BEGIN")  # one consistent snapshot of the log and the vectors
            try:
                gen, start = db.generation(con), db.log_start(con)
                ix = self._ix
                if ix is None or not start <= ix.generation <= gen:
                    ix = IndexSet.load(self.path, self._layouts(), mmap=True)
                    if ix is not None and not start <= ix.generation <= gen:
                        ix = None  # older than the log reaches, or newer than the database (restored from a backup)
                if ix is None:
                    ix, built = self._build(gen), True
                elif ix.generation < gen:
                    self._replay(ix, gen)
            finally:
                con.execute("COMMIT")
        self._ix = ix
        if built and IndexSet.saved_generation(self.path) is not None:  # none at all: close() saves one
            self._save_built(ix)
        return ix

    def _save_built(self, ix: IndexSet) -> None:
        """Save indexes just built from SQLite (the snapshot was missing, damaged, outdated or of an older format),
        so that the next open loads them instead of building them again. Skipped when another process holds the
        write lock, when a commit came in since the build (that writer saves), or when the disk refuses."""
        try:
            with self._lock.acquire(timeout=0):
                with db.readable(self.path / DB_FILE):
                    if db.generation(self._con) != ix.generation:
                        return
                ix.save(self.path)
                with db.readable(self.path / DB_FILE):
                    db.prune_log(self._con, ix.generation)
        except (TimeoutError, OSError):
            pass

    def _build(self, gen: int) -> IndexSet:
        """Every index built from SQLite (IVF-PQ trained on a sample of each scale's vectors)."""
        layouts = self._layouts()
        tables = {"document": "documents", "sentence": "sentences", "token": "tokens"}
        scales = {}
        for scale, layout in layouts.items():
            train = None
            if layout.kind == "ivfpq":
                n = 256 * layout.options["nlist"]
                blobs = [r[0] for r in self._con.execute(f"SELECT vector FROM {tables[scale]} LIMIT ?", (n,))]
                dtype = self.config.token_dtype if scale == "token" else "float32"
                train = db.from_blobs(blobs, self.dim, dtype)
            scales[scale] = ScaleIndex(scale, layout, train=train)
        ix = IndexSet(gen, scales)
        rows = [r[0] for r in self._con.execute("SELECT row FROM documents ORDER BY row")]
        for i in range(0, len(rows), 2000):
            self._add_documents(ix, rows[i : i + 2000])
        return ix

    def _replay(self, ix: IndexSet, gen: int) -> None:
        """Apply the logged commits after ``ix.generation``. Rows are never reused, so a row's first change is its
        add and its last, if any, its delete: remove the rows whose last change is a delete (HNSW tombstones them,
        so a row being added must never be "removed" first), add those whose last change is an add."""
        changed = db.changes_since(self._con, ix.generation)
        for index in ix.scales.values():
            index.remove_documents(row for row, op in changed.items() if op == "del")
        added = [row for row, op in changed.items() if op == "add"]
        for i in range(0, len(added), 2000):
            self._add_documents(ix, added[i : i + 2000])
        ix.generation = gen

    def _add_documents(self, ix: IndexSet, rows: Sequence[int]) -> None:
        """Add the vectors of the documents ``rows`` (still in the database) to every index."""
        docs = self._fetch("document", rows)
        ix.scales["document"].add(docs.ids, docs.vectors)
        sents = self._fetch("sentence", rows)
        ix.scales["sentence"].add(sents.ids, sents.vectors)
        if "token" in ix.scales:
            toks = self._fetch("token", rows)
            ix.scales["token"].add(toks.ids, toks.vectors)

    def _fetch(self, scale: str, rows: Sequence[int] | np.ndarray) -> _Rows:
        """The stored vectors of ``scale`` for the documents ``rows``, from SQLite, in document order."""
        param = (db.in_rows(rows),)
        where = "WHERE doc IN (SELECT value FROM json_each(?))"
        if scale == "document":
            found = self._con.execute(
                "SELECT row, vector FROM documents WHERE row IN (SELECT value FROM json_each(?)) ORDER BY row", param
            ).fetchall()
            doc = np.asarray([r[0] for r in found], dtype=np.int64)
            vectors = db.from_blobs([r[1] for r in found], self.dim)
            return _Rows(doc, doc, doc, np.zeros((len(doc), 2), np.int64), vectors)
        if scale == "sentence":
            sql = f"SELECT doc, pos, start, end, vector FROM sentences {where} ORDER BY doc, pos"
            dtype = "float32"
        else:
            sql = f"SELECT doc, sentence, start, end, vector FROM tokens {where} ORDER BY doc, row"
            dtype = self.config.token_dtype
        found = self._con.execute(sql, param).fetchall()
        doc = np.asarray([r[0] for r in found], dtype=np.int64)
        sub = np.asarray([r[1] for r in found], dtype=np.int64)
        spans = np.asarray([(r[2], r[3]) for r in found], dtype=np.int64).reshape(-1, 2)
        vecs = db.from_blobs([r[4] for r in found], self.dim, dtype)
        if scale == "sentence":
            return _Rows(make_ids(doc, sub, scale), doc, sub, spans, vecs)
        first = np.searchsorted(doc, doc, side="left")  # ordinal of each token vector inside its document
        return _Rows(make_ids(doc, np.arange(len(doc)) - first, scale), doc, sub, spans, vecs)

    def _unsaved(self) -> int:
        """Documents changed since the saved snapshot (all of them when there is none, or it is behind the log)."""
        saved = IndexSet.saved_generation(self.path)
        if saved is None or saved < db.log_start(self._con):
            return int(self._con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]) + 1
        return int(self._con.execute("SELECT COUNT(DISTINCT doc) FROM changes WHERE gen > ?", (saved,)).fetchone()[0])

    def _after_commit(self) -> None:
        """After a commit (the write lock held): apply it to the indexes, and save them when enough has changed."""
        ix = self._sync()
        doc_index = ix.scales["document"]
        docs = doc_index.ntotal - doc_index.dead_vectors  # the live documents, without a COUNT over the table
        if self._unsaved() >= max(self.config.snapshot_every, docs // 10):
            with suppress(OSError):  # the disk refused the snapshot: the commit stands, the next open replays the log
                self._snapshot(ix)

    def _snapshot(self, ix: IndexSet) -> None:
        """Save ``ix`` (current, the write lock held), first rebuilding it when an IVF-PQ index can now be trained or
        HNSW tombstones pass 20%; then prune the log it covers."""
        enough = 39 * self.config.nlist
        stale = any(
            (s.kind != s.layout.kind and s.ntotal >= enough) or s.dead_vectors > 0.2 * max(s.ntotal, 1)
            for s in ix.scales.values()
        )
        if stale:
            with db.readable(self.path / DB_FILE):
                self._con.execute("BEGIN")
                try:
                    ix = self._build(ix.generation)
                finally:
                    self._con.execute("COMMIT")
            self._ix = ix
        ix.save(self.path)
        with db.readable(self.path / DB_FILE):
            db.prune_log(self._con, ix.generation)

    def rebuild(self) -> dict[str, Any]:
        """Rebuild every index from SQLite and save it (under the write lock); returns :meth:`stats`."""
        with self._reading(), self._lock:
            with db.readable(self.path / DB_FILE):
                self._con.execute("BEGIN")
                try:
                    self._ix = self._build(db.generation(self._con))
                finally:
                    self._con.execute("COMMIT")
            self._ix.save(self.path)
            with db.readable(self.path / DB_FILE):
                db.prune_log(self._con, self._ix.generation)
        return self.stats()

    def checkpoint(self) -> None:
        """Save the indexes now (under the write lock), so the next open loads them without replaying the log."""
        with self._reading(), self._lock:
            self._snapshot(self._sync())

    def _allowed(self, filters: Mapping[str, Any] | None) -> np.ndarray | None:
        """``[n]`` sorted rows of the documents whose metadata matches every ``key: value`` of ``filters`` (None: no
        filter). ``filters`` were checked by :func:`~muses.validation.check_filters`: plain keys, bindable values."""
        if not filters:
            return None
        clauses, params = [], []
        for key, value in filters.items():
            clauses.append(f"json_extract(metadata, '$.\"{key}\"') = ?")
            # SQLite's json_extract returns lists and objects as minified JSON
            params.append(json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value)
        sql = f"SELECT row FROM documents WHERE {' AND '.join(clauses)} ORDER BY row"
        return np.asarray([r[0] for r in self._con.execute(sql, params)], dtype=np.int64)

    def _top(
        self,
        ix: IndexSet,
        scale: str,
        query: np.ndarray,
        dim: int,
        k: int,
        allowed: np.ndarray | None,
        depth: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ``document`` or ``sentence`` ids for one query ``[D]`` at prefix ``dim``: ``([k'] scores,
        [k'] ids)``, best first, scores exact at ``dim``.

        - a filter matching at most :data:`EXACT_FILTER_DOCS` documents: exact, over their stored vectors;
        - a query at the index's dim: the index (exact when flat), a broader filter applied inside the search;
        - a flat index and a smaller dim: an exact scan of the index's vectors;
        - otherwise (the funnel): ``max(k * depth, 100)`` candidates from the index (``depth``: the config's
          ``funnel_depth``), rescored exactly.
        """
        q = prefix_normalize(query, dim)
        index = ix.scales[scale]
        exact = index.stored
        if allowed is not None and len(allowed) <= EXACT_FILTER_DOCS:
            doc, ordinal, x = exact.documents(allowed)
            return _best(prefix_normalize(x, dim) @ q, make_ids(doc, ordinal, scale), k)
        keep, share = None, 1.0
        if allowed is not None:
            allowed_rows = allowed
            keep = lambda docs: np.isin(docs, allowed_rows)  # noqa: E731
            share = len(allowed) / max(ix.scales["document"].ntotal, 1)
        if dim == index.dim:
            return index.search(q, k, keep, share)
        matrix = index.exact_matrix() if dim < index.dim else None
        if matrix is not None:
            ids, x = matrix
            scores = prefix_normalize(x, dim) @ q
            if keep is not None:
                scores = np.where(keep(owners(ids, scale)), scores, -np.inf)
            return _best(scores, ids, k, finite=True)
        depth = self.config.funnel_depth if depth is None else depth
        _, cand = index.search(prefix_normalize(query, index.dim), max(k * depth, 100), keep, share)
        found, x = exact.take(owners(cand, scale), ordinals(cand, scale))
        return _best(prefix_normalize(x, dim) @ q, cand[found], k)

    def _search(
        self,
        query: EncodedQuery,
        scale: str,
        k: int,
        d: int,
        filters: dict[str, Any],
        zoom_docs: int | None,
    ) -> list[Hit]:
        ix = self._sync()
        if not self._con.execute("SELECT 1 FROM documents LIMIT 1").fetchone():
            return []
        allowed = self._allowed(filters)
        if allowed is not None and not len(allowed):
            return []  # the filter matches no document
        qv = query.vector
        if scale == "sentence":
            if zoom_docs:
                _, top_docs = self._top(ix, "document", qv, d, zoom_docs, allowed)
                allowed = np.sort(top_docs)
            scores, ids = self._top(ix, "sentence", qv, d, k, allowed)
            return [self._sentence_hit(int(i), float(x)) for x, i in zip(scores, ids, strict=True)]
        if scale == "document":
            scores, ids = self._top(ix, "document", qv, d, k, allowed)
            return [self._doc_hit(int(i), float(x), "document") for x, i in zip(scores, ids, strict=True)]
        cand, per_scale = self._candidates(ix, query, d, k, allowed)
        if scale == "token":
            final = per_scale["token"]
        else:
            weights = {s: w for s, w in self.config.fusion_weights.items() if s in per_scale}
            final = fuse({s: v[None] for s, v in per_scale.items()}, weights, "wsum")[0]
        order = np.argsort(-final, kind="stable")[:k]
        hits = []
        for i in order:
            hit = self._doc_hit(int(cand[i]), float(final[i]), scale)
            hit.scores = {s: float(v[i]) for s, v in per_scale.items()} | {scale: float(final[i])}
            hits.append(hit)
        return hits

    def _candidates(
        self, ix: IndexSet, query: EncodedQuery, dim: int, k: int, allowed: np.ndarray | None, depth: int = 100
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Fusion and token candidates: the union of the top ``depth`` documents by document score, by sentence
        max-sim (the first ``depth`` distinct documents of the sentence ranking), and (at the stored dim) the
        documents of the :data:`TOKEN_CANDIDATES` nearest token vectors of each query token; with each scale's exact
        score for every candidate: ``([C] sorted document rows, {scale: [C] scores})``."""
        depth = max(depth, k)
        qv = query.vector
        _, by_doc = self._top(ix, "document", qv, dim, depth, allowed, POOL_FUNNEL_DEPTH)
        cand = np.union1d(by_doc, self._top_sentence_docs(ix, qv, dim, depth, allowed))
        qt = self._query_tokens(query, dim) if "token" in ix.scales else None
        if qt is not None and dim == self.dim:
            tix = ix.scales["token"]
            keep = None if allowed is None else (lambda docs: np.isin(docs, allowed))
            share = 1.0 if allowed is None else len(allowed) / max(ix.scales["document"].ntotal, 1)
            assert query.tokens is not None  # set by _query_tokens
            cand = np.union1d(
                cand, tix.neighbours(prefix_normalize(query.tokens, tix.dim), TOKEN_CANDIDATES, keep, share)
            )
        q = prefix_normalize(qv, dim)
        cand, _, doc_vectors = ix.scales["document"].stored.documents(cand)
        sent_doc, _, sent_vectors = ix.scales["sentence"].stored.documents(cand)
        seg = np.searchsorted(cand, sent_doc)
        per_scale = {
            "document": prefix_normalize(doc_vectors, dim) @ q,
            "sentence": segment_max((prefix_normalize(sent_vectors, dim) @ q)[None], seg, len(cand))[0],
        }
        if qt is not None:
            tok_doc, _, tok_vectors = ix.scales["token"].stored.documents(cand)
            pos = np.arange(len(cand))[None]
            token = token_maxsim([qt], tok_vectors, np.searchsorted(cand, tok_doc), pos, dim)[0]
            per_scale["token"] = np.where(np.isfinite(token), token, 0.0).astype(np.float32)  # no tokens: 0
        return cand, {s: v.astype(np.float32) for s, v in per_scale.items()}

    def _top_sentence_docs(
        self, ix: IndexSet, query: np.ndarray, dim: int, depth: int, allowed: np.ndarray | None
    ) -> np.ndarray:
        """The ``depth`` best documents by their best sentence: the first distinct documents of the sentence
        ranking (fetching four times more sentences until there are enough, or no more)."""
        fetch = depth * 4
        while True:
            _, ids = self._top(ix, "sentence", query, dim, fetch, allowed, POOL_FUNNEL_DEPTH)
            docs = owners(ids, "sentence")
            _, first = np.unique(docs, return_index=True)
            ranked = docs[np.sort(first)]
            if len(ranked) >= depth or len(ids) < fetch:
                return ranked[:depth]
            fetch *= 4

    def _query_tokens(self, query: EncodedQuery, dim: int) -> np.ndarray:
        """``[t, dim]`` normalised query token vectors."""
        if query.tokens is None:
            query.tokens = self.encoder.encode_query_tokens([query.text])[0]
        return prefix_normalize(query.tokens, dim)

    def _doc_hit(self, row: int, score: float, scale: str) -> Hit:
        found = self._con.execute("SELECT id, text, metadata FROM documents WHERE row = ?", (row,)).fetchone()
        return Hit(
            id=found[0], score=score, scale=scale, text=found[1], metadata=json.loads(found[2]), scores={scale: score}
        )

    def _sentence_hit(self, sentence_id: int, score: float) -> Hit:
        doc = int(owners(np.asarray([sentence_id]), "sentence")[0])
        pos = sentence_id - make_ids(np.asarray([doc]), np.zeros(1), "sentence")[0]
        found = self._con.execute(
            "SELECT d.id, d.text, d.metadata, s.start, s.end FROM sentences s JOIN documents d ON d.row = s.doc "
            "WHERE s.doc = ? AND s.pos = ?",
            (doc, int(pos)),
        ).fetchone()
        a, b = int(found[3]), int(found[4])
        return Hit(
            id=found[0],
            score=score,
            scale="sentence",
            text=found[1][a:b],
            span=(a, b),
            sentence=int(pos),
            metadata=json.loads(found[2]),
            scores={"sentence": score},
        )

    def _zoom(
        self,
        query: EncodedQuery,
        k_docs: int,
        k_sentences: int,
        d: int,
        filters: dict[str, Any],
        highlight: int,
    ) -> list[ZoomResult]:
        docs = self._search(query, "document", k_docs, d, filters, None)
        if not docs:
            return []
        ix = self._sync()
        q = prefix_normalize(query.vector, d)
        qt = self._query_tokens(query, d) if "token" in ix.scales else None
        rows = {
            r[1]: int(r[0])
            for r in self._con.execute(
                "SELECT row, id FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([h.id for h in docs]),),
            )
        }
        wanted = np.sort(np.asarray(list(rows.values()), dtype=np.int64))
        sents = self._fetch("sentence", wanted)
        toks = self._fetch("token", wanted) if qt is not None else None
        out = []
        for hit in docs:
            mine = np.flatnonzero(sents.doc == rows[hit.id])
            scores = prefix_normalize(sents.vectors[mine], d) @ q
            sentences = []
            for r in mine[np.argsort(-scores, kind="stable")[:k_sentences]]:
                s = self._sentence_hit(int(sents.ids[r]), float(prefix_normalize(sents.vectors[r], d) @ q))
                s.scores["document"] = hit.score
                if toks is not None and qt is not None:
                    sel = np.flatnonzero((toks.doc == rows[hit.id]) & (toks.sub == sents.sub[r]))
                    s.highlights = _highlights(toks.vectors[sel], toks.spans[sel], qt, d, highlight)
                sentences.append(s)
            out.append(ZoomResult(hit.id, hit.score, hit.text, sentences, hit.metadata))
        return out

    def stats(self) -> dict[str, Any]:
        """Counts, model, dim, the indexes (kind, dim, vectors, bytes), the saved snapshot's generation, sizes."""
        with self._reading():
            ix = self._sync()
            count = {
                t: int(self._con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("documents", "sentences", "tokens", "changes")
            }
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.name.startswith(DB_FILE))
        index_dir = self.path / INDEX_FOLDER
        index_bytes = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file()) if index_dir.exists() else 0
        return {
            "path": str(self.path),
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "task": self.task,
            "dim": self.dim,
            "documents": count["documents"],
            "sentences": count["sentences"],
            "token_vectors": count["tokens"],
            "generation": ix.generation,
            "index": {s: x.describe() for s, x in ix.scales.items()},
            "index_snapshot": {"generation": IndexSet.saved_generation(self.path), "bytes": index_bytes},
            "change_log": count["changes"],
            "database_bytes": size,
            "config": self.config.model_dump(),
        }


def _highlights(
    tokens: np.ndarray, spans: np.ndarray, query_tokens: np.ndarray, dim: int, n: int
) -> list[tuple[int, int]]:
    """The character spans ``[n, 2]`` of the ``n`` stored token vectors ``[m, D]`` of one sentence that best match
    any of the ``[t, dim]`` query tokens, in text order."""
    if not len(tokens):
        return []
    match = (prefix_normalize(tokens, dim) @ query_tokens.T).max(axis=1)
    best = np.argsort(-match, kind="stable")[:n]
    return sorted((int(a), int(b)) for a, b in spans[best])

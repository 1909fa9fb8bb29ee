"""A persistent multi-scale memory: add documents once, search them at document, sentence or token scale, zoom.

A store is a folder: ``store.sqlite`` (documents, spans, metadata, vectors, and which model and dim built it)
and ``write.lock``. Vectors are kept at one Matryoshka dim ``D``; searches may use any smaller prefix.

- Writes (add, update, delete) encode outside the lock, then take the folder's file lock and commit one SQLite
  transaction: one writer at a time across processes, any number of readers (WAL), and a process killed mid-add
  leaves every earlier commit intact and nothing half-written. A power loss may lose the last commits (the file
  stays consistent) unless the store is ``durable`` (``StoreConfig(durable=True)``: every commit fsynced).
- FAISS indexes (exact or approximate, :mod:`muses.store.index`) are built in memory from SQLite, and rebuilt when
  another commit has happened since (a reader sees new documents at its next search).
- The token scale stores pooled token vectors: the mean of ``token_pool`` consecutive tokens of one sentence, with
  their character span, which bounds memory and still locates the words that match.

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
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from muses.backends import Backend
from muses.encoder import DEFAULT_BASE, MultiScaleEncoder, default_base_path
from muses.errors import InputError, ModelError, UnknownIdError
from muses.scoring import candidate_pool, fuse, prefix_normalize, sentence_maxsim, token_maxsim
from muses.store import db
from muses.store.index import IndexKind, VectorIndex
from muses.text import as_documents
from muses.types import SEARCH_SCALES, Document, MultiScaleEmbedding, SearchScale
from muses.validation import check_filters, check_id, check_metadata, check_utf8

DB_FILE = "store.sqlite"
LOCK_FILE = "write.lock"
_STORE_FILES = frozenset({DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", LOCK_FILE})


class StoreConfig(BaseModel):
    """How a store is built. Fixed at creation (recorded in the store)."""

    model_config = ConfigDict(extra="forbid")

    dim: int | None = Field(None, description="stored Matryoshka dim (default: the model's full dim)")
    index: IndexKind = "flat"
    token_pool: int = Field(4, ge=0, description="tokens pooled per stored token vector; 0: no token scale")
    hnsw_m: int = Field(32, ge=4)
    ef_search: int = Field(64, ge=1)
    nlist: int = Field(64, ge=1)
    pq_m: int = Field(16, ge=1)
    nprobe: int = Field(8, ge=1)
    max_chars: int = Field(1_000_000, ge=1, description="refuse documents longer than this")
    durable: bool = Field(
        False,
        description="fsync every commit (SQLite synchronous=FULL): commits survive a power loss, writes are slower; "
        "default NORMAL: commits survive a killed process, a power loss may lose the last ones",
    )
    fusion_weights: dict[str, float] = Field(
        default_factory=lambda: {"document": 0.0, "sentence": 0.3, "token": 0.7},
        description="min-max weighted-sum fusion (the evaluation suite's dev-fitted SciFact weights at 384d)",
    )


@dataclass
class Hit:
    """One search result; ``span`` and ``highlights`` are character ranges into the document's text.

    ``score`` ranks the hits of one search; ``scores`` holds the score of each scale that was computed for this hit
    (``document``, ``sentence``, ``token``, and ``fusion`` for a fusion search; a zoom sentence also carries its
    document's score).
    """

    id: str
    score: float
    scale: str
    text: str
    span: tuple[int, int] | None = None
    sentence: int | None = None
    highlights: list[tuple[int, int]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return asdict(self)


@dataclass
class ZoomResult:
    """A document and its best sentences (with highlighted words), for one query."""

    id: str
    score: float
    text: str
    sentences: list[Hit]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return {**asdict(self), "sentences": [s.to_dict() for s in self.sentences]}


@dataclass
class EncodedQuery:
    """A query's vectors at the model's full dim: ``vector`` ``[D]`` and, for token scoring, ``tokens`` ``[t, D]``.

    Encode many at once with :meth:`MemoryStore.encode_queries` (a service batches concurrent queries this way),
    then pass them to :meth:`MemoryStore.search` / :meth:`MemoryStore.zoom` in place of the text.
    """

    text: str
    vector: np.ndarray
    tokens: np.ndarray | None = None


@dataclass
class _Vectors:
    """The store's vectors in memory, at the stored dim, with their SQLite rows and links."""

    generation: int
    doc_rows: np.ndarray  # [N]
    doc_ids: list[str]
    doc_vecs: np.ndarray  # [N, D]
    sent_doc: np.ndarray  # [S] position in doc_rows
    sent_pos: np.ndarray  # [S] index in its document
    sent_span: np.ndarray  # [S, 2]
    sent_vecs: np.ndarray  # [S, D]
    tok_doc: np.ndarray  # [T]
    tok_sent: np.ndarray  # [T] sentence index in its document
    tok_span: np.ndarray  # [T, 2]
    tok_vecs: np.ndarray  # [T, D]
    indexes: dict[str, VectorIndex]


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


class StoreExistsError(InputError):
    """:meth:`MemoryStore.create` found a finished store in the folder (e.g. another process created it first)."""


def resolve_model(model: str) -> str:
    """How to record ``model`` in a store: a local folder as an absolute path, so that the store opens from any
    working directory; ``default``, hub names and ``""`` as given."""
    if not model or model == DEFAULT_BASE:
        return model
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def same_model(a: str, b: str) -> bool:
    """Whether two model names or paths name the same model (``default`` is the bundled folder)."""

    def canonical(name: str) -> str:
        name = resolve_model(name) or DEFAULT_BASE
        if name == DEFAULT_BASE:
            try:
                return str(default_base_path().resolve())
            except ModelError:
                return name
        return name

    return canonical(a) == canonical(b)


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
    conflicts = []
    if model is not None and not same_model(model, meta["model"]):
        conflicts.append(f"model {resolve_model(model)!r} (the store has {meta['model']!r})")
    for key, value in settings.items():
        if key not in recorded:
            raise InputError(f"unknown store setting {key!r}; use one of {', '.join(sorted(recorded))}.")
        if value != recorded[key]:
            conflicts.append(f"{key} {value!r} (the store has {recorded[key]!r})")
    if conflicts:
        raise InputError(
            f"{folder} already holds a store built with other settings: you asked for {'; '.join(conflicts)}. "
            "Leave these settings out (or match the store's) to use this store, or give another folder for a new "
            "store."
        )


class MemoryStore:
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
        given = encoder.fingerprint()
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
        self._vectors: _Vectors | None = None

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
        _check_settings(folder, meta, None, {**config.model_dump(exclude={"dim"}), "dim": dim})
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
            encoder = MultiScaleEncoder.from_base(meta["model"], backend=backend or meta.get("backend", "torch"))
        return cls(folder, encoder, meta["model"])

    def check_settings(self, model: str | None = None, **settings: Any) -> None:
        """Refuse settings that differ from this store's: ``model`` (a name or path), ``dim``, and any
        :class:`StoreConfig` field. Only the settings given are compared.

        Raises:
            InputError: naming every conflict, and the fix.
        """
        meta = {"model": self.model_name, "dim": self.dim, "config": self.config.model_dump()}
        _check_settings(self.path, meta, model, settings)

    def close(self) -> None:
        """Close the database connection."""
        self._con.close()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One thread at a time on the connection and the in-memory vectors; a database SQLite cannot read (corrupt
        or truncated, found on any query) is a one-line :class:`InputError`."""
        with self._mutex, db.readable(self.path / DB_FILE):
            yield

    # ------------------------------------------------------------------ writes
    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._reading(), self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
                db.set_meta(self._con, generation=db.generation(self._con) + 1)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    @staticmethod
    def _parts(i: int, item: object) -> tuple[Any, str | None, dict[str, Any]]:
        """Item ``i``'s text (or Document), id (None: give it a random one) and metadata, id and metadata checked."""
        ident: object = None
        meta: object = None
        body: object = item
        if isinstance(item, Mapping):
            body, ident, meta = item.get("text"), item.get("id"), item.get("metadata")
            if not isinstance(body, str):
                raise InputError(f"item {i}: a document needs a 'text' string.")
        elif isinstance(item, Document):
            ident, meta = item.id, item.metadata
            check_utf8(item.text, f"item {i}: text")
        if ident is not None:
            ident = check_id(ident, f"item {i}: document id")
        return body, ident, dict(check_metadata(meta, f"item {i}: metadata"))

    def _documents(self, items: Iterable[str | Document | Mapping[str, Any]]) -> list[Document]:
        """Validated Documents, with ids (random where none was given) and metadata; nothing is encoded yet."""
        if isinstance(items, (str, Document, Mapping)):
            raise InputError("pass a list of documents, not a single one; wrap it in a list.")
        parts = [self._parts(i, item) for i, item in enumerate(items)]
        docs = as_documents([body for body, _, _ in parts], self.encoder.splitter)
        for i, (doc, (_, ident, meta)) in enumerate(zip(docs, parts, strict=True)):
            if len(doc.text) > self.config.max_chars:
                raise InputError(
                    f"item {i} has {len(doc.text)} characters, over this store's limit of {self.config.max_chars}; "
                    "split it, or create the store with a larger max_chars."
                )
            doc.id = ident if ident is not None else uuid.uuid4().hex
            doc.metadata = meta
        counts = Counter(str(d.id) for d in docs)
        dupes = sorted(x for x, n in counts.items() if n > 1)
        if dupes:
            raise InputError(f"document id(s) {dupes[:5]} appear more than once in this batch.")
        return docs

    def add(
        self, items: Iterable[str | Document | Mapping[str, Any]], upsert: bool = False, batch_size: int = 32
    ) -> list[str]:
        """Embed and store documents (strings, :class:`Document` objects, or ``{"id", "text", "metadata"}``).

        An id already in the store is an error, unless ``upsert`` (then the document is replaced). Documents
        without an id get a random one. Returns the ids, in order. The whole call is one commit.
        """
        docs = self._documents(items)
        if not docs:
            return []
        scales = ("document", "sentence", "token") if self.config.token_pool else ("document", "sentence")
        embs = self.encoder.encode_documents(docs, scales=scales, dim=self.dim, batch_size=batch_size)
        self._commit(docs, embs, upsert)
        return [str(d.id) for d in docs]

    def add_encoded(self, embs: Sequence[MultiScaleEmbedding], upsert: bool = False) -> list[str]:
        """Store documents encoded elsewhere (e.g. ``muses encode --engine ray``), each with its ``doc`` (with an id)
        and vectors at this store's dim. The caller checks the vectors come from this store's model (same
        :meth:`MultiScaleEncoder.fingerprint`). One commit; ``upsert`` as in :meth:`add`. Returns the ids."""
        if not embs:
            return []
        for i, e in enumerate(embs):
            if e.doc.id is None or e.dim != self.dim or e.document.shape != (self.dim,):
                raise InputError(f"item {i}: needs an id and vectors at the store's dim {self.dim} (has {e.dim}).")
            if self.config.token_pool and e.tokens is None:
                raise InputError(f"item {i} has no token vectors; this store keeps tokens (encode the token scale).")
        docs = self._documents([e.doc for e in embs])  # checked as add's; Documents are kept as they are
        self._commit(docs, embs, upsert)
        return [str(d.id) for d in docs]

    def _commit(self, docs: Sequence[Document], embs: Sequence[MultiScaleEmbedding], upsert: bool) -> None:
        with self._write() as con:
            for doc, emb in zip(docs, embs, strict=True):
                found = con.execute("SELECT row FROM documents WHERE id = ?", (doc.id,)).fetchone()
                if found and not upsert:
                    raise InputError(f"document id {doc.id!r} is already in the store; use update (or --upsert).")
                if found:
                    con.execute("DELETE FROM documents WHERE row = ?", (found[0],))
                self._insert(con, doc, emb)

    def update(self, items: Iterable[str | Document | Mapping[str, Any]], batch_size: int = 32) -> list[str]:
        """Add or replace documents by id (one commit)."""
        return self.add(items, upsert=True, batch_size=batch_size)

    def _insert(self, con: Any, doc: Document, emb: MultiScaleEmbedding) -> None:
        cur = con.execute(
            "INSERT INTO documents(id, text, metadata, vector) VALUES (?, ?, ?, ?)",
            (doc.id, doc.text, json.dumps(doc.metadata), db.to_blob(emb.document)),
        )
        row = cur.lastrowid
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
                    (row, int(s), int(a), int(b), db.to_blob(v))
                    for v, s, (a, b) in zip(vecs, sents, spans.tolist(), strict=True)
                ],
            )

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (one commit); returns how many were deleted (an id given twice counts once).
        Unknown ids are an error, and then nothing is deleted."""
        if isinstance(ids, str):
            raise InputError(f"pass a list of ids, not one string; wrap it in a list: [{ids[:30]!r}].")
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        with self._write() as con:
            missing = [i for i in unique if not con.execute("SELECT 1 FROM documents WHERE id = ?", (i,)).fetchone()]
            if missing:
                raise UnknownIdError(f"unknown document id(s): {missing[:5]}; nothing was deleted.")
            con.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in unique])
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

    def _load(self) -> _Vectors:
        gen = db.generation(self._con)
        if self._vectors is not None and self._vectors.generation == gen:
            return self._vectors
        con, d = self._con, self.dim
        with db.readable(self.path / DB_FILE):
            con.execute("BEGIN")  # one consistent snapshot of all three tables
            try:
                docs = con.execute("SELECT row, id, vector FROM documents ORDER BY row").fetchall()
                sents = con.execute("SELECT doc, pos, start, end, vector FROM sentences ORDER BY doc, pos").fetchall()
                # in document order: the evaluation suite's token scoring needs each document's tokens contiguous
                toks = con.execute("SELECT doc, sentence, start, end, vector FROM tokens ORDER BY doc, row").fetchall()
                gen = db.generation(con)
            finally:
                con.execute("COMMIT")
        doc_rows = np.asarray([r[0] for r in docs], dtype=np.int64)
        where = {int(r): i for i, r in enumerate(doc_rows)}
        vecs = _Vectors(
            generation=gen,
            doc_rows=doc_rows,
            doc_ids=[r[1] for r in docs],
            doc_vecs=db.from_blobs([r[2] for r in docs], d),
            sent_doc=np.asarray([where[r[0]] for r in sents], dtype=np.int64),
            sent_pos=np.asarray([r[1] for r in sents], dtype=np.int64),
            sent_span=np.asarray([(r[2], r[3]) for r in sents], dtype=np.int64).reshape(-1, 2),
            sent_vecs=db.from_blobs([r[4] for r in sents], d),
            tok_doc=np.asarray([where[r[0]] for r in toks], dtype=np.int64),
            tok_sent=np.asarray([r[1] for r in toks], dtype=np.int64),
            tok_span=np.asarray([(r[2], r[3]) for r in toks], dtype=np.int64).reshape(-1, 2),
            tok_vecs=db.from_blobs([r[4] for r in toks], d),
            indexes={},
        )
        c = self.config
        opts = {"hnsw_m": c.hnsw_m, "ef_search": c.ef_search, "nlist": c.nlist, "pq_m": c.pq_m, "nprobe": c.nprobe}
        vecs.indexes = {
            "document": VectorIndex(vecs.doc_vecs, c.index, **opts),
            "sentence": VectorIndex(vecs.sent_vecs, c.index, **opts),
            "token": VectorIndex(vecs.tok_vecs, c.index, **opts),
        }
        self._vectors = vecs
        return vecs

    def _allowed(self, vecs: _Vectors, filters: Mapping[str, Any] | None) -> np.ndarray | None:
        """Document positions whose metadata matches every ``key: value`` of ``filters`` (None: no filter).

        ``filters`` were checked by :func:`~muses.validation.check_filters`: plain keys, values SQLite can bind."""
        if not filters:
            return None
        clauses, params = [], []
        for key, value in filters.items():
            clauses.append(f"json_extract(metadata, '$.\"{key}\"') = ?")
            params.append(json.dumps(value) if isinstance(value, (list, dict)) else value)
        rows = {r[0] for r in self._con.execute(f"SELECT row FROM documents WHERE {' AND '.join(clauses)}", params)}
        return np.asarray([i for i, r in enumerate(vecs.doc_rows.tolist()) if r in rows], dtype=np.int64)

    def encode_queries(self, texts: Sequence[str], with_tokens: bool | None = None) -> list[EncodedQuery]:
        """Encode queries in one batch (token vectors too when the store keeps them, or ``with_tokens``)."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"query {i} is empty; give some text to search for.")
        vecs = self.encoder.encode_queries(list(texts))
        toks = with_tokens if with_tokens is not None else bool(self.config.token_pool)
        tokens = self.encoder.encode_query_tokens(list(texts)) if toks else [None] * len(texts)
        return [EncodedQuery(t, v, tk) for t, v, tk in zip(texts, vecs, tokens, strict=True)]

    @staticmethod
    def _filters(filters: Mapping[str, Any] | None) -> dict[str, Any]:
        """``filters`` checked (:func:`~muses.validation.check_filters`), as a dict; ``{}`` for none."""
        return check_filters(dict(filters) if isinstance(filters, Mapping) else filters)

    def _encoded(self, query: str | EncodedQuery) -> EncodedQuery:
        if isinstance(query, EncodedQuery):
            return query
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; give some text to search for.")
        return self.encode_queries([query])[0]

    def _query(self, query: EncodedQuery, dim: int | None) -> tuple[np.ndarray, int]:
        d = self._check_dim(dim)
        return prefix_normalize(query.vector, d), d

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dim
        if dim not in self.encoder.dims or dim > self.dim:
            usable = [x for x in self.encoder.dims if x <= self.dim]
            raise InputError(f"dim {dim} is not available in this store; use one of {usable}.")
        return dim

    def _dense(
        self, vecs: _Vectors, scale: str, q: np.ndarray, dim: int, k: int, allowed_docs: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` positions of ``scale`` (``document`` or ``sentence``) for one query: ``(scores, positions)``.

        The FAISS index serves full-dim unfiltered searches; a filter or a smaller dim is scored exactly.
        """
        mat = vecs.doc_vecs if scale == "document" else vecs.sent_vecs
        owner = np.arange(len(mat)) if scale == "document" else vecs.sent_doc
        if allowed_docs is None and dim == self.dim:
            scores, pos = vecs.indexes[scale].search(q[None], k)
            keep = pos[0] >= 0
            return scores[0][keep], pos[0][keep]
        cand = np.arange(len(mat)) if allowed_docs is None else np.flatnonzero(np.isin(owner, allowed_docs))
        s = prefix_normalize(mat[cand], dim) @ q
        top = np.argsort(-s, kind="stable")[:k]
        return s[top], cand[top]

    def search(
        self,
        query: str | EncodedQuery,
        scale: SearchScale = "document",
        k: int = 10,
        dim: int | None = None,
        filters: Mapping[str, Any] | None = None,
        zoom_docs: int | None = None,
    ) -> list[Hit]:
        """Search one scale (or ``fusion`` of all), best first.

        Args:
            scale: ``document`` (document vectors), ``sentence`` (sentence vectors: each hit is a sentence),
                ``token`` (ColBERT-style MaxSim of the query's tokens over the stored pooled token vectors, on
                candidates from a token index search), or ``fusion`` (min-max weighted sum of the three
                document scores, weights in the store's config).
            k: results returned.
            dim: a Matryoshka prefix, at most the stored dim (default: the stored dim).
            filters: ``{metadata key: value}``, all must match.
            zoom_docs: ``sentence`` scale only: search only the sentences of the top ``zoom_docs`` documents
                (the evaluation suite's ``zoom`` ranking).
        """
        if scale not in SEARCH_SCALES:
            raise InputError(f"unknown scale {scale!r}; use one of {', '.join(SEARCH_SCALES)}.")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        filters = self._filters(filters)
        query = self._encoded(query)  # the expensive part, outside the lock
        with self._reading():
            return self._search(query, scale, k, dim, filters, zoom_docs)

    def _search(
        self,
        query: EncodedQuery,
        scale: str,
        k: int,
        dim: int | None,
        filters: Mapping[str, Any] | None,
        zoom_docs: int | None,
    ) -> list[Hit]:
        vecs = self._load()
        if not vecs.doc_ids:
            return []
        q, d = self._query(query, dim)
        allowed = self._allowed(vecs, filters)
        if allowed is not None and not len(allowed):
            return []  # the filter matches no document
        if scale == "sentence":
            if zoom_docs:
                _, top_docs = self._dense(vecs, "document", q, d, zoom_docs, allowed)
                allowed = top_docs if allowed is None else np.intersect1d(top_docs, allowed)
            scores, pos = self._dense(vecs, "sentence", q, d, k, allowed)
            return [self._sentence_hit(vecs, int(p), float(s)) for s, p in zip(scores, pos, strict=True)]
        if scale == "document":
            scores, pos = self._dense(vecs, "document", q, d, k, allowed)
            return [self._doc_hit(vecs, int(p), float(s), "document") for s, p in zip(scores, pos, strict=True)]
        cand, per_scale = self._candidates(vecs, query, q, d, k, allowed)
        if scale == "token":
            if "token" not in per_scale:
                raise InputError("this store keeps no token vectors (token_pool = 0); search another scale.")
            final = per_scale["token"]
        else:
            weights = {s: w for s, w in self.config.fusion_weights.items() if s in per_scale}
            final = fuse({s: v[None] for s, v in per_scale.items()}, weights, "wsum")[0]
        order = np.argsort(-final, kind="stable")[:k]
        hits = []
        for i in order:
            hit = self._doc_hit(vecs, int(cand[i]), float(final[i]), scale)
            hit.scores = {s: float(v[i]) for s, v in per_scale.items()} | {scale: float(final[i])}
            hits.append(hit)
        return hits

    def _candidates(
        self,
        vecs: _Vectors,
        query: EncodedQuery,
        q: np.ndarray,
        dim: int,
        k: int,
        allowed: np.ndarray | None,
        depth: int = 100,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The union of the top ``depth`` documents by document and by sentence max-sim (and, with tokens, by
        token hits), with each scale's score for every candidate: ``(positions [C], {scale: [C] scores})``."""
        n = len(vecs.doc_ids)
        doc_all = prefix_normalize(vecs.doc_vecs, dim) @ q
        sent_all = sentence_maxsim(q[None], prefix_normalize(vecs.sent_vecs, dim), vecs.sent_doc, n)[0]
        if allowed is not None:
            mask = np.full(n, -np.inf, dtype=np.float32)
            mask[allowed] = 0.0
            doc_all, sent_all = doc_all + mask, sent_all + mask
        cand = candidate_pool([doc_all[None], sent_all[None]], max(depth, k))[0]  # the evaluation suite's pool
        cand = cand[(cand >= 0) & np.isfinite(doc_all[np.maximum(cand, 0)])]
        per_scale = {"document": doc_all[cand], "sentence": sent_all[cand]}
        if len(vecs.tok_vecs):
            qt = self._query_tokens(query, dim)
            extra = np.zeros(0, dtype=np.int64)
            if dim == self.dim:  # documents holding the nearest token groups of any query token
                _, hits = vecs.indexes["token"].search(qt, 32)
                extra = np.unique(vecs.tok_doc[hits[hits >= 0]])
            if allowed is not None:
                extra = np.intersect1d(extra, allowed)
            cand = np.union1d(cand, extra)
            per_scale = {"document": doc_all[cand], "sentence": sent_all[cand]}
            token = token_maxsim([qt], vecs.tok_vecs, vecs.tok_doc, cand[None], dim)[0]
            per_scale["token"] = np.where(np.isfinite(token), token, 0.0).astype(np.float32)  # no tokens: 0
        return cand, per_scale

    def _query_tokens(self, query: EncodedQuery, dim: int) -> np.ndarray:
        """``[t, dim]`` normalised query token vectors."""
        if query.tokens is None:
            query.tokens = self.encoder.encode_query_tokens([query.text])[0]
        return prefix_normalize(query.tokens, dim)

    def _doc_hit(self, vecs: _Vectors, pos: int, score: float, scale: str) -> Hit:
        row = self._con.execute(
            "SELECT id, text, metadata FROM documents WHERE row = ?", (int(vecs.doc_rows[pos]),)
        ).fetchone()
        return Hit(id=row[0], score=score, scale=scale, text=row[1], metadata=json.loads(row[2]), scores={scale: score})

    def _sentence_hit(self, vecs: _Vectors, pos: int, score: float) -> Hit:
        doc = int(vecs.sent_doc[pos])
        row = self._con.execute(
            "SELECT id, text, metadata FROM documents WHERE row = ?", (int(vecs.doc_rows[doc]),)
        ).fetchone()
        a, b = (int(x) for x in vecs.sent_span[pos])
        return Hit(
            id=row[0],
            score=score,
            scale="sentence",
            text=row[1][a:b],
            span=(a, b),
            sentence=int(vecs.sent_pos[pos]),
            metadata=json.loads(row[2]),
            scores={"sentence": score},
        )

    def zoom(
        self,
        query: str | EncodedQuery,
        k_docs: int = 3,
        k_sentences: int = 2,
        dim: int | None = None,
        filters: Mapping[str, Any] | None = None,
        highlight: int = 3,
    ) -> list[ZoomResult]:
        """Top documents, then the best sentences inside each, then the words that match (character spans).

        Highlights are the ``highlight`` stored token groups of each sentence that best match any query token
        (token MaxSim); a store without token vectors returns sentences without highlights.
        """
        filters = self._filters(filters)
        query = self._encoded(query)
        with self._reading():
            return self._zoom(query, k_docs, k_sentences, dim, filters, highlight)

    def _zoom(
        self,
        query: EncodedQuery,
        k_docs: int,
        k_sentences: int,
        dim: int | None,
        filters: Mapping[str, Any] | None,
        highlight: int,
    ) -> list[ZoomResult]:
        docs = self._search(query, "document", k_docs, dim, filters, None)
        if not docs:
            return []
        vecs = self._load()
        q, d = self._query(query, dim)
        qt = self._query_tokens(query, d) if len(vecs.tok_vecs) else None
        pos_of = {doc_id: i for i, doc_id in enumerate(vecs.doc_ids)}
        out = []
        for hit in docs:
            p = pos_of[hit.id]
            rows = np.flatnonzero(vecs.sent_doc == p)
            scores = prefix_normalize(vecs.sent_vecs[rows], d) @ q
            best = rows[np.argsort(-scores, kind="stable")[:k_sentences]]
            sentences = []
            for r in best:
                s = self._sentence_hit(vecs, int(r), float(prefix_normalize(vecs.sent_vecs[r], d) @ q))
                s.scores["document"] = hit.score
                if qt is not None:
                    s.highlights = self._highlights(vecs, qt, p, int(vecs.sent_pos[r]), d, highlight)
                sentences.append(s)
            out.append(ZoomResult(hit.id, hit.score, hit.text, sentences, hit.metadata))
        return out

    def _highlights(
        self, vecs: _Vectors, qt: np.ndarray, doc: int, sentence: int, dim: int, n: int
    ) -> list[tuple[int, int]]:
        sel = np.flatnonzero((vecs.tok_doc == doc) & (vecs.tok_sent == sentence))
        if not len(sel):
            return []
        match = (prefix_normalize(vecs.tok_vecs[sel], dim) @ qt.T).max(axis=1)
        best = sel[np.argsort(-match, kind="stable")[:n]]
        return sorted((int(a), int(b)) for a, b in vecs.tok_span[best])

    def stats(self) -> dict[str, Any]:
        """Counts, model, dim, index kinds and sizes."""
        with self._reading():
            vecs = self._load()
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.name.startswith(DB_FILE))
        return {
            "path": str(self.path),
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "documents": len(vecs.doc_ids),
            "sentences": len(vecs.sent_vecs),
            "token_vectors": len(vecs.tok_vecs),
            "generation": vecs.generation,
            "index": {s: {"kind": ix.kind, "bytes": ix.memory_bytes()} for s, ix in vecs.indexes.items()},
            "database_bytes": size,
            "config": self.config.model_dump(),
        }

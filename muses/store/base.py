"""What every store backend shares: its settings, its results, the documents it accepts, query encoding.

:class:`StoreBase` reads and checks the documents to add (texts, :class:`~muses.types.Document` objects or
``{"id", "text", "metadata"}`` mappings; ids, metadata and sizes checked), encodes them or accepts them encoded,
encodes queries, and checks dims and settings; a backend (:class:`~muses.store.MemoryStore`, the embedded FAISS +
SQLite store, or :class:`~muses.store.qdrant.QdrantStore`) supplies ``_commit`` and the searches.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from muses.backends import Backend
from muses.encoder import DEFAULT_BASE, MultiScaleEncoder, default_base_path
from muses.errors import InputError, ModelError
from muses.store.index import IndexKind
from muses.text import as_documents
from muses.types import SEARCH_SCALES, Document, MultiScaleEmbedding, SearchScale
from muses.validation import check_count, check_filters, check_id, check_metadata, check_utf8


class StoreConfig(BaseModel):
    """How a store is built. Fixed at creation (recorded in the store)."""

    model_config = ConfigDict(extra="forbid")

    dim: int | None = Field(None, description="stored Matryoshka dim (default: the model's full dim)")
    index: IndexKind = "flat"
    token_pool: int = Field(4, ge=0, description="tokens pooled per stored token vector; 0: no token scale")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int | None = Field(
        None,
        ge=1,
        description="HNSW build beam (FAISS efConstruction, Qdrant ef_construct; default: the engine's own, 40 and "
        "100): wider builds slower and finds more of the true neighbours",
    )
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
    funnel_dim: int | None = Field(
        None,
        description="Matryoshka prefix the document and sentence indexes hold (the funnel): ANN at this dim, then "
        "exact rescoring at the query's dim (default: the stored dim, no funnel)",
    )
    funnel_depth: int = Field(10, ge=1, description="funnel candidates per result (at least 100)")
    token_index_dim: int | None = Field(
        None, description="prefix the token candidate index holds (default: funnel_dim, else the stored dim)"
    )
    token_index: IndexKind | None = Field(
        None, description="kind of the token candidate index (default: index); ivfpq suits millions of token vectors"
    )
    token_dtype: Literal["float32", "int8"] = Field("float32", description="stored token vectors (int8: 4x smaller)")
    snapshot_every: int = Field(
        1000,
        ge=1,
        description="save the indexes after a commit once this many documents (and 10% of the store) changed since "
        "the last snapshot; they are also saved on close",
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


def load_recorded_model(meta: Mapping[str, Any], backend: Backend | None = None) -> MultiScaleEncoder:
    """The encoder a store's settings ``meta`` record: its model on ``backend`` (default: the backend that built the
    store), with the task adapter it was built with merged in (``meta["task"]``; see :mod:`muses.adapters.tasks`)."""
    from muses.adapters.tasks import load_for_task

    return load_for_task(meta["model"], meta.get("task"), backend=backend or meta.get("backend", "torch"))


def check_task(where: object, task: str | None, encoder: MultiScaleEncoder) -> None:
    """Refuse an encoder loaded for another task than the store's ``task`` (its vectors would not compare); called
    when the fingerprints differ, so a store built before tasks were recorded still opens with the encoder that made it.

    Raises:
        ModelError: naming both tasks and how to open the store.
    """
    if encoder.task != task:
        given = f"with its {encoder.task!r} task adapter" if encoder.task else "without a task adapter"
        fix = f"load the model with task={task!r} (muses.load)" if task else "load the model without a task"
        raise ModelError(
            f"store {where} was built {f'with the {task!r} task adapter' if task else 'without a task adapter'}; "
            f"the model given is loaded {given}, so its vectors would not be comparable: {fix}, or open the store "
            "without a model to load the one it records."
        )


def check_conflicts(
    where: object,
    recorded: Mapping[str, Any],
    store_model: str,
    model: str | None,
    settings: Mapping[str, Any],
    elsewhere: str,
) -> None:
    """Refuse ``model`` and ``settings`` that differ from a store's ``recorded`` settings (and ``store_model``).

    Raises:
        InputError: an unknown setting, or every conflict at once, with the fix.
    """
    conflicts = []
    if model is not None and not same_model(model, store_model):
        conflicts.append(f"model {resolve_model(model)!r} (the store has {store_model!r})")
    for key, value in settings.items():
        if key not in recorded:
            raise InputError(f"unknown store setting {key!r}; use one of {', '.join(sorted(recorded))}.")
        if value != recorded[key]:
            conflicts.append(f"{key} {value!r} (the store has {recorded[key]!r})")
    if conflicts:
        raise InputError(
            f"{where} already holds a store built with other settings: you asked for {'; '.join(conflicts)}. "
            f"Leave these settings out (or match the store's) to use this store, or give {elsewhere} for a new store."
        )


class StoreBase:
    """The parts of a store that do not depend on where vectors live. Subclasses set ``encoder``, ``config`` and
    ``dim``, and implement ``_commit(docs, embs, upsert)``."""

    encoder: MultiScaleEncoder
    config: StoreConfig
    dim: int

    def _commit(self, docs: Sequence[Document], embs: Sequence[MultiScaleEmbedding], upsert: bool) -> None:
        raise NotImplementedError

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

    def update(self, items: Iterable[str | Document | Mapping[str, Any]], batch_size: int = 32) -> list[str]:
        """Add or replace documents by id (one commit)."""
        return self.add(items, upsert=True, batch_size=batch_size)

    def encode_queries(self, texts: Sequence[str], with_tokens: bool | None = None) -> list[EncodedQuery]:
        """Encode queries in one batch (token vectors too when the store keeps them, or ``with_tokens``)."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"query {i} is empty; give some text to search for.")
        vecs = self.encoder.encode_queries(list(texts))
        toks = with_tokens if with_tokens is not None else bool(self.config.token_pool)
        tokens = self.encoder.encode_query_tokens(list(texts)) if toks else [None] * len(texts)
        return [EncodedQuery(t, v, tk) for t, v, tk in zip(texts, vecs, tokens, strict=True)]

    # --- search and zoom: arguments checked here, the search itself per backend ------------------------------
    def _reading(self) -> AbstractContextManager[None]:
        """The context a search runs in (a read lock, a client's error translation)."""
        raise NotImplementedError

    def _search(
        self, query: EncodedQuery, scale: str, k: int, dim: int, filters: dict[str, Any], zoom_docs: int | None
    ) -> list[Hit]:
        raise NotImplementedError

    def _zoom(
        self, query: EncodedQuery, k_docs: int, k_sentences: int, dim: int, filters: dict[str, Any], highlight: int
    ) -> list[ZoomResult]:
        raise NotImplementedError

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
            query: text, or a query encoded by :meth:`encode_queries`.
            scale: ``document`` (document vectors), ``sentence`` (sentence vectors: each hit is a sentence),
                ``token`` (ColBERT-style MaxSim of the query's tokens over the stored pooled token vectors, on
                candidates from a token index search), or ``fusion`` (min-max weighted sum of the three
                document scores, weights in the store's config).
            k: results returned.
            dim: a Matryoshka prefix, at most the stored dim (default: the stored dim).
            filters: ``{metadata key: value}``, all must match.
            zoom_docs: ``sentence`` scale only: search only the sentences of the top ``zoom_docs`` documents
                (the evaluation suite's ``zoom`` ranking).

        Raises:
            InputError: an unknown scale, a count below 1, a dim not stored, bad filters, an empty query, or the
                token scale on a store without token vectors.
        """
        if scale not in SEARCH_SCALES:
            raise InputError(f"unknown scale {scale!r}; use one of {', '.join(SEARCH_SCALES)}.")
        check_count("k", k)
        if zoom_docs is not None:
            check_count("zoom_docs", zoom_docs, 0)
        d = self._check_dim(dim)
        if scale == "token" and not self.config.token_pool:
            raise InputError("this store keeps no token vectors (token_pool = 0); search another scale.")
        checked = self._filters(filters)
        encoded = self._encoded(query)  # the expensive part, outside any lock
        with self._reading():
            return self._search(encoded, scale, k, d, checked, zoom_docs)

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
        (token MaxSim); a store without token vectors returns sentences without highlights. Arguments are checked
        as :meth:`search` checks them.
        """
        check_count("k_docs", k_docs)
        check_count("k_sentences", k_sentences)
        check_count("highlight", highlight, 0)
        d = self._check_dim(dim)
        checked = self._filters(filters)
        encoded = self._encoded(query)
        with self._reading():
            return self._zoom(encoded, k_docs, k_sentences, d, checked, highlight)

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

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dim
        if isinstance(dim, bool) or dim not in self.encoder.dims or dim > self.dim:
            usable = [x for x in self.encoder.dims if x <= self.dim]
            raise InputError(f"dim {dim} is not available in this store; use one of {usable}.")
        return dim

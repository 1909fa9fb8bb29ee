"""The multi-scale store on Qdrant: a server, a cluster, or qdrant-client's local mode (a folder, or ``:memory:``).

Needs the ``qdrant`` extra: ``pip install 'muses[qdrant]'``. Same API and results as :class:`~muses.store.MemoryStore`
(:class:`~muses.store.backend.StoreBackend`); what differs is where the vectors live and who searches them.

Layout, for a store named ``NAME`` (default ``muses``):

- ``NAME_documents``: one point per document. Named vectors ``d32``, ``d64``, ... (the document vector's renormalised
  Matryoshka prefix at each stored dim, cosine) and ``tokens`` (the pooled token vectors ``[P, D]``, as in
  :func:`~muses.store.store.pool_tokens`, a multivector compared with ``MAX_SIM``: ColBERT MaxSim). Payload: ``id``,
  ``text``, ``metadata``, ``match`` (the filter keys, below), ``sentences`` (character spans), ``token_sentence`` and
  ``token_spans``. The collection's metadata records the store's settings (model, fingerprint, dim, config), checked
  on open as a :class:`MemoryStore` checks its own.
- ``NAME_sentences``: one point per sentence, the same named vectors, payload ``doc`` (the document id), ``pos``
  (its index in the document), ``span``, ``text`` and ``match``.

Search is the Matryoshka funnel: candidates at ``prefetch_dim`` (``Prefetch``), rescored at the query's dim by the
server. The token scale and fusion score one candidate pool as the memory store does (the union of the top 100
documents by document score, by best sentence and, at the stored dim, by token MaxSim), with exact scores from the
server and :func:`muses.scoring.fuse`.

Filters: ``{key: value}``, all must match. Each document and sentence carries ``match``, a list of
``key=canonical value`` keywords for its top-level metadata; a filter becomes one ``MatchValue`` per key, evaluated
by Qdrant (:mod:`muses.store.qdrant_points`). Values compare as the memory store's SQLite does.
Locations, connections and server errors are :mod:`muses.store.qdrant_connection`'s.

Writes are not transactions: an add writes sentence points, then the document point (a reader may briefly see a
new document's sentences first); a delete removes sentences, then the document. Rerunning an interrupted add
(with ``upsert``) or delete completes it.

Example::

    store = QdrantStore.create("http://localhost:6333", MultiScaleEncoder.from_base())   # or "folder/", ":memory:"
    store.add([{"id": "a", "text": "Leaves make oxygen. Roots take up water.", "metadata": {"topic": "bio"}}])
    store.search("where is water absorbed?", scale="fusion", k=3, filters={"topic": "bio"})
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from muses.backends import Backend
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError, UnknownIdError
from muses.extras import require
from muses.scoring import fuse, prefix_normalize, token_maxsim
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
from muses.store.qdrant_connection import API_KEY_ENV, QdrantError, connect, parse_location, server_errors
from muses.store.qdrant_points import (
    doc_point,
    filter_keys,
    in_docs,
    metadata_keys,
    qdrant_filter,
    sentence_point,
    vector_name,
)
from muses.store.store import StoreExistsError, pool_tokens
from muses.types import Document, MultiScaleEmbedding
from muses.validation import check_id

require("qdrant_client", "qdrant")

from qdrant_client import QdrantClient, models  # noqa: E402

__all__ = [
    "API_KEY_ENV",
    "QdrantConfig",
    "QdrantError",
    "QdrantStore",
    "filter_keys",
    "metadata_keys",
    "parse_location",
]

SETTINGS_KEY = "muses_store"
"""The key of the store's settings in the documents collection's metadata."""
TOKENS = "tokens"
DEPTH = 100
"""Documents taken from each scoring into the token / fusion candidate pool (the memory store's depth)."""
GROUP_FANOUT = 5
"""Sentences prefetched per document when the top documents by best sentence are wanted."""
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BATCH = 128


class QdrantConfig(BaseModel):
    """Qdrant-side settings of a store, fixed at creation (recorded beside the :class:`StoreConfig`)."""

    model_config = ConfigDict(extra="forbid")

    dims: list[int] | None = Field(
        None, description="Matryoshka dims kept as named vectors (default: every model dim up to the store's dim)"
    )
    prefetch_dim: int | None = Field(64, description="the funnel's first stage dim; None: no funnel")
    prefetch: int = Field(400, ge=1, description="points taken at prefetch_dim, at least (and 4 per result)")
    exact: bool = Field(False, description="exact (brute-force) search on the server instead of HNSW")
    shards: int | None = Field(None, ge=1, description="shards per collection (default: the server's)")
    replication_factor: int | None = Field(None, ge=1, description="copies of each shard (a cluster)")
    write_consistency_factor: int | None = Field(None, ge=1, description="replicas that must confirm a write")
    on_disk: bool = Field(False, description="keep vectors and payload on disk (memory-mapped) on the server")


# ---------------------------------------------------------------------------------------------------- the store
class QdrantStore(StoreBase):
    """A multi-scale document store in Qdrant. Build with :meth:`create`, reopen with :meth:`open`."""

    def __init__(
        self,
        client: QdrantClient,
        location: str,
        collection: str,
        encoder: MultiScaleEncoder,
        meta: Mapping[str, Any],
        owned: bool = True,
    ) -> None:
        self.client = client
        self.location = location
        self.collection = collection
        self.encoder = encoder
        self._owned = owned
        self.model_name: str = meta["model"]
        self.dim: int = int(meta["dim"])
        self.fingerprint: str = meta["fingerprint"]
        self.backend: str = meta.get("backend", "torch")
        self.task: str | None = meta.get("task")  # the task adapter the store's vectors were made with
        self.config = StoreConfig.model_validate(meta["config"])
        self.qdrant = QdrantConfig.model_validate(meta["qdrant"])
        self.dims: list[int] = list(self.qdrant.dims or [self.dim])
        given = encoder.fingerprint()
        if given != self.fingerprint:
            check_task(self.path, self.task, encoder)  # the likeliest cause, named first
            raise ModelError(
                f"store {self.path} was built with model {self.model_name!r} on {self.backend} (fingerprint "
                f"{self.fingerprint}); the model given, on {encoder.backend}, is another (fingerprint {given}). Its "
                "vectors would not be comparable: open the store with the model that built it, or build a new store."
            )
        self._kind = parse_location(location)[0]
        self._mutex: AbstractContextManager[Any] = threading.RLock() if self._kind != "server" else nullcontext()

    @property
    def path(self) -> str:
        """The store's location and name, for messages: ``URL#NAME``, ``folder#NAME`` or ``:memory:#NAME``."""
        return f"{self.location}#{self.collection}"

    @property
    def _docs(self) -> str:
        return f"{self.collection}_documents"

    @property
    def _sents(self) -> str:
        return f"{self.collection}_sentences"

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """One thread at a time on a local-mode client; server errors as one line."""
        with self._mutex, server_errors(self.location):
            yield

    # ------------------------------------------------------------------ create / open
    @staticmethod
    def _check_name(collection: object) -> str:
        if not isinstance(collection, str) or not _NAME.fullmatch(collection):
            raise InputError(
                f"Qdrant store name {str(collection)[:40]!r} must be 1-128 letters, digits, _ or - "
                "(it prefixes the collections NAME_documents and NAME_sentences)."
            )
        return collection

    @classmethod
    def _client(
        cls, location: str, client: QdrantClient | None, api_key: str | None, timeout: int
    ) -> tuple[QdrantClient, bool]:
        if client is not None:
            return client, False
        return connect(location, api_key, timeout), True

    @staticmethod
    def _recorded(client: QdrantClient, location: str, collection: str) -> dict[str, Any] | None:
        """The settings of the store ``collection``, or None when there is none (yet)."""
        docs = f"{collection}_documents"
        with server_errors(location):
            if not client.collection_exists(docs):
                return None
            meta = client.get_collection(docs).config.metadata or {}
        found = meta.get(SETTINGS_KEY)
        if not isinstance(found, dict) or "model" not in found:
            raise InputError(
                f"the Qdrant collection {docs} at {location} is not a MuSES store (no {SETTINGS_KEY} in its "
                "metadata); give another store name (--qdrant-collection)."
            )
        return found

    @classmethod
    def exists(
        cls,
        location: str | os.PathLike[str],
        collection: str = "muses",
        api_key: str | None = None,
        client: QdrantClient | None = None,
        timeout: int = 30,
    ) -> bool:
        """Whether ``location`` holds the finished store ``collection``."""
        location = parse_location(location)[1]
        cls._check_name(collection)
        if client is None and parse_location(location)[0] == "path" and not Path(location).exists():
            return False  # do not create a folder just to look
        qc, owned = cls._client(location, client, api_key, timeout)
        try:
            return cls._recorded(qc, location, collection) is not None
        finally:
            if owned:
                qc.close()

    @classmethod
    def create(
        cls,
        location: str | os.PathLike[str],
        encoder: MultiScaleEncoder,
        config: StoreConfig | None = None,
        model: str = "",
        exist_ok: bool = False,
        collection: str = "muses",
        qdrant: QdrantConfig | None = None,
        api_key: str | None = None,
        client: QdrantClient | None = None,
        timeout: int = 30,
    ) -> QdrantStore:
        """A new, empty store ``collection`` at ``location`` (an http(s) URL, a local folder or ``:memory:``).

        Args:
            model: how to load the encoder again (recorded; a local folder as an absolute path).
            exist_ok: if the store exists, open it provided its settings are these (``config``, and ``qdrant`` if
                given; else :class:`InputError`); without it, an existing store raises
                :class:`~muses.store.StoreExistsError`.
            qdrant: named-vector dims, the funnel, shards and replication (:class:`QdrantConfig`).
            api_key: the server's API key (default: ``$QDRANT_API_KEY``).
            client: an open ``QdrantClient`` to use (not closed by :meth:`close`); e.g. one ``:memory:`` client
                shared by several stores.
        """
        location = parse_location(location)[1]
        cls._check_name(collection)
        config = config or StoreConfig()
        given = qdrant is not None  # Qdrant settings to compare with an existing store's (exist_ok)
        qdrant = qdrant or QdrantConfig()
        dim = config.dim or encoder.embed_dim
        if dim not in encoder.dims:
            raise InputError(f"store dim {dim} is not one of the model's Matryoshka dims {encoder.dims}.")
        dims = sorted(set(qdrant.dims or [d for d in encoder.dims if d <= dim]) | {dim})
        bad = [d for d in dims if d not in encoder.dims or d > dim]
        if bad:
            raise InputError(f"Qdrant dims {bad} are not Matryoshka dims of the model up to the store's dim {dim}.")
        if qdrant.prefetch_dim is not None and qdrant.prefetch_dim not in dims and qdrant.prefetch_dim < dim:
            raise InputError(f"prefetch_dim {qdrant.prefetch_dim} is not one of the stored dims {dims}.")
        qdrant = qdrant.model_copy(update={"dims": dims})
        model = resolve_model(model or encoder.base_name)
        meta = {
            "model": model,
            "fingerprint": encoder.fingerprint(),
            "backend": encoder.backend,
            "task": encoder.task,
            "dim": dim,
            "config": config.model_dump(),
            "qdrant": qdrant.model_dump(),
            "version": 1,
        }
        qc, owned = cls._client(location, client, api_key, timeout)
        try:
            recorded = cls._recorded(qc, location, collection)
            if recorded is None:
                try:
                    cls._initialise(qc, location, collection, config, qdrant, dim, meta)
                    return cls(qc, location, collection, encoder, meta, owned)
                except QdrantError as e:  # another process created it first: use theirs, if the settings agree
                    recorded = cls._recorded(qc, location, collection)
                    if recorded is None:
                        raise e from None
            if not exist_ok:
                raise StoreExistsError(
                    f"{location}#{collection} already holds a store; open it with QdrantStore.open (or `muses index`)."
                )
            if "task" in recorded:  # a store from before tasks were recorded: the fingerprint, checked on open, decides
                where, task = f"{location}#{collection}", {"task": recorded["task"]}
                check_conflicts(where, task, recorded["model"], None, {"task": encoder.task}, "another store name")
            store = cls(qc, location, collection, encoder, recorded, owned)
            qdrant_settings = qdrant.model_dump() if given else {}
            store.check_settings(None, **config.model_dump(exclude={"dim"}), **qdrant_settings, dim=dim)
            return store
        except BaseException:
            if owned:
                qc.close()
            raise

    @staticmethod
    def _initialise(
        client: QdrantClient,
        location: str,
        collection: str,
        config: StoreConfig,
        qdrant: QdrantConfig,
        dim: int,
        meta: Mapping[str, Any],
    ) -> None:
        """Create the sentences collection, then the documents collection with the settings (the store exists once
        that one does). A sentences collection left by an interrupted creation is reused."""
        on_disk = qdrant.on_disk or None
        hnsw = models.HnswConfigDiff(m=config.hnsw_m, ef_construct=config.hnsw_ef_construction)
        dense = {
            vector_name(d): models.VectorParams(size=d, distance=models.Distance.COSINE, on_disk=on_disk)
            for d in qdrant.dims or [dim]
        }
        common: dict[str, Any] = {
            "shard_number": qdrant.shards,
            "replication_factor": qdrant.replication_factor,
            "write_consistency_factor": qdrant.write_consistency_factor,
            "on_disk_payload": on_disk,
            "hnsw_config": hnsw,
        }
        docs_vectors = dict(dense)
        if config.token_pool:
            docs_vectors[TOKENS] = models.VectorParams(
                size=dim,
                distance=models.Distance.COSINE,
                on_disk=on_disk,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            )
        sents, docs = f"{collection}_sentences", f"{collection}_documents"
        with server_errors(location):
            if not client.collection_exists(sents):
                client.create_collection(sents, vectors_config=dense, **common)
            if parse_location(location)[0] == "server":  # local mode has no payload indexes
                client.create_payload_index(sents, "doc", models.PayloadSchemaType.KEYWORD)
                client.create_payload_index(sents, "match", models.PayloadSchemaType.KEYWORD)
            client.create_collection(docs, vectors_config=docs_vectors, metadata={SETTINGS_KEY: dict(meta)}, **common)
            if parse_location(location)[0] == "server":
                client.create_payload_index(docs, "match", models.PayloadSchemaType.KEYWORD)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        encoder: MultiScaleEncoder | None = None,
        backend: Backend | None = None,
        collection: str = "muses",
        api_key: str | None = None,
        client: QdrantClient | None = None,
        timeout: int = 30,
    ) -> QdrantStore:
        """Reopen a store; without ``encoder``, load the model recorded in it (on ``backend``, default the one that
        built it)."""
        location = parse_location(location)[1]
        cls._check_name(collection)
        if client is None and parse_location(location)[0] == "path" and not Path(location).exists():
            raise InputError(f"{location} holds no local Qdrant store; create one first (muses index add).")
        qc, owned = cls._client(location, client, api_key, timeout)
        try:
            meta = cls._recorded(qc, location, collection)
            if meta is None:
                raise InputError(f"{location} holds no MuSES store named {collection!r}; create one first.")
            if encoder is None:
                encoder = load_recorded_model(meta, backend)
            return cls(qc, location, collection, encoder, meta, owned)
        except BaseException:
            if owned:
                qc.close()
            raise

    def check_settings(self, model: str | None = None, **settings: Any) -> None:
        """Refuse settings that differ from this store's: ``model``, ``dim``, ``task`` (its task adapter), any
        :class:`StoreConfig` or :class:`QdrantConfig` field. Only the settings given are compared."""
        recorded = {**self.config.model_dump(), **self.qdrant.model_dump(), "dim": self.dim, "task": self.task}
        check_conflicts(self.path, recorded, self.model_name, model, settings, "another store name")

    def close(self) -> None:
        """Close the client (unless it was given to :meth:`create` / :meth:`open`)."""
        if self._owned:
            self.client.close()

    # ------------------------------------------------------------------ writes
    def _named(self, vector: np.ndarray) -> dict[str, Any]:
        """``[D]`` -> the named vectors of a point: the renormalised prefix at every stored dim."""
        return {vector_name(d): prefix_normalize(vector.astype(np.float32), d).tolist() for d in self.dims}

    def _points(self, doc: Document, emb: MultiScaleEmbedding) -> tuple[models.PointStruct, list[models.PointStruct]]:
        """A document's point and its sentence points."""
        doc_id = str(doc.id)
        match = metadata_keys(doc.metadata)
        spans = [[s.start, s.end] for s in doc.sentences]
        sentences = [
            models.PointStruct(
                id=sentence_point(doc_id, i),
                vector=self._named(v),
                payload={"doc": doc_id, "pos": i, "span": span, "text": doc.text[span[0] : span[1]], "match": match},
            )
            for i, (span, v) in enumerate(zip(spans, emb.sentences, strict=True))
        ]
        vector = self._named(emb.document)
        payload: dict[str, Any] = {"id": doc_id, "text": doc.text, "metadata": doc.metadata, "match": match}
        payload["sentences"] = spans
        if self.config.token_pool and emb.tokens is not None:
            vecs, sents, tspans = pool_tokens(emb, self.config.token_pool)
            if len(vecs):
                vector[TOKENS] = vecs.tolist()
            payload["token_sentence"] = sents.tolist()
            payload["token_spans"] = tspans.tolist()
        return models.PointStruct(id=doc_point(doc_id), vector=vector, payload=payload), sentences

    def _existing(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        found: set[str] = set()
        for b in range(0, len(ids), 1024):
            points = self.client.retrieve(self._docs, [doc_point(i) for i in ids[b : b + 1024]], with_payload=["id"])
            found |= {str((p.payload or {})["id"]) for p in points}
        return found

    def _upsert(self, collection: str, points: Sequence[models.PointStruct]) -> None:
        for b in range(0, len(points), _BATCH):
            self.client.upsert(collection, list(points[b : b + _BATCH]), wait=True)

    def _commit(self, docs: Sequence[Document], embs: Sequence[MultiScaleEmbedding], upsert: bool) -> None:
        built = [self._points(doc, emb) for doc, emb in zip(docs, embs, strict=True)]  # before any write
        ids = [str(d.id) for d in docs]
        with self._calling():
            found = self._existing(ids)
            if found and not upsert:
                first = next(i for i in ids if i in found)
                raise InputError(f"document id {first!r} is already in the store; use update (or --upsert).")
            if found:
                self._delete_sentences(sorted(found))
            self._upsert(self._sents, [s for _, sents in built for s in sents])
            self._upsert(self._docs, [doc for doc, _ in built])

    def _delete_sentences(self, ids: Sequence[str]) -> None:
        for b in range(0, len(ids), 1024):
            selector = models.FilterSelector(filter=models.Filter(must=[in_docs(ids[b : b + 1024])]))
            self.client.delete(self._sents, selector, wait=True)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many (an id given twice counts once). An unknown id is an error, and
        then nothing is deleted."""
        if isinstance(ids, str):
            raise InputError(f"pass a list of ids, not one string; wrap it in a list: [{ids[:30]!r}].")
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        with self._calling():
            found = self._existing(unique)
            missing = [i for i in unique if i not in found]
            if missing:
                raise UnknownIdError(f"unknown document id(s): {missing[:5]}; nothing was deleted.")
            self._delete_sentences(unique)
            for b in range(0, len(unique), 1024):
                points = models.PointIdsList(points=[doc_point(i) for i in unique[b : b + 1024]])
                self.client.delete(self._docs, points, wait=True)
        return len(unique)

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        with self._calling():
            return int(self.client.count(self._docs, exact=True).count)

    def get(self, doc_id: str) -> dict[str, Any]:
        """A stored document: id, text, metadata and sentence spans."""
        check_id(doc_id)
        with self._calling():
            fields = ["text", "metadata", "sentences"]
            points = self.client.retrieve(self._docs, [doc_point(doc_id)], with_payload=fields)
        if not points:
            raise UnknownIdError(f"unknown document id: {doc_id!r}")
        p = points[0].payload or {}
        return {"id": doc_id, "text": p["text"], "metadata": p["metadata"], "sentences": p["sentences"]}

    def _check_dim(self, dim: int | None) -> int:
        d = super()._check_dim(dim)
        if d not in self.dims:
            raise InputError(
                f"dim {d} is not stored in this Qdrant store (named vectors at {self.dims}); use one of those."
            )
        return d

    def _params(self, limit: int | None = None) -> models.SearchParams | None:
        """Search parameters for a server: HNSW ``ef`` for ``limit`` results, or exact search (``limit`` None, or
        the store's ``exact``); None in local mode, which always searches exactly."""
        if self._kind != "server":
            return None
        if limit is None:
            return models.SearchParams(exact=True)
        return models.SearchParams(hnsw_ef=max(self.config.ef_search, limit), exact=self.qdrant.exact)

    def _dense(
        self,
        collection: str,
        q_full: np.ndarray,
        dim: int,
        limit: int,
        flt: models.Filter | None,
        payload: Sequence[str],
        group_by: str | None = None,
    ) -> list[models.ScoredPoint]:
        """The top ``limit`` points (or, with ``group_by``, each of the top ``limit`` groups' best point) of
        ``collection`` for the query ``q_full`` ``[D]`` at ``dim``: prefetched at ``prefetch_dim``, then scored at
        ``dim``."""
        params = self._params(limit)
        pd = self.qdrant.prefetch_dim
        prefetch = None
        if pd is not None and pd < dim and not self.qdrant.exact:
            n = max(self.qdrant.prefetch, 4 * limit * (GROUP_FANOUT if group_by else 1))
            prefetch = models.Prefetch(
                query=prefix_normalize(q_full, pd).tolist(), using=vector_name(pd), filter=flt, limit=n, params=params
            )
        q = prefix_normalize(q_full, dim).tolist()
        if group_by is None:
            return self.client.query_points(
                collection,
                query=q,
                using=vector_name(dim),
                prefetch=prefetch,
                query_filter=flt,
                limit=limit,
                search_params=params,
                with_payload=list(payload),
            ).points
        groups = self.client.query_points_groups(
            collection,
            query=q,
            using=vector_name(dim),
            prefetch=prefetch,
            query_filter=flt,
            group_by=group_by,
            group_size=1,
            limit=limit,
            search_params=params,
            with_payload=list(payload),
        ).groups
        return [g.hits[0] for g in groups if g.hits]

    def _reading(self) -> AbstractContextManager[None]:
        return self._calling()

    def _search(
        self, query: EncodedQuery, scale: str, k: int, d: int, filters: dict[str, Any], zoom_docs: int | None
    ) -> list[Hit]:
        keys = filter_keys(filters)
        flt = qdrant_filter(keys)
        if scale == "document":
            points = self._dense(self._docs, query.vector, d, k, flt, ["id", "text", "metadata"])
            return [self._doc_hit(p.payload or {}, float(p.score), "document") for p in points]
        if scale == "sentence":
            if zoom_docs:
                top = self._dense(self._docs, query.vector, d, zoom_docs, flt, ["id"])
                if not top:
                    return []
                flt = qdrant_filter(keys, in_docs([str((p.payload or {})["id"]) for p in top]))
            points = self._dense(self._sents, query.vector, d, k, flt, ["doc", "pos", "span", "text"])
            metadata = self._metadata([str((p.payload or {})["doc"]) for p in points])
            return [self._sentence_hit(p.payload or {}, float(p.score), metadata) for p in points]
        cand, per_scale = self._candidates(query, d, k, flt)
        if not cand:
            return []
        if scale == "token":
            final = per_scale["token"]
        else:
            weights = {s: w for s, w in self.config.fusion_weights.items() if s in per_scale}
            final = fuse({s: v[None] for s, v in per_scale.items()}, weights, "wsum")[0]
        order = np.argsort(-final, kind="stable")[:k]
        payloads = self._payloads([cand[i] for i in order], ["id", "text", "metadata"])
        hits = []
        for i in order:
            hit = self._doc_hit(payloads[cand[i]], float(final[i]), scale)
            hit.scores = {s: float(v[i]) for s, v in per_scale.items()} | {scale: float(final[i])}
            hits.append(hit)
        return hits

    def _candidates(
        self, query: EncodedQuery, d: int, k: int, flt: models.Filter | None
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """The memory store's pool: the union of the top ``max(100, k)`` documents by document score, by best
        sentence and (at the stored dim) by token MaxSim; with each scale's exact score for every candidate:
        ``(ids [C], {scale: [C] scores})``."""
        n = max(DEPTH, k)
        ids = {str((p.payload or {})["id"]) for p in self._dense(self._docs, query.vector, d, n, flt, ["id"])}
        best_sentence = self._dense(self._sents, query.vector, d, n, flt, ["doc"], group_by="doc")
        ids |= {str((p.payload or {})["doc"]) for p in best_sentence}
        qt = self._query_tokens(query, d) if self.config.token_pool else None
        if qt is not None and len(qt) and d == self.dim:  # documents with the best token MaxSim
            points = self.client.query_points(
                self._docs,
                query=qt.tolist(),
                using=TOKENS,
                query_filter=flt,
                limit=n,
                search_params=self._params(n),
                with_payload=["id"],
            ).points
            ids |= {str((p.payload or {})["id"]) for p in points}
        cand = sorted(ids)
        if not cand:
            return [], {}
        exact = self._params()
        q = prefix_normalize(query.vector, d).tolist()
        docs = self.client.query_points(
            self._docs,
            query=q,
            using=vector_name(d),
            query_filter=models.Filter(must=[models.HasIdCondition(has_id=[doc_point(i) for i in cand])]),
            limit=len(cand),
            search_params=exact,
            with_payload=["id"],
        ).points
        groups = self.client.query_points_groups(
            self._sents,
            query=q,
            using=vector_name(d),
            query_filter=models.Filter(must=[in_docs(cand)]),
            group_by="doc",
            group_size=1,
            limit=len(cand),
            search_params=exact,
            with_payload=False,
        ).groups
        doc_score = {str((p.payload or {})["id"]): p.score for p in docs}
        sent_score = {str(g.id): g.hits[0].score for g in groups if g.hits}
        per_scale = {
            "document": np.asarray([doc_score.get(i, -np.inf) for i in cand], dtype=np.float32),
            "sentence": np.asarray([sent_score.get(i, -np.inf) for i in cand], dtype=np.float32),
        }
        if qt is not None:
            per_scale["token"] = self._token_scores(cand, qt, d)
        return cand, per_scale

    def _token_scores(self, cand: Sequence[str], qt: np.ndarray, d: int) -> np.ndarray:
        """``[C]`` MaxSim of the query tokens ``qt`` ``[t, d]`` over each candidate's token vectors at ``d`` (0 for a
        document without tokens): the server's ``MAX_SIM`` at the stored dim, :func:`token_maxsim` below it."""
        if not len(qt):
            return np.zeros(len(cand), dtype=np.float32)
        if d == self.dim:
            points = self.client.query_points(
                self._docs,
                query=qt.tolist(),
                using=TOKENS,
                query_filter=models.Filter(must=[models.HasIdCondition(has_id=[doc_point(i) for i in cand])]),
                limit=len(cand),
                search_params=self._params(),
                with_payload=["id"],
            ).points
            score = {str((p.payload or {})["id"]): p.score for p in points}
            return np.asarray([score.get(i, 0.0) for i in cand], dtype=np.float32)
        tokens = self._tokens(cand)
        rows = [tokens.get(i, np.zeros((0, self.dim), dtype=np.float32)) for i in cand]
        token_doc = np.repeat(np.arange(len(cand)), [len(r) for r in rows])
        mat = np.concatenate(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        out = token_maxsim([qt], mat, token_doc, np.arange(len(cand))[None], d)[0]
        return np.where(np.isfinite(out), out, 0.0).astype(np.float32)

    def _tokens(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Document id -> its stored token vectors ``[P, D]`` (documents without tokens are left out)."""
        points = self.client.retrieve(
            self._docs, [doc_point(i) for i in ids], with_payload=["id"], with_vectors=[TOKENS]
        )
        out = {}
        for p in points:
            vec = p.vector if isinstance(p.vector, dict) else {}
            if vec.get(TOKENS):
                out[str((p.payload or {})["id"])] = np.asarray(vec[TOKENS], dtype=np.float32)
        return out

    def _query_tokens(self, query: EncodedQuery, d: int) -> np.ndarray:
        """``[t, d]`` normalised query token vectors."""
        if query.tokens is None:
            query.tokens = self.encoder.encode_query_tokens([query.text])[0]
        return prefix_normalize(np.asarray(query.tokens, dtype=np.float32), d)

    def _payloads(self, ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        points = self.client.retrieve(self._docs, [doc_point(i) for i in ids], with_payload=list(fields))
        return {str((p.payload or {})["id"]): dict(p.payload or {}) for p in points}

    def _metadata(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Document id -> metadata (``{}`` for a document whose point is not written yet)."""
        found = self._payloads(list(dict.fromkeys(ids)), ["id", "metadata"])
        return {i: dict(found.get(i, {}).get("metadata") or {}) for i in ids}

    @staticmethod
    def _doc_hit(payload: Mapping[str, Any], score: float, scale: str) -> Hit:
        return Hit(
            id=str(payload["id"]),
            score=score,
            scale=scale,
            text=str(payload["text"]),
            metadata=dict(payload.get("metadata") or {}),
            scores={scale: score},
        )

    @staticmethod
    def _sentence_hit(payload: Mapping[str, Any], score: float, metadata: Mapping[str, dict[str, Any]]) -> Hit:
        a, b = (int(x) for x in payload["span"])
        return Hit(
            id=str(payload["doc"]),
            score=score,
            scale="sentence",
            text=str(payload["text"]),
            span=(a, b),
            sentence=int(payload["pos"]),
            metadata=dict(metadata.get(str(payload["doc"]), {})),
            scores={"sentence": score},
        )

    def _zoom(
        self, query: EncodedQuery, k_docs: int, k_sentences: int, d: int, filters: dict[str, Any], highlight: int
    ) -> list[ZoomResult]:
        docs = self._search(query, "document", k_docs, d, filters, None)
        if not docs:
            return []
        qt = self._query_tokens(query, d) if self.config.token_pool else None
        q = prefix_normalize(query.vector, d).tolist()
        out = []
        for hit in docs:
            points = self.client.query_points(
                self._sents,
                query=q,
                using=vector_name(d),
                query_filter=models.Filter(must=[in_docs([hit.id])]),
                limit=k_sentences,
                search_params=self._params(),
                with_payload=["doc", "pos", "span", "text"],
            ).points
            tokens = self._doc_tokens(hit.id) if qt is not None else None
            sentences = []
            for p in points:
                s = self._sentence_hit(p.payload or {}, float(p.score), {hit.id: hit.metadata})
                s.scores["document"] = hit.score
                if qt is not None and tokens is not None:
                    s.highlights = self._highlights(tokens, qt, int((p.payload or {})["pos"]), d, highlight)
                sentences.append(s)
            out.append(ZoomResult(hit.id, hit.score, hit.text, sentences, hit.metadata))
        return out

    def _doc_tokens(self, doc_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """A document's token vectors ``[P, D]``, their sentence ``[P]`` and spans ``[P, 2]``."""
        points = self.client.retrieve(
            self._docs, [doc_point(doc_id)], with_payload=["token_sentence", "token_spans"], with_vectors=[TOKENS]
        )
        if not points:
            return None
        p = points[0]
        vec = p.vector if isinstance(p.vector, dict) else {}
        payload = p.payload or {}
        if not vec.get(TOKENS):
            return None
        return (
            np.asarray(vec[TOKENS], dtype=np.float32),
            np.asarray(payload["token_sentence"], dtype=np.int64),
            np.asarray(payload["token_spans"], dtype=np.int64).reshape(-1, 2),
        )

    @staticmethod
    def _highlights(
        tokens: tuple[np.ndarray, np.ndarray, np.ndarray], qt: np.ndarray, sentence: int, dim: int, n: int
    ) -> list[tuple[int, int]]:
        """The ``n`` token groups of ``sentence`` that best match any query token (``qt`` ``[t, dim]``), as sorted
        character spans."""
        vecs, sent, spans = tokens
        sel = np.flatnonzero(sent == sentence)
        if not len(sel) or not len(qt):
            return []
        match = (prefix_normalize(vecs[sel], dim) @ qt.T).max(axis=1)
        best = sel[np.argsort(-match, kind="stable")[:n]]
        return sorted((int(a), int(b)) for a, b in spans[best])

    def stats(self) -> dict[str, Any]:
        """Counts, model, dim, Qdrant layout and settings."""
        with self._calling():
            docs = self.client.count(self._docs, exact=True).count
            sents = self.client.count(self._sents, exact=True).count
        return {
            "path": self.path,
            "store_backend": "qdrant",
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "task": self.task,
            "dim": self.dim,
            "documents": int(docs),
            "sentences": int(sents),
            "collections": {"documents": self._docs, "sentences": self._sents},
            "named_vectors": [vector_name(d) for d in self.dims] + ([TOKENS] if self.config.token_pool else []),
            "config": self.config.model_dump(),
            "qdrant": self.qdrant.model_dump(),
        }

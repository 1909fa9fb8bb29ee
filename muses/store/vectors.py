"""The store's vector indexes: one FAISS index per scale, keyed by SQLite rows, kept incrementally and persisted.

Ids carry their document, so a hit names its document without a lookup and deleting a document is an id range:

- a document's id is its SQLite row ``r``;
- a sentence's id is ``r << 20 | position`` (its index in the document);
- a stored token vector's id is ``r << 24 | ordinal`` (its order among the document's token vectors).

Each :class:`ScaleIndex` wraps a FAISS ``IndexIDMap2`` over L2-normalised ``[N, d]`` vectors (``d`` may be a
Matryoshka prefix of the stored dim: the funnel). Flat and IVF-PQ indexes remove ids in place; HNSW cannot, so a
deleted document's vectors stay in the graph as tombstones, filtered out of every search, until a rebuild.
Beside each index, an :class:`~muses.store.exact.ExactVectors` keeps the scale's full-dim vectors by document row,
which the store rescores candidates and scores token MaxSim with, instead of reading them back from SQLite.

An :class:`IndexSet` (every scale, and the store's commit counter ``generation`` it reflects) is saved as a
snapshot folder ``index/g<generation>/`` beside the database; ``index/CURRENT`` names the newest complete one and is
replaced atomically, so a process killed while saving leaves the previous snapshot in force.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from muses.io import write_text_atomic
from muses.scoring import prefix_normalize
from muses.store.exact import ExactVectors

SHIFT = {"document": 0, "sentence": 20, "token": 24}
"""Bits below the document row in each scale's ids."""
INDEX_FOLDER = "index"
FORMAT = 2  # 2: each scale's full-dim vectors saved beside its index (ExactVectors)
MIN_TRAIN_PER_LIST = 39  # FAISS's minimum training points per IVF cell


def owners(ids: np.ndarray, scale: str) -> np.ndarray:
    """``[n]`` ids of ``scale`` -> ``[n]`` document rows."""
    return np.asarray(ids, dtype=np.int64) >> SHIFT[scale]


def ordinals(ids: np.ndarray, scale: str) -> np.ndarray:
    """``[n]`` ids of ``scale`` -> ``[n]`` positions inside their documents (0 for documents)."""
    return np.asarray(ids, dtype=np.int64) & ((1 << SHIFT[scale]) - 1)


def make_ids(doc_rows: np.ndarray, ordinals: np.ndarray, scale: str) -> np.ndarray:
    """``[n]`` document rows and ``[n]`` ordinals inside each document -> ``[n]`` ids of ``scale``."""
    rows = np.asarray(doc_rows, dtype=np.int64)
    if scale == "document":
        return rows
    return (rows << SHIFT[scale]) | np.asarray(ordinals, dtype=np.int64)


@dataclass(frozen=True)
class Layout:
    """How one scale is indexed: FAISS ``kind`` over ``dim``-prefix vectors, with the kind's options; and, when
    ``stored_dim`` is set, an exact copy of the full ``[n, stored_dim]`` vectors as ``stored_dtype`` for rescoring
    (:class:`~muses.store.exact.ExactVectors`)."""

    dim: int
    kind: str
    options: dict[str, int] = field(default_factory=dict)
    stored_dim: int | None = None
    stored_dtype: str = "float32"

    def key(self) -> dict[str, Any]:
        exact = {"stored_dim": self.stored_dim, "stored_dtype": self.stored_dtype} if self.stored_dim else {}
        return {"dim": self.dim, "kind": self.kind, **self.options, **exact}

    def new_exact(self) -> ExactVectors | None:
        return ExactVectors(self.stored_dim, self.stored_dtype) if self.stored_dim else None


def _new_index(layout: Layout, train: np.ndarray | None) -> tuple[faiss.IndexIDMap2, str]:
    """An empty ``IndexIDMap2`` for ``layout``, and the kind it got: IVF-PQ needs ``39 * nlist`` training vectors
    (from ``train``) and a dim divisible by ``pq_m``; without them the index is flat (a rebuild upgrades it)."""
    d, o = layout.dim, layout.options
    kind = layout.kind
    if kind == "ivfpq" and (train is None or len(train) < MIN_TRAIN_PER_LIST * o["nlist"] or d % o["pq_m"]):
        kind = "flat"
    inner: faiss.Index
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, o["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efSearch = o["ef_search"]
        if o.get("hnsw_ef_construction"):
            inner.hnsw.efConstruction = o["hnsw_ef_construction"]
    elif kind == "ivfpq":
        inner = faiss.index_factory(d, f"IVF{o['nlist']},PQ{o['pq_m']}", faiss.METRIC_INNER_PRODUCT)
        assert train is not None
        inner.train(np.ascontiguousarray(train, dtype=np.float32))
        faiss.extract_index_ivf(inner).nprobe = o["nprobe"]
    else:
        inner = faiss.IndexFlatIP(d)
    return faiss.IndexIDMap2(inner), kind


class ScaleIndex:
    """One scale's vectors (``[N, dim]``, normalised) in a FAISS index keyed by :func:`make_ids` ids.

    Args:
        scale: ``document``, ``sentence`` or ``token``.
        layout: the configured index.
        index: the FAISS index (an empty one is made when None).
        kind: the kind ``index`` is (may be ``flat`` where ``layout`` asks for IVF-PQ but there was too little data).
        dead: tombstoned document rows (HNSW only).
        exact: the full-dim vectors (default: an empty copy when ``layout.stored_dim`` is set, else none).
    """

    def __init__(
        self,
        scale: str,
        layout: Layout,
        index: faiss.IndexIDMap2 | None = None,
        kind: str | None = None,
        dead: Iterable[int] = (),
        train: np.ndarray | None = None,
        exact: ExactVectors | None = None,
    ) -> None:
        self.scale = scale
        self.layout = layout
        self.exact = exact if exact is not None else layout.new_exact()
        if index is None:
            index, kind = _new_index(layout, None if train is None else prefix_normalize(train, layout.dim))
        self.index = index
        self.kind = kind or layout.kind
        self.dead: set[int] = set(int(x) for x in dead)
        self.dead_vectors = 0

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def ntotal(self) -> int:
        """Vectors in the index (tombstoned ones included)."""
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``[n, D]`` vectors (``D >= dim``; the ``dim``-prefix is indexed, renormalised) under ``[n]`` ids: all
        the vectors of some documents, in document order (the exact copy keeps them whole, by document row)."""
        if len(ids):
            x = np.ascontiguousarray(prefix_normalize(np.asarray(vectors, dtype=np.float32), self.dim))
            self.index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
            if self.exact is not None:
                self.exact.add(owners(ids, self.scale), vectors)

    def ids(self) -> np.ndarray:
        """``[N]`` the ids in the index, in FAISS's internal order."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)

    def remove_documents(self, rows: Iterable[int]) -> None:
        """Remove every vector of the documents ``rows`` (HNSW: tombstone them)."""
        rows = np.fromiter((int(r) for r in rows), dtype=np.int64)
        if not len(rows) or not self.ntotal:
            return
        if self.exact is not None:
            self.exact.remove(rows)
        if self.kind == "hnsw":
            ids = self.ids()
            self.dead_vectors += int(np.isin(owners(ids, self.scale), rows).sum())
            self.dead.update(rows.tolist())
            return
        ids = self.ids()
        gone = ids[np.isin(owners(ids, self.scale), rows)]
        if len(gone):
            self.index.remove_ids(faiss.IDSelectorBatch(gone))

    def search(
        self, query: np.ndarray, k: int, keep: Callable[[np.ndarray], np.ndarray] | None = None, share: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` ids for one ``[dim]`` normalised query: ``([k'] scores, [k'] ids)``, ``k' <= k``.

        ``keep`` maps ``[n]`` document rows to a ``[n]`` bool mask (a filter); ``share`` estimates the fraction of
        vectors it keeps. The search over-fetches ``k / share`` results (plus the tombstones), and fetches four
        times more while too few survive, until the index is exhausted: exact for a flat index, the usual ANN
        recall otherwise.
        """
        n = self.ntotal
        if not n or k < 1:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        q = np.ascontiguousarray(query, dtype=np.float32)[None]
        fetch = self._over_fetch(k, share)
        while True:
            f = min(fetch, n)
            scores, ids = self._search(q, f)
            scores, ids = scores[0], ids[0]
            mask = (ids >= 0) & self._survivors(owners(np.maximum(ids, 0), self.scale), keep)
            if mask.sum() >= k or f >= n:
                return scores[mask][:k], ids[mask][:k]
            fetch = f * 4

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of ``[Q, dim]`` queries for ``k`` results each. An HNSW search keeps at least ``k``
        candidates (``efSearch = max(ef_search, k)``): FAISS lets ``k`` exceed ``efSearch`` but then explores as if
        it did not (facebookresearch/faiss#1244), which cost the 64d funnel a fifth of its sentence recall@10 at
        10^5 sentences when it asked for 400 candidates with ``ef_search`` 64 (docs/benchmarks.md)."""
        if self.kind != "hnsw":
            return self.index.search(q, k)
        ef = max(self.layout.options["ef_search"], k)
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]  # missing from the stubs
        return self.index.search(q, k, params=params)

    def _over_fetch(self, k: int, share: float) -> int:
        """Results to ask for so that about ``k`` survive a filter keeping ``share`` of the vectors and the
        tombstones."""
        return int(np.ceil(k / max(share, 1e-9))) + (self.dead_vectors if self.dead else 0)

    def _survivors(self, docs: np.ndarray, keep: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        """``[n]`` bool: which of the document rows ``docs`` ``[n]`` are not tombstoned and pass ``keep``."""
        mask = np.ones(len(docs), dtype=bool)
        if self.dead:
            mask &= ~np.isin(docs, np.fromiter(self.dead, dtype=np.int64))
        if keep is not None:
            mask &= keep(docs)
        return mask

    def neighbours(
        self, queries: np.ndarray, k: int, keep: Callable[[np.ndarray], np.ndarray] | None = None, share: float = 1.0
    ) -> np.ndarray:
        """The documents of the ``k`` nearest vectors of each of ``[t, dim]`` normalised queries, in one search
        (over-fetching ``k / share`` plus the tombstones, once): ``[m]`` unique document rows."""
        n = self.ntotal
        if not n or not len(queries):
            return np.zeros(0, dtype=np.int64)
        fetch = min(n, self._over_fetch(k, share))
        _, ids = self._search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        docs = owners(ids[ids >= 0], self.scale)
        return np.unique(docs[self._survivors(docs, keep)])

    @property
    def stored(self) -> ExactVectors:
        """The scale's full-dim vectors for rescoring; a store's every scale keeps them (its layouts set
        ``stored_dim``), so their absence is a programming error."""
        if self.exact is None:
            raise RuntimeError(f"the {self.scale} index keeps no stored vectors: its layout has no stored_dim")
        return self.exact

    def exact_matrix(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A flat index's ``([N] ids, [N, dim] vectors)`` (a read-only view; None for other kinds), for an exact scan
        at a smaller prefix."""
        if self.kind != "flat" or not self.ntotal:
            return None
        inner: Any = faiss.downcast_index(self.index.index)
        x = faiss.rev_swig_ptr(inner.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)
        return self.ids(), x

    def nbytes(self) -> int:
        """Approximate memory: codes, ids, and the HNSW graph's links."""
        inner = faiss.downcast_index(self.index.index)
        per = self.dim * 4
        if self.kind == "ivfpq":
            per = faiss.extract_index_ivf(inner).code_size + 8
        elif self.kind == "hnsw":
            per += self.layout.options.get("hnsw_m", 32) * 2 * 4
        return int(self.ntotal * (per + 8))

    def describe(self) -> dict[str, Any]:
        """Kind, dim, vectors, tombstones, ``bytes`` of the index in memory, and ``exact_bytes`` of the full-dim copy
        (memory-mapped from the snapshot: on disk, paged in as searches read it)."""
        return {
            "kind": self.kind,
            "dim": self.dim,
            "vectors": self.ntotal,
            "tombstoned": self.dead_vectors,
            "bytes": self.nbytes(),
            "exact_bytes": self.exact.nbytes() if self.exact is not None else 0,
        }


@dataclass
class IndexSet:
    """Every scale's :class:`ScaleIndex`, as of the store's commit ``generation``."""

    generation: int
    scales: dict[str, ScaleIndex]

    def layout_key(self) -> dict[str, Any]:
        return {s: ix.layout.key() for s, ix in self.scales.items()}

    def save(self, store_folder: Path) -> Path:
        """Write a snapshot ``index/g<generation>/`` and point ``index/CURRENT`` at it (atomically); remove older
        snapshots and unfinished ones. Returns the snapshot folder."""
        root = store_folder / INDEX_FOLDER
        root.mkdir(exist_ok=True)
        tmp = root / f"tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        state: dict[str, Any] = {"format": FORMAT, "generation": self.generation, "scales": {}}
        for scale, ix in self.scales.items():
            faiss.write_index(ix.index, str(tmp / f"{scale}.faiss"))
            if ix.exact is not None:
                ix.exact.save(tmp / f"{scale}.vectors.npy")
            state["scales"][scale] = {
                "layout": ix.layout.key(),
                "kind": ix.kind,
                "dead": sorted(ix.dead),
                "dead_vectors": ix.dead_vectors,
            }
        write_text_atomic(tmp / "state.json", json.dumps(state))
        final = root / f"g{self.generation}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(root / "CURRENT", final.name)
        for scale, ix in self.scales.items():  # the saved copy, memory-mapped, replaces the chunks held in memory
            if ix.exact is not None:
                ix.exact = ExactVectors.load(final / f"{scale}.vectors.npy", ix.exact.dim, ix.layout.stored_dtype)
        for old in root.iterdir():
            if old.is_dir() and old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def load(cls, store_folder: Path, layouts: dict[str, Layout], mmap: bool = False) -> IndexSet | None:
        """The snapshot ``index/CURRENT`` names, if it exists, is readable and has ``layouts``; else None (the
        caller rebuilds). ``mmap`` memory-maps flat indexes instead of reading them."""
        root = store_folder / INDEX_FOLDER
        try:
            folder = root / (root / "CURRENT").read_text().strip()
            state = json.loads((folder / "state.json").read_text())
            if state.get("format") != FORMAT or set(state["scales"]) != set(layouts):
                return None
            scales = {}
            for scale, layout in layouts.items():
                info = state["scales"][scale]
                if info["layout"] != layout.key():
                    return None
                flags = faiss.IO_FLAG_MMAP if mmap and info["kind"] == "flat" else 0
                index = faiss.read_index(str(folder / f"{scale}.faiss"), flags)
                if not isinstance(index, faiss.IndexIDMap2) or index.d != layout.dim:
                    return None
                exact = None
                if layout.stored_dim:
                    exact = ExactVectors.load(folder / f"{scale}.vectors.npy", layout.stored_dim, layout.stored_dtype)
                ix = ScaleIndex(scale, layout, index, info["kind"], info["dead"], exact=exact)
                ix.dead_vectors = int(info["dead_vectors"])
                scales[scale] = ix
            return cls(int(state["generation"]), scales)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None  # missing, half-deleted by a concurrent snapshot, or damaged: rebuilt from SQLite

    @staticmethod
    def saved_generation(store_folder: Path) -> int | None:
        """The generation of the current snapshot (None: none)."""
        try:
            name = (store_folder / INDEX_FOLDER / "CURRENT").read_text().strip()
            return int(name.removeprefix("g"))
        except (OSError, ValueError):
            return None

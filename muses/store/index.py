"""FAISS indexes over one scale's vectors: exact (flat inner product) or approximate (HNSW, IVF-PQ).

Vectors are L2-normalised, so inner product = cosine. An index maps search results to positions ``0..N-1`` of the
array it was built from; the store keeps the matching SQLite row ids.
"""

from __future__ import annotations

from typing import Literal, get_args

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)


class VectorIndex:
    """One FAISS index over ``[N, D]`` normalised vectors.

    Args:
        vectors: ``[N, D]`` float32, L2-normalised.
        kind: ``flat`` (exact), ``hnsw`` (graph, ``hnsw_m`` links, ``ef_search``), or ``ivfpq`` (``nlist`` cells,
            ``pq_m`` sub-quantisers of 8 bits, ``nprobe`` cells searched). IVF-PQ needs at least ``39 * nlist``
            vectors to train; with fewer, the index is exact and ``kind`` says ``flat``.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        kind: IndexKind = "flat",
        hnsw_m: int = 32,
        ef_search: int = 64,
        nlist: int = 64,
        pq_m: int = 16,
        nprobe: int = 8,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(INDEX_KINDS)}")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        self.dim = d
        self.size = n
        if kind == "ivfpq" and (n < 39 * nlist or d % pq_m):
            kind = "flat"
        self.kind: IndexKind = kind
        index: faiss.Index
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        elif kind == "ivfpq":
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = nprobe
            self._quantizer = quantizer  # keep it alive as long as the index
        else:
            index = faiss.IndexFlatIP(d)
        if n:
            index.add(x)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query: ``([Q, k] scores, [Q, k] positions)``; missing results have position -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.size == 0 or k <= 0:
            return np.zeros((len(q), 0), dtype=np.float32), np.zeros((len(q), 0), dtype=np.int64)
        scores, pos = self.index.search(q, min(k, self.size))
        return scores, pos

    def memory_bytes(self) -> int:
        """The serialised size of the index."""
        return int(faiss.serialize_index(self.index).nbytes)

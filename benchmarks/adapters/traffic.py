"""Encoding through the cache: a domain's corpus side (indexed under its key), its query side as requests, and the
traffic run that sends every domain's requests through one cache in phases."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from benchmarks.adapters.domains import DomainData
from benchmarks.adapters.settings import BenchSettings
from muses.adapters import AdapterCache
from muses.encoder import MultiScaleEncoder
from muses.evaluation.corpus import CorpusVectors, MusesCorpusEncoder


@dataclass
class QuerySide:
    """Vectors of a domain's traffic: queries ``[Q, D]`` and, for Wikipedia, the articles to classify ``[N, D]``."""

    queries: np.ndarray
    articles: np.ndarray | None = None


@dataclass
class CorpusSide:
    """A domain's indexed vectors: its retrieval corpus, and for Wikipedia its k-NN index documents ``[M, D]``."""

    corpus: CorpusVectors
    index: np.ndarray | None = None


@dataclass
class Request:
    """One traffic request: ``size`` texts of one domain, queries or articles (documents)."""

    domain: str
    kind: str  # "queries" or "articles"
    rows: list[int]


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _doc_vectors(embs: Sequence[Any]) -> np.ndarray:
    return np.stack([e.document for e in embs]).astype(np.float32)


def encode_corpus_side(cache: AdapterCache, d: DomainData, key: str) -> CorpusSide:
    """The domain's corpus (document + in-context sentence vectors) and k-NN index under ``key``."""
    model = MusesCorpusEncoder(cast(MultiScaleEncoder, cache.view(key)), name=key)
    corpus = model.encode_corpus(d.corpus)
    index = _doc_vectors(cache.encode_documents(d.index, key=key, scales=("document",))) if d.index else None
    return CorpusSide(corpus, index)


def domain_requests(d: DomainData, size: int) -> list[Request]:
    """A domain's traffic in requests of ``size``: its queries, then (Wikipedia) its articles to classify."""
    reqs = [Request(d.key, "queries", rows) for rows in _chunks(len(d.queries), size)]
    if d.classify:
        reqs += [Request(d.key, "articles", rows) for rows in _chunks(len(d.corpus), size)]
    return reqs


def serve(cache: AdapterCache, d: DomainData, req: Request, key: str | None) -> np.ndarray:
    """Encode one request through the cache (``key`` None: routed) -> ``[n, D]`` full-dim vectors."""
    if req.kind == "queries":
        texts = list(d.queries.values())
        return cache.encode_queries([texts[i] for i in req.rows], key=key)
    return _doc_vectors(cache.encode_documents([d.corpus[i] for i in req.rows], key=key, scales=("document",)))


def _assemble(d: DomainData, parts: dict[tuple[str, int], np.ndarray], size: int) -> QuerySide:
    width = next(iter(parts.values())).shape[1]
    q = np.zeros((len(d.queries), width), dtype=np.float32)
    a = np.zeros((len(d.corpus), width), dtype=np.float32) if d.classify else None
    for req in domain_requests(d, size):
        v = parts[(req.kind, req.rows[0])]
        if req.kind == "queries":
            q[req.rows] = v
        elif a is not None:
            a[req.rows] = v
    return QuerySide(q, a)


def encode_query_side(cache: AdapterCache, d: DomainData, key: str, size: int) -> QuerySide:
    """The domain's traffic encoded under ``key``, request by request (same batches as the traffic run)."""
    parts = {(r.kind, r.rows[0]): serve(cache, d, r, key) for r in domain_requests(d, size)}
    return _assemble(d, parts, size)


def run_traffic(
    cache: AdapterCache, domains: dict[str, DomainData], s: BenchSettings, routed: bool
) -> tuple[dict[str, QuerySide], dict[str, Any]]:
    """Send every domain's traffic through ``cache`` in phases following ``s.sequence``.

    A domain's requests are split into contiguous parts, one per visit of the domain in the sequence. Returns the
    vectors per domain and the cache's stats (overall and per phase).
    """
    visits = {k: s.sequence.count(k) for k in domains}
    plans = {
        k: np.array_split(np.arange(len(domain_requests(d, s.request_size))), visits[k]) for k, d in domains.items()
    }
    reqs = {k: domain_requests(d, s.request_size) for k, d in domains.items()}
    seen = dict.fromkeys(domains, 0)
    parts: dict[str, dict[tuple[str, int], np.ndarray]] = {k: {} for k in domains}
    phases = []
    cache.reset_stats()
    t0 = time.perf_counter()
    for key in s.sequence:
        before = cache.stats()
        for i in plans[key][seen[key]]:
            r = reqs[key][int(i)]
            parts[key][(r.kind, r.rows[0])] = serve(cache, domains[key], r, None if routed else key)
        seen[key] += 1
        after = cache.stats()
        phases.append(
            {
                "domain": key,
                "requests": after["requests"] - before["requests"],
                "hits": after["hits"] - before["hits"],
                "misses": after["misses"] - before["misses"],
                "loads": after["loads"] - before["loads"],
                "evictions": after["evictions"] - before["evictions"],
                "resident_after": after["resident"],
            }
        )
    stats = {**cache.stats(), "wall_ms": round(1000 * (time.perf_counter() - t0), 1), "phases": phases}
    return {k: _assemble(d, parts[k], s.request_size) for k, d in domains.items()}, stats


def corpus_side_drift(
    cache: AdapterCache, domains: dict[str, DomainData], want: dict[str, CorpusSide], size: int
) -> float:
    """Max abs difference between a sample of corpus vectors re-encoded through ``cache`` under each domain's key
    and the corpus-side vectors used for it (0.0: the cache serves exactly the vectors the index holds)."""
    worst = 0.0
    for key, d in domains.items():
        k = key if cache.capacity > 0 else "base"
        got = MusesCorpusEncoder(cast(MultiScaleEncoder, cache.view(k))).encode_corpus(d.corpus[:size])
        worst = max(worst, float(np.abs(got.document - want[key].corpus.document[:size]).max()))
    return worst

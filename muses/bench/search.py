"""Search benchmark of the store's indexes: latency, memory and recall per Matryoshka dim and index kind.

Vectors: the sentence vectors of the SciFact corpus (about 46k, from the embedding cache when present); queries:
the SciFact test claims. For each dim and each index kind (``flat`` exact, ``hnsw``, ``ivfpq``), it reports the
build time, the index size, the search latency per query at batch 1 (median and p99) and at batch 32 (per
query), and the recall@10 of the approximate indexes against the exact one at the same dim. Latencies are also
given as a ratio to ``flat`` at the full dim, measured in the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from muses.evaluation.corpus import CorpusEncoder, EmbeddingCache
from muses.scoring import prefix_normalize
from muses.store.index import INDEX_KINDS, VectorIndex


def _latency(index: VectorIndex, q: np.ndarray, k: int, batch: int) -> list[float]:
    out = []
    for b in range(0, len(q), batch):
        t = time.perf_counter()
        index.search(q[b : b + batch], k)
        out.append((time.perf_counter() - t) / len(q[b : b + batch]))
    return out


def bench_search(
    model: CorpusEncoder,
    data_dir: str | os.PathLike[str] | None = None,
    dims: Sequence[int] = (64, 384),
    kinds: Sequence[str] = INDEX_KINDS,
    cache: EmbeddingCache | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Run the benchmark; returns ``{"setup": ..., "rows": [one dict per (dim, kind)]}``."""
    from muses.data.beir import load_beir
    from muses.evaluation.retrieval import beir_documents

    data = load_beir("scifact", "test", data_dir)
    vecs = (cache or EmbeddingCache(None)).corpus(model, beir_documents(data.corpus))
    queries = (cache or EmbeddingCache(None)).queries(model, list(data.queries.values()))
    rows: list[dict[str, Any]] = []
    for dim in dims:
        x = prefix_normalize(vecs.sentence, dim).astype(np.float32)
        q = prefix_normalize(queries, dim).astype(np.float32)
        exact: np.ndarray | None = None
        for kind in kinds:
            t = time.perf_counter()
            index = VectorIndex(x, kind)  # type: ignore[arg-type]
            build = time.perf_counter() - t
            _, found = index.search(q, k)
            if kind == "flat":
                exact = found
            recall = (
                float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))
                if exact is not None
                else float("nan")
            )
            one = _latency(index, q, k, 1)
            rows.append(
                {
                    "dim": dim,
                    "index": index.kind,
                    "build_s": round(build, 3),
                    "index_mb": round(index.memory_bytes() / 1e6, 2),
                    "raw_vectors_mb": round(x.nbytes / 1e6, 2),
                    "ms_per_query_b1_p50": round(1000 * float(np.median(one)), 3),
                    "ms_per_query_b1_p99": round(1000 * float(np.percentile(one, 99)), 3),
                    "ms_per_query_b32": round(1000 * float(np.mean(_latency(index, q, k, 32))), 3),
                    f"recall@{k}_vs_exact": round(recall, 4),
                }
            )
    ref = next((r for r in rows if r["index"] == "flat" and r["dim"] == max(dims)), None)
    for r in rows:
        r["latency_vs_flat_full_dim"] = round(r["ms_per_query_b1_p50"] / ref["ms_per_query_b1_p50"], 3) if ref else None
    return {
        "setup": {"vectors": len(vecs.sentence), "queries": len(queries), "k": k, "model": model.name},
        "rows": rows,
    }

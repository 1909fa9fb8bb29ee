"""Efficiency measurements (benchmarks, not tests): encode throughput, search latency, memory, checkpoint size.

Every model goes through the :class:`~muses.evaluation.corpus.CorpusEncoder` interface, in the same process and
run, on the same documents, so a MuSES model (one pass gives documents, sentences and tokens) and a flat baseline
(documents, then sentences, then tokens, each its own pass) do the same work:

- ``{name}/encode/...``: seconds for ``encode_corpus`` (documents + sentences; ``+tokens``: with token vectors),
  best of ``repeats`` (models alternate), and items/s per scale (items of that scale / seconds of the whole call);
  ``speedup/...`` is the first model's seconds over each other model's (>1: the other is faster).
- ``{name}/query_encode/batch{B}_ms``: ms per query to embed queries, ``B`` at a time.
- ``{name}/search/{scale}/batch{B}_ms@d`` and ``qps_batch{B}@d``: exact top-``k`` search of the query vectors'
  ``d``-prefixes in a ``faiss.IndexFlatIP`` over the corpus's document (or sentence) vectors at dim ``d``;
  search only (the queries are embedded beforehand), ``B`` queries a call.
- ``{name}/memory/{scale}/float32_mb@d`` (and ``float16_mb``): the size of the corpus's vectors at dim ``d``.
- ``{name}/checkpoint_mb``: the files of the model saved to a temporary folder.
- ``peak_rss_mb``: the process's peak resident set size so far (``resource.getrusage``), measured last.

MB = 10^6 bytes. Timings depend on the machine and its load; ``machine/...`` records it. No timing is asserted
anywhere: read the numbers as ratios between models of one run.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, FlatCorpusEncoder, MusesCorpusEncoder
from muses.scoring import prefix_normalize
from muses.types import Document

MB = 1e6
Number = float | int | str


def _timed_batches(fn: Callable[[Any], object], items: Sequence[Any] | np.ndarray, batch_size: int) -> float:
    """Seconds to call ``fn`` on consecutive slices of ``batch_size`` items."""
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        fn(items[i : i + batch_size])
    return time.perf_counter() - t0


def encode_throughput(
    models: Sequence[CorpusEncoder], docs: Sequence[Document], with_tokens: bool = True, repeats: int = 1
) -> tuple[dict[str, float], dict[str, CorpusVectors]]:
    """Time ``encode_corpus`` for each model (best of ``repeats``, models alternating, after a small warm-up).

    Returns:
        The numbers (see the module doc) and each model's vectors (with tokens when ``with_tokens``), by name.
    """
    variants = [False, True] if with_tokens else [False]
    for m in models:  # warm-up: first-call allocations and lazy initialisation are not counted
        m.encode_corpus(docs[:4], with_tokens=with_tokens)
    best: dict[tuple[str, bool], float] = {}
    vectors: dict[str, CorpusVectors] = {}
    for _ in range(max(repeats, 1)):
        for tokens in variants:
            for m in models:
                t0 = time.perf_counter()
                vectors[m.name] = m.encode_corpus(docs, with_tokens=tokens)
                seconds = time.perf_counter() - t0
                best[(m.name, tokens)] = min(seconds, best.get((m.name, tokens), float("inf")))
    out: dict[str, float] = {}
    for m in models:
        vec = vectors[m.name]
        for tokens in variants:
            key = f"{m.name}/encode/" + ("docs+sentences+tokens" if tokens else "docs+sentences")
            seconds = best[(m.name, tokens)]
            out[f"{key}/seconds"] = seconds
            out[f"{key}/docs_per_s"] = len(vec.document) / seconds
            out[f"{key}/sentences_per_s"] = len(vec.sentence) / seconds
            if tokens and vec.token is not None:
                out[f"{key}/tokens_per_s"] = len(vec.token) / seconds
    first = models[0].name
    for m in models[1:]:
        for tokens in variants:
            what = "docs+sentences+tokens" if tokens else "docs+sentences"
            out[f"speedup/{what}/{m.name}_vs_{first}"] = best[(first, tokens)] / best[(m.name, tokens)]
    return out, vectors


def query_encode_latency(
    model: CorpusEncoder, queries: Sequence[str], batch_sizes: Sequence[int] = (1, 32)
) -> dict[str, float]:
    """Milliseconds per query to embed ``queries`` (``model.encode_queries``), ``B`` queries a call."""
    model.encode_queries(list(queries[:2]))  # warm-up
    out: dict[str, float] = {}
    for b in batch_sizes:
        seconds = _timed_batches(model.encode_queries, list(queries), b)
        out[f"{model.name}/query_encode/batch{b}_ms"] = 1000.0 * seconds / len(queries)
    return out


def search_latency(
    corpus: np.ndarray,
    queries: np.ndarray,
    dims: Sequence[int],
    k: int = 10,
    batch_sizes: Sequence[int] = (1, 32),
    prefix: str = "search",
) -> dict[str, float]:
    """Exact top-``k`` search latency in a ``faiss.IndexFlatIP`` at each dim.

    Args:
        corpus: ``[N, D]`` full-size corpus vectors (indexed as renormalised ``d``-prefixes).
        queries: ``[Q, D]`` full-size query vectors.
        dims: Matryoshka dims.
        k: neighbours per query.
        batch_sizes: queries per ``search`` call.
        prefix: key prefix, e.g. ``"muses/search/document"``.

    Returns:
        ``{f"{prefix}/batch1_ms@d": ms per query, f"{prefix}/qps_batch1@d": queries per second, ...}`` and
        ``f"{prefix}/n_index"``.
    """
    from muses.extras import require

    faiss = require("faiss", "store")
    out: dict[str, float] = {f"{prefix}/n_index": float(len(corpus))}
    for d in dims:
        index = faiss.IndexFlatIP(d)
        index.add(np.ascontiguousarray(prefix_normalize(corpus, d), dtype=np.float32))
        q = np.ascontiguousarray(prefix_normalize(queries, d), dtype=np.float32)
        index.search(q[:1], k)  # warm-up
        for b in batch_sizes:
            seconds = _timed_batches(partial(index.search, k=k), q, b)
            out[f"{prefix}/batch{b}_ms@{d}"] = 1000.0 * seconds / len(q)
            out[f"{prefix}/qps_batch{b}@{d}"] = len(q) / seconds
    return out


def embedding_memory(counts: dict[str, int], dims: Sequence[int], prefix: str = "memory") -> dict[str, float]:
    """MB to store ``counts[scale]`` vectors of each scale at each dim, as float32 and float16."""
    out: dict[str, float] = {}
    for scale, n in counts.items():
        for d in dims:
            out[f"{prefix}/{scale}/float32_mb@{d}"] = n * d * 4 / MB
            out[f"{prefix}/{scale}/float16_mb@{d}"] = n * d * 2 / MB
    return out


def folder_mb(path: str | os.PathLike[str]) -> float:
    """Total size in MB of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / MB


def checkpoint_mb(model: CorpusEncoder) -> float | None:
    """MB on disk of the model saved to a temporary folder (``MultiScaleEncoder.save`` for MuSES,
    ``SentenceTransformer.save`` for a flat model); None for another kind of encoder."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, MusesCorpusEncoder):
            model.encoder.save(tmp)
        elif isinstance(model, FlatCorpusEncoder):
            model.model.save(tmp, safe_serialization=True)
        else:
            return None
        return folder_mb(tmp)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def machine_info() -> dict[str, Number]:
    """CPU count, torch and faiss threads, processor and versions."""
    info: dict[str, Number] = {
        "machine/cpu_count": os.cpu_count() or 0,
        "machine/torch_threads": torch.get_num_threads(),
        "machine/processor": platform.processor() or platform.machine(),
        "machine/python": platform.python_version(),
        "machine/torch": torch.__version__,
        "machine/cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        import faiss

        info["machine/faiss_threads"] = faiss.omp_get_max_threads()
        info["machine/faiss"] = faiss.__version__
    except ImportError:  # pragma: no cover - faiss is installed in the dev environment
        pass
    return info


def measure_efficiency(
    models: Sequence[CorpusEncoder],
    docs: Sequence[Document],
    queries: Sequence[str] | None = None,
    dims: Sequence[int] | None = None,
    k: int = 10,
    repeats: int = 1,
    with_tokens: bool = True,
    batch_sizes: Sequence[int] = (1, 32),
) -> dict[str, Number]:
    """All efficiency numbers for ``models`` on ``docs`` (see the module doc for the keys).

    Args:
        models: the encoders to compare (the first is the reference of ``speedup/...``); names must differ.
        docs: the corpus.
        queries: query texts for the latency numbers (default: the first 200 sentences of the corpus).
        dims: Matryoshka dims (default: the first model's).
        k: neighbours per search.
        repeats: encode timings are the best of this many runs.
        with_tokens: also time (and count the memory of) the token scale.
        batch_sizes: queries per call for the query latencies.
    """
    if len({m.name for m in models}) != len(models):
        raise ValueError("models must have distinct names.")
    texts = list(queries) if queries is not None else [s for d in docs for s in d.sentence_texts()][:200]
    dims = list(dims or models[0].dims)
    out: dict[str, Number] = {"n_docs": len(docs), "n_queries": len(texts), "k": k, "repeats": repeats}
    timing, vectors = encode_throughput(models, docs, with_tokens, repeats)
    out.update(timing)
    for m in models:
        vec = vectors[m.name]
        out.update(query_encode_latency(m, texts, batch_sizes))
        q = m.encode_queries(texts)
        for scale, corpus in (("document", vec.document), ("sentence", vec.sentence)):
            out.update(search_latency(corpus, q, dims, k, batch_sizes, prefix=f"{m.name}/search/{scale}"))
        counts = {"document": len(vec.document), "sentence": len(vec.sentence)}
        if vec.token is not None:
            counts["token"] = len(vec.token)
        out.update({f"{m.name}/n_{s}": n for s, n in counts.items()})
        out.update(embedding_memory(counts, dims, prefix=f"{m.name}/memory"))
        size = checkpoint_mb(m)
        if size is not None:
            out[f"{m.name}/checkpoint_mb"] = size
    out.update(machine_info())
    out["peak_rss_mb"] = peak_rss_mb()
    return out

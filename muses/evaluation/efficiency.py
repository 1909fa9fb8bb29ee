"""Efficiency measurements (benchmarks, not tests): encode throughput, search latency, memory, checkpoint size.

The library functions behind ``muses bench ...`` and the ``efficiency`` task of ``muses eval all``:

- :func:`measure_efficiency` (``muses bench efficiency``, the ``efficiency`` task): every model through the
  :class:`~muses.evaluation.corpus.CorpusEncoder` interface, in the same process and run, on the same documents;
  its primitives :func:`encode_throughput`, :func:`query_encode_latency`, :func:`search_latency`,
  :func:`embedding_memory`, :func:`checkpoint_mb`, :func:`peak_rss_mb`, :func:`machine_info`.
- :func:`one_pass_speedup` (``muses bench encode``): MuSES's single pass against sentence-transformers encoding
  documents and sentences apart.
- :func:`index_tradeoffs` (``muses bench search``): the store's index kinds per Matryoshka dim: build time, size,
  latency, recall against the exact index.
- :func:`model_throughput` (``muses bench moe``): tokens per second and total and active parameters of several
  encoders (dense vs Mixture-of-Experts).

The keys of :func:`measure_efficiency`, where a MuSES model (one pass gives documents, sentences and tokens) and a
flat baseline (documents, then sentences, then tokens, each its own pass) do the same work:

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
anywhere: read the numbers as ratios between models (or sides) of one run; the recorded runs are in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from muses.errors import InputError, MusesError
from muses.evaluation.corpus import (
    CorpusEncoder,
    CorpusVectors,
    EmbeddingCache,
    FlatCorpusEncoder,
    MusesCorpusEncoder,
)
from muses.scoring import prefix_normalize
from muses.types import Document

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder
    from muses.store.index import VectorIndex

MB = 1e6
Number = float | int | str


def _timed_batches(fn: Callable[[Any], object], items: Sequence[Any] | np.ndarray, batch_size: int) -> float:
    """Seconds to call ``fn`` on consecutive slices of ``batch_size`` items."""
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        fn(items[i : i + batch_size])
    return time.perf_counter() - t0


def best_seconds(fn: Callable[[], object], repeats: int = 1) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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


# ---------------------------------------------------------------------------------------------- muses bench encode


def one_pass_speedup(
    encoder: MultiScaleEncoder,
    data_dir: str | os.PathLike[str] | None = None,
    n_docs: int = 300,
    repeats: int = 3,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Time MuSES (documents + sentences, and + tokens, one pass; documents + sentences in local context, one pass
    and its top layers again per sentence) against sentence-transformers (two passes).

    Both sides embed the same first ``n_docs`` SciFact abstracts (``title. text``, by id) and the same sentences
    (MuSES's segmentation), in the same process, alternating, after a warm-up; each keeps its best of ``repeats``.
    Two sentence-transformers baselines: as configured (``max_seq_length`` 256 for all-MiniLM-L6-v2, so long
    abstracts are truncated and their tail is never embedded) and with ``max_seq_length`` raised to cover whole
    documents (up to the model's position limit). MuSES always embeds the whole text.

    Returns:
        ``{"n_docs", "n_sentences", "n_doc_tokens", "docs_over_st_max_seq_length", "seconds": {side: s},
        "speedup_vs_st": {muses side: ratio}, "speedup_vs_st_whole_docs": {...}, "batch_size", "repeats",
        "torch_threads", "device", "machine"}``; a ratio > 1: MuSES is faster.
    """
    from muses.data.beir import load_beir
    from muses.text import make_document

    corpus = load_beir("scifact", split="test", data_dir=data_dir).corpus
    ids = sorted(corpus)[:n_docs]
    texts = [(corpus[i]["title"] + ". " + corpus[i]["text"]).strip() for i in ids]
    docs = [make_document(t, id=i) for t, i in zip(texts, ids, strict=True)]
    sentences = [s for d in docs for s in d.sentence_texts()]
    st = encoder.as_sentence_transformer()
    tokenized = encoder.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def muses_pass(scales: tuple[str, ...], context: str = "document") -> Callable[[], object]:
        return lambda: encoder.encode_documents(
            docs, scales=scales, context=context, batch_size=batch_size, show_progress_bar=False
        )

    def st_two_pass() -> None:
        st.encode(texts, batch_size=batch_size, show_progress_bar=False)
        st.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    def st_two_pass_whole_docs() -> None:
        configured = st.max_seq_length
        st.max_seq_length = min(max(len(t) for t in tokenized) + 2, encoder.tokenizer.model_max_length)
        try:
            st_two_pass()
        finally:
            st.max_seq_length = configured

    sides: dict[str, Callable[[], object]] = {
        "st_docs_then_sentences": st_two_pass,
        "st_whole_docs_then_sentences": st_two_pass_whole_docs,
        "muses_docs_sentences": muses_pass(("document", "sentence")),
        "muses_docs_sentences_tokens": muses_pass(("document", "sentence", "token")),
    }
    try:
        encoder.check_context("local")
        sides["muses_docs_local_sentences"] = muses_pass(("document", "sentence"), "local")
    except MusesError:  # not a BERT-style encoder run by PyTorch: no local side
        pass
    for fn in sides.values():  # warm-up
        fn()
    seconds = dict.fromkeys(sides, float("inf"))
    for _ in range(repeats):  # interleaved, so that machine noise hits every side alike; best of `repeats`
        for name, fn in sides.items():
            seconds[name] = min(seconds[name], best_seconds(fn))
    baseline = seconds["st_docs_then_sentences"]
    whole = seconds["st_whole_docs_then_sentences"]
    return {
        "n_docs": len(docs),
        "n_sentences": len(sentences),
        "n_doc_tokens": sum(len(t) for t in tokenized),
        "docs_over_st_max_seq_length": sum(len(t) + 2 > (st.max_seq_length or 0) for t in tokenized),
        "seconds": seconds,
        "speedup_vs_st": {k: baseline / v for k, v in seconds.items() if k.startswith("muses")},
        "speedup_vs_st_whole_docs": {k: whole / v for k, v in seconds.items() if k.startswith("muses")},
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": str(encoder.device),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def backend_speedup(
    encoders: dict[str, MultiScaleEncoder],
    data_dir: str | os.PathLike[str] | None = None,
    n_docs: int = 300,
    n_queries: int = 200,
    repeats: int = 3,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Time the same model on several transformer backends (``{backend: encoder}``, ``torch`` among them).

    Two workloads, interleaved across backends so that machine noise hits all alike, best of ``repeats``: the first
    ``n_docs`` SciFact abstracts at all three scales in one pass (long texts: most windows are full), and
    ``n_queries`` SciFact queries encoded one at a time (short texts, batch 1: the service's query path).

    Returns:
        ``{"seconds": {workload: {backend: s}}, "speedup_vs_torch": {workload: {backend: ratio}}, "n_docs",
        "n_windows", "n_queries", "threads", "machine", ...}``; a ratio > 1: faster than PyTorch.
    """
    from muses.data.beir import load_beir
    from muses.evaluation.hierarchy import scifact_documents

    if "torch" not in encoders:
        raise InputError("backend_speedup needs a torch encoder: its times are the baseline of the ratios.")
    docs = scifact_documents(data_dir, n_docs)
    queries = list(load_beir("scifact", split="test", data_dir=data_dir).queries.values())[:n_queries]
    scales = ("document", "sentence", "token")

    def corpus(enc: MultiScaleEncoder) -> Callable[[], object]:
        return lambda: enc.encode_documents(docs, scales=scales, batch_size=batch_size, show_progress_bar=False)

    def one_by_one(enc: MultiScaleEncoder) -> Callable[[], object]:
        return lambda: [enc.encode_queries([q]) for q in queries]

    workloads = {"corpus_3_scales": corpus, "queries_batch_1": one_by_one}
    seconds = {w: dict.fromkeys(encoders, float("inf")) for w in workloads}
    for make in workloads.values():  # warm-up
        for enc in encoders.values():
            make(enc)()
    for _ in range(repeats):
        for w, make in workloads.items():
            for name, enc in encoders.items():
                seconds[w][name] = min(seconds[w][name], best_seconds(make(enc)))
    first = next(iter(encoders.values()))
    return {
        "n_docs": len(docs),
        "n_windows": len(first.window_inputs([d.text for d in docs])),
        "n_queries": len(queries),
        "seconds": seconds,
        "speedup_vs_torch": {w: {b: s["torch"] / v for b, v in s.items()} for w, s in seconds.items()},
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


# ---------------------------------------------------------------------------------------------- muses bench search


def _per_query_seconds(index: VectorIndex, q: np.ndarray, k: int, batch: int) -> list[float]:
    """Seconds per query of each ``index.search`` call on consecutive batches of ``batch`` queries."""
    out = []
    for b in range(0, len(q), batch):
        t = time.perf_counter()
        index.search(q[b : b + batch], k)
        out.append((time.perf_counter() - t) / len(q[b : b + batch]))
    return out


def index_tradeoffs(
    model: CorpusEncoder,
    data_dir: str | os.PathLike[str] | None = None,
    dims: Sequence[int] = (64, 384),
    kinds: Sequence[str] | None = None,
    cache: EmbeddingCache | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Latency, memory and recall of the store's index kinds at each Matryoshka dim, on SciFact.

    Vectors: the sentence vectors of the SciFact corpus (from ``cache`` when it holds them); queries: the SciFact
    test claims. For each dim and each index kind (``kinds``, default every one of
    :data:`muses.store.index.INDEX_KINDS`: ``flat`` exact, ``hnsw``, ``ivfpq``): the build time, the index size, the
    search latency per query at batch 1 (median and p99) and at batch 32 (per query), and the recall@``k`` against
    the exact index at the same dim (NaN when ``flat`` is not among ``kinds`` or comes later). Latencies are also
    given as a ratio to ``flat`` at the largest dim, measured in the same run.

    Returns:
        ``{"setup": {"vectors", "queries", "k", "model"}, "rows": [one dict per (dim, kind)]}``.
    """
    from muses.data.beir import load_beir
    from muses.evaluation.retrieval import beir_documents
    from muses.store.index import INDEX_KINDS, VectorIndex

    data = load_beir("scifact", "test", data_dir)
    vecs = (cache or EmbeddingCache(None)).corpus(model, beir_documents(data.corpus))
    queries = (cache or EmbeddingCache(None)).queries(model, list(data.queries.values()))
    rows: list[dict[str, Any]] = []
    for dim in dims:
        x = prefix_normalize(vecs.sentence, dim).astype(np.float32)
        q = prefix_normalize(queries, dim).astype(np.float32)
        exact: np.ndarray | None = None
        for kind in kinds or INDEX_KINDS:
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
            one = _per_query_seconds(index, q, k, 1)
            rows.append(
                {
                    "dim": dim,
                    "index": index.kind,
                    "build_s": round(build, 3),
                    "index_mb": round(index.memory_bytes() / MB, 2),
                    "raw_vectors_mb": round(x.nbytes / MB, 2),
                    "ms_per_query_b1_p50": round(1000 * float(np.median(one)), 3),
                    "ms_per_query_b1_p99": round(1000 * float(np.percentile(one, 99)), 3),
                    "ms_per_query_b32": round(1000 * float(np.mean(_per_query_seconds(index, q, k, 32))), 3),
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


# ---------------------------------------------------------------------------------------------- muses bench moe


def model_throughput(
    models: Mapping[str, MultiScaleEncoder], n_articles: int = 200, repeats: int = 3, batch_size: int = 16
) -> dict[str, Any]:
    """Tokens/s of each model on ``n_articles`` held-out Wikipedia articles, and total and active parameters.

    Every model encodes the same articles (token states, one pass each); the models take turns within each repeat
    and each keeps its best time, so a load change on a shared machine hits all of them alike. Speed is a ratio to
    the first model, the baseline: the time to encode the same texts.

    Returns:
        ``{"articles", "tokens" (the baseline's), "threads", "models": {name: {"seconds", "tokens", "tokens_per_s",
        "speed_vs_baseline", "params_total", "params_active"}}}``.

    Raises:
        InputError: no model.
    """
    from muses.evaluation.routing import routing_articles
    from muses.scratch.model import count_parameters

    if not models:
        raise InputError("bench moe needs at least one model (the first is the baseline).")
    texts = [a.text for a in routing_articles(n_articles)]
    best = dict.fromkeys(models, float("inf"))
    tokens = dict.fromkeys(models, 0)  # per model: the models need not share a tokenizer
    for enc in models.values():
        enc.eval()
    with torch.inference_mode():
        for enc in models.values():  # warm-up
            enc.token_states(texts[:8], batch_size=batch_size, branch=False)
        for _ in range(repeats):
            for name, enc in models.items():
                t0 = time.perf_counter()
                states = enc.token_states(texts, batch_size=batch_size, branch=False)
                best[name] = min(best[name], time.perf_counter() - t0)
                tokens[name] = sum(int(s.content.shape[0]) for s in states)
    first = next(iter(models))
    out: dict[str, Any] = {
        "articles": len(texts),
        "tokens": tokens[first],
        "threads": torch.get_num_threads(),
        "models": {},
    }
    for name, enc in models.items():
        params = count_parameters(enc.transformer.auto_model)
        out["models"][name] = {
            "seconds": best[name],
            "tokens": tokens[name],
            "tokens_per_s": tokens[name] / best[name],
            "speed_vs_baseline": best[first] / best[name],
            "params_total": params["total"],
            "params_active": params["active"],
        }
    return out

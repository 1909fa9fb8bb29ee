"""The store at scale: build, open, memory, latency, recall and commit time per size, and quality on SciFact.

Run from the root of a source checkout (``muses bench store`` points here)::

    python -m benchmarks.store_scale scale --sizes 10000,100000 --json docs/reports/store/scale.json
    python -m benchmarks.store_scale quality --json docs/reports/store/quality.json

``scale``: sizes count sentences. The vectors are synthesised from real ones: ``--real`` SciFact abstracts are
encoded once (documents, sentences, tokens at 384d); a synthetic document is a real one whose every vector
(document, sentences, tokens) is pulled toward another real document (``--mix`` times that document's vector, a
different partner per copy) and shifted by a small Gaussian offset (``--noise`` times a random unit vector),
renormalised. Copies keep the real documents' sentence counts and token counts, and differ from each other in
every Matryoshka prefix, as real documents do. (The first version used a Gaussian offset alone: it spreads over all
384 dims, so copies of one document differ mostly outside a 64d prefix, the likely reason a 64d funnel's recall@10
fell to 0.17 at 10^5.) Queries are real SciFact test claims (their vectors and token vectors, encoded once; latency
excludes encoding). Recall@10 is measured against exhaustive scoring of the same vectors with the
same functions (:mod:`muses.scoring`), on ``--recall-queries`` queries.

``quality``: the whole SciFact corpus in stores of each configuration; fusion, document, sentence and token
nDCG@10 over the 300 test claims, against the evaluation suite's exhaustive fusion of the same model.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from muses.data.beir import load_beir
from muses.encoder import MultiScaleEncoder
from muses.errors import validation_problems
from muses.evaluation.metrics import query_ndcg
from muses.evaluation.retrieval import beir_documents
from muses.scoring import candidate_pool, fuse, prefix_normalize, segment_max, sentence_maxsim, token_maxsim
from muses.store import EncodedQuery, MemoryStore, StoreConfig
from muses.types import MultiScaleEmbedding, SearchScale

SCALES: tuple[SearchScale, ...] = ("document", "sentence", "token", "fusion")
SCALE_CONFIG = {
    "funnel_dim": 128,
    "index": "hnsw",
    "token_index": "ivfpq",
    "token_index_dim": 64,
    "token_dtype": "int8",
    "nlist": 1024,
    "funnel_depth": 100,
    "hnsw_ef_construction": 200,
}
"""The configuration benchmarked at scale: HNSW at 128d rescored at 384d (at 64d the funnel's sentence recall@10 at 10^5
was 0.92, at 128d 0.99), built with efConstruction 200 and searched for 100 x k candidates (FAISS's default 40 and
40 x k left the sentence recall@10 at 0.78 at 10^6; docs/benchmarks.md), IVF-PQ token candidates at 64d, int8
tokens."""


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def _encode_corpus(
    encoder: MultiScaleEncoder, n: int | None, data_dir: str | None, cache: Path | None = None
) -> tuple[list, Any]:
    """``n`` SciFact abstracts (all: None) encoded at every scale: those relevant to a test claim first (so every claim
    can be judged on a slice), then the others in file order. ``cache``: a pickle of the encodings, written on first
    use and read after (the same model only: its fingerprint is checked)."""
    data = load_beir("scifact", "test", data_dir)
    relevant = {d for rels in data.qrels.values() for d, r in rels.items() if r > 0}
    order = sorted(data.corpus, key=lambda d: d not in relevant)  # every test claim's abstracts first, then the rest
    data = dataclasses.replace(data, corpus={d: data.corpus[d] for d in order})
    docs = beir_documents(data.corpus)
    if cache is not None and cache.exists():
        fingerprint, embs = pickle.loads(cache.read_bytes())
        if fingerprint == encoder.fingerprint() and (n or len(docs)) <= len(embs):
            return embs[:n] if n else embs, data
    embs = encoder.encode_documents(docs[:n] if n else docs, scales=("document", "sentence", "token"), batch_size=16)
    if cache is not None:
        cache.write_bytes(pickle.dumps((encoder.fingerprint(), embs)))
    return embs, data


def _queries(store: MemoryStore, texts: Sequence[str]) -> list[EncodedQuery]:
    return store.encode_queries(list(texts), with_tokens=True)


# ---------------------------------------------------------------------------------------------------- quality
def quality(args: argparse.Namespace) -> dict[str, Any]:
    """SciFact test nDCG@10 per scale, per store configuration, and the evaluation suite's exhaustive fusion."""
    encoder = MultiScaleEncoder.from_base(args.model)
    t0 = time.perf_counter()
    embs, data = _encode_corpus(encoder, args.n_docs, args.data_dir, args.cache)
    encode_s = time.perf_counter() - t0
    configs: dict[str, dict[str, Any]] = {
        "exact (flat, float32 tokens)": {},
        "int8 tokens": {"token_dtype": "int8"},
        "int8 tokens, pool 8": {"token_dtype": "int8", "token_pool": 8},
        "scale config": SCALE_CONFIG | {"nlist": 64},
    }
    qids = list(data.queries)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="muses-store-quality-"))
    try:
        queries = None
        for name, settings in configs.items():
            store = MemoryStore.create(work / str(len(rows)), encoder, StoreConfig(**settings), model=args.model)
            for i in range(0, len(embs), 500):
                store.add_encoded(embs[i : i + 500])
            queries = queries or _queries(store, [data.queries[q] for q in qids])
            row: dict[str, Any] = {"config": name, "settings": settings}
            for scale in SCALES:
                # sentence hits rank documents by their best sentence: the first 10 distinct documents
                k = 100 if scale == "sentence" else 10
                runs = [list(dict.fromkeys(h.id for h in store.search(q, scale, k=k)))[:10] for q in queries]
                row[f"ndcg@10 {scale}"] = round(
                    float(np.mean([query_ndcg(data.qrels[q], r, 10) for q, r in zip(qids, runs, strict=True)])), 4
                )
            token_bytes = store._con.execute("SELECT SUM(LENGTH(vector)) FROM tokens").fetchone()[0]
            row["token_bytes"] = int(token_bytes)
            rows.append(row)
            store.close()
            print(json.dumps(row), flush=True)
        assert queries is not None
        suite = _suite_fusion(embs, queries, data, qids, StoreConfig().fusion_weights)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = rows[0]["token_bytes"]
    for row in rows:
        row["token_storage_vs_exact"] = round(ref / row["token_bytes"], 2)
        row["fusion_vs_suite"] = round(row["ndcg@10 fusion"] - suite, 4)
    return {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "documents": len(embs),
        "queries": len(qids),
        "encode_seconds": round(encode_s, 1),
        "suite_exhaustive_fusion_ndcg@10": round(suite, 4),
        "rows": rows,
    }


def _suite_fusion(embs: list, queries: list[EncodedQuery], data: Any, qids: list[str], weights: dict) -> float:
    """The evaluation suite's fusion at 384d, exhaustively (:func:`muses.evaluation.retrieval.score_queries`'s
    steps): every document scored by document and sentence max-sim, their top 100 pooled, token MaxSim over the
    unpooled float32 token vectors of the pool, min-max weighted sum with the store's weights."""
    ids = [str(e.doc.id) for e in embs]
    dim = embs[0].document.shape[-1]
    docs = prefix_normalize(np.stack([e.document for e in embs]), dim)
    sents = prefix_normalize(np.concatenate([e.sentences for e in embs]), dim)
    sent_doc = np.repeat(np.arange(len(embs)), [len(e.sentences) for e in embs])
    tokens = np.concatenate([e.tokens for e in embs]).astype(np.float16)
    token_doc = np.repeat(np.arange(len(embs)), [len(e.tokens) for e in embs])
    q = prefix_normalize(np.stack([x.vector for x in queries]), dim)
    dense = [q @ docs.T, sentence_maxsim(q, sents, sent_doc, len(embs))]
    pool = candidate_pool(dense, 100)
    pooled = {
        name: np.where(pool >= 0, np.take_along_axis(s, np.maximum(pool, 0), axis=1), -np.inf)
        for name, s in zip(("document", "sentence"), dense, strict=True)
    }
    pooled["token"] = token_maxsim([x.tokens for x in queries if x.tokens is not None], tokens, token_doc, pool)
    fused = fuse(pooled, weights)
    scores = []
    for i, qid in enumerate(qids):
        order = [int(pool[i, j]) for j in np.argsort(-fused[i], kind="stable") if pool[i, j] >= 0][:10]
        scores.append(query_ndcg(data.qrels[qid], [ids[j] for j in order], 10))
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------------- scale
def _synthesise(
    real: list[MultiScaleEmbedding], n_sentences: int, noise: float, mix: float, seed: int, batch: int = 2000
) -> Iterator[list[MultiScaleEmbedding]]:
    """Copies of the real documents until ``n_sentences`` sentences, ``batch`` documents at a time (so a size of
    10^6 never holds all its vectors at once); copy ``i`` of a document adds ``mix`` times a random other real
    document's vector ``[D]`` and ``noise`` times a random unit vector to all its vectors."""
    rng = np.random.default_rng(seed)
    out, total, i = [], 0, 0
    dim = real[0].document.shape[-1]
    while total < n_sentences:
        e = real[i % len(real)]
        offset = np.asarray(rng.standard_normal(dim), dtype=np.float32)
        offset *= noise / np.linalg.norm(offset)
        if i >= len(real):  # the first pass keeps the real documents as they are, bar the offset
            partner = real[(i + 1 + int(rng.integers(len(real) - 1))) % len(real)]
            offset = (offset + mix * partner.document).astype(np.float32)
        out.append(_offset(e, offset, f"{e.doc.id}~{i}"))
        total += len(e.sentences)
        i += 1
        if len(out) == batch:
            yield out
            out = []
    if out:
        yield out


def _offset(e: MultiScaleEmbedding, offset: np.ndarray, new_id: str) -> MultiScaleEmbedding:
    from dataclasses import replace

    def shift(x: np.ndarray) -> np.ndarray:
        y = x + offset
        return (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)

    doc = replace(e.doc, id=new_id)
    assert e.tokens is not None
    return replace(e, doc=doc, document=shift(e.document), sentences=shift(e.sentences), tokens=shift(e.tokens))


def _percentiles(xs: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(xs, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(xs, 99)) * 1e3, 2),
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _exhaustive(queries: list[EncodedQuery], store: MemoryStore, pool: int, chunk: int = 10000) -> dict[str, list]:
    """Top 10 ids per scale per query by exhaustive scoring of the stored vectors (read back from SQLite, so the
    same int8 token vectors and the same pooling) with :mod:`muses.scoring`, ``chunk`` documents at a time (a
    10^6-sentence store's token vectors would not fit in memory as float32 at once)."""
    con = store._con
    ids = [r[0] for r in con.execute("SELECT id FROM documents ORDER BY row")]
    all_rows = np.asarray([r[0] for r in con.execute("SELECT row FROM documents ORDER BY row")], dtype=np.int64)
    qv = np.stack([prefix_normalize(q.vector, store.dim) for q in queries])
    q_tokens = [q.tokens for q in queries if q.tokens is not None]
    assert len(q_tokens) == len(queries)
    n = len(all_rows)
    d, smax, t_all = (np.full((len(queries), n), -np.inf, dtype=np.float32) for _ in range(3))
    best_s = [np.zeros(0, dtype=np.float32)] * len(queries)  # each query's best sentence scores so far
    best_k: list[list[str]] = [[] for _ in queries]  # and their keys
    for a in range(0, n, chunk):
        rows = all_rows[a : a + chunk]
        docs = store._fetch("document", rows)
        sents = store._fetch("sentence", rows)
        toks = store._fetch("token", rows)
        seg_s, seg_t = np.searchsorted(rows, sents.doc), np.searchsorted(rows, toks.doc)
        d[:, a : a + len(rows)] = qv @ prefix_normalize(docs.vectors, store.dim).T
        s = qv @ prefix_normalize(sents.vectors, store.dim).T
        smax[:, a : a + len(rows)] = segment_max(s, seg_s, len(rows))
        cand = np.broadcast_to(np.arange(len(rows)), (len(queries), len(rows)))
        t_all[:, a : a + len(rows)] = token_maxsim(q_tokens, toks.vectors, seg_t, np.ascontiguousarray(cand))
        keys = [f"{ids[a + seg_s[i]]}#{int(sents.sub[i])}" for i in range(len(seg_s))]
        for j in range(len(queries)):
            top = np.argsort(-s[j], kind="stable")[:10]
            merged = np.concatenate([best_s[j], s[j, top]])
            order = np.argsort(-merged, kind="stable")[:10]
            pooled = best_k[j] + [keys[i] for i in top]
            best_s[j], best_k[j] = merged[order], [pooled[i] for i in order]
    out: dict[str, list] = {s: [] for s in SCALES}
    for j in range(len(queries)):
        out["document"].append([ids[i] for i in np.argsort(-d[j], kind="stable")[:10]])
        out["sentence"].append(best_k[j])
        out["token"].append([ids[i] for i in np.argsort(-t_all[j], kind="stable")[:10]])
        cand = np.union1d(
            np.union1d(np.argsort(-d[j])[:pool], np.argsort(-smax[j])[:pool]), np.argsort(-t_all[j])[:pool]
        )
        per = {"document": d[j, cand][None], "sentence": smax[j, cand][None], "token": t_all[j, cand][None]}
        fused = fuse(per, store.config.fusion_weights)[0]
        out["fusion"].append([ids[cand[i]] for i in np.argsort(-fused, kind="stable")[:10]])
    return out


def scale(args: argparse.Namespace) -> dict[str, Any]:
    encoder = MultiScaleEncoder.from_base(args.model)
    t0 = time.perf_counter()
    real, data = _encode_corpus(encoder, args.real, args.data_dir, args.cache)
    encode_s = time.perf_counter() - t0
    texts = list(data.queries.values())[: args.queries]
    queries: list[EncodedQuery] = []
    rows = []
    for size in [int(x) for x in args.sizes.split(",")]:
        work = Path(tempfile.mkdtemp(prefix="muses-store-scale-", dir=args.work))
        path = work / "store"
        config = StoreConfig(**{**SCALE_CONFIG, **args.set}, snapshot_every=10**9)
        try:
            t = time.perf_counter()
            store = MemoryStore.create(path, encoder, config, model=args.model)
            for i, batch in enumerate(_synthesise(real, size, args.noise, args.mix, seed=size)):
                store.add_encoded(batch)
                if i == 0:
                    store.checkpoint()  # trains IVF-PQ on the first batch, as a store's first snapshot would
            store.checkpoint()
            build_s = time.perf_counter() - t
            sentences = store.stats()["sentences"]
            store.close()
            del store
            gc.collect()
            queries = queries or _queries(MemoryStore.open(path, encoder), texts)  # encoded once, not timed
            t = time.perf_counter()
            store = MemoryStore.open(path, encoder)
            store.search(queries[0], "document", k=10)  # loads the snapshot
            open_s = time.perf_counter() - t
            latency = {}
            for scale_name in args.scales:
                times = []
                for q in queries:
                    t = time.perf_counter()
                    store.search(q, scale_name, k=10)
                    times.append(time.perf_counter() - t)
                latency[scale_name] = _percentiles(times)
            exact = _exhaustive(queries[: args.recall_queries], store, 100)
            recall = {}
            for scale_name in args.scales:
                hits = []
                for q, want in zip(queries[: args.recall_queries], exact[scale_name], strict=True):
                    got = store.search(q, scale_name, k=10)
                    keys = [f"{h.id}#{h.sentence}" if scale_name == "sentence" else h.id for h in got]
                    hits.append(len(set(keys) & set(want)) / len(want))
                recall[scale_name] = round(float(np.mean(hits)), 4)
            commits = []
            for j in range(5):
                t = time.perf_counter()
                store.add_encoded([_offset(real[j], np.zeros_like(real[j].document), f"commit-{j}")])
                commits.append(time.perf_counter() - t)
            stats = store.stats()
            disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            ram = sum(x["bytes"] for x in stats["index"].values())
            row = {
                "sentences": sentences,
                "documents": stats["documents"],
                "token_vectors": stats["token_vectors"],
                "build_s": round(build_s, 1),
                "open_s": round(open_s, 2),
                "disk_bytes_per_sentence": round(disk / sentences),
                "index_ram_bytes_per_sentence": round(ram / sentences),
                "process_peak_rss_mb": round(_rss_mb()),
                "latency": latency,
                "recall@10": recall,
                "commit_one_document": _percentiles(commits),
                "index": stats["index"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            store.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "config": {**SCALE_CONFIG, **args.set},
        "real_documents": len(real),
        "noise": args.noise,
        "mix": args.mix,
        "queries": len(texts),
        "encode_seconds": round(encode_s, 1),
        "rows": rows,
    }


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, the value read as JSON when it is JSON (``128``, ``null``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. funnel_dim=128")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _scales(text: str) -> tuple[SearchScale, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in SCALES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown scale(s) {bad}; choose from {', '.join(SCALES)}")
    return names  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_scale", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("scale", "quality"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="default")
        p.add_argument("--data-dir", default=None)
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--cache", type=Path, default=None, help="pickle of the corpus encodings (reused if present)")
        if name == "scale":
            p.add_argument("--sizes", default="10000,100000")
            p.add_argument("--real", type=int, default=1000, help="real SciFact abstracts encoded")
            p.add_argument("--noise", type=float, default=0.1, help="per-copy random offset (norm)")
            p.add_argument("--mix", type=float, default=0.5, help="weight of the partner document per copy")
            p.add_argument("--queries", type=int, default=200)
            p.add_argument("--recall-queries", type=int, default=30)
            p.add_argument("--work", default=None, help="folder for the temporary stores")
            p.add_argument(
                "--set",
                action="append",
                type=_setting,
                default=[],
                metavar="KEY=VALUE",
                help="a StoreConfig setting over the benchmarked one, e.g. --set funnel_dim=128 (repeatable)",
            )
            p.add_argument("--scales", type=_scales, default=SCALES, help="scales timed and recalled (default: all)")
        else:
            p.add_argument("--n-docs", type=int, default=None, help="N abstracts, relevant first (default: all)")
    args = parser.parse_args(argv)
    if args.what == "scale":
        args.set = dict(args.set)
        try:
            StoreConfig(**{**SCALE_CONFIG, **args.set})
        except ValidationError as e:
            parser.error(f"--set: {validation_problems(e.errors())}")
    result = scale(args) if args.what == "scale" else quality(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

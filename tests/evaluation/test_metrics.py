"""Ranking metrics checked against pytrec_eval (trec_eval) on SciFact, and against hand-computed values."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from scipy import stats

from muses.data.beir import load_beir
from muses.errors import InputError
from muses.evaluation.metrics import (
    evaluate_run,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    pearson,
    precision_at_k,
    rank_docs,
    recall_at_k,
    run_from_scores,
    spearman,
)

KS = (1, 3, 5, 10, 100)
TOL = 1e-6
SciFactRun = tuple[dict[str, dict[str, int]], list[str], list[str], np.ndarray]
TREC_MEASURES = {
    "ndcg": "ndcg_cut",
    "recall": "recall",
    "precision": "P",
    "map": "map_cut",
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The shared data folder: $MUSES_DATA_DIR, else ``<repo>/../shared/data``."""
    path = Path(os.environ.get("MUSES_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"data folder {path} not found; set MUSES_DATA_DIR")
    return path


@pytest.fixture(scope="module")
def scifact(data_dir: Path) -> SciFactRun:
    """SciFact test qrels with graded relevance, and a seeded score matrix [300, 5183] with many ties.

    Relevances are made graded (1 or 2) and a few judged-non-relevant (0) docs are added, so that nDCG's
    gains matter. Scores are rounded to 2 decimals (ties everywhere), and the relevant docs of about half the
    queries are boosted so that every metric is far from 0.
    """
    ds = load_beir("scifact", "test", data_dir=data_dir)
    rng = np.random.default_rng(1234)
    query_ids = list(ds.qrels)
    doc_ids = list(ds.corpus)
    col = {d: j for j, d in enumerate(doc_ids)}
    qrels: dict[str, dict[str, int]] = {}
    for qid, rels in ds.qrels.items():
        qrels[qid] = {d: int(rng.integers(1, 3)) for d in rels}
        for j in rng.choice(len(doc_ids), 2, replace=False):
            qrels[qid].setdefault(doc_ids[j], 0)
    scores = np.round(rng.random((len(query_ids), len(doc_ids))), 2)
    for i, qid in enumerate(query_ids):
        if rng.random() < 0.5:
            for d in ds.qrels[qid]:
                scores[i, col[d]] = np.round(scores[i, col[d]] + rng.choice([0.5, 0.95, 0.99]), 2)
    return qrels, query_ids, doc_ids, scores


def _trec_means(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """pytrec_eval's per-query measures, averaged over the queries with a relevant doc, as ``name@k`` keys."""
    cuts = ",".join(str(k) for k in KS)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{cuts}" for m in TREC_MEASURES.values()})
    per_query = evaluator.evaluate(run)
    judged = [q for q in per_query if any(rel > 0 for rel in qrels[q].values())]
    return {
        f"{name}@{k}": float(np.mean([per_query[q][f"{trec}_{k}"] for q in judged]))
        for name, trec in TREC_MEASURES.items()
        for k in KS
    }


def _trec_mrr(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], k: int) -> float:
    """MRR@k via pytrec_eval: ``recip_rank`` of the run cut to its top k in trec_eval order."""
    cut = {q: {d: docs[d] for d in rank_docs(docs)[:k]} for q, docs in run.items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    judged = [q for q in per_query if any(rel > 0 for rel in qrels[q].values())]
    return float(np.mean([per_query[q]["recip_rank"] for q in judged]))


# --- against pytrec_eval on SciFact -------------------------------------------------------------------------


def test_evaluate_run_matches_pytrec_eval_on_scifact(scifact: SciFactRun) -> None:
    qrels, query_ids, doc_ids, scores = scifact
    run = run_from_scores(query_ids, doc_ids, scores, k=100)
    ours = evaluate_run(qrels, run, KS)
    expected = _trec_means(qrels, run)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=TOL), key
    for k in KS:
        assert ours[f"mrr@{k}"] == pytest.approx(_trec_mrr(qrels, run, k), abs=TOL), k
    assert 0.2 < ours["ndcg@10"] < 0.9  # non-trivial: boosted queries score, the others mostly do not
    assert len(ours) == 5 * len(KS)


def test_per_metric_helpers_match_evaluate_run(scifact: SciFactRun) -> None:
    qrels, query_ids, doc_ids, scores = scifact
    run = run_from_scores(query_ids, doc_ids, scores, k=10)
    ours = evaluate_run(qrels, run, ks=(5, 10))
    helpers = {
        "ndcg": ndcg_at_k,
        "recall": recall_at_k,
        "precision": precision_at_k,
        "mrr": mrr_at_k,
        "map": map_at_k,
    }
    for name, helper in helpers.items():
        for k in (5, 10):
            assert helper(qrels, run, k) == pytest.approx(ours[f"{name}@{k}"], abs=1e-12)


def test_top_k_run_equals_full_run_with_ties_at_the_cut(scifact: SciFactRun) -> None:
    """The top 10, ties cut as trec_eval ranks them, gives pytrec_eval's numbers on the full matrix."""
    qrels, query_ids, doc_ids, scores = scifact
    n = 40
    coarse = np.round(scores[:n], 1)  # ~11 distinct values per row: ties straddle every cut
    sub_qrels = {q: qrels[q] for q in query_ids[:n]}
    full = {
        q: {d: float(s) for d, s in zip(doc_ids, row, strict=True)} for q, row in zip(query_ids, coarse, strict=False)
    }
    top = run_from_scores(query_ids[:n], doc_ids, coarse, k=10)
    assert all(len(docs) == 10 for docs in top.values())
    for q in top:
        assert set(top[q]) == set(rank_docs(full[q])[:10])
    cuts = "1,3,5,10"
    evaluator = pytrec_eval.RelevanceEvaluator(sub_qrels, {f"{m}.{cuts}" for m in TREC_MEASURES.values()})
    per_query = evaluator.evaluate(full)
    ours = evaluate_run(sub_qrels, top, ks=(1, 3, 5, 10))
    for name, trec in TREC_MEASURES.items():
        for k in (1, 3, 5, 10):
            expected = np.mean([per_query[q][f"{trec}_{k}"] for q in sub_qrels])
            assert ours[f"{name}@{k}"] == pytest.approx(expected, abs=TOL), (name, k)


def test_missing_and_unjudged_queries(scifact: SciFactRun) -> None:
    qrels, query_ids, doc_ids, scores = scifact
    run = run_from_scores(query_ids, doc_ids, scores, k=10)
    half = dict(list(run.items())[: len(run) // 2])
    qrels_with_empty = {**qrels, "no-relevant-doc": {doc_ids[0]: 0}}
    # A query without a relevant doc is skipped, even if it is in the run.
    with_empty_run = {**run, "no-relevant-doc": {doc_ids[0]: 1.0}}
    assert evaluate_run(qrels_with_empty, with_empty_run) == evaluate_run(qrels, run)
    # A query missing from the run scores 0 by default; BEIR/pytrec_eval skip it (include_missing=False).
    skipped = evaluate_run(qrels, half, ks=(10,), include_missing=False)
    assert skipped["ndcg@10"] == pytest.approx(_trec_means(qrels, half)["ndcg@10"], abs=TOL)
    zero = evaluate_run(qrels, half, ks=(10,))
    assert zero["ndcg@10"] == pytest.approx(skipped["ndcg@10"] * len(half) / len(qrels), abs=TOL)


# --- hand-computed toy --------------------------------------------------------------------------------------


def test_three_document_toy() -> None:
    """Docs a (rel 2), b (rel 1), c (rel 0); the run ranks b > c > a."""
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}
    # DCG@3 = 1/log2(2) + 0/log2(3) + 2/log2(4) = 1 + 0 + 1 = 2
    # ideal: a, b -> IDCG@3 = 2/log2(2) + 1/log2(3) = 2 + 0.6309298 = 2.6309298
    # nDCG@3 = 2 / 2.6309298 = 0.7601875;  nDCG@1 = (1/1) / (2/1) = 0.5
    ndcg3 = 2.0 / (2.0 + 1.0 / math.log2(3))
    assert ndcg3 == pytest.approx(0.7601875, abs=1e-6)
    scores = evaluate_run(qrels, run, ks=(1, 3))
    assert scores["ndcg@1"] == pytest.approx(0.5, abs=TOL)
    assert scores["ndcg@3"] == pytest.approx(ndcg3, abs=TOL)
    assert scores["recall@1"] == pytest.approx(1 / 2, abs=TOL)  # b of {a, b}
    assert scores["recall@3"] == pytest.approx(1.0, abs=TOL)
    assert scores["precision@1"] == pytest.approx(1.0, abs=TOL)
    assert scores["precision@3"] == pytest.approx(2 / 3, abs=TOL)
    assert scores["mrr@1"] == pytest.approx(1.0, abs=TOL)
    assert scores["map@1"] == pytest.approx((1 / 1) / 2, abs=TOL)  # precision at b, over 2 relevant docs
    assert scores["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2, abs=TOL)  # precision at b and at a
    assert precision_at_k(qrels, run, 10) == pytest.approx(2 / 10, abs=TOL)  # P@k divides by k, as trec_eval


def test_ties_break_by_doc_id_descending() -> None:
    """Equal scores rank the larger doc id first (trec_eval): c, then b, then a."""
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert rank_docs(run["q"]) == ["c", "b", "a"]
    assert mrr_at_k(qrels, run, 3) == pytest.approx(1 / 3, abs=TOL)
    assert mrr_at_k(qrels, run, 2) == 0.0
    assert ndcg_at_k(qrels, run, 3) == pytest.approx(1 / math.log2(4), abs=TOL)  # a at rank 3: 1/log2(3 + 1)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.3", "recip_rank"}).evaluate(run)["q"]
    assert trec["ndcg_cut_3"] == pytest.approx(0.5, abs=TOL)
    assert trec["recip_rank"] == pytest.approx(1 / 3, abs=TOL)


def test_empty_inputs_and_bad_k() -> None:
    assert evaluate_run({}, {}) == {f"{m}@{k}": 0.0 for m in ("ndcg", "recall", "precision", "map", "mrr") for k in KS}
    with pytest.raises(InputError, match="positive integer"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, ks=(0,))


# --- run_from_scores ----------------------------------------------------------------------------------------


def test_run_from_scores_keeps_top_k() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    run = run_from_scores(["q1", "q2"], ["a", "b", "c", "d"], scores, k=2)
    assert set(run["q1"]) == {"b", "d"}
    assert set(run["q2"]) == {"a", "b"}
    assert run["q1"]["b"] == pytest.approx(0.9)
    assert all(isinstance(v, float) for docs in run.values() for v in docs.values())
    everything = run_from_scores(["q1", "q2"], ["a", "b", "c", "d"], scores, k=10)
    assert all(len(docs) == 4 for docs in everything.values())


def test_run_from_scores_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="shape"):
        run_from_scores(["q"], ["a", "b"], np.zeros((1, 3)), k=1)
    with pytest.raises(InputError, match="NaN"):
        run_from_scores(["q"], ["a"], np.array([[np.nan]]), k=1)
    with pytest.raises(InputError, match="positive integer"):
        run_from_scores(["q"], ["a"], np.zeros((1, 1)), k=0)


# --- correlations -------------------------------------------------------------------------------------------


def test_spearman_and_pearson_match_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(200)
    y = x + 0.3 * rng.random(200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson(list(x), list(y)) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(InputError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="at least 2"):
        pearson([1], [1])

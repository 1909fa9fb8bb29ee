"""Ranking metrics (nDCG, Recall, Precision, MRR, MAP at k) and correlation metrics (Spearman, Pearson).

Ranking metrics use the TREC-style dicts that pytrec_eval and BEIR use:

- ``qrels: dict[str, dict[str, int]]``: query id -> doc id -> graded relevance (``> 0`` means relevant);
- ``run: dict[str, dict[str, float]]``: query id -> doc id -> retrieval score (higher is better).

They are computed exactly as trec_eval (and so pytrec_eval and BEIR) computes them:

- a query's run is ranked by score descending, ties broken by doc id descending (trec_eval's order);
- ``ndcg@k`` is trec_eval ``ndcg_cut_k``: gain = the graded relevance, discount ``log2(rank + 1)``,
  normalised by the ideal DCG of the query's qrels cut at k;
- ``recall@k`` = relevant docs in the top k / all relevant docs of the query (``recall_k``);
- ``precision@k`` = relevant docs in the top k / k, even if fewer than k docs were retrieved (``P_k``);
- ``map@k`` = sum of precision at each relevant doc's rank in the top k / all relevant docs (``map_cut_k``);
- ``mrr@k`` = 1 / rank of the first relevant doc in the top k, 0 if none (BEIR's ``MRR@k``).

Scores are averaged over the queries of ``qrels`` that have at least one relevant doc. A query missing from
the run scores 0 (as ``trec_eval -c``); pass ``include_missing=False`` to skip it instead, as BEIR does
(pytrec_eval only returns the queries present in the run).

Example (one query, its relevant doc ranked second of three)::

    >>> qrels = {"q": {"b": 1}}
    >>> run = {"q": {"a": 0.9, "b": 0.8, "c": 0.1}}
    >>> round(ndcg_at_k(qrels, run, 10), 4), mrr_at_k(qrels, run, 10), recall_at_k(qrels, run, 1)
    (0.6309, 0.5, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from muses.errors import InputError

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]
QueryMetric = Callable[[Mapping[str, int], Sequence[str], int], float]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)

__all__ = [
    "DEFAULT_KS",
    "evaluate_run",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "pearson",
    "precision_at_k",
    "query_mrr",
    "query_ndcg",
    "query_values",
    "rank_docs",
    "recall_at_k",
    "run_from_scores",
    "spearman",
]


# --- ranking ------------------------------------------------------------------------------------------------


def rank_docs(doc_scores: Mapping[str, float]) -> list[str]:
    """Return the doc ids of one query's run in trec_eval order: score descending, then doc id descending."""
    return [doc_id for doc_id, _ in sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")


def _num_relevant(rels: Mapping[str, int]) -> int:
    return sum(1 for rel in rels.values() if rel > 0)


def _relevant_flags(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> list[bool]:
    """Whether each of the top-k ranked docs is relevant (relevance > 0)."""
    return [rels.get(doc_id, 0) > 0 for doc_id in ranking[:k]]


# --- per-query metrics (rels: one query's qrels; ranking: its doc ids in trec_eval order) -------------------


def query_ndcg(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """trec_eval ``ndcg_cut_k`` of one query: DCG@k / ideal DCG@k with linear (graded) gains."""
    dcg = sum(
        rels.get(doc_id, 0) / math.log2(rank + 2) for rank, doc_id in enumerate(ranking[:k]) if rels.get(doc_id, 0) > 0
    )
    ideal_gains = sorted((rel for rel in rels.values() if rel > 0), reverse=True)[:k]
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal_gains))
    return dcg / ideal if ideal > 0 else 0.0


def query_recall(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """trec_eval ``recall_k`` of one query: relevant docs in the top k / all relevant docs."""
    n_rel = _num_relevant(rels)
    return sum(_relevant_flags(rels, ranking, k)) / n_rel if n_rel else 0.0


def query_precision(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """trec_eval ``P_k`` of one query: relevant docs in the top k / k."""
    return sum(_relevant_flags(rels, ranking, k)) / k


def query_map(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """trec_eval ``map_cut_k`` of one query: sum of precision at each relevant rank <= k / relevant docs."""
    n_rel = _num_relevant(rels)
    if not n_rel:
        return 0.0
    hits = 0
    total = 0.0
    for rank, relevant in enumerate(_relevant_flags(rels, ranking, k), start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / n_rel


def query_mrr(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """Reciprocal rank of the first relevant doc in the top k of one query, 0 if there is none."""
    for rank, relevant in enumerate(_relevant_flags(rels, ranking, k), start=1):
        if relevant:
            return 1.0 / rank
    return 0.0


METRICS: dict[str, QueryMetric] = {
    "ndcg": query_ndcg,
    "recall": query_recall,
    "precision": query_precision,
    "map": query_map,
    "mrr": query_mrr,
}


# --- averaged metrics ---------------------------------------------------------------------------------------


def _rankings(qrels: Qrels, run: Run, include_missing: bool) -> dict[str, list[str]]:
    """Ranked doc ids of the queries to average over: those with a relevant doc (and, if asked, a run)."""
    return {
        qid: rank_docs(run.get(qid, {}))
        for qid, rels in qrels.items()
        if _num_relevant(rels) > 0 and (include_missing or qid in run)
    }


def _mean_metric(metric: QueryMetric, qrels: Qrels, rankings: Mapping[str, Sequence[str]], k: int) -> float:
    _check_k(k)
    if not rankings:
        return 0.0
    return sum(metric(qrels[qid], ranking, k) for qid, ranking in rankings.items()) / len(rankings)


def query_values(metric: QueryMetric, qrels: Qrels, run: Run, k: int, include_missing: bool = True) -> dict[str, float]:
    """Each averaged query's value of ``metric`` (e.g. :func:`query_ndcg`) at ``k``, by query id: the numbers whose
    mean the ``*_at_k`` functions report, for paired comparisons of two runs over the same queries."""
    _check_k(k)
    return {qid: metric(qrels[qid], ranking, k) for qid, ranking in _rankings(qrels, run, include_missing).items()}


def ndcg_at_k(qrels: Qrels, run: Run, k: int = 10, include_missing: bool = True) -> float:
    """Mean nDCG@k (trec_eval ``ndcg_cut_k``) over the queries with at least one relevant doc."""
    return _mean_metric(query_ndcg, qrels, _rankings(qrels, run, include_missing), k)


def recall_at_k(qrels: Qrels, run: Run, k: int = 10, include_missing: bool = True) -> float:
    """Mean Recall@k (trec_eval ``recall_k``) over the queries with at least one relevant doc."""
    return _mean_metric(query_recall, qrels, _rankings(qrels, run, include_missing), k)


def precision_at_k(qrels: Qrels, run: Run, k: int = 10, include_missing: bool = True) -> float:
    """Mean Precision@k (trec_eval ``P_k``) over the queries with at least one relevant doc."""
    return _mean_metric(query_precision, qrels, _rankings(qrels, run, include_missing), k)


def map_at_k(qrels: Qrels, run: Run, k: int = 10, include_missing: bool = True) -> float:
    """Mean MAP@k (trec_eval ``map_cut_k``) over the queries with at least one relevant doc."""
    return _mean_metric(query_map, qrels, _rankings(qrels, run, include_missing), k)


def mrr_at_k(qrels: Qrels, run: Run, k: int = 10, include_missing: bool = True) -> float:
    """Mean reciprocal rank of the first relevant doc in the top k, over the queries with a relevant doc."""
    return _mean_metric(query_mrr, qrels, _rankings(qrels, run, include_missing), k)


def evaluate_run(
    qrels: Qrels, run: Run, ks: Sequence[int] = DEFAULT_KS, include_missing: bool = True
) -> dict[str, float]:
    """All ranking metrics at every k in ``ks``.

    Keys are ``"ndcg@k"``, ``"recall@k"``, ``"precision@k"``, ``"mrr@k"`` and ``"map@k"``. Each query's run is
    sorted once. Values are means over the queries of ``qrels`` with at least one relevant doc (see the module
    docstring for ``include_missing``).
    """
    for k in ks:
        _check_k(k)
    rankings = _rankings(qrels, run, include_missing)
    return {f"{name}@{k}": _mean_metric(metric, qrels, rankings, k) for name, metric in METRICS.items() for k in ks}


# --- building a run from a score matrix ---------------------------------------------------------------------


def _top_k_row(row: np.ndarray, doc_ids: Sequence[str], k: int) -> np.ndarray:
    """Indices of the top k scores of one row; ties at the cut go to the larger doc id, as in trec_eval."""
    if k >= row.shape[0]:
        return np.arange(row.shape[0])
    top = np.argpartition(-row, k - 1)[:k]
    kth = row[top].min()
    if np.count_nonzero(row >= kth) == k:  # no tie straddles the cut
        return top
    above = np.flatnonzero(row > kth)
    tied = sorted(np.flatnonzero(row == kth).tolist(), key=lambda j: doc_ids[j], reverse=True)
    return np.concatenate([above, np.asarray(tied[: k - above.shape[0]], dtype=np.int64)])


def run_from_scores(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, k: int = 100
) -> dict[str, dict[str, float]]:
    """Turn a score matrix into a run, keeping the k best docs per query (``np.argpartition``, no full sort).

    Args:
        query_ids: the ``n_queries`` query ids, in row order.
        doc_ids: the ``n_docs`` doc ids, in column order.
        scores: array of shape ``[n_queries, n_docs]``, higher is better (e.g. cosine similarities).
        k: docs kept per query; all of them if ``k >= n_docs``. Ties at the cut keep the larger doc ids, so
            evaluating the result at any cutoff <= k gives the same numbers as evaluating the full matrix.

    Returns:
        ``{query_id: {doc_id: score}}`` with ``min(k, n_docs)`` docs per query.
    """
    _check_k(k)
    matrix = np.asarray(scores)
    if matrix.ndim != 2 or matrix.shape != (len(query_ids), len(doc_ids)):
        raise InputError(
            f"scores must have shape [n_queries, n_docs] = [{len(query_ids)}, {len(doc_ids)}], got {matrix.shape}."
        )
    if np.isnan(matrix).any():
        raise InputError("scores contain NaN; cannot rank documents.")
    run: dict[str, dict[str, float]] = {}
    for qid, row in zip(query_ids, matrix, strict=True):
        run[qid] = {doc_ids[j]: float(row[j]) for j in _top_k_row(row, doc_ids, k).tolist()}
    return run


# --- correlation (STS) --------------------------------------------------------------------------------------


def _check_pair(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"x and y must have the same length, got {a.shape[0]} and {b.shape[0]}.")
    if a.shape[0] < 2:
        raise InputError(f"A correlation needs at least 2 pairs, got {a.shape[0]}.")
    return a, b


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two score vectors of shape ``[n]`` (``scipy.stats.spearmanr``)."""
    a, b = _check_pair(x, y)
    return float(stats.spearmanr(a, b).statistic)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two score vectors of shape ``[n]`` (``scipy.stats.pearsonr``)."""
    a, b = _check_pair(x, y)
    return float(stats.pearsonr(a, b).statistic)

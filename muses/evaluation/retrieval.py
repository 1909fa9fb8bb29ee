"""BEIR document retrieval (SciFact first) at every Matryoshka dim, scored at three scales and fused.

Every corpus doc is ``make_document(title + ". " + text, id=doc_id)`` (just ``text`` when the title is empty) and
goes through a :class:`~muses.evaluation.corpus.CorpusEncoder`, so a MuSES model and a flat baseline are scored
by the same code. The ``". "`` makes the title its own sentence. BEIR (and MTEB) join with a plain space instead
(``title_sep=" "``), which reproduces the published all-MiniLM-L6-v2 SciFact nDCG@10 (the reference check in
``docs/results.md`` gives both joins' numbers).

Vectors are kept at full size ``D``; the score at dim ``d`` uses renormalised ``d``-prefixes
(:func:`~muses.scoring.prefix_normalize`) of queries, documents, sentences and tokens alike.

Scorings of a query against the corpus:

- ``document``: cosine of the query vector and each document vector (exhaustive).
- ``sentence``: max-sim, a document's score is its best sentence's cosine (exhaustive).
- ``token-rerank``: ColBERT-style MaxSim, ``sum over query tokens of max over the document's tokens of the
  cosine``, **not exhaustive**: exhaustive MaxSim over SciFact's ~1.5M tokens for every query is too slow on a
  CPU, so only a candidate *pool* is scored: the union of the top ``rerank_k`` documents of the ``document`` and
  ``sentence`` scorings (at the same dim). Documents outside the pool are not retrieved by this scoring, so its
  recall is bounded by ``pool/recall``.
- fusion, over the same pool: ``fusion-wsum`` is a weighted sum of per-query min-max-normalised scores,
  ``fusion-rrf`` a weighted reciprocal-rank fusion ``sum_s w_s / (60 + rank_s)``. Weights are fitted per dim by
  :func:`fit_fusion` on the **dev** qrels only (a simplex grid, step 0.1, maximising nDCG@10) and then applied
  unchanged to the test split; :func:`fit_fusion` refuses a test split. SciFact ships no dev qrels, so ``dev`` is
  a fixed 20% of its train queries that training never sees (:func:`~muses.data.beir.load_beir`).

Metric names are flat: ``"<scoring>/<metric>@<k>@<dim>"``, e.g. ``"document/ndcg@10@384"``,
``"sentence/recall@100@64"``, ``"token-rerank/mrr@10@128"``, ``"fusion-rrf/ndcg@10@384"``, with the metrics of
:func:`~muses.evaluation.metrics.evaluate_run` (ndcg, recall, precision, mrr, map) at ``ks = (1, 10, 100)``.
Extra keys: ``"pool/recall@<dim>"`` (share of relevant docs inside the rerank pool, the ceiling of
``token-rerank`` and fusion recall), ``"pool/size@<dim>"`` (mean pool size), ``"pool/depth"`` (``rerank_k``),
``"fusion-<method>/weight-<scoring>@<dim>"`` (the fitted weights) and ``"fusion-<method>/fit-ndcg@10@<dim>"``
(their nDCG@10 on the split they were fitted on).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from muses.data.beir import BeirDataset, load_beir
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, EmbeddingCache
from muses.evaluation.metrics import Qrels, evaluate_run, run_from_scores
from muses.scoring import (
    FUSION_METHODS,
    candidate_pool,
    fuse,
    prefix_normalize,
    segment_max,
    sentence_maxsim,
    token_maxsim,
    token_maxsim_dims,
)
from muses.text import make_document
from muses.types import Document

DOCUMENT = "document"
SENTENCE = "sentence"
TOKEN = "token-rerank"
SCORINGS: tuple[str, ...] = (DOCUMENT, SENTENCE, TOKEN)
DEFAULT_KS: tuple[int, ...] = (1, 10, 100)
TITLE_SEP = ". "

__all__ = [
    "FUSION_METHODS",
    "SCORINGS",
    "FusionWeights",
    "ScoredQueries",
    "beir_documents",
    "candidate_pool",
    "evaluate_beir_retrieval",
    "evaluate_scored",
    "fit_fusion",
    "fit_fusion_weights",
    "fuse",
    "score_queries",
    "segment_max",
    "sentence_maxsim",
    "simplex_grid",
    "subset_beir",
    "token_maxsim",
    "token_maxsim_dims",
]


# --- corpus -------------------------------------------------------------------------------------------------


def doc_text(title: str, text: str, sep: str = TITLE_SEP) -> str:
    """``title + sep + text``, or ``text`` alone when the title is empty."""
    title = title.strip()
    return f"{title}{sep}{text}" if title else text


def beir_documents(corpus: Mapping[str, Mapping[str, str]], title_sep: str = TITLE_SEP) -> list[Document]:
    """One segmented :class:`Document` per corpus doc, in corpus order: ``make_document(title + sep + text)``."""
    return [make_document(doc_text(d.get("title", ""), d["text"], title_sep), id=i) for i, d in corpus.items()]


def subset_beir(dataset: BeirDataset, max_docs: int) -> BeirDataset:
    """The first ``max_docs`` corpus docs, and the queries whose relevant docs all lie among them.

    For tests and quick runs: scores on a slice are not comparable to the full corpus (fewer distractors).
    """
    if max_docs < 1:
        raise InputError(f"max_docs must be positive, got {max_docs}.")
    corpus = dict(itertools.islice(dataset.corpus.items(), max_docs))
    qrels = {
        qid: dict(rels)
        for qid, rels in dataset.qrels.items()
        if all(doc in corpus for doc, rel in rels.items() if rel > 0)
    }
    queries = {qid: dataset.queries[qid] for qid in qrels}
    return BeirDataset(corpus, queries, qrels, name=dataset.name, split=dataset.split)


# --- scorings -----------------------------------------------------------------------------------------------


# --- scoring a query set ------------------------------------------------------------------------------------


@dataclass
class ScoredQueries:
    """Scores of a query set against a corpus at one dim.

    Attributes:
        query_ids: ``Q`` query ids, in row order.
        doc_ids: ``N`` corpus doc ids, in column order.
        dense: ``"document"`` and ``"sentence"`` -> ``[Q, N]`` exhaustive scores.
        pool: ``[Q, P]`` the rerank pool (doc columns), ``-1`` padding.
        pooled: every scoring (``token-rerank`` included, when computed) -> ``[Q, P]`` scores of the pool docs,
            ``-inf`` at padding.
    """

    query_ids: list[str]
    doc_ids: list[str]
    dense: dict[str, np.ndarray]
    pool: np.ndarray
    pooled: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def scorings(self) -> list[str]:
        return [s for s in SCORINGS if s in self.pooled]


def _gather(scores: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``[Q, N]`` scores of the ``[Q, P]`` pool columns -> ``[Q, P]``, ``-inf`` at padding."""
    out = np.take_along_axis(scores, np.maximum(pool, 0), axis=1).astype(np.float32)
    out[pool < 0] = -np.inf
    return out


def score_queries(
    model: CorpusEncoder,
    vecs: CorpusVectors,
    queries: Mapping[str, str],
    dims: Sequence[int],
    cache: EmbeddingCache | None = None,
    rerank_k: int = 100,
    with_tokens: bool = True,
) -> dict[int, ScoredQueries]:
    """Score every query against the corpus at every dim, with every scoring.

    Args:
        model: the encoder that made ``vecs``.
        vecs: the corpus vectors (with tokens when ``with_tokens``).
        queries: query id -> text.
        dims: Matryoshka dims.
        cache: where query vectors are cached (query token vectors are not cached: they are cheap).
        rerank_k: depth taken from the ``document`` and ``sentence`` scorings to build the token rerank pool.
        with_tokens: also compute ``token-rerank`` scores.

    Returns:
        dim -> :class:`ScoredQueries`.
    """
    if with_tokens and vecs.token is None:
        raise InputError("with_tokens=True needs corpus vectors encoded with tokens (with_tokens=True).")
    if not queries:
        raise InputError("no queries to score; pass at least one {query id: text}.")
    qids, texts = list(queries), list(queries.values())
    q_full = (cache or EmbeddingCache(None)).queries(model, texts)
    q_tokens = model.encode_query_tokens(texts) if with_tokens else []
    n_docs = len(vecs.doc_ids)
    out: dict[int, ScoredQueries] = {}
    for d in dims:
        q = prefix_normalize(q_full, d)
        dense = {DOCUMENT: q @ prefix_normalize(vecs.document, d).T}
        if len(vecs.sentence):  # a documents-only corpus (FlatCorpusEncoder(sentences=False)) has no sentence scale
            dense[SENTENCE] = sentence_maxsim(q, prefix_normalize(vecs.sentence, d), vecs.sentence_doc, n_docs)
        pool = candidate_pool(list(dense.values()), rerank_k)
        out[d] = ScoredQueries(qids, list(vecs.doc_ids), dense, pool, {n: _gather(s, pool) for n, s in dense.items()})
    if with_tokens and vecs.token is not None:
        token = token_maxsim_dims(q_tokens, vecs.token, vecs.token_doc, {d: sq.pool for d, sq in out.items()})
        for d, sq in out.items():
            sq.pooled[TOKEN] = token[d]
    return out


# --- fusion -------------------------------------------------------------------------------------------------
# Written with numpy rather than ``ranx.fuse``: ranx fuses dict runs one weight setting at a time (with a numba
# compile on first use), while fitting scans a whole simplex grid per dim over ~800 train queries; on the
# ``[Q, P]`` pool matrices each grid point is a few array operations. The maths is ranx's ``min-max`` + ``wsum``
# and (weighted) ``rrf`` with k = 60.


def simplex_grid(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """All weight vectors of ``n`` non-negative multiples of ``step`` that sum to 1 (66 for n=3, step 0.1)."""
    m = round(1 / step)
    if n < 1 or abs(m * step - 1) > 1e-9:
        raise InputError(f"simplex_grid needs n >= 1 and a step that divides 1, got n={n}, step={step}.")
    return [tuple(c / m for c in combo) for combo in itertools.product(range(m + 1), repeat=n) if sum(combo) == m]


@dataclass(frozen=True)
class FusionWeights:
    """Fusion weights fitted per dim on a dev split.

    Attributes:
        method: ``"wsum"`` or ``"rrf"``.
        weights: dim -> scoring -> weight.
        fitted_on: ``"<dataset>/<split>"`` the weights were fitted on (never a test split).
        fit_ndcg: dim -> nDCG@k on the fitting split at the chosen weights.
    """

    method: str
    weights: dict[int, dict[str, float]]
    fitted_on: str
    fit_ndcg: dict[int, float] = field(default_factory=dict)


class _PoolQrels:
    """The qrels of a pooled query set as matrices, for a fast trec_eval-exact nDCG@k during the grid search."""

    def __init__(self, scored: ScoredQueries, qrels: Qrels) -> None:
        keep = [i for i, q in enumerate(scored.query_ids) if any(r > 0 for r in qrels.get(q, {}).values())]
        self.rows = np.asarray(keep, dtype=np.int64)
        self.n_missing = sum(1 for rels in qrels.values() if any(r > 0 for r in rels.values())) - len(keep)
        pool = scored.pool[self.rows]
        ids = np.asarray(scored.doc_ids, dtype=object)
        id_rank = np.argsort(np.argsort(ids.astype(str), kind="stable"), kind="stable")  # doc id string order
        self.tie = np.where(pool >= 0, id_rank[np.maximum(pool, 0)], -1)
        self.gain = np.zeros(pool.shape, dtype=np.float64)
        self.ideal: list[list[int]] = []
        for row, i in enumerate(keep):
            rels = qrels[scored.query_ids[i]]
            for col, doc in enumerate(pool[row].tolist()):
                if doc >= 0:
                    self.gain[row, col] = max(rels.get(scored.doc_ids[doc], 0), 0)
            self.ideal.append(sorted((r for r in rels.values() if r > 0), reverse=True))

    def idcg(self, k: int) -> np.ndarray:
        """``[Q']`` ideal DCG@k of each kept query, from all its relevant docs (not only the pooled ones)."""
        return np.array([sum(g / np.log2(r + 2) for r, g in enumerate(gs[:k])) for gs in self.ideal])

    def ndcg(self, scores: np.ndarray, k: int, idcg: np.ndarray | None = None) -> float:
        """Mean nDCG@k of ``[Q, P]`` pool scores (queries with relevant docs but no run count 0, as trec -c)."""
        n = len(self.rows) + self.n_missing
        if not n:
            return 0.0
        s = scores[self.rows]
        order = np.lexsort((-self.tie, -s), axis=1)[:, :k]  # score desc, then doc id desc (trec_eval)
        gains = np.take_along_axis(self.gain, order, axis=1)
        gains[~np.isfinite(np.take_along_axis(s, order, axis=1))] = 0.0
        dcg = (gains / np.log2(np.arange(2, order.shape[1] + 2))).sum(axis=1)
        return float(np.sum(dcg / (self.idcg(k) if idcg is None else idcg))) / n


def fit_fusion_weights(
    scored: Mapping[int, ScoredQueries],
    qrels: Qrels,
    split: str,
    method: str = "wsum",
    step: float = 0.1,
    k: int = 10,
    fitted_on: str = "",
) -> FusionWeights:
    """Grid-search fusion weights per dim (simplex grid) maximising nDCG@k on ``qrels``.

    Args:
        scored: dim -> scores of the fitting (dev) queries (:func:`score_queries`).
        qrels: their qrels.
        split: the qrels split; ``"test"`` is refused: fusion weights must never see the test set.
        method: ``"wsum"`` or ``"rrf"``.
        step: grid step (weights are multiples of it summing to 1).
        k: nDCG cutoff.
        fitted_on: a label for the result (default ``split``).

    Returns:
        :class:`FusionWeights`; ties between grid points go to the first in grid order.
    """
    if split == "test":
        raise InputError("fusion weights are fitted on a train/dev split only, never on 'test'.")
    weights: dict[int, dict[str, float]] = {}
    best: dict[int, float] = {}
    for dim, sq in scored.items():
        names = sq.scorings
        target = _PoolQrels(sq, qrels)
        idcg = target.idcg(k)
        best[dim] = -1.0
        for w in simplex_grid(len(names), step):
            value = target.ndcg(fuse(sq.pooled, dict(zip(names, w, strict=True)), method), k, idcg)
            if value > best[dim] + 1e-12:
                best[dim], weights[dim] = value, dict(zip(names, w, strict=True))
    return FusionWeights(method, weights, fitted_on or split, best)


# --- evaluation ---------------------------------------------------------------------------------------------


def pool_run(scored: ScoredQueries, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """A run over each query's pool docs from ``[Q, P]`` pool scores (padding and ``-inf`` left out)."""
    run: dict[str, dict[str, float]] = {}
    for qid, cols, row in zip(scored.query_ids, scored.pool, scores, strict=True):
        ok = (cols >= 0) & np.isfinite(row)
        run[qid] = {scored.doc_ids[c]: float(s) for c, s in zip(cols[ok].tolist(), row[ok].tolist(), strict=True)}
    return run


def _named(prefix: str, metrics: Mapping[str, float], dim: int) -> dict[str, float]:
    return {f"{prefix}/{name}@{dim}": value for name, value in metrics.items()}


def _pool_recall(scored: ScoredQueries, qrels: Qrels) -> float:
    values = []
    for qid, cols in zip(scored.query_ids, scored.pool, strict=True):
        relevant = {d for d, r in qrels.get(qid, {}).items() if r > 0}
        if relevant:
            inside = {scored.doc_ids[c] for c in cols.tolist() if c >= 0}
            values.append(len(relevant & inside) / len(relevant))
    return float(np.mean(values)) if values else 0.0


def evaluate_scored(
    scored: Mapping[int, ScoredQueries],
    qrels: Qrels,
    ks: Sequence[int] = DEFAULT_KS,
    fusion: Sequence[FusionWeights] = (),
) -> dict[str, float]:
    """Metrics of every scoring (and of each fitted fusion) at every dim, named ``"<scoring>/<metric>@<k>@<dim>"``.

    ``document`` and ``sentence`` are ranked over the whole corpus (top ``max(ks)``); ``token-rerank`` and the
    fusions over the rerank pool only.
    """
    depth = max(ks)
    out: dict[str, float] = {}
    for dim, sq in scored.items():
        for name, dense in sq.dense.items():
            run = run_from_scores(sq.query_ids, sq.doc_ids, dense, k=depth)
            out.update(_named(name, evaluate_run(qrels, run, ks), dim))
        if TOKEN in sq.pooled:
            out.update(_named(TOKEN, evaluate_run(qrels, pool_run(sq, sq.pooled[TOKEN]), ks), dim))
        for fw in fusion:
            if dim not in fw.weights:
                raise InputError(f"fusion weights ({fw.method}) have no entry for dim {dim}.")
            fused = fuse(sq.pooled, fw.weights[dim], fw.method)
            out.update(_named(f"fusion-{fw.method}", evaluate_run(qrels, pool_run(sq, fused), ks), dim))
            out.update({f"fusion-{fw.method}/weight-{s}@{dim}": w for s, w in fw.weights[dim].items()})
            out[f"fusion-{fw.method}/fit-ndcg@10@{dim}"] = fw.fit_ndcg.get(dim, float("nan"))
        out[f"pool/recall@{dim}"] = _pool_recall(sq, qrels)
        out[f"pool/size@{dim}"] = float(np.mean((sq.pool >= 0).sum(axis=1))) if len(sq.pool) else 0.0
    return out


def _load(name: str, split: str, max_docs: int | None, data_dir: str | os.PathLike[str] | None) -> BeirDataset:
    dataset = load_beir(name, split=split, data_dir=data_dir)
    if not max_docs:
        return dataset
    subset = subset_beir(dataset, max_docs)
    if not subset.queries:
        raise InputError(
            f"{name} {split}: no query has all its relevant documents among the first {max_docs} documents; "
            "raise max_docs (or leave it unset for the whole corpus)."
        )
    return subset


def fit_fusion(
    model: CorpusEncoder,
    name: str = "scifact",
    split: str = "dev",
    *,
    vecs: CorpusVectors | None = None,
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    with_tokens: bool = True,
    rerank_k: int = 100,
    step: float = 0.1,
    max_docs: int | None = None,
    title_sep: str = TITLE_SEP,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[FusionWeights]:
    """Fit ``wsum`` and ``rrf`` fusion weights per dim on ``load_beir(name, split)`` (a train/dev split).

    Args:
        vecs: the corpus vectors, if already encoded (same corpus, ``max_docs`` and ``title_sep``).
        Others: as in :func:`evaluate_beir_retrieval`.

    Raises:
        InputError: for ``split="test"``: weights must never be tuned on the test set.
    """
    if split == "test":
        raise InputError("fusion weights are fitted on a train/dev split only, never on 'test'.")
    cache = cache or EmbeddingCache(None)
    fit = _load(name, split, max_docs, data_dir)
    if vecs is None:
        vecs = cache.corpus(model, beir_documents(fit.corpus, title_sep), with_tokens=with_tokens)
    scored = score_queries(model, vecs, fit.queries, dims or model.dims, cache, rerank_k, with_tokens)
    label = f"{name}/{split}"
    return [fit_fusion_weights(scored, fit.qrels, split, m, step, fitted_on=label) for m in FUSION_METHODS]


def evaluate_beir_retrieval(
    model: CorpusEncoder,
    name: str = "scifact",
    split: str = "test",
    *,
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    with_tokens: bool = True,
    rerank_k: int = 100,
    fusion: Sequence[FusionWeights] | str | None = "fit",
    fusion_split: str = "dev",
    ks: Sequence[int] = DEFAULT_KS,
    max_docs: int | None = None,
    title_sep: str = TITLE_SEP,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on a BEIR dataset, every scoring at every dim, plus fusion.

    Args:
        model: any :class:`CorpusEncoder` (MuSES or a flat baseline).
        name, split: the dataset and the qrels split to evaluate.
        cache: embedding cache (default: none).
        dims: Matryoshka dims (default: the model's).
        with_tokens: score ``token-rerank`` (needs the corpus token vectors: their size is in ``docs/benchmarks.md``).
        rerank_k: depth of the ``document`` and ``sentence`` rankings whose union the token scoring reranks.
        fusion: ``"fit"`` fits weights on ``fusion_split`` with :func:`fit_fusion` (same corpus vectors),
            a sequence of :class:`FusionWeights` applies fixed weights, None skips fusion.
        fusion_split: the split weights are fitted on (never ``"test"``).
        ks: metric cutoffs.
        max_docs: evaluate on the first ``max_docs`` docs only (:func:`subset_beir`), for tests and quick runs.
        title_sep: joins title and text (``". "``; BEIR itself uses ``" "``).

    Returns:
        Flat metrics ``"<scoring>/<metric>@<k>@<dim>"`` (see the module docstring).
    """
    cache = cache or EmbeddingCache(None)
    dims = list(dims or model.dims)
    data = _load(name, split, max_docs, data_dir)
    vecs = cache.corpus(model, beir_documents(data.corpus, title_sep), with_tokens=with_tokens)
    if fusion == "fit":
        fusion = fit_fusion(
            model,
            name,
            fusion_split,
            vecs=vecs,
            cache=cache,
            dims=dims,
            with_tokens=with_tokens,
            rerank_k=rerank_k,
            max_docs=max_docs,
            title_sep=title_sep,
            data_dir=data_dir,
        )
    elif isinstance(fusion, str):
        raise InputError(f"fusion must be 'fit', a list of FusionWeights or None, got {fusion!r}.")
    scored = score_queries(model, vecs, data.queries, dims, cache, rerank_k, with_tokens)
    out = evaluate_scored(scored, data.qrels, ks, fusion or ())
    out["pool/depth"] = float(rerank_k)
    return out

"""Pure scoring over multi-scale vectors: the one code path behind the store and the evaluation suite.

Every function takes numpy arrays and returns numpy arrays; nothing here loads models, data or indexes. Shapes:
``Q`` queries, ``N`` documents, ``S`` sentences, ``T`` tokens, ``P`` candidates per query, ``D`` stored dim and
``d`` a Matryoshka prefix.

- :func:`prefix_normalize`: the ``d``-prefix of vectors, renormalised (a Matryoshka embedding at dim ``d``).
- :func:`segment_max`, :func:`sentence_maxsim`: a document's score is its best sentence's.
- :func:`token_maxsim`, :func:`token_maxsim_dims`: ColBERT MaxSim of query tokens over a document's tokens.
- :func:`candidate_pool`: the union of each scoring's top ``k`` documents.
- :func:`fuse`: min-max weighted sum or weighted reciprocal-rank fusion over a pool.

Example::

    >>> import numpy as np
    >>> q = prefix_normalize(np.array([[3.0, 4.0, 5.0]]), 2)
    >>> q
    array([[0.6, 0.8]])
    >>> sents = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> sentence_maxsim(q, sents, np.array([0, 0, 1]), 2)
    array([[0.8, 1. ]], dtype=float32)
    >>> candidate_pool([np.array([[0.1, 0.9, 0.5]]), np.array([[0.7, 0.2, 0.1]])], 1)
    array([[0, 1]])
    >>> pooled = {"document": np.array([[0.2, 0.4]]), "sentence": np.array([[0.9, 0.1]])}
    >>> fuse(pooled, {"document": 0.5, "sentence": 0.5})
    array([[0.5, 0.5]], dtype=float32)
    >>> fuse({"document": np.zeros((1, 0))}, {"document": 1.0})  # an empty pool (a filter that matches nothing)
    array([], shape=(1, 0), dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from muses.errors import InputError

FUSION_METHODS: tuple[str, ...] = ("wsum", "rrf")
RRF_K = 60

__all__ = [
    "FUSION_METHODS",
    "RRF_K",
    "candidate_pool",
    "fuse",
    "prefix_normalize",
    "row_norms",
    "segment_max",
    "sentence_maxsim",
    "token_maxsim",
    "token_maxsim_dims",
]


def prefix_normalize(x: np.ndarray, dim: int) -> np.ndarray:
    """``[..., D]`` -> ``[..., dim]``: the ``dim``-prefix of each vector (each row of a matrix), L2-normalised."""
    p = x[..., :dim]
    norms = row_norms(p).astype(p.dtype, copy=False) if p.dtype.kind == "f" else row_norms(p)
    return p / np.clip(norms[..., None], 1e-12, None)


def row_norms(x: np.ndarray) -> np.ndarray:
    """``[..., D]`` -> ``[...]`` L2 norms, summed in float32 or wider (an einsum: unlike ``np.linalg.norm``, no
    ``[..., D]`` temporary)."""
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return np.sqrt(np.einsum("...i,...i->...", x, x))


def segment_max(scores: np.ndarray, segment: np.ndarray, n_segments: int) -> np.ndarray:
    """Per-row maximum over the columns of each segment.

    Args:
        scores: ``[Q, S]`` float.
        segment: ``[S]`` int, the segment (e.g. document row) of each column, in ``[0, n_segments)``.
        n_segments: ``N``.

    Returns:
        ``[Q, N]`` float32; ``-inf`` for a segment without columns.
    """
    segment = np.asarray(segment, dtype=np.int64)
    if segment.size and np.any(np.diff(segment) < 0):
        order = np.argsort(segment, kind="stable")
        scores, segment = scores[:, order], segment[order]
    out = np.full((scores.shape[0], n_segments), -np.inf, dtype=np.float32)
    counts = np.bincount(segment, minlength=n_segments)
    has = counts > 0
    if has.any():
        starts = np.searchsorted(segment, np.flatnonzero(has), side="left")
        out[:, has] = np.maximum.reduceat(scores, starts, axis=1)
    return out


def sentence_maxsim(
    queries: np.ndarray, sentences: np.ndarray, sentence_doc: np.ndarray, n_docs: int, block: int = 512
) -> np.ndarray:
    """Max-sim document scores: each document's best sentence cosine.

    Args:
        queries: ``[Q, d]`` L2-normalised.
        sentences: ``[S, d]`` L2-normalised.
        sentence_doc: ``[S]`` document row of each sentence.
        n_docs: ``N``.
        block: queries per matrix product (bounds memory at ``block x S`` floats).

    Returns:
        ``[Q, N]`` float32 (``-inf`` for a document without sentences).
    """
    out = np.empty((queries.shape[0], n_docs), dtype=np.float32)
    for b in range(0, queries.shape[0], block):
        out[b : b + block] = segment_max(queries[b : b + block] @ sentences.T, sentence_doc, n_docs)
    return out


def candidate_pool(scores: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Union of the top ``k`` columns of each score matrix, per row.

    Args:
        scores: matrices ``[Q, N]``, higher is better.
        k: candidates taken from each matrix.

    Returns:
        ``[Q, P]`` int64 column indices, sorted ascending in each row, padded with ``-1`` (``P <= len(scores) * k``).
    """
    n = scores[0].shape[1]
    k = min(k, n)
    tops = [
        np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (s.shape[0], 1)) for s in scores
    ]
    rows = [np.unique(np.concatenate([t[q] for t in tops])) for q in range(scores[0].shape[0])]
    width = max((len(r) for r in rows), default=0)
    pool = np.full((len(rows), width), -1, dtype=np.int64)
    for q, r in enumerate(rows):
        pool[q, : len(r)] = r
    return pool


def _token_ranges(token_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """``[N, 2]`` half-open token row range of each document (``token_doc`` must be non-decreasing)."""
    token_doc = np.asarray(token_doc, dtype=np.int64)
    if token_doc.size and np.any(np.diff(token_doc) < 0):
        raise InputError("token_doc must be non-decreasing (tokens stored in document order).")
    docs = np.arange(n_docs)
    return np.stack([np.searchsorted(token_doc, docs, "left"), np.searchsorted(token_doc, docs, "right")], axis=1)


def token_maxsim(
    query_tokens: Sequence[np.ndarray],
    tokens: np.ndarray,
    token_doc: np.ndarray,
    candidates: np.ndarray,
    dim: int | None = None,
) -> np.ndarray:
    """ColBERT MaxSim of each query against its candidate documents, at the ``dim``-prefix.

    ``score(q, doc) = sum_i max_j cos(q_i[:dim], t_j[:dim])`` over the query's tokens ``i`` and the document's
    tokens ``j``, both prefixes renormalised.

    Args:
        query_tokens: ``Q`` arrays ``[t_q, D]``, the query token vectors.
        tokens: ``[T, D]`` corpus token vectors (float16 or int8 is fine), stored in document order.
        token_doc: ``[T]`` non-decreasing document row of each token.
        candidates: ``[Q, P]`` document rows to score per query, ``-1`` for padding.
        dim: prefix size (default: full ``D``).

    Returns:
        ``[Q, P]`` float32 scores, ``-inf`` at padding and for a candidate without tokens.
    """
    d = dim or tokens.shape[1]
    return token_maxsim_dims(query_tokens, tokens, token_doc, {d: candidates})[d]


def token_maxsim_dims(
    query_tokens: Sequence[np.ndarray],
    tokens: np.ndarray,
    token_doc: np.ndarray,
    candidates: Mapping[int, np.ndarray],
) -> dict[int, np.ndarray]:
    """:func:`token_maxsim` at several dims, each with its own ``[Q, P_d]`` candidates.

    Each query's candidate tokens (the union over dims) are gathered from ``tokens`` once, at full size; each dim
    then scores its own candidates with the renormalised prefixes.

    Returns:
        dim -> ``[Q, P_d]`` float32 scores, ``-inf`` at padding and for a candidate without tokens.
    """
    n_docs = int(max(max(c.max(initial=-1) for c in candidates.values()) + 1, token_doc.max(initial=-1) + 1))
    ranges = _token_ranges(token_doc, n_docs)
    top = max(candidates)
    out = {d: np.full(c.shape, -np.inf, dtype=np.float32) for d, c in candidates.items()}
    for q, qt in enumerate(query_tokens):
        docs = np.unique(np.concatenate([c[q] for c in candidates.values()]))
        docs = docs[(docs >= 0) & (ranges[np.maximum(docs, 0), 1] > ranges[np.maximum(docs, 0), 0])]
        if not docs.size or not len(qt):
            continue
        lengths = ranges[docs, 1] - ranges[docs, 0]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows = np.repeat(ranges[docs, 0] - offsets, lengths) + np.arange(lengths.sum())
        gathered = tokens[rows, :top].astype(np.float32)  # [n, D] the candidates' tokens, once for all dims
        q_full = qt.astype(np.float32)
        for d, cand in candidates.items():
            norms = row_norms(gathered[:, :d])
            inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)  # a zero row scores 0
            sims = (prefix_normalize(q_full, d) @ gathered[:, :d].T) * inverse
            per_doc = np.maximum.reduceat(sims, offsets, axis=1).sum(axis=0)  # [len(docs)]
            pos = np.searchsorted(docs, cand[q])
            found = (cand[q] >= 0) & (pos < len(docs)) & (docs[np.minimum(pos, len(docs) - 1)] == cand[q])
            out[d][q, found] = per_doc[pos[found]]
    return out


def _minmax(scores: np.ndarray) -> np.ndarray:
    """Per-row min-max normalisation of ``[Q, P]`` scores over the finite entries (a constant row maps to 0)."""
    if scores.size == 0:
        return scores.astype(np.float32)
    finite = np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(finite, (scores - lo) / span, -np.inf).astype(np.float32)


def _reciprocal_ranks(scores: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """``1 / (k + rank)`` of each entry in its row (rank 1 = best; padding ``-inf`` gets 0)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(scores.shape[0], 0), axis=1)
    return np.where(np.isfinite(scores), 1.0 / (k + ranks), 0.0).astype(np.float32)


def fuse(pooled: Mapping[str, np.ndarray], weights: Mapping[str, float], method: str = "wsum") -> np.ndarray:
    """Fuse the ``[Q, P]`` pool scores of several scorings into one ``[Q, P]`` score (``-inf`` at padding).

    Args:
        pooled: scoring -> ``[Q, P]`` scores over the same pool (``-inf`` at padding); ``P`` may be 0.
        weights: scoring -> weight; scorings not named get weight 0.
        method: ``"wsum"`` (weighted sum of per-query min-max-normalised scores) or ``"rrf"`` (weighted
            reciprocal-rank fusion, ``sum_s w_s / (60 + rank_s)``, ranks taken inside the pool).
    """
    if method not in FUSION_METHODS:
        raise InputError(f"unknown fusion method {method!r}; use one of {', '.join(FUSION_METHODS)}.")
    unknown = set(weights) - set(pooled)
    if unknown:
        raise InputError(f"fusion weights name scorings {sorted(unknown)} that were not computed.")
    transform = _minmax if method == "wsum" else _reciprocal_ranks
    first = next(iter(pooled.values()))
    total = np.zeros(first.shape, dtype=np.float32)
    for name, w in weights.items():
        if w:
            total += np.float32(w) * np.where(np.isfinite(pooled[name]), transform(pooled[name]), 0.0)
    return np.where(np.isfinite(first), total, -np.inf).astype(np.float32)

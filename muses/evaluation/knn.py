"""k-NN topic classification of Wikipedia articles, at document and sentence scale, at every Matryoshka dim.

The articles (:func:`muses.data.wikipedia.load_wikipedia`, 12 topics) are split into train and test with
:func:`~muses.data.wikipedia.stratified_split` (seeded, each topic's share kept). By default the catch-all topic
``"Uncategorized"`` is left out before splitting (11 topics remain): it is a bag of unrelated articles rather than
a topic, so a neighbour vote cannot be expected to find it; pass ``exclude_topics=()`` to keep it.

Neighbours are the ``k`` (default 10) highest cosine similarities, found exactly with ``faiss.IndexFlatIP`` over
L2-normalised ``d``-prefixes (numpy when faiss is not installed). Each neighbour votes for its label with weight
= its cosine similarity (``weighting="similarity"``, the default) or 1 (``"uniform"``, plain majority); the class
with the highest total wins, ties going to the lowest class index (topics are indexed in sorted order).

- Document scale: each test article's document vector votes with its ``k`` nearest train document vectors.
- Sentence scale: each test sentence finds its ``k`` nearest train sentences (labelled with their article's
  topic); the votes of all sentences of a test article are summed and the article gets the winning topic.
  ``per_sentence_accuracy`` scores each test sentence's own vote against its article's topic.

Accuracy and macro-F1 (mean F1 over the classes present in the truth or the predictions, as scikit-learn's
``f1_score(average="macro")``) are reported per scale and dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from muses.data.wikipedia import WikiArticle, stratified_split
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, EmbeddingCache
from muses.evaluation.hierarchy import wikipedia_documents
from muses.scoring import prefix_normalize
from muses.types import Scale

UNCATEGORIZED = "Uncategorized"
Weighting = Literal["similarity", "uniform"]


# --- neighbours and votes -----------------------------------------------------------------------------------


def nearest(index: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k``: ``[M, d]`` index, ``[Q, d]`` queries -> ``[Q, k']`` sims and int ids.

    ``k' = min(k, M)``; rows are sorted by similarity, descending. Uses ``faiss.IndexFlatIP`` when available.
    """
    k = min(k, len(index))
    index = np.ascontiguousarray(index, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is installed in the dev environment
        return _nearest_numpy(index, queries, k)
    flat = faiss.IndexFlatIP(index.shape[1])
    flat.add(index)
    sims, ids = flat.search(queries, k)
    return sims, ids.astype(np.int64)


def _nearest_numpy(index: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ index.T
    ids = (
        np.argpartition(-sims, k - 1, axis=1)[:, :k]
        if k < len(index)
        else np.tile(np.arange(len(index)), (len(sims), 1))
    )
    top = np.take_along_axis(sims, ids, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(ids, order, axis=1).astype(np.int64)


def knn_votes(
    index: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    n_classes: int,
    k: int = 10,
    weighting: Weighting = "similarity",
) -> np.ndarray:
    """Each query's vote per class from its ``k`` nearest index rows.

    Args:
        index: ``[M, d]`` L2-normalised labelled vectors.
        labels: ``[M]`` int class of each index row, in ``[0, n_classes)``.
        queries: ``[Q, d]`` L2-normalised vectors to classify.
        n_classes: number of classes ``C``.
        k: neighbours per query.
        weighting: ``"similarity"`` (a neighbour's vote weighs its cosine) or ``"uniform"`` (one vote each).

    Returns:
        ``[Q, C]`` float64 vote totals.
    """
    if weighting not in ("similarity", "uniform"):
        raise ValueError(f"weighting must be 'similarity' or 'uniform', got {weighting!r}.")
    sims, ids = nearest(index, queries, k)
    weights = sims.astype(np.float64) if weighting == "similarity" else np.ones(sims.shape)
    votes = np.zeros((len(queries), n_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(queries)), ids.shape[1]), labels[ids].ravel()), weights.ravel())
    return votes


def pool_votes(votes: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum ``[Q, C]`` votes over the rows of each group (``[Q]`` int in ``[0, n_groups)``) -> ``[n_groups, C]``."""
    pooled = np.zeros((n_groups, votes.shape[1]), dtype=np.float64)
    np.add.at(pooled, groups, votes)
    return pooled


def predict(votes: np.ndarray) -> np.ndarray:
    """``[Q, C]`` votes -> ``[Q]`` winning class (ties: the lowest class index)."""
    return np.argmax(votes, axis=1)


def accuracy_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes present in ``y_true`` or ``y_pred`` (as scikit-learn)."""
    if len(y_true) == 0:
        return 0.0, 0.0
    f1s = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        denom = np.sum(y_pred == c) + np.sum(y_true == c)
        f1s.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(y_true == y_pred)), float(np.mean(f1s))


# --- the task -----------------------------------------------------------------------------------------------


def knn_articles(
    articles: Sequence[WikiArticle],
    exclude_topics: Sequence[str] = (UNCATEGORIZED,),
    max_articles: int | None = None,
    seed: int = 0,
) -> list[WikiArticle]:
    """The articles the task uses: ``exclude_topics`` dropped, then (with ``max_articles``) a seeded stratified
    subsample of about ``max_articles`` (each topic's share kept, input order kept)."""
    kept = [a for a in articles if a.topic not in set(exclude_topics)]
    if max_articles is not None and max_articles < len(kept):
        _, kept = stratified_split(kept, test_fraction=max_articles / len(kept), seed=seed)
    return kept


def _rows(vectors: CorpusVectors, docs: np.ndarray) -> np.ndarray:
    """Sentence rows whose document is in ``docs`` (``[n]`` int), in corpus order."""
    return np.flatnonzero(np.isin(vectors.sentence_doc, docs))


def evaluate_knn(
    model: CorpusEncoder,
    articles: Sequence[WikiArticle],
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    k: int = 10,
    weighting: Weighting = "similarity",
    scales: Sequence[Scale] = ("document", "sentence"),
    test_fraction: float = 0.2,
    seed: int = 0,
    exclude_topics: Sequence[str] = (UNCATEGORIZED,),
    max_articles: int | None = None,
    folds: int | None = None,
) -> dict[str, float]:
    """k-NN topic classification of Wikipedia articles at each scale and dim.

    All kept articles are encoded once at full size (through ``cache``), then split with
    ``stratified_split(articles, test_fraction, seed)``; ``max_articles`` subsamples first (seeded, stratified).
    With ``folds`` (>= 2) the split is a stratified ``folds``-fold cross-validation instead (:func:`knn_folds`;
    ``test_fraction`` is unused): every article is classified once, by the articles of the other folds, so a
    subsample gives ``folds`` times as many test predictions for the same encoding (``n_train`` is then the mean
    training side of a fold).

    Returns:
        ``{"knn/document/accuracy@384", "knn/document/macro_f1@384", "knn/sentence/accuracy@384",
        "knn/sentence/macro_f1@384", "knn/sentence/per_sentence_accuracy@384", ...}`` plus ``knn/n_train``,
        ``n_test``, ``n_classes``, ``n_train_sentences``, ``n_test_sentences``, ``k``, ``chance`` (1 / classes)
        and ``majority`` (accuracy of always answering the most frequent test topic).
    """
    if "token" in scales:
        raise InputError("k-NN topic classification runs at document and sentence scale, not token.")
    kept = knn_articles(articles, exclude_topics, max_articles, seed)
    if folds is None:
        _, test = stratified_split(kept, test_fraction=test_fraction, seed=seed)
        row = {id(a): i for i, a in enumerate(kept)}
        te = np.array([row[id(a)] for a in test], dtype=np.int64)
        fold = np.zeros(len(kept), dtype=np.int64)
        fold[te] = 1
        splits = [(np.flatnonzero(fold == 0), te)]
    else:
        fold = knn_folds(kept, folds, seed)
        splits = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(folds)]
    topics = sorted({a.topic for a in kept})
    label = np.array([topics.index(a.topic) for a in kept], dtype=np.int64)
    vectors = (cache or EmbeddingCache(None)).corpus(model, wikipedia_documents(kept))
    sentence_splits = [(_rows(vectors, tr), _rows(vectors, te)) for tr, te in splits]  # the same splits, by sentence
    out: dict[str, float] = {}
    for d in dims or model.dims:
        if "document" in scales:
            out.update(_document_scale(vectors, label, splits, len(topics), d, k, weighting))
        if "sentence" in scales:
            out.update(_sentence_scale(vectors, label, splits, sentence_splits, len(topics), d, k, weighting))
    te = np.concatenate([t for _, t in splits])
    counts = np.bincount(label[te], minlength=len(topics))
    out.update(
        {
            "knn/n_train": float(np.mean([len(tr) for tr, _ in splits])),
            "knn/n_test": float(len(te)),
            "knn/n_classes": float(len(topics)),
            "knn/n_train_sentences": float(np.mean([len(tr) for tr, _ in sentence_splits])),
            "knn/n_test_sentences": float(sum(len(te) for _, te in sentence_splits)),
            "knn/k": float(k),
            "knn/chance": 1.0 / len(topics),
            "knn/majority": float(counts.max() / max(len(te), 1)),
        }
    )
    return out


def knn_folds(articles: Sequence[WikiArticle], folds: int, seed: int = 0) -> np.ndarray:
    """``[N]`` int fold of each article for stratified ``folds``-fold cross-validation, deterministic for ``seed``:
    each topic's articles are shuffled and dealt to the folds in turn, so every fold keeps each topic's share."""
    if folds < 2:
        raise InputError(f"folds must be at least 2 (or None for one train/test split), got {folds}.")
    by_topic: dict[str, list[int]] = {}
    for i, article in enumerate(articles):
        by_topic.setdefault(article.topic, []).append(i)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(articles), dtype=np.int64)
    dealt = 0
    for topic in sorted(by_topic):
        order = rng.permutation(by_topic[topic])
        fold[order] = (dealt + np.arange(len(order))) % folds  # carry on where the last topic stopped
        dealt += len(order)
    return fold


Splits = list[tuple[np.ndarray, np.ndarray]]
"""(train rows, test rows) pairs of article indices: one train/test split, or the folds of a cross-validation."""


def _document_scale(
    vectors: CorpusVectors,
    label: np.ndarray,
    splits: Splits,
    n_classes: int,
    d: int,
    k: int,
    weighting: Weighting,
) -> dict[str, float]:
    doc = prefix_normalize(vectors.document, d)
    pred = [predict(knn_votes(doc[tr], label[tr], doc[te], n_classes, k, weighting)) for tr, te in splits]
    acc, f1 = accuracy_macro_f1(np.concatenate([label[te] for _, te in splits]), np.concatenate(pred))
    return {f"knn/document/accuracy@{d}": acc, f"knn/document/macro_f1@{d}": f1}


def _sentence_scale(
    vectors: CorpusVectors,
    label: np.ndarray,
    splits: Splits,
    sentence_splits: Splits,
    n_classes: int,
    d: int,
    k: int,
    weighting: Weighting,
) -> dict[str, float]:
    """``splits`` of articles and the same ``sentence_splits`` of their sentence rows (:func:`_rows`)."""
    sent = prefix_normalize(vectors.sentence, d)
    s_label = label[vectors.sentence_doc]
    truth, pred, s_truth, s_pred = [], [], [], []
    for (_, te), (s_tr, s_te) in zip(splits, sentence_splits, strict=True):
        votes = knn_votes(sent[s_tr], s_label[s_tr], sent[s_te], n_classes, k, weighting)
        test_row = np.full(len(vectors.document), -1, dtype=np.int64)
        test_row[te] = np.arange(len(te))
        pooled = pool_votes(votes, test_row[vectors.sentence_doc[s_te]], len(te))
        truth.append(label[te])
        pred.append(predict(pooled))
        s_truth.append(s_label[s_te])
        s_pred.append(predict(votes))
    acc, f1 = accuracy_macro_f1(np.concatenate(truth), np.concatenate(pred))
    per_sentence, _ = accuracy_macro_f1(np.concatenate(s_truth), np.concatenate(s_pred))
    return {
        f"knn/sentence/accuracy@{d}": acc,
        f"knn/sentence/macro_f1@{d}": f1,
        f"knn/sentence/per_sentence_accuracy@{d}": per_sentence,
    }

"""Hierarchy consistency, k-NN topic classification and efficiency measurements, on small real slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from muses.data.wikipedia import load_wikipedia
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, EmbeddingCache, FlatCorpusEncoder, MusesCorpusEncoder
from muses.evaluation.efficiency import measure_efficiency
from muses.evaluation.hierarchy import (
    batch_of_documents,
    hierarchy_accuracy,
    scifact_documents,
    select_documents,
    wikipedia_documents,
)
from muses.evaluation.knn import (
    UNCATEGORIZED,
    accuracy_macro_f1,
    evaluate_knn,
    knn_articles,
    knn_folds,
    knn_votes,
    pool_votes,
    predict,
)
from muses.text import make_document
from muses.types import Document

DIMS = [32, 64, 384]


@pytest.fixture(scope="module")
def scifact_docs(data_dir: Path) -> list[Document]:
    return scifact_documents(data_dir, n_docs=40)


@pytest.fixture(scope="module")
def scifact_vectors(encoder: MultiScaleEncoder, scifact_docs: list[Document]) -> CorpusVectors:
    return MusesCorpusEncoder(encoder).encode_corpus(scifact_docs)


# --- hierarchy ----------------------------------------------------------------------------------------------


def _brute_force(vectors: CorpusVectors, dim: int, doc_batch: np.ndarray | None) -> float:
    """Loop over sentences and candidate documents; a hit needs the own document strictly best."""

    def unit(v: np.ndarray) -> np.ndarray:
        return v[:dim] / np.linalg.norm(v[:dim])

    hits = []
    for s, parent in zip(vectors.sentence, vectors.sentence_doc, strict=True):
        q = unit(s)
        candidates = list(range(len(vectors.document)))
        if doc_batch is not None:
            candidates = [j for j in candidates if doc_batch[j] == doc_batch[parent]]
        own = float(q @ unit(vectors.document[parent]))
        hits.append(all(own > float(q @ unit(vectors.document[j])) for j in candidates if j != parent))
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", [None, 3])
def test_hierarchy_equals_brute_force(scifact_vectors: CorpusVectors, seed: int | None) -> None:
    got = hierarchy_accuracy(scifact_vectors, DIMS, batch_size=8, seed=seed)
    doc_batch = batch_of_documents(len(scifact_vectors.document), 8, seed)
    for d in DIMS:
        assert got[f"hierarchy/batch8@{d}"] == pytest.approx(_brute_force(scifact_vectors, d, doc_batch), abs=1e-12)
        assert got[f"hierarchy/all@{d}"] == pytest.approx(_brute_force(scifact_vectors, d, None), abs=1e-12)
    assert got["hierarchy/n_docs"] == 40
    assert got["hierarchy/n_sentences"] == len(scifact_vectors.sentence)
    assert got["hierarchy/n_batches"] == 5


def test_in_batch_is_at_least_whole_set(scifact_vectors: CorpusVectors) -> None:
    got = hierarchy_accuracy(scifact_vectors, DIMS)  # 40 docs: batches of 32 and 8
    for d in DIMS:
        assert got[f"hierarchy/batch32@{d}"] >= got[f"hierarchy/all@{d}"]
        assert got[f"hierarchy/all@{d}"] > 10 * got["hierarchy/chance_all"]  # far above chance (1/40)


def test_batches_and_selection() -> None:
    batch = batch_of_documents(10, 4)
    assert batch.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    shuffled = batch_of_documents(10, 4, seed=1)
    assert np.bincount(shuffled).tolist() == [4, 4, 2]
    assert shuffled.tolist() == batch_of_documents(10, 4, seed=1).tolist()
    rng = np.random.default_rng(0)
    vec = CorpusVectors(
        doc_ids=["a", "b", "c"],
        document=rng.normal(size=(3, 4)).astype(np.float32),
        sentence=rng.normal(size=(5, 4)).astype(np.float32),
        sentence_doc=np.array([0, 0, 1, 2, 2]),
        sentence_pos=np.array([0, 1, 0, 0, 1]),
    )
    sub = select_documents(vec, [2, 0])
    assert sub.doc_ids == ["c", "a"]
    assert sub.sentence_doc.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(sub.sentence, vec.sentence[[3, 4, 0, 1]])


def test_min_sentences_skips_short_documents(scifact_vectors: CorpusVectors) -> None:
    per_doc = np.bincount(scifact_vectors.sentence_doc)
    got = hierarchy_accuracy(scifact_vectors, [384], min_sentences=8)
    assert got["hierarchy/n_sentences"] == per_doc[per_doc >= 8].sum()
    assert got["hierarchy/n_docs"] == 40  # every document stays a candidate


# --- k-NN votes -------------------------------------------------------------------------------------------


def test_sentence_vote_matches_hand_computation() -> None:
    """Two test articles (sentences 0,1 -> article 0; sentence 2 -> article 1), 2-d unit vectors, k = 2."""
    angle = np.deg2rad([0, 10, 80, 90, 170])
    train = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    train_labels = np.array([0, 1, 1, 2, 2])
    test_angle = np.deg2rad([4, 85, 130])
    test = np.stack([np.cos(test_angle), np.sin(test_angle)], axis=1).astype(np.float32)

    def cos(deg: float) -> float:
        return float(np.cos(np.deg2rad(deg)))

    # neighbours: s0 -> train 0 (4 deg), 1 (6 deg); s1 -> 3 (5), 2 (5); s2 -> 4 (40), 3 (40)
    want = np.zeros((3, 3))
    want[0, 0], want[0, 1] = cos(4), cos(6)
    want[1, 2], want[1, 1] = cos(5), cos(5)
    want[2, 2] = 2 * cos(40)
    votes = knn_votes(train, train_labels, test, n_classes=3, k=2)
    np.testing.assert_allclose(votes, want, atol=1e-6)
    assert predict(votes[:1]).tolist() == [0]  # similarity breaks the 1-1 tie of the plain vote
    plain = knn_votes(train, train_labels, test, n_classes=3, k=2, weighting="uniform")
    np.testing.assert_array_equal(plain, [[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    assert predict(plain).tolist() == [0, 1, 2]  # ties go to the lowest class
    pooled = pool_votes(votes, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(pooled, [[cos(4), cos(6) + cos(5), cos(5)], [0, 0, 2 * cos(40)]], atol=1e-6)
    assert predict(pooled).tolist() == [1, 2]  # article 0: topic 1 wins over 0 and 2 once its sentences are pooled


def test_accuracy_macro_f1_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 6, 200)
    acc, f1 = accuracy_macro_f1(y_true, y_pred)
    assert acc == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert f1 == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))


# --- k-NN on Wikipedia --------------------------------------------------------------------------------------


def test_knn_wikipedia_above_chance_and_deterministic(encoder: MultiScaleEncoder, tmp_path: Path) -> None:
    articles = load_wikipedia()
    kept = knn_articles(articles, max_articles=600, seed=0)
    assert 590 <= len(kept) <= 610 and UNCATEGORIZED not in {a.topic for a in kept}
    model, cache = MusesCorpusEncoder(encoder), EmbeddingCache(tmp_path)
    first = evaluate_knn(model, articles, cache, dims=DIMS, max_articles=600, seed=0)
    assert first["knn/n_classes"] == 11 and first["knn/chance"] == pytest.approx(1 / 11)
    for scale in ("document", "sentence"):
        assert first[f"knn/{scale}/accuracy@384"] > 0.5, first  # chance is 1/11
        assert first[f"knn/{scale}/macro_f1@384"] > 0.3, first
    assert first["knn/sentence/per_sentence_accuracy@384"] > 3 / 11
    again = evaluate_knn(model, articles, cache, dims=DIMS, max_articles=600, seed=0)
    assert again == first and cache.hits == 1
    other = evaluate_knn(
        model, articles, cache, dims=[384], max_articles=600, seed=0, scales=("document",), k=5, weighting="uniform"
    )
    assert set(other) >= {"knn/document/accuracy@384"} and "knn/sentence/accuracy@384" not in other


def test_knn_folds_are_stratified_and_cover_every_article() -> None:
    kept = knn_articles(load_wikipedia(), max_articles=600, seed=0)
    fold = knn_folds(kept, 5, seed=0)
    assert fold.shape == (len(kept),) and set(fold.tolist()) == set(range(5))
    assert np.array_equal(fold, knn_folds(kept, 5, seed=0)) and not np.array_equal(fold, knn_folds(kept, 5, seed=1))
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1  # dealt in turn across topics
    for topic in {a.topic for a in kept}:
        per_fold = np.bincount(fold[[a.topic == topic for a in kept]], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (topic, per_fold)  # each topic's share in every fold
    with pytest.raises(InputError, match="at least 2"):
        knn_folds(kept, 1)


def test_knn_cross_validation_classifies_every_article_once(encoder: MultiScaleEncoder, tmp_path: Path) -> None:
    """With ``folds`` every kept article is a test article once, voted on by the other folds' articles: the
    document-scale accuracy equals a hand computation over the folds on the same vectors."""
    articles = load_wikipedia()
    model, cache = MusesCorpusEncoder(encoder), EmbeddingCache(tmp_path)
    out = evaluate_knn(model, articles, cache, dims=[384], max_articles=300, seed=0, folds=4)
    kept = knn_articles(articles, max_articles=300, seed=0)
    assert out["knn/n_test"] == len(kept) and out["knn/n_train"] == pytest.approx(len(kept) * 3 / 4, abs=1)
    vectors = cache.corpus(model, wikipedia_documents(kept))
    assert cache.hits == 1  # the same vectors
    topics = sorted({a.topic for a in kept})
    label = np.array([topics.index(a.topic) for a in kept])
    fold, right = knn_folds(kept, 4, seed=0), 0
    for f in range(4):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        right += int(
            (predict(knn_votes(vectors.document[tr], label[tr], vectors.document[te], len(topics))) == label[te]).sum()
        )
    assert out["knn/document/accuracy@384"] == pytest.approx(right / len(kept))
    assert out["knn/sentence/accuracy@384"] > 0.5 and out["knn/n_test_sentences"] == len(vectors.sentence)


# --- efficiency ---------------------------------------------------------------------------------------------


def test_efficiency_keys_and_positive_numbers(encoder: MultiScaleEncoder, base_model: SentenceTransformer) -> None:
    texts = [
        "Cats sleep a lot. They also purr.",
        "The stock market fell today. Investors were worried about rates. Bonds rose.",
        "Photosynthesis turns light into chemical energy.",
    ]
    docs = [make_document(t, id=str(i)) for i, t in enumerate(texts)]
    models: list[CorpusEncoder] = [MusesCorpusEncoder(encoder), FlatCorpusEncoder(base_model)]
    out = measure_efficiency(models, docs, queries=["a query", "another query"], dims=[32, 384])
    for name in ("muses", "flat"):
        for what in ("docs+sentences", "docs+sentences+tokens"):
            for unit in ("seconds", "docs_per_s", "sentences_per_s"):
                assert out[f"{name}/encode/{what}/{unit}"] > 0  # type: ignore[operator]
        assert out[f"{name}/encode/docs+sentences+tokens/tokens_per_s"] > 0  # type: ignore[operator]
        assert out[f"{name}/checkpoint_mb"] > 10  # type: ignore[operator]
        for scale in ("document", "sentence"):
            for d in (32, 384):
                assert out[f"{name}/search/{scale}/batch1_ms@{d}"] > 0  # type: ignore[operator]
                assert out[f"{name}/search/{scale}/qps_batch32@{d}"] > 0  # type: ignore[operator]
        assert out[f"{name}/query_encode/batch32_ms"] > 0  # type: ignore[operator]
        assert out[f"{name}/memory/sentence/float32_mb@384"] == pytest.approx(
            out[f"{name}/n_sentence"] * 384 * 4 / 1e6  # type: ignore[operator]
        )
    assert out["muses/n_sentence"] == out["flat/n_sentence"] == 6 and out["n_docs"] == 3
    assert out["speedup/docs+sentences/flat_vs_muses"] > 0  # type: ignore[operator]
    assert out["peak_rss_mb"] > 0 and out["machine/cpu_count"] > 0  # type: ignore[operator]

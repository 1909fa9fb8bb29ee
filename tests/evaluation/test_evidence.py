"""Sentence-level evidence retrieval on small real slices of SciFact and SQuAD dev."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from muses.data.scifact import load_scifact_claims, load_scifact_corpus
from muses.data.squad import SquadDataset, load_squad
from muses.encoder import MultiScaleEncoder
from muses.evaluation.corpus import CorpusVectors, EmbeddingCache, FlatCorpusEncoder, MusesCorpusEncoder
from muses.evaluation.evidence import (
    REPORTED,
    evaluate_scifact_evidence,
    evaluate_squad_sentences,
    gold_sentence,
    scifact_evidence_documents,
    scifact_evidence_qrels,
    sentence_ids,
    sentence_runs,
    squad_documents,
    squad_qrels,
    zoom_scores,
)
from muses.scoring import prefix_normalize

DIMS = [32, 384]
N_PARAGRAPHS = 30
N_QUESTIONS = 200


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingCache:
    return EmbeddingCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def squad(data_dir: Path) -> SquadDataset:
    return load_squad("squad", data_dir)


@pytest.fixture(scope="module")
def muses(encoder: MultiScaleEncoder) -> MusesCorpusEncoder:
    return MusesCorpusEncoder(encoder)


@pytest.fixture(scope="module")
def squad_metrics(muses: MusesCorpusEncoder, cache: EmbeddingCache, data_dir: Path) -> dict[str, float]:
    return evaluate_squad_sentences(
        muses, cache=cache, dims=DIMS, max_docs=N_PARAGRAPHS, max_questions=N_QUESTIONS, data_dir=data_dir
    )


@pytest.fixture(scope="module")
def squad_vecs(
    muses: MusesCorpusEncoder, cache: EmbeddingCache, squad: SquadDataset, squad_metrics: dict[str, float]
) -> CorpusVectors:
    return cache.corpus(muses, squad_documents(squad, N_PARAGRAPHS))  # a cache hit: encoded by squad_metrics


def test_scifact_documents_keep_rationale_indices(data_dir: Path) -> None:
    corpus = load_scifact_corpus(data_dir)
    claims = [c for c in load_scifact_claims("dev", data_dir) if c.has_evidence][:5]
    docs = {d.id: d for d in scifact_evidence_documents({d: corpus[d] for c in claims for d in c.evidence_doc_ids})}
    qrels = scifact_evidence_qrels(claims)
    for claim in claims:
        assert set(qrels[claim.id]) == {f"{d}:{i}" for d, i in claim.rationale_sentences}
        for doc_id, i in claim.rationale_sentences:
            assert docs[doc_id].sentence_texts()[i] == corpus[doc_id].sentences[i].strip()


def test_scifact_evidence_on_a_slice(muses: MusesCorpusEncoder, cache: EmbeddingCache, data_dir: Path) -> None:
    m = evaluate_scifact_evidence(muses, cache=cache, dims=DIMS, max_docs=12, max_claims=6, data_dir=data_dir)
    assert m["n_queries"] == 6 and m["n_docs"] >= 12
    for ranking in ("flat", "zoom"):
        for dim in DIMS:
            r = [m[f"{ranking}/recall@{k}@{dim}"] for k in (1, 5, 10, 100)]
            assert all(0.0 <= x <= 1.0 for x in r) and r == sorted(r)
            assert 0.0 < m[f"{ranking}/mrr@100@{dim}"] <= 1.0
    assert m["flat/recall@100@384"] > m["flat/recall@1@384"]


def test_gold_sentence_contains_answer_start(squad: SquadDataset) -> None:
    docs = squad_documents(squad, N_PARAGRAPHS)
    for doc, (_, paragraph) in zip(docs, squad.paragraphs(), strict=False):
        for question in paragraph.questions:
            for answer in question.answers:
                span = doc.sentences[gold_sentence(doc, answer)]
                assert span.start <= answer.answer_start < span.end


def test_squad_qrels_all_vs_unambiguous(squad: SquadDataset) -> None:
    docs = squad_documents(squad, N_PARAGRAPHS)
    queries, qrels = squad_qrels(squad, docs)
    assert set(qrels["all"]) == set(queries)
    assert set(qrels["unambiguous"]) <= set(qrels["all"]) and len(qrels["unambiguous"]) < len(qrels["all"])
    limited, _ = squad_qrels(squad, docs, max_questions=7)
    assert list(limited) == list(queries)[:7]


def test_squad_metrics(squad_metrics: dict[str, float]) -> None:
    assert squad_metrics["n_docs"] == N_PARAGRAPHS
    assert squad_metrics["unambiguous/n_queries"] < squad_metrics["all/n_queries"]
    for answers in ("unambiguous", "all"):
        for ranking in ("flat", "zoom"):
            for dim in DIMS:
                values = [squad_metrics[f"{answers}/{ranking}/{m}@{dim}"] for m in REPORTED]
                assert all(0.0 <= v <= 1.0 for v in values)
    assert squad_metrics["all/flat/recall@10@384"] > 0.5  # the base model finds most answer sentences


def test_zoom_scores_rank_top_documents_first() -> None:
    doc_scores = np.array([[0.1, 0.9, 0.5]])
    sent_scores = np.array([[0.8, 0.7, 0.2, 0.1, 0.3]])
    sentence_doc = np.array([0, 0, 1, 1, 2])
    order = np.argsort(-zoom_scores(doc_scores, sent_scores, sentence_doc, 1)[0]).tolist()
    assert order == [2, 3, 0, 1, 4]  # doc 1's sentences first, the rest by cosine
    order = np.argsort(-zoom_scores(doc_scores, sent_scores, sentence_doc, 2)[0]).tolist()
    assert order == [4, 2, 3, 0, 1]


@pytest.mark.parametrize("zoom_docs", [1, 3])
def test_zoom_run_puts_sentences_of_top_documents_first(
    muses: MusesCorpusEncoder, squad_vecs: CorpusVectors, squad: SquadDataset, zoom_docs: int
) -> None:
    docs = squad_documents(squad, N_PARAGRAPHS)
    queries, _ = squad_qrels(squad, docs, max_questions=5)
    q = muses.encode_queries(list(queries.values()))
    runs = sentence_runs(q, squad_vecs, list(queries), 384, zoom_docs=zoom_docs)
    doc_cos = prefix_normalize(q, 384) @ squad_vecs.document.T
    sent_cos = prefix_normalize(q, 384) @ squad_vecs.sentence.T
    ids = sentence_ids(squad_vecs)
    for row, qid in enumerate(queries):
        top_docs = set(np.argsort(-doc_cos[row])[:zoom_docs].tolist())
        inside = [i for i in range(len(ids)) if squad_vecs.sentence_doc[i] in top_docs]
        ranking = sorted(runs["zoom"][qid], key=runs["zoom"][qid].__getitem__, reverse=True)
        expected = sorted(inside, key=lambda i: -sent_cos[row, i])
        assert ranking[: len(inside)] == [ids[i] for i in expected]
        flat = sorted(runs["flat"][qid], key=runs["flat"][qid].__getitem__, reverse=True)
        assert flat[0] == ids[int(np.argmax(sent_cos[row]))]


def test_flat_baseline_equals_untrained_standalone_muses(
    base_model: SentenceTransformer, encoder: MultiScaleEncoder, cache: EmbeddingCache, data_dir: Path
) -> None:
    """Paragraphs under 256 tokens: the flat model and standalone MuSES make the same vectors, so the same scores."""
    flat = evaluate_squad_sentences(
        FlatCorpusEncoder(base_model), cache=cache, dims=DIMS, max_docs=10, max_questions=60, data_dir=data_dir
    )
    standalone = evaluate_squad_sentences(
        MusesCorpusEncoder(encoder, context="sentence"),
        cache=cache,
        dims=DIMS,
        max_docs=10,
        max_questions=60,
        data_dir=data_dir,
    )
    assert flat.keys() == standalone.keys()
    for key in flat:
        assert flat[key] == pytest.approx(standalone[key], abs=1e-6), key


def test_in_context_and_standalone_sentence_vectors_differ(
    muses: MusesCorpusEncoder,
    encoder: MultiScaleEncoder,
    squad: SquadDataset,
    cache: EmbeddingCache,
    data_dir: Path,
) -> None:
    docs = squad_documents(squad, 10)
    standalone = cache.corpus(MusesCorpusEncoder(encoder, context="sentence"), docs)  # cached by the test above
    in_context = cache.corpus(muses, docs)
    np.testing.assert_allclose(standalone.document, in_context.document, atol=1e-5)
    assert not np.allclose(standalone.sentence, in_context.sentence, atol=1e-3)

"""BEIR document retrieval: each scoring against brute force, fusion, train-only fitting, flat vs untrained MuSES.

A small real slice of SciFact: the relevant docs of a few test and train queries plus distractors, all short
enough (<= 254 word pieces) for one window, so that the untrained MuSES and the flat base model must agree.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import muses.evaluation.retrieval as retrieval
from muses.data.beir import BeirDataset, load_beir
from muses.encoder import MultiScaleEncoder, default_base_path
from muses.errors import InputError
from muses.evaluation.corpus import CorpusVectors, EmbeddingCache, FlatCorpusEncoder, MusesCorpusEncoder
from muses.evaluation.metrics import evaluate_run, run_from_scores
from muses.evaluation.retrieval import (
    DOCUMENT,
    SENTENCE,
    TOKEN,
    FusionWeights,
    ScoredQueries,
    beir_documents,
    evaluate_beir_retrieval,
    evaluate_scored,
    fit_fusion,
    fit_fusion_weights,
    fuse,
    pool_run,
    score_queries,
    segment_max,
    simplex_grid,
)
from muses.scoring import prefix_normalize
from muses.types import Document

DIMS = [32, 384]
RERANK_K = 6
N_DOCS = 32
N_QUERIES = 6


def _slice(test: BeirDataset, train: BeirDataset) -> tuple[BeirDataset, BeirDataset]:
    """Short docs only: the relevant docs of the first test/train queries, then distractors, in corpus order."""
    tok = AutoTokenizer.from_pretrained(str(default_base_path()))
    corpus = test.corpus

    def short(doc_id: str) -> bool:
        text = beir_documents({doc_id: corpus[doc_id]})[0].text
        return len(tok(text, add_special_tokens=False)["input_ids"]) <= 254

    keep: set[str] = set()
    splits = []
    for ds in (test, train):
        qids = [q for q, rels in itertools.islice(ds.qrels.items(), 200) if all(short(d) for d in rels)][:N_QUERIES]
        keep |= {d for q in qids for d in ds.qrels[q]}
        splits.append(qids)
    distractors = (d for d in corpus if d not in keep and short(d))
    keep |= set(itertools.islice(distractors, N_DOCS - len(keep)))
    corpus = {k: v for k, v in test.corpus.items() if k in keep}
    return tuple(  # type: ignore[return-value]
        BeirDataset(corpus, {q: ds.queries[q] for q in qids}, {q: dict(ds.qrels[q]) for q in qids}, ds.name, ds.split)
        for ds, qids in zip((test, train), splits, strict=True)
    )


@pytest.fixture(scope="module")
def slices(data_dir: Path) -> tuple[BeirDataset, BeirDataset]:
    return _slice(load_beir("scifact", "test", data_dir), load_beir("scifact", "train", data_dir))


@pytest.fixture(scope="module")
def muses(encoder: MultiScaleEncoder) -> MusesCorpusEncoder:
    return MusesCorpusEncoder(encoder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingCache:
    return EmbeddingCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def vecs(muses: MusesCorpusEncoder, slices: tuple[BeirDataset, BeirDataset], cache: EmbeddingCache) -> CorpusVectors:
    return cache.corpus(muses, beir_documents(slices[0].corpus), with_tokens=True)


@pytest.fixture(scope="module")
def scored(
    muses: MusesCorpusEncoder, vecs: CorpusVectors, slices: tuple[BeirDataset, BeirDataset], cache: EmbeddingCache
) -> dict[int, ScoredQueries]:
    return score_queries(muses, vecs, slices[0].queries, DIMS, cache, rerank_k=RERANK_K)


def test_documents_join_title_and_text(slices: tuple[BeirDataset, BeirDataset]) -> None:
    doc_id, raw = next(iter(slices[0].corpus.items()))
    doc = beir_documents({doc_id: raw})[0]
    assert doc.id == doc_id and doc.text == f"{raw['title']}. {raw['text']}"
    assert beir_documents({"x": {"title": "", "text": "Only text."}})[0].text == "Only text."


def test_slice_is_small_and_short(slices: tuple[BeirDataset, BeirDataset], vecs: CorpusVectors) -> None:
    test, train = slices
    assert len(test.corpus) == N_DOCS and len(test.queries) == len(train.queries) == N_QUERIES
    assert vecs.token is not None and len(vecs.token_doc) == len(vecs.token)


def test_segment_max_handles_unsorted_and_empty_segments() -> None:
    scores = np.array([[0.1, 0.5, -0.2, 0.3]], dtype=np.float32)
    out = segment_max(scores, np.array([2, 0, 2, 0]), 4)
    np.testing.assert_array_equal(out, np.array([[0.5, -np.inf, 0.1, -np.inf]], dtype=np.float32))


@pytest.mark.parametrize("dim", DIMS)
def test_sentence_maxsim_equals_loop(
    muses: MusesCorpusEncoder,
    vecs: CorpusVectors,
    slices: tuple[BeirDataset, BeirDataset],
    scored: dict[int, ScoredQueries],
    dim: int,
) -> None:
    q = prefix_normalize(muses.encode_queries(list(slices[0].queries.values())), dim)
    sents = prefix_normalize(vecs.sentence, dim)
    expected = np.full((len(q), len(vecs.doc_ids)), -np.inf)
    for i in range(len(q)):
        for s in range(len(sents)):
            j = vecs.sentence_doc[s]
            expected[i, j] = max(expected[i, j], float(q[i] @ sents[s]))
    np.testing.assert_allclose(scored[dim].dense[SENTENCE], expected, atol=1e-5)


@pytest.mark.parametrize("dim", DIMS)
def test_document_scores_use_renormalised_prefixes(
    muses: MusesCorpusEncoder,
    vecs: CorpusVectors,
    slices: tuple[BeirDataset, BeirDataset],
    scored: dict[int, ScoredQueries],
    dim: int,
) -> None:
    q = muses.encode_queries(list(slices[0].queries.values()))[:, :dim]
    d = vecs.document[:, :dim]
    cos = (q @ d.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(d, axis=1)[None, :]
    np.testing.assert_allclose(scored[dim].dense[DOCUMENT], cos, atol=1e-5)


def test_prefix_dims_give_different_scores(scored: dict[int, ScoredQueries]) -> None:
    for name in (DOCUMENT, SENTENCE):
        assert not np.allclose(scored[32].dense[name], scored[384].dense[name], atol=1e-3)


def test_pool_is_union_of_top_k(scored: dict[int, ScoredQueries]) -> None:
    sq = scored[384]
    for row, cols in enumerate(sq.pool):
        members = set(cols[cols >= 0].tolist())
        assert len(members) == int((cols >= 0).sum())
        for name in (DOCUMENT, SENTENCE):
            top = np.argsort(-sq.dense[name][row], kind="stable")[:RERANK_K]
            assert set(top.tolist()) <= members
        assert RERANK_K <= len(members) <= 2 * RERANK_K < N_DOCS


@pytest.mark.parametrize("dim", DIMS)
def test_token_maxsim_equals_brute_force(
    muses: MusesCorpusEncoder,
    vecs: CorpusVectors,
    slices: tuple[BeirDataset, BeirDataset],
    scored: dict[int, ScoredQueries],
    dim: int,
) -> None:
    assert vecs.token is not None
    sq = scored[dim]
    query_tokens = muses.encode_query_tokens(list(slices[0].queries.values())[:2])
    for row in range(2):
        qt = prefix_normalize(query_tokens[row], dim)
        for col, doc in enumerate(sq.pool[row].tolist()):
            if doc < 0:
                assert sq.pooled[TOKEN][row, col] == -np.inf
                continue
            dt = prefix_normalize(vecs.token[vecs.token_doc == doc].astype(np.float64), dim)
            expected = sum(max(float(a @ b) for b in dt) for a in qt)
            assert sq.pooled[TOKEN][row, col] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("method", ["wsum", "rrf"])
@pytest.mark.parametrize("scoring", [DOCUMENT, SENTENCE, TOKEN])
def test_fusion_with_one_weight_equals_that_scoring(
    scored: dict[int, ScoredQueries], slices: tuple[BeirDataset, BeirDataset], method: str, scoring: str
) -> None:
    sq = scored[384]
    fused = fuse(sq.pooled, {scoring: 1.0}, method)
    alone, together = pool_run(sq, sq.pooled[scoring]), pool_run(sq, fused)
    for qid in sq.query_ids:
        assert sorted(alone[qid], key=alone[qid].get) == sorted(together[qid], key=together[qid].get)  # type: ignore
    weights = FusionWeights(method, {d: {scoring: 1.0} for d in scored}, "test-fixture")
    metrics = evaluate_scored(scored, slices[0].qrels, ks=(1, 5), fusion=[weights])
    for k in (1, 5):
        assert metrics[f"fusion-{method}/ndcg@{k}@384"] == pytest.approx(metrics[f"{scoring}/ndcg@{k}@384"])


def test_simplex_grid() -> None:
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in grid) and (1.0, 0.0, 0.0) in grid


def test_fit_fusion_refuses_test_split(
    scored: dict[int, ScoredQueries], muses: MusesCorpusEncoder, slices: tuple[BeirDataset, BeirDataset]
) -> None:
    with pytest.raises(InputError, match="never on 'test'"):
        fit_fusion_weights(scored, slices[0].qrels, split="test")
    with pytest.raises(InputError, match="never on 'test'"):
        fit_fusion(muses, "scifact", "test")


def test_fusion_is_fitted_on_train_only(
    muses: MusesCorpusEncoder,
    slices: tuple[BeirDataset, BeirDataset],
    cache: EmbeddingCache,
    vecs: CorpusVectors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded: list[str] = []

    def fake_load_beir(name: str, split: str = "test", **_: Any) -> BeirDataset:
        loaded.append(split)
        return {"test": slices[0], "dev": slices[1]}[split]

    monkeypatch.setattr(retrieval, "load_beir", fake_load_beir)
    hits = cache.hits
    metrics = evaluate_beir_retrieval(muses, "scifact", cache=cache, dims=DIMS, rerank_k=RERANK_K)
    assert loaded == ["test", "dev"]
    assert cache.hits > hits  # the corpus vectors came from the cache: encoded once for both splits
    # the recorded nDCG@10 of the chosen weights is that of the dev split they were fitted on, recomputed
    train_scored = score_queries(muses, vecs, slices[1].queries, DIMS, cache, rerank_k=RERANK_K)
    for method in ("wsum", "rrf"):
        weights = {s: metrics[f"fusion-{method}/weight-{s}@384"] for s in (DOCUMENT, SENTENCE, TOKEN)}
        assert sum(weights.values()) == pytest.approx(1.0)
        run = pool_run(train_scored[384], fuse(train_scored[384].pooled, weights, method))
        assert metrics[f"fusion-{method}/fit-ndcg@10@384"] == pytest.approx(
            evaluate_run(slices[1].qrels, run, (10,))["ndcg@10"], abs=1e-9
        )
    for name in ("document", "sentence", TOKEN, "fusion-wsum", "fusion-rrf"):
        for dim in DIMS:
            assert 0.0 <= metrics[f"{name}/ndcg@10@{dim}"] <= 1.0
            assert f"{name}/recall@100@{dim}" in metrics
    assert metrics["pool/depth"] == RERANK_K


def test_flat_baseline_equals_untrained_muses_at_document_scale(
    base_model: SentenceTransformer,
    muses: MusesCorpusEncoder,
    slices: tuple[BeirDataset, BeirDataset],
    cache: EmbeddingCache,
) -> None:
    test = slices[0]
    relevant = {d for rels in test.qrels.values() for d in rels}
    corpus = {k: v for i, (k, v) in enumerate(test.corpus.items()) if k in relevant or i < 4}
    docs = beir_documents(corpus)
    flat = FlatCorpusEncoder(base_model)
    got, documents = {}, {}
    for model in (flat, muses):
        v = cache.corpus(model, docs)
        documents[model.name] = v.document
        sq = score_queries(model, v, test.queries, DIMS, cache, with_tokens=False)
        got[model.name] = evaluate_scored(sq, test.qrels)
    np.testing.assert_allclose(documents["flat"], documents["muses"], atol=2e-5)
    for dim in DIMS:
        for metric in ("ndcg@10", "recall@100", "mrr@10"):
            key = f"document/{metric}@{dim}"
            assert got["flat"][key] == pytest.approx(got["muses"][key], abs=1e-6)


def test_run_from_scores_agrees_with_dense_document_ranking(scored: dict[int, ScoredQueries]) -> None:
    sq = scored[384]
    run = run_from_scores(sq.query_ids, sq.doc_ids, sq.dense[DOCUMENT], k=3)
    best = sq.doc_ids[int(np.argmax(sq.dense[DOCUMENT][0]))]
    assert max(run[sq.query_ids[0]], key=run[sq.query_ids[0]].get) == best  # type: ignore[arg-type]


def test_a_slice_without_queries_is_one_line_not_a_crash(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    """The first 60 SciFact abstracts hold every relevant document of no dev query: fitting fusion there used to
    reach the tokenizer with no text and fail with an IndexError."""
    with pytest.raises(InputError, match="no query has all its relevant documents among the first 60"):
        fit_fusion(MusesCorpusEncoder(encoder), "scifact", "dev", max_docs=60, data_dir=data_dir)
    with pytest.raises(InputError, match="no queries to score"):
        empty = np.zeros((0, 384), dtype=np.float32)
        none = np.zeros(0, dtype=np.int64)
        vecs = CorpusVectors([], empty, empty, none, none)
        score_queries(MusesCorpusEncoder(encoder), vecs, {}, [384], with_tokens=False)


def test_scifact_files_are_the_ones_the_published_numbers_used(data_dir: Path) -> None:
    """The corpus and queries are byte-identical to BEIR's SciFact (sha256 of BEIR's files, see the data README):
    with the harness's metrics checked against MTEB's on the same vectors (tests/integrations/test_mteb.py), this is
    what ``make test`` keeps of the full-corpus reproduction below."""
    expected = {
        "corpus.jsonl": "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6",
        "queries.jsonl": "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((data_dir / "scifact" / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.reproduce
def test_scifact_document_ndcg_matches_published(base_model: SentenceTransformer, data_dir: Path) -> None:
    """all-MiniLM-L6-v2 on SciFact test, document scale at 384d: nDCG@10 = 0.645 (published, BEIR/MTEB).

    The published number joins title and text with a space, as BEIR does (measured here: 0.6451); the default
    ``". "`` join, which makes the title its own sentence, gives 0.6484. Encoding the 5,183 abstracts takes about
    7 minutes on 2 cores, a third of ``make test``'s budget: run it with ``make reproduce``.
    """
    metrics = evaluate_beir_retrieval(
        FlatCorpusEncoder(base_model, sentences=False),  # the document scale is all this checks
        "scifact",
        dims=[384],
        with_tokens=False,
        fusion=None,
        title_sep=" ",
        data_dir=data_dir,
    )
    assert metrics["document/ndcg@10@384"] == pytest.approx(0.645, abs=0.003)


def test_a_corpus_is_encoded_in_parts_that_survive_an_interruption(
    muses: MusesCorpusEncoder, vecs: CorpusVectors, slices: tuple[BeirDataset, BeirDataset], tmp_path: Path
) -> None:
    """A corpus bigger than ``part_docs`` is encoded a part at a time and each part kept as it ends: a run cut off
    mid-way encodes only the parts it lacks when run again, and the joined vectors (every scale, the rows linking
    sentences and tokens to their documents renumbered) are those of one call."""
    docs = beir_documents(slices[0].corpus)
    calls: list[int] = []

    class Interrupted(RuntimeError):
        pass

    class CutOff:  # the real model, stopped before its third part
        def __getattr__(self, name: str) -> object:
            return getattr(muses, name)

        def encode_corpus(self, part: list[Document], with_tokens: bool = False) -> CorpusVectors:
            if len(calls) == 2:
                raise Interrupted
            calls.append(len(part))
            return muses.encode_corpus(part, with_tokens=with_tokens)

    cache = EmbeddingCache(tmp_path, part_docs=7)
    with pytest.raises(Interrupted):
        cache.corpus(CutOff(), docs, with_tokens=True)  # type: ignore[arg-type]
    assert calls == [7, 7] and len(list(tmp_path.rglob("*.part-*"))) == 2
    calls.clear()
    got = EmbeddingCache(tmp_path, part_docs=7)
    out = got.corpus(muses, docs, with_tokens=True)
    assert got.parts_reused == 2 and not list(tmp_path.rglob("*.part-*"))  # the parts made one entry
    assert out.doc_ids == vecs.doc_ids and vecs.token is not None and out.token is not None
    for name in ("sentence_doc", "sentence_pos", "token_doc"):
        np.testing.assert_array_equal(getattr(out, name), getattr(vecs, name))
    for name in ("document", "sentence", "token"):
        np.testing.assert_allclose(getattr(out, name), getattr(vecs, name), atol=2e-3)
    again = EmbeddingCache(tmp_path, part_docs=7)
    assert again.corpus(muses, docs).document.tobytes() == out.document.tobytes() and again.hits == 1


def test_flat_documents_and_tokens_come_from_one_pass(
    base_model: SentenceTransformer, slices: tuple[BeirDataset, BeirDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flat baseline's documents and token vectors come from one forward pass per abstract (a big baseline's corpus
    used to be encoded twice), in chunks: the same numbers as the two outputs asked for apart, in the same order."""
    docs = beir_documents(dict(list(slices[0].corpus.items())[:12]))
    flat = FlatCorpusEncoder(base_model, batch_size=4)
    texts = [d.text for d in docs]
    apart, documents = flat._token_vectors(texts), flat._encode(texts)
    calls = []
    forward = base_model.forward
    monkeypatch.setattr(base_model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    monkeypatch.setattr(flat, "_token_vectors", lambda texts: pytest.fail("a second pass over the documents"))
    vecs = flat.encode_corpus(docs, with_tokens=True)
    n_sentences = sum(len(d.sentences) for d in docs)
    assert len(calls) == -(-len(docs) // 4) + -(-n_sentences // 4)  # one batch of 4 per forward, no more
    np.testing.assert_allclose(vecs.document, documents, atol=1e-5)
    assert vecs.token is not None and vecs.token_doc is not None
    assert len(vecs.token) == sum(len(t) for t in apart)
    np.testing.assert_allclose(vecs.token.astype(np.float32), np.concatenate(apart), atol=2e-3)
    np.testing.assert_array_equal(np.bincount(vecs.token_doc, minlength=len(docs)), [len(t) for t in apart])
    chunked, tokens = flat._documents_with_tokens(texts, chunk=5)  # chunk boundaries change nothing
    np.testing.assert_allclose(chunked, vecs.document, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(tokens), np.concatenate(apart), atol=1e-5)
    without = flat.encode_corpus(docs)
    np.testing.assert_allclose(without.document, vecs.document, atol=1e-6)
    assert without.token is None

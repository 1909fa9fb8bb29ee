"""MuSES through MTEB 2.x (:mod:`muses.integrations.mteb`): MTEB's STSBenchmark and SciFact, filled from the local
data folder (no hub), reproduce the evaluation harness. Real model (the untrained MuSES over all-MiniLM-L6-v2), real
data; ``benchmarks/mteb_reproduce.py`` does the same on the full SciFact corpus."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mteb
import numpy as np
import pytest
from datasets import Dataset
from mteb._create_dataloaders import create_dataloader  # what MTEB hands an encoder (no public alias)
from mteb.types import PromptType

from muses.data.beir import BeirDataset, load_beir
from muses.data.stsb import load_stsb
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.retrieval import (
    FusionWeights,
    beir_documents,
    doc_text,
    evaluate_scored,
    score_queries,
)
from muses.evaluation.sts import evaluate_sts
from muses.integrations.mteb import (
    DEFAULT_FUSION_WEIGHTS,
    TASK_REVISIONS,
    MusesEncoder,
    MusesSearch,
    evaluate_task,
    scifact_task,
    stsb_task,
)
from muses.scoring import prefix_normalize
from muses.store import StoreConfig

SCIFACT_CLAIMS = 100  # the first test claims (by id)
SCIFACT_DOCS = 240  # their relevant abstracts plus distractors, in corpus file order
pytestmark = pytest.mark.filterwarnings("ignore:The task 'STSBenchmark' is superseded")


def _loader(rows: dict[str, list[Any]], task: str, prompt_type: PromptType | None) -> Any:
    return create_dataloader(
        Dataset.from_dict(rows), task_metadata=mteb.get_task(task).metadata, prompt_type=prompt_type, batch_size=2
    )


def _encode(model: MusesEncoder, loader: Any, task: str, prompt_type: PromptType | None) -> np.ndarray:
    meta = mteb.get_task(task).metadata
    return model.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=prompt_type)


# --- protocols, metadata, arguments --------------------------------------------------------------------------


def test_protocols_and_model_meta(encoder: MultiScaleEncoder) -> None:
    sentence = MusesEncoder(encoder, "sentence", 64)
    search = MusesSearch(encoder, "fusion")
    assert isinstance(sentence, mteb.EncoderProtocol)
    assert isinstance(search, mteb.SearchProtocol) and not isinstance(search, mteb.EncoderProtocol)
    meta = sentence.mteb_model_meta
    assert meta is not None
    assert meta.name == "muses/all-MiniLM-L6-v2" and meta.adapted_from == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta.revision == encoder.fingerprint()  # equal revisions, equal vectors
    assert meta.embed_dim == 64 and meta.experiment_kwargs == {"scale": "sentence", "dim": 64}
    assert meta.n_parameters == sum(p.numel() for p in encoder.parameters())
    assert meta.use_instructions is False and meta.max_tokens == math.inf and meta.similarity_fn_name == "cosine"
    smeta = search.mteb_model_meta
    assert smeta.embed_dim == 384 and smeta.model_type == ["hybrid"] and smeta.revision == meta.revision
    assert smeta.experiment_kwargs is not None and smeta.experiment_kwargs["w_token"] == 0.7
    assert MusesSearch(encoder, "token", 64).mteb_model_meta.similarity_fn_name == "MaxSim"
    # different scorings are different experiments in MTEB's results
    assert len({MusesSearch(encoder, s).mteb_model_meta.experiment_name for s in ("document", "zoom", "fusion")}) == 3


def test_store_weights_and_task_versions() -> None:
    assert StoreConfig().fusion_weights == DEFAULT_FUSION_WEIGHTS
    for name, revision in TASK_REVISIONS.items():  # a new mteb that moves a task's data fails here, not silently
        assert mteb.get_task(name).metadata.revision == revision


def test_bad_arguments(encoder: MultiScaleEncoder) -> None:
    with pytest.raises(InputError, match="scale"):
        MusesEncoder(encoder, "token")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dim"):
        MusesEncoder(encoder, dim=1000)
    with pytest.raises(InputError, match="scoring"):
        MusesSearch(encoder, "bm25")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown scales"):
        MusesSearch(encoder, fusion_weights={"title": 1.0})
    queries = Dataset.from_dict({"id": ["q"], "text": ["cats"]})
    with pytest.raises(InputError, match="index"):
        MusesSearch(encoder, "document").search(queries, top_k=10)
    search = MusesSearch(encoder, "document", 32)
    search.index(Dataset.from_dict({"id": ["a"], "title": [""], "text": ["Cats purr."]}))
    with pytest.raises(InputError, match="top_ranked"):
        search.search(queries, top_k=10, top_ranked={"q": ["a"]})
    assert list(search.search(queries, top_k=10)) == ["q"]


# --- what the encoder does with MTEB's inputs -----------------------------------------------------------------


def test_encoder_reads_mteb_inputs(encoder: MultiScaleEncoder) -> None:
    """Corpus rows are joined as the harness joins them, at the asked scale and dim; queries get the model's query
    prompt; plain texts (STS) are embedded at the scale."""
    texts = ["Cats purr. They sleep.", "Dogs.", "Fly."]
    corpus = {"id": ["a", "b", "c"], "title": ["Cats", "", "Birds"], "text": texts}
    joined = [doc_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]
    assert joined[0] == "Cats. Cats purr. They sleep." and joined[1] == "Dogs."
    docs = _loader(corpus, "SciFact", PromptType.document)
    got = _encode(MusesEncoder(encoder, "document", 64), docs, "SciFact", PromptType.document)
    want = np.stack([e.document for e in encoder.encode_documents(joined, scales=("document",), dim=64)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    got = _encode(MusesEncoder(encoder, "sentence", 128), docs, "SciFact", PromptType.document)
    np.testing.assert_allclose(got, encoder.encode_sentences(joined, dim=128), atol=1e-5)

    plain = _loader({"text": ["A man plays a guitar.", "Rain."]}, "STSBenchmark", None)  # MTEB renames sentence1
    got = _encode(MusesEncoder(encoder, "document"), plain, "STSBenchmark", None)
    want = np.stack([e.document for e in encoder.encode_documents(["A man plays a guitar.", "Rain."])])
    np.testing.assert_allclose(got, want, atol=1e-5)

    prompted = MultiScaleEncoder.from_base(query_prompt="query: ")
    queries = _loader({"id": ["q1", "q2"], "text": ["do cats purr?", "birds fly"]}, "SciFact", PromptType.query)
    got = _encode(MusesEncoder(prompted, "document", 64), queries, "SciFact", PromptType.query)
    want = prompted.encode_sentences(["query: do cats purr?", "query: birds fly"], 64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, prompted.encode_sentences(["do cats purr?", "birds fly"], 64), atol=1e-3)
    assert MusesEncoder(prompted).mteb_model_meta.use_instructions is True  # type: ignore[union-attr]


# --- STS-B ---------------------------------------------------------------------------------------------------


class _MemoEncoder:
    """The fixture encoder with ``encode_sentences`` memoised at full size: STS-B's 2,552 sentences are encoded
    once, for the harness and both MTEB runs (each would take as long). MTEB still sees the real model's vectors,
    cut to the dim it asks for; everything else is the encoder's own."""

    def __init__(self, enc: MultiScaleEncoder) -> None:
        self.enc = enc
        self.vectors: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.enc, name)

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None, *args: Any, **kw: Any) -> np.ndarray:
        new = [s for s in dict.fromkeys(sentences) if s not in self.vectors]
        if new:
            self.vectors.update(zip(new, self.enc.encode_sentences(new), strict=True))
        return prefix_normalize(np.stack([self.vectors[s] for s in sentences]), dim or self.enc.embed_dim)


def test_stsb_through_mteb_equals_harness(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    """About 10 s on 2 idle cores (one encoding of STS-B's 2,552 test sentences), so not marked slow."""
    pairs = load_stsb("test", data_dir)
    memo: Any = _MemoEncoder(encoder)
    harness = evaluate_sts(memo, pairs, [384, 64])
    task = stsb_task(pairs)
    assert task.data_loaded and len(task.dataset["test"]) == 1379  # type: ignore[index]
    for dim, published in ((384, 0.8203), (64, 0.7921)):
        scores = evaluate_task(MusesEncoder(memo, "sentence", dim), task)
        assert scores["main_score"] == scores["cosine_spearman"]
        assert abs(scores["cosine_spearman"] - harness[f"spearman@{dim}"]) < 1e-4
        assert abs(harness[f"spearman@{dim}"] - published) < 5e-5  # docs/results.md
    assert len(memo.vectors) == len(set(pairs.sentences1) | set(pairs.sentences2))


# --- SciFact -------------------------------------------------------------------------------------------------


def _scifact_slice(data_dir: Path) -> BeirDataset:
    """The first ``SCIFACT_CLAIMS`` test claims; the corpus: their relevant abstracts plus the first others,
    ``SCIFACT_DOCS`` in all, in corpus file order (`benchmarks/mteb_reproduce.py` runs all 300 on the full corpus)."""
    full = load_beir("scifact", "test", data_dir=data_dir)
    qids = sorted(full.qrels)[:SCIFACT_CLAIMS]
    keep = {d for q in qids for d, r in full.qrels[q].items() if r > 0}
    for doc in full.corpus:
        if len(keep) >= SCIFACT_DOCS:
            break
        keep.add(doc)
    corpus = {d: text for d, text in full.corpus.items() if d in keep}
    queries, qrels = {q: full.queries[q] for q in qids}, {q: full.qrels[q] for q in qids}
    return BeirDataset(corpus, queries, qrels, name="scifact", split="test")


@pytest.mark.slow  # most of it encoding the 240 abstracts (tokens included)
def test_scifact_through_mteb_equals_harness(encoder: MultiScaleEncoder, data_dir: Path, tmp_path: Path) -> None:
    data = _scifact_slice(data_dir)
    assert len(data.corpus) == SCIFACT_DOCS and len(data.queries) == SCIFACT_CLAIMS
    cache = EmbeddingCache(tmp_path)  # the corpus is encoded once, for the harness and every MTEB run
    model = MusesCorpusEncoder(encoder)
    vecs = cache.corpus(model, beir_documents(data.corpus), with_tokens=True)
    scored = score_queries(model, vecs, data.queries, [384, 64], cache)
    store = {"document": 0.0, "sentence": 0.3, "token-rerank": 0.7}
    harness = evaluate_scored(scored, data.qrels, fusion=[FusionWeights("wsum", {384: store, 64: store}, "store")])

    task = scifact_task(data)
    runs: list[tuple[str, int, Any]] = [
        ("document", 384, MusesSearch(encoder, "document", 384, cache=cache)),
        ("document", 64, MusesSearch(encoder, "document", 64, cache=cache)),
        ("document", 384, MusesEncoder(encoder, "document", 384, cache=cache)),  # MTEB's own cosine search
        ("sentence", 384, MusesSearch(encoder, "sentence", 384, cache=cache)),
        ("fusion-wsum", 384, MusesSearch(encoder, "fusion", 384, cache=cache)),
    ]
    for key, dim, mteb_model in runs:
        ndcg = evaluate_task(mteb_model, task)["ndcg_at_10"]
        assert abs(ndcg - harness[f"{key}/ndcg@10@{dim}"]) <= 1e-3, (key, dim, type(mteb_model).__name__)
    assert cache.misses == 2  # the corpus and the queries, encoded once by the harness; every MTEB run read them

    zoom = MusesSearch(encoder, "zoom", 384, cache=cache, zoom_docs=10)
    zoom.index(task.dataset["default"]["test"]["corpus"])  # type: ignore[index]
    documents = MusesSearch(encoder, "document", 384, cache=cache)
    documents.index(task.dataset["default"]["test"]["corpus"])  # type: ignore[index]
    queries = Dataset.from_dict({"id": list(data.queries)[:20], "text": list(data.queries.values())[:20]})
    by_zoom, by_doc = zoom.search(queries, top_k=10), documents.search(queries, top_k=10)
    for qid in by_doc:  # zoom reorders the top 10 documents by their best sentence; it keeps the same 10
        assert set(by_zoom[qid]) == set(by_doc[qid])


@pytest.mark.reproduce  # the whole SciFact corpus (5,183 abstracts): 15-30 min on 2 cores; `make reproduce`
def test_full_scifact_and_stsb_reproduction(data_dir: Path, tmp_path: Path) -> None:
    """``python -m benchmarks.mteb_reproduce``: MTEB through MuSES equals ``muses eval`` on every row (STS-B test,
    SciFact test on the full corpus, every scoring, 384 and 64 dims), and the base model's published numbers."""
    from benchmarks.mteb_reproduce import main

    out = tmp_path / "reproduce.json"
    assert main(["--data-dir", str(data_dir), "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert rows and all(r["ok"] for r in rows)
    got = {(r["task"], r["metric"], r["dim"]): r["mteb"] for r in rows}
    assert got[("STS-B test", "Spearman (cosine)", 384)] == pytest.approx(0.8203, abs=1e-4)
    assert got[("SciFact test", "nDCG@10 fusion, store default weights", 384)] == pytest.approx(0.7230, abs=1e-4)

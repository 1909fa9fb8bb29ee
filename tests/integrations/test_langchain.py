"""The LangChain integration: MusesEmbeddings returns the encoder's own vectors and passes LangChain's standard
embeddings suites; MusesZoomRetriever returns the store's zoom / search results as Documents, finds the relevant
SciFact abstracts, and passes LangChain's standard retriever suite. Real model, real data, nothing mocked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.integrations.langchain import MusesEmbeddings, MusesZoomRetriever, load_encoder

TEXTS = [
    "Mitochondria make ATP. They have their own DNA. Cells may hold thousands of them.",
    "The Rhine flows into the North Sea.",
    "Vaccines train the immune system. Side effects are mostly mild.",
]

# The standard async tests are coroutines; pytest-asyncio runs them in strict mode only when marked. The mark on
# the class also reaches its sync tests, where pytest-asyncio only warns: that warning is silenced here.
ASYNC_SUITE = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings(
        "ignore:The test <Function .* is marked with '@pytest.mark.asyncio':pytest.PytestWarning"
    ),
]

# ---------------------------------------------------------------------------------------------- MusesEmbeddings


@pytest.mark.parametrize("dim", [None, 64])
def test_embed_documents_are_the_encoders_document_vectors(encoder: MultiScaleEncoder, dim: int | None) -> None:
    got = MusesEmbeddings(encoder=encoder, dim=dim).embed_documents(TEXTS)
    want = np.stack([e.document for e in encoder.encode_documents(TEXTS, scales=("document",), dim=dim)])
    assert isinstance(got, list) and all(isinstance(v, list) and isinstance(v[0], float) for v in got)
    assert np.asarray(got).shape == (len(TEXTS), dim or encoder.embed_dim)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_embed_documents_at_sentence_scale_are_standalone_vectors(encoder: MultiScaleEncoder) -> None:
    got = MusesEmbeddings(encoder=encoder, scale="sentence", dim=128).embed_documents(TEXTS)
    want = encoder.encode_sentences(TEXTS, dim=128)
    assert np.asarray(got).shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [None, 32])
def test_embed_query_is_the_encoders_query_vector(encoder: MultiScaleEncoder, dim: int | None) -> None:
    query = "what do mitochondria make?"
    got = MusesEmbeddings(encoder=encoder, dim=dim).embed_query(query)
    assert isinstance(got, list) and isinstance(got[0], float) and len(got) == (dim or encoder.embed_dim)
    np.testing.assert_allclose(np.asarray(got), encoder.encode_queries([query], dim=dim)[0], rtol=0, atol=1e-6)


def test_embed_no_documents_and_empty_text(encoder: MultiScaleEncoder) -> None:
    emb = MusesEmbeddings(encoder=encoder)
    assert emb.embed_documents([]) == []
    with pytest.raises(InputError):
        emb.embed_documents(["fine", "  "])


def test_models_by_name_load_once() -> None:
    first = MusesEmbeddings()
    assert first.encoder is MusesEmbeddings(model="default").encoder is load_encoder() is load_encoder("default")
    assert "encoder" not in first.model_dump()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"scale": "token"}, "'document' or 'sentence'"),
        ({"dim": 0}, "greater than or equal to 1"),
        ({"dim": 1000}, "1..384"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"dims": 64}, "no setting 'dims'"),
        ({"model": "default", "encoder": "ENCODER"}, "not both"),
    ],
)
def test_bad_embeddings_settings_are_one_line_input_errors(
    encoder: MultiScaleEncoder, params: dict[str, Any], words: str
) -> None:
    params = {k: encoder if v == "ENCODER" else v for k, v in params.items()}
    with pytest.raises(InputError, match=words) as info:
        MusesEmbeddings(**params)
    assert "\n" not in str(info.value)


class TestMusesEmbeddingsStandardUnit(EmbeddingsUnitTests):
    """LangChain's standard unit suite, on the bundled base (loaded once by ``load_encoder``)."""

    @property
    def embeddings_class(self) -> type[MusesEmbeddings]:
        return MusesEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {}


class TestMusesEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    """LangChain's standard integration suite (sync and async), at sentence scale and a Matryoshka dim."""

    pytestmark = ASYNC_SUITE

    @property
    def embeddings_class(self) -> type[MusesEmbeddings]:
        return MusesEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"scale": "sentence", "dim": 64}


# ---------------------------------------------------------------------------------------------- MusesZoomRetriever
# ``scifact_store`` (tests/integrations/conftest.py) is a StoreSlice: .store, .queries {qid: claim}, .relevant
# {qid: {doc id}}; its documents carry {"half": "a" | "b"}.


def _doc_ids(docs: list[Document]) -> set[str]:
    return {d.metadata["document_id"] for d in docs}


def test_zoom_finds_the_relevant_abstracts(scifact_store: Any) -> None:
    sentences = MusesZoomRetriever(store=scifact_store.store, k=4)
    documents = MusesZoomRetriever(store=scifact_store.store, k=4, unit="document")
    found = {"sentence": 0, "document": 0}
    for qid, claim in scifact_store.queries.items():
        found["sentence"] += bool(_doc_ids(sentences.invoke(claim)) & scifact_store.relevant[qid])
        found["document"] += bool(_doc_ids(documents.invoke(claim)) & scifact_store.relevant[qid])
    # measured: 7/8 claims for sentences (k=4: two sentences from each of the top 2 documents) and 8/8 for documents
    # (top 4 by fusion); untrained MuSES over all-MiniLM-L6-v2, 48 abstracts. One miss of slack each.
    assert found["sentence"] >= 6, found
    assert found["document"] >= 7, found


def test_sentence_results_locate_their_text(scifact_store: Any) -> None:
    store = scifact_store.store
    retriever = MusesZoomRetriever(store=store, k=6, k_sentences=3)
    for claim in list(scifact_store.queries.values())[:2]:
        docs = retriever.invoke(claim)
        assert len(docs) == 6
        for doc in docs:
            meta = doc.metadata
            stored = store.get(meta["document_id"])
            a, b = meta["span"]
            assert doc.page_content == stored["text"][a:b]
            assert stored["sentences"][meta["sentence_index"]] == [a, b]
            assert doc.id == f"{meta['document_id']}#{meta['sentence_index']}"
            assert meta["unit"] == "sentence" and meta["scale"] == "zoom"
            assert {"sentence", "document"} <= set(meta["scores"]) and meta["score"] == meta["scores"]["sentence"]
            assert meta["document_metadata"] == stored["metadata"]
            assert 1 <= len(meta["highlights"]) <= 3
            for (s, e), word in zip(meta["highlights"], meta["highlighted_words"], strict=True):
                assert a <= s < e <= b
                assert word == stored["text"][s:e] and word.strip()


def test_sentence_results_are_the_store_zoom(scifact_store: Any) -> None:
    store = scifact_store.store
    for claim in list(scifact_store.queries.values())[:2]:
        docs = MusesZoomRetriever(store=store, k=5, k_sentences=2, highlight=2).invoke(claim)
        zoom = store.zoom(claim, k_docs=5, k_sentences=2, highlight=2)
        want = [s for r in zoom for s in r.sentences][:5]
        assert [(d.metadata["document_id"], d.metadata["sentence_index"]) for d in docs] == [
            (s.id, s.sentence) for s in want
        ]
        assert [d.page_content for d in docs] == [s.text for s in want]
        assert [d.metadata["highlights"] for d in docs] == [[list(h) for h in s.highlights] for s in want]
        np.testing.assert_allclose([d.metadata["score"] for d in docs], [s.score for s in want], atol=1e-6)


def test_document_results_are_the_store_fusion_search(scifact_store: Any) -> None:
    store = scifact_store.store
    claim = next(iter(scifact_store.queries.values()))
    docs = MusesZoomRetriever(store=store, k=4, unit="document").invoke(claim)
    hits = store.search(claim, "fusion", k=4)
    assert [d.id for d in docs] == [h.id for h in hits] == [d.metadata["document_id"] for d in docs]
    for doc, hit in zip(docs, hits, strict=True):
        assert doc.page_content == hit.text == store.get(hit.id)["text"]
        meta = doc.metadata
        assert meta["unit"] == "document" and meta["scale"] == "fusion" and meta["sentence_index"] is None
        assert set(meta["scores"]) == {"document", "sentence", "token", "fusion"}
        assert meta["score"] == pytest.approx(hit.score) == pytest.approx(meta["scores"]["fusion"])
        assert meta["span"] == [0, len(hit.text)]
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)
    token = MusesZoomRetriever(store=store, k=2, unit="document", scale="token").invoke(claim)
    assert [d.id for d in token] == [h.id for h in store.search(claim, "token", k=2)]


def test_filters_and_per_call_overrides(scifact_store: Any) -> None:
    store = scifact_store.store
    claim = next(iter(scifact_store.queries.values()))
    half_a = MusesZoomRetriever(store=store, k=6, filters={"half": "a"})
    docs = half_a.invoke(claim)
    assert len(docs) == 6 and {d.metadata["document_metadata"]["half"] for d in docs} == {"a"}
    docs = half_a.invoke(claim, filters={"half": "b"}, unit="document", k=3)
    assert len(docs) == 3 and {d.metadata["document_metadata"]["half"] for d in docs} == {"b"}
    assert half_a.k == 6 and half_a.filters == {"half": "a"} and half_a.unit == "sentence"  # the call changed nothing
    assert half_a.invoke(claim, filters={"half": "c"}) == []
    small = MusesZoomRetriever(store=store, k=2, dim=64).invoke(claim)
    assert [(d.id, d.page_content) for d in small] == [
        (f"{s.id}#{s.sentence}", s.text) for r in store.zoom(claim, k_docs=2, dim=64) for s in r.sentences
    ][:2]


async def _ainvoke(retriever: MusesZoomRetriever, query: str, **kwargs: Any) -> list[Document]:
    return await retriever.ainvoke(query, **kwargs)


def test_async_invoke_takes_overrides(scifact_store: Any) -> None:
    import asyncio

    retriever = MusesZoomRetriever(store=scifact_store.store)
    claim = next(iter(scifact_store.queries.values()))
    got = asyncio.run(_ainvoke(retriever, claim, k=1, unit="document"))
    assert [d.id for d in got] == [d.id for d in retriever.invoke(claim, k=1, unit="document")]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"unit": "paragraph"}, "'sentence' or 'document'"),
        ({"scale": "sentence"}, "'document', 'token' or 'fusion'"),
        ({"k": 0}, "greater than or equal to 1"),
        ({"k_sentences": 0}, "greater than or equal to 1"),
        ({"highlight": -1}, "greater than or equal to 0"),
        ({"dim": 48}, r"use one of \[32, 64, 128, 256, 384\]"),
        ({"filters": {"bad key": 1}}, "plain metadata field name"),
        ({"top_k": 3}, "no setting 'top_k'"),
        ({"store": "mem/"}, "must be a muses.store.MemoryStore"),
    ],
)
def test_bad_retriever_settings_are_one_line_input_errors(
    scifact_store: Any, params: dict[str, Any], words: str
) -> None:
    with pytest.raises(InputError, match=words) as info:
        MusesZoomRetriever(**({"store": scifact_store.store} | params))
    assert "\n" not in str(info.value)
    if "store" not in params and "top_k" not in params:  # the same settings given to one call
        with pytest.raises(InputError, match=words):
            MusesZoomRetriever(store=scifact_store.store).invoke("insulin", **params)


def test_missing_store_and_unknown_call_options(scifact_store: Any) -> None:
    with pytest.raises(InputError, match="needs store"):
        MusesZoomRetriever()
    with pytest.raises(InputError, match="unknown retriever option"):
        MusesZoomRetriever(store=scifact_store.store).invoke("insulin", top_k=3)


class TestMusesZoomRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever suite, on the fixture's SciFact store (stashed on the test instance by an
    autouse fixture, since the suite reads the constructor's params from a property)."""

    pytestmark = ASYNC_SUITE
    slice_: Any = None

    @pytest.fixture(autouse=True)
    def _scifact(self, scifact_store: Any) -> None:
        self.slice_ = scifact_store

    @property
    def retriever_constructor(self) -> type[MusesZoomRetriever]:
        return MusesZoomRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"store": self.slice_.store, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return str(next(iter(self.slice_.queries.values())))

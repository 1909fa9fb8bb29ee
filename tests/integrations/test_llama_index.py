"""The LlamaIndex integration on the real model and a real SciFact slice: embeddings, retriever, index, query engine."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("llama_index.core")

from llama_index.core import VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from muses.data.beir import BeirDataset
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.evaluation.retrieval import beir_documents
from muses.extras import MissingExtraError
from muses.integrations.llama_index import MusesEmbedding, MusesRetriever, to_store_filters

if TYPE_CHECKING:
    from tests.integrations.conftest import StoreSlice


def _relevant_texts(s: StoreSlice) -> dict[str, str]:
    """The relevant abstracts of the slice's queries, ``{doc id: text}`` (about ten, each a distractor for the
    other queries)."""
    ids = sorted(set().union(*s.relevant.values()))
    return {d: s.store.get(d)["text"] for d in ids}


def _hits(s: StoreSlice, nodes: list[Any], qid: str) -> bool:
    return bool({n.node.metadata["document_id"] for n in nodes} & s.relevant[qid])


# ---------------------------------------------------------------------------------------------- MusesEmbedding
def test_embedding_equals_the_encoder(encoder: MultiScaleEncoder, scifact_store: StoreSlice) -> None:
    texts = list(_relevant_texts(scifact_store).values())[:2]
    query = next(iter(scifact_store.queries.values()))
    emb = MusesEmbedding(encoder=encoder, dim=64, embed_batch_size=1)  # 2 texts: two encoder calls
    assert (emb.model_name, emb.scale, emb.dim, emb.embed_batch_size) == (
        encoder.base_name or "default",
        "document",
        64,
        1,
    )
    assert emb.encoder is encoder and emb.to_dict()["class_name"] == "MusesEmbedding"
    got = np.asarray(emb.get_text_embedding_batch(texts))
    want = np.stack([e.document for e in encoder.encode_documents(texts, scales=("document",), dim=64)])
    assert got.shape == (2, 64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    q = emb.get_query_embedding(query)
    assert len(q) == 64
    np.testing.assert_allclose(q, encoder.encode_queries([query], dim=64)[0], atol=1e-6)
    assert len(MusesEmbedding(encoder=encoder).get_query_embedding(query)) == encoder.embed_dim


def test_embedding_sentence_scale_and_async(encoder: MultiScaleEncoder, scifact_store: StoreSlice) -> None:
    texts = list(scifact_store.queries.values())[:2]
    emb = MusesEmbedding(encoder=encoder, scale="sentence", dim=128)
    want = encoder.encode_sentences(texts, dim=128)
    np.testing.assert_allclose(emb.get_text_embedding_batch(texts), want, atol=1e-5)
    np.testing.assert_allclose(asyncio.run(emb.aget_text_embedding(texts[0])), want[0], atol=1e-5)
    q = asyncio.run(emb.aget_query_embedding(texts[1]))
    np.testing.assert_allclose(q, encoder.encode_queries(texts[1:], dim=128)[0], atol=1e-6)


def test_embedding_loads_a_model_by_name(encoder: MultiScaleEncoder) -> None:
    emb = MusesEmbedding(model_name="default", dim=32)  # the bundled base, loaded again
    assert emb.model_name == "default" and emb.encoder is not encoder
    np.testing.assert_allclose(
        emb.get_query_embedding("Roots take up water."),
        encoder.encode_queries(["Roots take up water."], dim=32)[0],
        atol=1e-5,
    )


def test_embedding_refuses_bad_settings(encoder: MultiScaleEncoder) -> None:
    with pytest.raises(InputError, match=r"unknown scale 'token'.*document, sentence"):
        MusesEmbedding(encoder=encoder, scale="token")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"dim 100 is not available; use one of \[32, 64"):
        MusesEmbedding(encoder=encoder, dim=100)
    with pytest.raises(InputError, match=re.escape("must be a muses.MultiScaleEncoder")):
        MusesEmbedding(encoder="default")  # type: ignore[arg-type]


def test_embedding_in_a_vector_store_index(
    encoder: MultiScaleEncoder, scifact_store: StoreSlice, scifact_test: BeirDataset
) -> None:
    """A real llama-index VectorStoreIndex (in-memory vector store, no LLM) embedding with MusesEmbedding: over the
    relevant abstracts of the eight claims plus 8 distractors (15 abstracts), the top 2 hold a relevant abstract for
    most claims (measured 8/8)."""
    docs = _relevant_texts(scifact_store)
    others = [d for d in scifact_test.corpus if d not in docs][:8]
    docs |= {str(d.id): d.text for d in beir_documents({d: scifact_test.corpus[d] for d in others})}
    nodes = [TextNode(text=text, id_=doc_id) for doc_id, text in docs.items()]
    index = VectorStoreIndex(nodes, embed_model=MusesEmbedding(encoder=encoder, dim=256))
    retriever = index.as_retriever(similarity_top_k=2)
    found = {qid: {n.node.node_id for n in retriever.retrieve(q)} for qid, q in scifact_store.queries.items()}
    rate = sum(bool(found[q] & scifact_store.relevant[q]) for q in found)
    assert rate >= 7, found


# ---------------------------------------------------------------------------------------------- MusesRetriever
def test_sentence_nodes(scifact_store: StoreSlice) -> None:
    """Zoom sentences (k=4) come from a relevant abstract for most claims (measured 7/8, 47 abstracts),
    and each node is one sentence of its document, with its highlights, scores and id."""
    store = scifact_store.store
    retriever = MusesRetriever(store=store, k=4, k_sentences=2, highlight=2)
    rate, halves = 0, set()
    for qid, query in scifact_store.queries.items():
        nodes = retriever.retrieve(query)
        rate += _hits(scifact_store, nodes, qid)
        assert len(nodes) == 4 and len({n.node.node_id for n in nodes}) == 4
        for n in nodes:
            _check_sentence_node(store, n)
        # document rank first, then sentence score
        firsts = [n.node.metadata["scores"]["document"] for n in nodes]
        assert firsts == sorted(firsts, reverse=True)
        halves |= {n.node.metadata["document_metadata"]["half"] for n in nodes}
    assert rate >= 6  # measured 7/8
    assert halves == {"a", "b"}  # unfiltered


def _check_sentence_node(store: Any, n: Any) -> None:
    node, meta = n.node, n.node.metadata
    doc = store.get(meta["document_id"])
    a, b = meta["span"]
    assert isinstance(node, TextNode)
    assert node.text == doc["text"][a:b] and [a, b] in doc["sentences"]
    assert (node.start_char_idx, node.end_char_idx) == (a, b)
    assert node.node_id == f"{doc['id']}#{meta['sentence_index']}" and node.ref_doc_id == doc["id"]
    assert meta["unit"] == "sentence" and meta["document_metadata"] == doc["metadata"]
    assert n.score == meta["score"] == meta["scores"]["sentence"]
    assert set(meta["scores"]) == {"sentence", "document"}
    assert 1 <= len(meta["highlights"]) <= 2
    for (x, y), words in zip(meta["highlights"], meta["highlighted_words"], strict=True):
        assert a <= x < y <= b and doc["text"][x:y] == words
    # an LLM (or embed model) sees the document id and metadata, not the spans, scores or highlights
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        content = node.get_content(metadata_mode=mode)
        assert content.endswith(node.text) and f"document_id: {doc['id']}" in content
        assert "document_metadata: {'half'" in content
        assert not any(key in content for key in ("span", "highlight", "scores", "sentence_index"))
    assert "highlights" in node.get_content(metadata_mode=MetadataMode.ALL)


def test_retriever_equals_a_direct_zoom(scifact_store: StoreSlice) -> None:
    store = scifact_store.store
    query = list(scifact_store.queries.values())[1]
    for dim in (None, 64):
        nodes = MusesRetriever(store=store, k=3, k_sentences=2, dim=dim).retrieve(query)
        zoom = [s for r in store.zoom(query, k_docs=3, k_sentences=2, dim=dim) for s in r.sentences][:3]
        assert [(n.node.node_id, n.get_content()) for n in nodes] == [(f"{s.id}#{s.sentence}", s.text) for s in zoom]
        np.testing.assert_allclose([n.get_score() for n in nodes], [s.score for s in zoom], rtol=1e-6)
        assert [n.node.metadata["highlights"] for n in nodes] == [[list(h) for h in s.highlights] for s in zoom]


def test_document_unit(scifact_store: StoreSlice) -> None:
    """Whole documents by fusion (k=4): a relevant abstract for most claims, measured 8/8."""
    store = scifact_store.store
    retriever = MusesRetriever(store=store, unit="document", k=4)
    rate = 0
    for qid, query in scifact_store.queries.items():
        nodes = retriever.retrieve(query)
        rate += _hits(scifact_store, nodes, qid)
        assert len(nodes) == 4
        assert [n.get_score() for n in nodes] == sorted((n.get_score() for n in nodes), reverse=True)
        for n in nodes:
            meta = n.node.metadata
            assert n.get_content() == store.get(meta["document_id"])["text"] and n.node.node_id == meta["document_id"]
            assert set(meta["scores"]) == {"document", "sentence", "token", "fusion"}
            assert n.score == meta["scores"]["fusion"] and meta["scale"] == "fusion"
            assert meta["sentence_index"] is None and meta["span"] == [0, len(n.get_content())]
    assert rate >= 6  # measured 8/8
    query = next(iter(scifact_store.queries.values()))
    direct = store.search(query, "token", k=2)
    nodes = MusesRetriever(store=store, unit="document", scale="token", k=2).retrieve(query)
    assert [n.node.node_id for n in nodes] == [h.id for h in direct]


def test_filters(scifact_store: StoreSlice) -> None:
    """A dict and the equivalent llama-index filters give the same store filter, and only half-a documents."""
    ways = [
        {"half": "a"},
        MetadataFilters(filters=[ExactMatchFilter(key="half", value="a")]),
        MetadataFilters(
            filters=[MetadataFilter(key="half", value="a", operator=FilterOperator.EQ)], condition=FilterCondition.AND
        ),
        MetadataFilter(key="half", value="a"),
    ]
    store = scifact_store.store
    assert [MusesRetriever(store=store, filters=f).filters for f in ways] == [{"half": "a"}] * 4  # type: ignore[arg-type]
    query = next(iter(scifact_store.queries.values()))
    for unit, filters in (("sentence", ways[1]), ("document", ways[0])):
        nodes = MusesRetriever(store=store, unit=unit, k=6, filters=filters).retrieve(query)  # type: ignore[arg-type]
        assert len(nodes) == 6
        assert {n.node.metadata["document_metadata"]["half"] for n in nodes} == {"a"}
        direct = store.zoom(query, k_docs=6, k_sentences=2, filters={"half": "a"}) if unit == "sentence" else None
        if direct is not None:
            want = [f"{s.id}#{s.sentence}" for r in direct for s in r.sentences][:6]
            assert [n.node.node_id for n in nodes] == want


def test_unsupported_filters_are_refused(scifact_store: StoreSlice) -> None:
    store = scifact_store.store
    gt = MetadataFilters(filters=[MetadataFilter(key="year", value=2000, operator=FilterOperator.GT)])
    either = MetadataFilters(
        filters=[ExactMatchFilter(key="half", value="a"), ExactMatchFilter(key="kind", value="x")],
        condition=FilterCondition.OR,
    )
    nested = MetadataFilters(filters=[MetadataFilters(filters=[ExactMatchFilter(key="half", value="a")])])
    clash = MetadataFilters(filters=[ExactMatchFilter(key="half", value="a"), ExactMatchFilter(key="half", value="b")])
    for filters, message in (
        (gt, "operator '>' on 'year' is not supported; the store supports exact matches"),
        (either, "condition 'or' is not supported"),
        (nested, "nested MetadataFilters are not supported"),
        (clash, "'half' is asked to equal both 'a' and 'b'"),
        (["half"], "filters must be a {key: value} dict or llama-index MetadataFilters, not a list"),
        ({"bad key!": 1}, "must be a plain metadata field name"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            MusesRetriever(store=store, filters=filters)  # type: ignore[arg-type]
    assert to_store_filters(None) is None


def test_bad_settings_are_refused_at_construction(scifact_store: StoreSlice) -> None:
    store = scifact_store.store
    for kwargs, message in (
        ({"unit": "paragraph"}, "unknown unit 'paragraph'; use one of sentence, document"),
        (
            {"unit": "document", "scale": "sentence"},
            "unknown scale 'sentence'; use one of document, token, fusion (the ranking of unit='document'",
        ),
        ({"k": 0}, "k must be an integer of at least 1, got 0"),
        ({"k_sentences": 0}, "k_sentences must be an integer of at least 1"),
        ({"highlight": -1}, "highlight must be an integer of at least 0"),
        ({"dim": 100}, "dim 100 is not available; use one of [32, 64, 128, 256, 384]"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            MusesRetriever(store=store, **kwargs)
    with pytest.raises(InputError, match=re.escape("store must be a muses.store.MemoryStore")):
        MusesRetriever(store="mem/")  # type: ignore[arg-type]


def test_async_and_query_engine(scifact_store: StoreSlice) -> None:
    """``aretrieve`` and a RetrieverQueryEngine without an LLM (``NoText`` synthesiser) return the same nodes."""
    retriever = MusesRetriever(store=scifact_store.store, k=3)
    query = next(iter(scifact_store.queries.values()))
    want = [(n.node.node_id, n.score) for n in asyncio.run(retriever.aretrieve(query))]
    assert len(want) == 3
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()))
    response = engine.query(query)
    assert [(n.node.node_id, n.score) for n in response.source_nodes] == want
    assert isinstance(response, Response) and not response.response


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.core", None)  # as if llama-index-core were not installed
    monkeypatch.delitem(sys.modules, "muses.integrations.llama_index")
    with pytest.raises(MissingExtraError) as e:
        importlib.import_module("muses.integrations.llama_index")
    assert str(e.value) == "llama_index.core is not installed: pip install 'muses[llama-index]'"


_FILTER = st.builds(
    MetadataFilter,
    key=st.sampled_from(["half", "topic", "x"]),
    value=st.one_of(st.integers(-2, 2), st.sampled_from(["a", "b"])),
    operator=st.sampled_from(list(FilterOperator)),
)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(_FILTER, max_size=4),
    condition=st.sampled_from([*FilterCondition, None]),
    nested=st.booleans(),
)
def test_fuzzed_metadata_filters_map_or_are_refused_in_one_line(
    parts: list[MetadataFilter], condition: FilterCondition | None, nested: bool
) -> None:
    """Any llama-index filters: an exact-match AND becomes the same {key: value}; anything else is one line."""
    inner: list[Any] = list(parts)
    if nested and parts:
        inner.append(MetadataFilters(filters=parts[:1]))
    try:
        got = to_store_filters(MetadataFilters(filters=inner, condition=condition))
    except InputError as e:
        assert "\n" not in str(e) and ("supported" in str(e) or "both" in str(e))
        return
    assert not (nested and parts)
    assert all(f.operator == FilterOperator.EQ for f in parts)
    assert got == {f.key: f.value for f in parts}

"""Fuzzing the store's input paths with Hypothesis (issue 13): any filter, id or metadata gets results or a
one-line :class:`InputError`, never another exception, and whatever is stored reads back."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.store import EncodedQuery, MemoryStore, StoreConfig

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NASTY_STRINGS = ["", "\ud800", "a\udfff", "a/b", "..", ".", "x" * 600, "a\x00b", "\u202e", "😀", "topic", "n"]
NASTY_NUMBERS = [2**63 - 1, 2**63, -(2**63) - 1, 2**70, float("nan"), float("inf"), -0.0, 1e308]

text = st.text(max_size=8) | st.sampled_from(NASTY_STRINGS)
scalar = st.none() | st.booleans() | st.integers() | st.floats() | text | st.sampled_from(NASTY_NUMBERS)
json_value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=12
)
deep = st.integers(1, 60).map(lambda n: json.loads("[" * n + "]" * n))
metadata = st.dictionaries(text, json_value | deep, max_size=4) | json_value
filters = (
    st.dictionaries(text | st.sampled_from(["topic", "n", "a-b", "k_1"]), json_value | deep, max_size=5)
    | st.integers(0, 300).map(lambda n: {f"k{i}": i for i in range(n)})
    | json_value
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> tuple[MemoryStore, EncodedQuery]:
    s = MemoryStore.create(tmp_path_factory.mktemp("fuzz") / "m", encoder, StoreConfig(dim=32, token_pool=2))
    s.add(
        [
            {"id": "bee", "text": "Bees make honey.", "metadata": {"topic": "bio", "n": 1, "tags": ["a", "b"]}},
            {"id": "tax", "text": "Tax is due in April.", "metadata": {"topic": "money", "n": 2.5}},
        ]
    )
    return s, s.encode_queries(["bees"])[0]


@FUZZ
@given(filters=filters, scale=st.sampled_from(["document", "sentence", "token", "fusion", "zoom"]))
def test_any_filter_gives_hits_or_an_input_error(tiny: tuple[MemoryStore, EncodedQuery], filters, scale) -> None:
    store, query = tiny
    try:
        if scale == "zoom":
            results = [r.to_dict() for r in store.zoom(query, filters=filters)]
        else:
            results = [h.to_dict() for h in store.search(query, scale=scale, filters=filters)]
    except InputError as e:
        assert "\n" not in str(e)
        return
    json.dumps(results)
    assert {r["id"] for r in results} <= {"bee", "tax"}


@FUZZ
@given(ident=st.none() | text | st.integers(), meta=metadata | st.none())
def test_any_id_and_metadata_are_checked_before_encoding(tiny: tuple[MemoryStore, EncodedQuery], ident, meta) -> None:
    store, _ = tiny
    try:
        [doc] = store._documents([{"id": ident, "text": "bees", "metadata": meta}])
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(doc.id, str) and doc.id and (ident is None or doc.id == ident)
    assert json.loads(json.dumps(doc.metadata, allow_nan=False).encode("utf-8")) == doc.metadata


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> tuple[MemoryStore, EncodedQuery]:
    s = MemoryStore.create(tmp_path_factory.mktemp("fuzz-add") / "m", encoder, StoreConfig(dim=32, token_pool=0))
    return s, s.encode_queries(["bees"])[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=st.none() | text, meta=metadata | st.none())
def test_whatever_add_accepts_reads_back(empty: tuple[MemoryStore, EncodedQuery], ident, meta) -> None:
    """The real add, on one word: an accepted document is returned by get and by search, metadata intact."""
    store, query = empty
    before = len(store)
    try:
        [doc_id] = store.add([{"id": ident, "text": "bees", "metadata": meta}], upsert=True)
    except InputError:
        assert len(store) == before
        return
    got = store.get(doc_id)
    assert got["metadata"] == (meta or {}) and got["text"] == "bees"
    hits = store.search(query, "document", k=100)
    assert doc_id in {h.id for h in hits}
    json.dumps([h.to_dict() for h in hits])

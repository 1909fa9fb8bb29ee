"""The Qdrant backend against the embedded store, on real SciFact abstracts and claims: the same top 10 (ids,
sentences, scores within 1e-4) at every scale and dim, with and without a metadata filter; the same zoom; the
same results after deletes and upserts; settings recorded and checked; one-line errors for bad input and an
unreachable server; the filter mapping fuzzed against the SQL the embedded store runs. A real server is used when
``QDRANT_URL`` is set."""

from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muses.data.beir import load_beir
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError, UnknownIdError
from muses.store import EncodedQuery, Hit, MemoryStore, StoreBackend, StoreConfig, StoreExistsError, ZoomResult
from muses.store.qdrant import (
    SETTINGS_KEY,
    QdrantConfig,
    QdrantError,
    QdrantStore,
    filter_keys,
    metadata_keys,
    parse_location,
)
from muses.types import MultiScaleEmbedding

N_DOCS = 50
N_QUERIES = 4
SCALES = ("document", "sentence", "token", "fusion")
FILTER = {"half": "a"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scifact(data_dir: Path, encoder: MultiScaleEncoder) -> tuple[list[MultiScaleEmbedding], list[str]]:
    """``N_DOCS`` SciFact abstracts (those judged for the first test claims first), encoded once with tokens, and
    ``N_QUERIES`` claims. Metadata: ``half`` (a/b alternating) and ``n`` (the position)."""
    ds = load_beir("scifact", "test", data_dir)
    judged = [d for rel in ds.qrels.values() for d in rel]
    ids = list(dict.fromkeys(judged + list(ds.corpus)))[:N_DOCS]
    items = [
        {
            "id": i,
            "text": f"{ds.corpus[i]['title']}. {ds.corpus[i]['text']}".strip(),
            "metadata": {"half": "ab"[n % 2], "n": n},
        }
        for n, i in enumerate(ids)
    ]
    from muses.text import as_documents

    docs = as_documents([it["text"] for it in items], encoder.splitter)
    for doc, it in zip(docs, items, strict=True):
        doc.id, doc.metadata = it["id"], it["metadata"]
    embs = encoder.encode_documents(docs, scales=("document", "sentence", "token"), dim=encoder.embed_dim)
    return embs, list(ds.queries.values())[:N_QUERIES]


def _pair(tmp: Path, encoder: MultiScaleEncoder, embs: list[MultiScaleEmbedding]) -> tuple[MemoryStore, QdrantStore]:
    memory = MemoryStore.create(tmp / "mem", encoder, StoreConfig())
    memory.add_encoded(embs)
    qdrant = QdrantStore.create(":memory:", encoder, StoreConfig())
    qdrant.add_encoded(embs)
    return memory, qdrant


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder, scifact: tuple
) -> tuple[MemoryStore, QdrantStore, list[EncodedQuery]]:
    memory, qdrant = _pair(tmp_path_factory.mktemp("qdrant"), encoder, scifact[0])
    return memory, qdrant, memory.encode_queries(scifact[1])


def _same_hits(a: list[Hit], b: list[Hit]) -> None:
    """Same ids (and sentences, spans, texts), same scores of every scale within 1e-4."""
    assert [(h.id, h.sentence, h.span, h.scale, h.text, h.metadata) for h in a] == [
        (h.id, h.sentence, h.span, h.scale, h.text, h.metadata) for h in b
    ]
    for x, y in zip(a, b, strict=True):
        assert set(x.scores) == set(y.scores)
        np.testing.assert_allclose([x.score, *x.scores.values()], [y.score, *y.scores.values()], atol=1e-4)
        assert x.highlights == y.highlights


def _same_zoom(a: list[ZoomResult], b: list[ZoomResult]) -> None:
    assert [(r.id, r.text, r.metadata) for r in a] == [(r.id, r.text, r.metadata) for r in b]
    np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-4)
    for x, y in zip(a, b, strict=True):
        _same_hits(x.sentences, y.sentences)


def test_both_stores_implement_the_backend_interface(stores: tuple) -> None:
    memory, qdrant, _ = stores
    assert isinstance(memory, StoreBackend) and isinstance(qdrant, StoreBackend)
    assert len(qdrant) == len(memory) == N_DOCS
    assert qdrant.stats()["sentences"] == memory.stats()["sentences"]


@pytest.mark.parametrize("filters", [None, FILTER], ids=["all", "filtered"])
@pytest.mark.parametrize("scale", SCALES)
def test_the_same_top_10_as_the_embedded_store(stores: tuple, scale: str, filters: dict | None) -> None:
    memory, qdrant, queries = stores
    for q in queries:
        for dim in (None, 64):
            expected = memory.search(q, scale, k=10, dim=dim, filters=filters)  # type: ignore[arg-type]
            got = qdrant.search(q, scale, k=10, dim=dim, filters=filters)  # type: ignore[arg-type]
            assert len(got) == 10
            _same_hits(expected, got)
            if filters:
                assert all(h.metadata["half"] == "a" for h in got)


@pytest.mark.parametrize("filters", [None, FILTER], ids=["all", "filtered"])
def test_the_same_zoom_and_zoomed_sentence_search(stores: tuple, filters: dict | None) -> None:
    memory, qdrant, queries = stores
    for q in queries:
        _same_zoom(memory.zoom(q, k_docs=3, k_sentences=2, filters=filters), qdrant.zoom(q, 3, 2, filters=filters))
        _same_hits(
            memory.search(q, "sentence", k=5, filters=filters, zoom_docs=3),
            qdrant.search(q, "sentence", k=5, filters=filters, zoom_docs=3),
        )
    assert qdrant.zoom(queries[0], filters={"half": "zzz"}) == []
    assert all(qdrant.search(queries[0], s, filters={"n": None}) == [] for s in SCALES)  # null matches nothing


def test_deletes_and_upserts_agree(
    tmp_path: Path, encoder: MultiScaleEncoder, scifact: tuple[list[MultiScaleEmbedding], list[str]]
) -> None:
    embs, claims = scifact
    memory, qdrant = _pair(tmp_path, encoder, embs[:24])
    gone = [str(e.doc.id) for e in embs[:4]]
    assert memory.delete(gone) == qdrant.delete([*gone, gone[0]]) == 4
    moved = []
    for e in embs[4:8]:  # the same vectors under new metadata
        m = copy.copy(e)
        m.doc = copy.copy(e.doc)
        m.doc.metadata = {"half": "a", "n": -1, "moved": True}
        moved.append(m)
    memory.add_encoded(moved, upsert=True)
    qdrant.add_encoded(moved, upsert=True)
    text = "Vitamin D deficiency is common. It raises the risk of fractures."
    new = [{"id": "new", "text": text, "metadata": FILTER}]
    assert memory.update(new) == qdrant.update(new) == ["new"]
    assert qdrant.get("new") == memory.get("new")
    assert len(qdrant) == len(memory) == 21 and qdrant.stats()["sentences"] == memory.stats()["sentences"]
    with pytest.raises(UnknownIdError):
        qdrant.get(gone[0])
    q = memory.encode_queries([claims[0], "vitamin D and bone fractures"])
    for query in q:
        for scale in SCALES:
            for filters in (None, FILTER, {"moved": True}):
                _same_hits(
                    memory.search(query, scale, k=10, filters=filters),  # type: ignore[arg-type]
                    qdrant.search(query, scale, k=10, filters=filters),  # type: ignore[arg-type]
                )
        _same_zoom(memory.zoom(query), qdrant.zoom(query))
    assert {h.id for h in qdrant.search(q[0], "document", k=30)}.isdisjoint(gone)


def test_a_local_folder_store_reopens_and_checks_its_settings(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    folder = tmp_path / "qd"
    config = StoreConfig(dim=128, token_pool=2)
    s = QdrantStore.create(folder, encoder, config, qdrant=QdrantConfig(dims=[32, 128], prefetch_dim=32))
    s.add([{"id": "a", "text": "Bees make honey. They live in hives.", "metadata": {"topic": "bio"}}])
    before = s.search("bees", "fusion")
    with pytest.raises(InputError, match="open in another client"):
        QdrantStore.open(str(folder), encoder)
    s.close()
    assert QdrantStore.exists(str(folder)) and not QdrantStore.exists(str(folder), "other")
    with pytest.raises(StoreExistsError):
        QdrantStore.create(str(folder), encoder, config)
    with pytest.raises(InputError, match=r"prefetch_dim None \(the store has 32\)"):
        QdrantStore.create(str(folder), encoder, config, exist_ok=True, qdrant=QdrantConfig(prefetch_dim=None))
    s = QdrantStore.create(str(folder), encoder, config, exist_ok=True)
    _same_hits(s.search("bees", "fusion"), before)  # read back from the folder (float32)
    assert s.stats()["qdrant"]["dims"] == [32, 128] and s.get("a")["sentences"] == [[0, 16], [17, 36]]
    with pytest.raises(InputError, match=r"dim 64 \(the store has 128\)"):
        s.check_settings(dim=64)
    with pytest.raises(InputError, match="not stored in this Qdrant store"):
        s.search("bees", dim=64)
    assert s.search("bees", dim=32)[0].id == "a"
    meta = s.client.get_collection("muses_documents").config.metadata or {}
    s.client.update_collection("muses_documents", metadata={SETTINGS_KEY: {**meta[SETTINGS_KEY], "fingerprint": "x"}})
    s.close()
    with pytest.raises(ModelError, match="fingerprint x"):
        QdrantStore.open(str(folder), encoder)


def test_another_collection_is_not_taken_for_a_store(encoder: MultiScaleEncoder) -> None:
    s = QdrantStore.create(":memory:", encoder, StoreConfig(dim=32, token_pool=0))
    s.client.create_collection("foreign_documents", vectors_config={})
    with pytest.raises(InputError, match="not a MuSES store"):
        QdrantStore.open(":memory:", encoder, collection="foreign", client=s.client)
    with pytest.raises(InputError, match="token_pool = 0"):
        s.search("bees", "token")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_server_is_one_line_naming_the_url(encoder: MultiScaleEncoder) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for call in (lambda: QdrantStore.open(url, encoder), lambda: QdrantStore.create(url, encoder)):
        with pytest.raises(QdrantError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and url in message and "--qdrant-url" in message and "docker run" in message


TINY_DOCS = [
    {"id": "bee", "text": "Bees make honey.", "metadata": {"topic": "bio", "n": 1, "tags": ["a", "b"]}},
    {"id": "tax", "text": "Tax is due in April.", "metadata": {"topic": "money", "n": 2.5}},
]


@pytest.fixture(scope="module")
def tiny(encoder: MultiScaleEncoder) -> tuple[QdrantStore, EncodedQuery]:
    s = QdrantStore.create(":memory:", encoder, StoreConfig(dim=32, token_pool=2))
    s.add(TINY_DOCS)
    return s, s.encode_queries(["bees"])[0]


@pytest.fixture(scope="module", params=["qdrant", "embedded"])
def either(
    request: pytest.FixtureRequest, tiny: tuple[QdrantStore, EncodedQuery], tmp_path_factory: pytest.TempPathFactory
) -> tuple[StoreBackend, EncodedQuery]:
    """The tiny store on each backend: search and zoom arguments are checked once, in ``StoreBase``."""
    if request.param == "qdrant":
        return tiny
    s = MemoryStore.create(tmp_path_factory.mktemp("tiny") / "s", tiny[0].encoder, StoreConfig(dim=32, token_pool=2))
    s.add(TINY_DOCS)
    return s, tiny[1]


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda s, q: s.search(q, "paragraph"), "unknown scale"),
        (lambda s, q: s.search(q, k=0), "k must be an integer of at least 1"),
        (lambda s, q: s.search(q, k=2.5), "k must be an integer"),
        (lambda s, q: s.search(q, dim=1024), "dim 1024 is not available"),
        (lambda s, q: s.search(q, dim=384), "dim 384 is not available"),
        (lambda s, q: s.search(q, filters={"bad key": 1}), "plain metadata field name"),
        (lambda s, q: s.search(q, zoom_docs=-1), "zoom_docs must be an integer of at least 0"),
        (lambda s, q: s.search("  "), "the query is empty"),
        (lambda s, q: s.zoom(q, k_docs=0), "k_docs must be an integer of at least 1"),
        (lambda s, q: s.zoom(q, k_sentences=True), "k_sentences must be an integer"),
        (lambda s, q: s.zoom(q, highlight=-1), "highlight must be an integer of at least 0"),
        (lambda s, q: s.zoom(q, filters=["topic"]), "filters must be an object"),
    ],
)
def test_both_stores_check_search_arguments_alike(either: tuple[Any, EncodedQuery], call: Any, words: str) -> None:
    store, query = either
    with pytest.raises(InputError) as e:
        call(store, query)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    assert len(store) == 2


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda s, q: s.search(q, "paragraph"), "unknown scale"),
        (lambda s, q: s.search(q, k=0), "k must be an integer of at least 1"),
        (lambda s, q: s.search(q, k="3"), "k must be an integer"),
        (lambda s, q: s.search(q, dim=1024), "dim 1024 is not available"),
        (lambda s, q: s.search(q, filters={"bad key": 1}), "plain metadata field name"),
        (lambda s, q: s.search(q, filters={"n": 2**70}), "64-bit"),
        (lambda s, q: s.search(q, filters=["topic"]), "filters must be an object"),
        (lambda s, q: s.search(q, zoom_docs=-1), "zoom_docs must be an integer of at least 0"),
        (lambda s, q: s.search("  "), "the query is empty"),
        (lambda s, q: s.zoom(q, k_docs=0), "k_docs must be an integer of at least 1"),
        (lambda s, q: s.delete("bee"), "not one string"),
        (lambda s, q: s.delete(["bee", "nope"]), "unknown document id(s): ['nope']; nothing was deleted"),
        (lambda s, q: s.get("nope"), "unknown document id"),
        (lambda s, q: s.get(""), "document id is empty"),
        (lambda s, q: s.add([{"id": "bee", "text": "again"}]), "already in the store"),
        (lambda s, q: s.add([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]), "more than once"),
        (lambda s, q: s.add({"text": "one"}), "not a single one"),
        (lambda s, q: s.add([{"text": 3}]), "needs a 'text' string"),
        (lambda s, q: s.add([{"text": "a", "metadata": {"x": float("nan")}}]), "JSON cannot carry"),
        (lambda s, q: s.check_settings(shards=3), "shards 3 (the store has None)"),
        (lambda s, q: s.check_settings(colour=1), "unknown store setting 'colour'"),
    ],
)
def test_bad_input_is_one_line(tiny: tuple[QdrantStore, EncodedQuery], call: Any, words: str) -> None:
    store, query = tiny
    with pytest.raises((InputError, UnknownIdError)) as e:
        call(store, query)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    assert len(store) == 2 and store.get("bee")["metadata"]["topic"] == "bio"  # nothing changed


@pytest.mark.parametrize(
    "location,words",
    [
        ("", "empty"),
        ("grpc://localhost:6334", "scheme 'grpc'"),
        ("http://", "names no host"),
        ("http://localhost:99999", "malformed"),
        ("http://u:p@localhost:6333", "credentials"),
        ("a\nb", "control character"),
        (b"bytes", "not a bytes"),
        (3, "not a int"),
    ],
)
def test_bad_locations_are_one_line(location: Any, words: str, encoder: MultiScaleEncoder) -> None:
    with pytest.raises(InputError) as e:
        QdrantStore.open(location, encoder)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


def test_bad_names_and_folders_are_one_line(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for call, words in [
        (lambda: QdrantStore.create(str(tmp_path), encoder), "holds other files"),
        (lambda: QdrantStore.create(str(tmp_path / "notes.txt"), encoder), "is a file"),
        (lambda: QdrantStore.open(str(tmp_path / "missing"), encoder), "holds no local Qdrant store"),
        (lambda: QdrantStore.create(":memory:", encoder, collection="a b"), "store name"),
        (lambda: QdrantStore.create(":memory:", encoder, StoreConfig(dim=100)), "not one of the model's"),
        (lambda: QdrantStore.create(":memory:", encoder, qdrant=QdrantConfig(dims=[100])), "Qdrant dims [100]"),
    ]:
        with pytest.raises(InputError) as e:
            call()
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    assert not (tmp_path / "missing").exists()


# ---------------------------------------------------------------------------------------------------- fuzzing
@FUZZ
@given(location=st.text(max_size=30) | st.sampled_from(["http://[::1", "https://h:0", "http://h:-1", ":memory:"]))
def test_any_location_parses_or_is_one_line(location: str) -> None:
    try:
        kind, where = parse_location(location)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert kind in ("memory", "server", "path") and where == location


INT64 = st.integers(-(2**63), 2**63 - 1)
SCALAR = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
SCALAR = SCALAR | st.sampled_from([0, 1, 1.0, -0.0, True, False, "1", "a", 2**63 - 1, 9.2e18, 2.5, ""])
KEYS = st.sampled_from(["k", "n", "a-b", "x_1"])
BIG = st.sampled_from([2**63, -(2**63) - 1, 2**70, 10**400])


def _sqlite_match(metadata: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The embedded store's SQL for a scalar filter (``json_extract(...) = ?``), run by SQLite itself."""
    con = sqlite3.connect(":memory:")
    clauses = " AND ".join(f"json_extract(?, '$.\"{k}\"') = ?" for k in filters)
    params: list[Any] = []
    for value in filters.values():
        params += [json.dumps(metadata), value]
    return bool(con.execute(f"SELECT {clauses or 1}", params).fetchone()[0])


@FUZZ
@given(
    metadata=st.dictionaries(KEYS, SCALAR | BIG, max_size=4),
    filters=st.dictionaries(KEYS, SCALAR, max_size=3),
)
def test_scalar_filters_match_as_the_embedded_stores_sql(metadata: dict, filters: dict) -> None:
    """The ``match`` keywords agree with SQLite's ``json_extract(metadata, key) = value`` on scalar values:
    strings exactly, numbers by value (1 = 1.0 = true), null never, big integers as SQLite's reals."""
    ours = set(filter_keys(filters)) <= set(metadata_keys(metadata))
    assert ours == _sqlite_match(metadata, filters), (metadata, filters)


JSON = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=2), max_leaves=8
)


@FUZZ
@given(metadata=st.dictionaries(KEYS | st.text(max_size=4), JSON, max_size=4), filters=st.dictionaries(KEYS, JSON))
def test_any_filter_maps_to_keywords_that_match_equal_json(metadata: dict, filters: dict) -> None:
    """Lists and objects match the same JSON value (minified text); a filter matches iff every key matches."""
    try:
        keys = filter_keys(filters)
    except InputError as e:
        assert "\n" not in str(e)
        return
    have = set(metadata_keys(metadata))

    def same(key: str, value: Any) -> bool:
        if key not in metadata or value is None or metadata[key] is None:
            return False
        a, b = metadata[key], value
        if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
            return json.dumps(a, separators=(",", ":")) == json.dumps(b, separators=(",", ":"))
        if isinstance(a, str) or isinstance(b, str):
            return a == b and type(a) is type(b)
        return a == b  # numbers and booleans by value

    assert (set(keys) <= have) == all(same(k, v) for k, v in filters.items()), (metadata, filters)


FILTERS = (
    st.dictionaries(st.text(max_size=8) | st.sampled_from(["topic", "n", "tags"]), JSON, max_size=4)
    | st.integers(0, 100).map(lambda n: {f"k{i}": i for i in range(n)})
    | JSON
)


@FUZZ
@given(filters=FILTERS, scale=st.sampled_from([*SCALES, "zoom"]))
def test_any_filter_gives_hits_or_a_one_line_error(tiny: tuple[QdrantStore, EncodedQuery], filters, scale) -> None:
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


# ---------------------------------------------------------------------------------------------------- a real server
QDRANT_URL = os.environ.get("QDRANT_URL")


@pytest.mark.skipif(
    not QDRANT_URL, reason="QDRANT_URL is not set: set it to a Qdrant server (e.g. http://localhost:6333) to run"
)
def test_a_real_server_gives_the_same_results(
    tmp_path: Path, encoder: MultiScaleEncoder, scifact: tuple[list[MultiScaleEmbedding], list[str]]
) -> None:
    assert QDRANT_URL
    embs, claims = scifact
    name = f"muses_test_{uuid.uuid4().hex[:8]}"
    memory = MemoryStore.create(tmp_path / "mem", encoder, StoreConfig())
    memory.add_encoded(embs)
    server = QdrantStore.create(QDRANT_URL, encoder, StoreConfig(), collection=name)
    try:
        server.add_encoded(embs)
        assert len(server) == N_DOCS
        again = QdrantStore.open(QDRANT_URL, encoder, collection=name)  # a second client sees the same store
        for q in memory.encode_queries(claims):
            for scale in SCALES:
                for filters in (None, FILTER):
                    _same_hits(
                        memory.search(q, scale, k=10, filters=filters),  # type: ignore[arg-type]
                        again.search(q, scale, k=10, filters=filters),  # type: ignore[arg-type]
                    )
            _same_zoom(memory.zoom(q), again.zoom(q))
        gone = [str(e.doc.id) for e in embs[:5]]
        memory.delete(gone)
        server.delete(gone)
        q = memory.encode_queries(claims[:1])[0]
        _same_hits(memory.search(q, "fusion", k=10), again.search(q, "fusion", k=10))
        again.close()
    finally:
        for suffix in ("documents", "sentences"):
            server.client.delete_collection(f"{name}_{suffix}")
        server.close()

"""Fuzz the HTTP request models: any JSON body posted to ``/search``, ``/zoom`` or ``/documents`` (with the write key)
gets an answer below 500 (a result, or a 4xx naming the problem), never a 500 or a traceback.

Bodies mix the right keys with wrong ones, right types with wrong ones, lone surrogates (sent as JSON escapes),
integers far beyond int64, non-finite floats and nesting thousands of levels deep. The store is the one of
``conftest.py`` (its ``store`` fixture); documents that get through are short, so encoding them stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_data import KEY

from muses.service import ServiceLimits, create_app
from muses.store import MemoryStore

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=40) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
numbers = (
    st.integers(-(2**80), 2**80)
    | st.integers(-3, 400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2**63, -(2**63) - 1, 10**400])
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4), max_leaves=16
)
keys = st.sampled_from(["k0", "topic", "year", "t", "bad key!", "", "\ud800"]) | st.text(max_size=8)
filters = st.none() | st.dictionaries(keys, json_values, max_size=6) | json_values


def _maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right type, sometimes any JSON value."""
    return st.one_of(right, right, json_values)


def _body(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A JSON object with any subset of ``fields`` (and sometimes an unknown key), or now and then any JSON value."""
    objects = st.fixed_dictionaries({}, optional={name: _maybe(s) for name, s in fields.items()})
    extra = st.dictionaries(st.sampled_from(["bogus", "Query", "\udc80"]), json_values, max_size=1)
    return st.one_of(objects, objects, st.builds(lambda a, b: {**a, **b}, objects, extra), json_values)


QUERY = {"query": texts, "dim": numbers, "filters": filters}
SEARCH = _body({**QUERY, "scale": st.sampled_from(["document", "sentence", "token", "fusion", "x"]), "k": numbers,
                "zoom_docs": numbers})  # fmt: skip
ZOOM = _body({**QUERY, "k_docs": numbers, "k_sentences": numbers})
DOCUMENT = st.fixed_dictionaries(
    {"text": _maybe(texts)},
    optional={"id": _maybe(texts), "metadata": _maybe(st.dictionaries(keys, json_values, max_size=4))},
)
ADD = _body({"documents": st.lists(_maybe(DOCUMENT), max_size=3), "upsert": st.booleans()})


@pytest.fixture(scope="module")
def fuzz_client(store: MemoryStore) -> Iterator[TestClient]:
    """The service over the shared store, with small limits (so that big bodies meet the size check too)."""
    with TestClient(create_app(store, KEY, ServiceLimits(max_request_bytes=50_000, max_k=20))) as c:
        yield c


def _post(client: TestClient, path: str, body: str) -> Any:
    """POST ``body`` as raw JSON (non-ASCII, lone surrogates included, as ``\\u`` escapes); the response."""
    headers = {"Content-Type": "application/json", "X-API-Key": KEY}
    return client.post(path, content=body.encode("ascii"), headers=headers)


def _check(client: TestClient, path: str, body: Any) -> None:
    r = _post(client, path, json.dumps(body))  # ensure_ascii, and NaN/Infinity as Python's json writes them
    assert r.status_code < 500, (path, body, r.text[:500])
    assert "Traceback" not in r.text


@FUZZ
@given(body=SEARCH)
def test_search_never_fails(fuzz_client: TestClient, body: Any) -> None:
    _check(fuzz_client, "/search", body)


@FUZZ
@given(body=ZOOM)
def test_zoom_never_fails(fuzz_client: TestClient, body: Any) -> None:
    _check(fuzz_client, "/zoom", body)


@FUZZ
@given(body=ADD)
def test_add_never_fails(fuzz_client: TestClient, body: Any) -> None:
    _check(fuzz_client, "/documents", body)


@FUZZ
@given(
    path=st.sampled_from(["/search", "/zoom", "/documents"]),
    field=st.sampled_from(["query", "filters", "k", "documents", "metadata", "id"]),
    depth=st.integers(1, 6_000),
    bracket=st.sampled_from(["[]", '{"a":}']),
)
def test_deep_nesting_never_fails(fuzz_client: TestClient, path: str, field: str, depth: int, bracket: str) -> None:
    """A value nested ``depth`` levels deep (written by hand: ``json.dumps`` itself would recurse) in any field."""
    open_, close = bracket[:-1], bracket[-1]
    deep = open_ * depth + "1" + close * depth
    if field in ("metadata", "id"):
        body = f'{{"documents": [{{"text": "Bees.", "{field}": {deep}}}]}}'
    else:
        body = f'{{"query": "bees", "{field}": {deep}}}'
    r = _post(fuzz_client, path, body)
    assert r.status_code < 500 and "Traceback" not in r.text, (path, field, depth, r.text[:300])

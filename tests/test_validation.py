"""Fuzzing the shared validation grammar: any JSON value is accepted unchanged or refused with an InputError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from muses.errors import InputError
from muses.validation import MAX_ID_CHARS, check_id, check_metadata

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FUZZ = settings(max_examples=200, deadline=None)


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@FUZZ
@given(value=_JSON | st.text(max_size=MAX_ID_CHARS + 10))
def test_fuzz_check_id_accepts_unchanged_or_refuses(value: Any) -> None:
    try:
        out = check_id(value)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert out is value and isinstance(out, str) and 0 < len(out) <= MAX_ID_CHARS
    out.encode("utf-8")


@FUZZ
@given(value=_JSON | st.dictionaries(st.text(max_size=8), _JSON, max_size=4))
def test_fuzz_check_metadata_round_trips_or_refuses(value: Any) -> None:
    try:
        out = check_metadata(value)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(out, dict)
    assert out is value or (value is None and out == {})
    assert json.loads(json.dumps(out, allow_nan=False, ensure_ascii=False).encode("utf-8")) == out


@FUZZ
@given(depth=st.integers(min_value=0, max_value=6000))
def test_fuzz_check_metadata_any_depth(depth: int) -> None:
    try:
        check_metadata({"k": _deep(depth)})
    except InputError as e:
        assert "nested deeper" in str(e)
        assert depth >= 31

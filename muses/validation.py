"""One grammar for what users hand MuSES: document ids, texts, metadata and metadata filters.

The library, the CLI and the HTTP service all check input here, so a value refused by one is refused by all, with
the same one-line message naming the limit and the fix (:class:`~muses.errors.InputError`). Nothing is stored that
cannot be read back: metadata must round-trip through JSON and UTF-8, within depth and size limits.

Example::

    >>> check_id("papers/2024/a")
    'papers/2024/a'
    >>> check_metadata({"topic": "bio", "year": 2024})
    {'topic': 'bio', 'year': 2024}
    >>> check_filters({"topic": "bio"})
    {'topic': 'bio'}
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from muses.errors import InputError

MAX_ID_CHARS = 512
"""Longest document id, in characters."""
MAX_METADATA_BYTES = 65_536
"""Largest metadata object, as UTF-8 JSON."""
MAX_METADATA_DEPTH = 32
"""Deepest nesting of lists and objects inside metadata (the object itself is depth 1)."""
MAX_FILTER_KEYS = 64
"""Most keys in one metadata filter."""
MAX_FILTER_VALUE_BYTES = 4_096
"""Largest filter value, as UTF-8 JSON."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FILTER_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_utf8(text: str, what: str) -> str:
    """``text`` if it encodes as UTF-8; a lone surrogate (e.g. ``"\\ud800"``) is refused, naming its position.

    >>> check_utf8("caf\\u00e9 \\U0001F600", "text")
    'café 😀'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} holds a lone surrogate {text[e.start]!r} at character {e.start}, which is not valid UTF-8; "
            "fix the text's encoding (e.g. decode it with errors='replace')."
        ) from None
    return text


def check_id(value: object, what: str = "document id") -> str:
    """A valid document id, unchanged: a non-empty string of at most :data:`MAX_ID_CHARS` characters, valid
    UTF-8, without control characters, and not ``.`` or ``..`` (which URLs cannot carry). ``/`` is allowed: the
    service routes ids with slashes.

    >>> check_id("")
    Traceback (most recent call last):
    ...
    muses.errors.InputError: document id is empty; give a non-empty id, or leave the id out to get a random one.
    """
    if not isinstance(value, str):
        raise InputError(f"{what} {value!r} is a {type(value).__name__}; ids are strings.")
    if not value:
        raise InputError(f"{what} is empty; give a non-empty id, or leave the id out to get a random one.")
    if len(value) > MAX_ID_CHARS:
        raise InputError(f"{what} has {len(value)} characters, over the limit of {MAX_ID_CHARS}; use a shorter id.")
    check_utf8(value, what)
    if m := _CONTROL.search(value):
        raise InputError(f"{what} {value[:40]!r} holds the control character {m.group()!r} at {m.start()}; remove it.")
    if value in (".", ".."):
        raise InputError(f"{what} {value!r} cannot be used in a URL; choose another id.")
    return value


def _depth_and_keys(value: Any, what: str) -> None:
    """Check nesting depth and key types without recursion (a 5,000-deep list must not blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_METADATA_DEPTH:
                raise InputError(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels; flatten it.")
            if isinstance(item, dict):
                for k in item:
                    if not isinstance(k, str):
                        raise InputError(f"{what} has a key {k!r} that is not a string; JSON keys are strings.")
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InputError(f"{what} holds {item}, which JSON cannot carry; use a finite number or null.")
        elif not isinstance(item, (str, int, float, bool)) and item is not None:
            raise InputError(f"{what} holds a {type(item).__name__}; use JSON values (str, number, bool, list, dict).")


def check_metadata(value: object, what: str = "metadata") -> dict[str, Any]:
    """Valid document metadata, unchanged: a JSON object of JSON values, at most :data:`MAX_METADATA_DEPTH` deep
    and :data:`MAX_METADATA_BYTES` as UTF-8 JSON, with valid UTF-8 in every key and string. ``None`` is ``{}``.

    >>> check_metadata(["a"])
    Traceback (most recent call last):
    ...
    muses.errors.InputError: metadata must be a JSON object ({"key": value}), not a list.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f'{what} must be a JSON object ({{"key": value}}), not a {type(value).__name__}.')
    _depth_and_keys(value, what)
    encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} holds a lone surrogate {encoded[e.start]!r}, which is not valid UTF-8; fix its encoding."
        ) from None
    if size > MAX_METADATA_BYTES:
        raise InputError(
            f"{what} is {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES}; store large data elsewhere "
            "and keep a reference in the metadata."
        )
    return value


def check_count(name: str, value: object, least: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``least``.

    >>> check_count("k", 3)
    3
    >>> check_count("k", 0)
    Traceback (most recent call last):
    ...
    muses.errors.InputError: k must be an integer of at least 1, got 0.

    Raises:
        InputError: anything else, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{name} must be an integer of at least {least}, got {repr(value)[:40]}.")
    return value


def check_filters(value: object) -> dict[str, Any]:
    """A valid metadata filter ``{key: value}``, unchanged: at most :data:`MAX_FILTER_KEYS` plain keys (letters,
    digits, ``_``, ``-``), values that are JSON (integers within int64, finite floats, valid UTF-8) and at most
    :data:`MAX_FILTER_VALUE_BYTES` each. ``None`` is ``{}``.

    >>> check_filters({"year": 2**70})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    muses.errors.InputError: filter value of 'year' is an integer outside the 64-bit range; ...
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f'filters must be an object {{"key": value}}, not a {type(value).__name__}.')
    if len(value) > MAX_FILTER_KEYS:
        raise InputError(f"{len(value)} filter keys is over the limit of {MAX_FILTER_KEYS}; filter on fewer fields.")
    for key, v in value.items():
        if not isinstance(key, str) or not _FILTER_KEY.fullmatch(key):
            raise InputError(
                f"filter key {str(key)[:40]!r} must be a plain metadata field name (1-128 letters, digits, _ -)."
            )
        what = f"filter value of {key!r}"
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            raise InputError(f"{what} is an integer outside the 64-bit range; use a smaller number or a string.")
        if isinstance(v, (dict, list)):
            _depth_and_keys(v, what)
            _check_ints(v, what)
        elif not isinstance(v, (str, int, float)):
            raise InputError(f"{what} is a {type(v).__name__}; use a JSON value.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{what} is {v}, which JSON cannot carry; use a finite number.")
        encoded = json.dumps(v, ensure_ascii=False)
        try:
            size = len(encoded.encode("utf-8"))
        except UnicodeEncodeError:
            raise InputError(f"{what} holds a lone surrogate, which is not valid UTF-8; fix its encoding.") from None
        if size > MAX_FILTER_VALUE_BYTES:
            raise InputError(f"{what} is {size} bytes, over the limit of {MAX_FILTER_VALUE_BYTES}.")
    return value


def _check_ints(value: Any, what: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            raise InputError(f"{what} holds an integer outside the 64-bit range; use a smaller number or a string.")

"""How a MuSES store's documents and sentences look as Qdrant points: their ids (UUIDs derived from the document id),
named vectors, and the ``match`` keywords that carry metadata filters (see :mod:`muses.store.qdrant`).

Values compare as the memory store's SQLite does: strings exactly, numbers by value (``1 == 1.0``, ``true == 1``),
``null`` never matches; lists and objects match an equal JSON value.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from muses.extras import require
from muses.validation import MAX_FILTER_VALUE_BYTES, check_filters

require("qdrant_client", "qdrant")

from qdrant_client import models  # noqa: E402

__all__ = ["doc_point", "filter_keys", "in_docs", "metadata_keys", "qdrant_filter", "sentence_point", "vector_name"]

_FILTER_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")  # the filter grammar's keys (muses.validation.check_filters)
_NAMESPACE = uuid.UUID("5b1c8f1e-6a47-4f0b-9c55-6d7573657301")  # point ids: uuid5 of the document id


def _canonical(value: Any) -> str | None:
    """The text a filter value must equal; None for ``null`` (which never matches, as in SQL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return f"n:{int(value)}"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return f"n:{value}"
        try:
            value = float(value)
        except OverflowError:
            return None  # no filter value (64-bit integers, finite floats) equals it
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and -(2.0**63) <= value < 2.0**63:
            return f"n:{int(value)}"
        return f"n:{value!r}"
    if isinstance(value, str):
        return f"s:{value}"
    return "j:" + json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def metadata_keys(metadata: Mapping[str, Any]) -> list[str]:
    """The ``match`` keywords of a document: ``key=canonical value`` for each top-level metadata key that a filter
    can name (plain keys, values that fit a filter).

    >>> metadata_keys({"topic": "bio", "n": 1.0, "ok": True, "x": None, "bad key": 1})
    ['topic=s:bio', 'n=n:1', 'ok=n:1']
    """
    out = []
    for key, value in metadata.items():
        if not _FILTER_KEY.fullmatch(key):
            continue
        try:
            canon = _canonical(value)
        except ValueError:  # NaN inside a list: no filter can carry it
            continue
        if canon is not None and len(canon.encode("utf-8")) <= MAX_FILTER_VALUE_BYTES + 2:
            out.append(f"{key}={canon}")
    return out


def filter_keys(filters: Mapping[str, Any] | None) -> list[str]:
    """The ``match`` keywords a document needs for ``filters`` (checked by :func:`check_filters`) to match it.

    >>> filter_keys({"topic": "bio", "n": 1})
    ['topic=s:bio', 'n=n:1']
    >>> filter_keys({"gone": None})  # null matches nothing
    ['gone=\\x00null']
    """
    out = []
    for key, value in check_filters(dict(filters) if isinstance(filters, Mapping) else filters).items():
        canon = _canonical(value)
        out.append(f"{key}={canon}" if canon is not None else f"{key}=\x00null")
    return out


def qdrant_filter(keys: Sequence[str], *extra: models.Condition) -> models.Filter | None:
    """A filter that needs every ``match`` keyword of ``keys`` and every ``extra`` condition (None: no filter)."""
    must: list[models.Condition] = [models.FieldCondition(key="match", match=models.MatchValue(value=k)) for k in keys]
    must += list(extra)
    return models.Filter(must=must) if must else None


def in_docs(doc_ids: Sequence[str]) -> models.FieldCondition:
    """A sentence point whose document is one of ``doc_ids``."""
    return models.FieldCondition(key="doc", match=models.MatchAny(any=list(doc_ids)))


def doc_point(doc_id: str) -> str:
    """The Qdrant point id of a document (a UUID derived from its id)."""
    return str(uuid.uuid5(_NAMESPACE, doc_id))


def sentence_point(doc_id: str, pos: int) -> str:
    """The Qdrant point id of sentence ``pos`` of a document."""
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}\x00{pos}"))


def vector_name(d: int) -> str:
    """The named vector of the prefix at dim ``d``."""
    return f"d{d}"

"""Where a Qdrant store lives and how MuSES talks to it: parsing a location (server URL, local folder, ``:memory:``),
connecting, and turning qdrant-client's transport and HTTP errors into one-line :class:`QdrantError`.

Needs the ``qdrant`` extra (``pip install 'muses[qdrant]'``); :mod:`muses.store.qdrant` builds the store on it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from muses.errors import InputError, MusesError
from muses.extras import require
from muses.validation import check_utf8

require("qdrant_client", "qdrant")

from qdrant_client import QdrantClient  # noqa: E402
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse  # noqa: E402

__all__ = ["API_KEY_ENV", "QdrantError", "connect", "parse_location", "server_errors"]

API_KEY_ENV = "QDRANT_API_KEY"
"""The environment variable holding a Qdrant server's API key (never a command-line option)."""
_LOCAL_FILES = frozenset({"meta.json", ".lock", "collection"})


class QdrantError(MusesError):
    """A Qdrant server could not be reached, or refused a request; the message names the URL and the fix."""


def parse_location(location: object) -> tuple[str, str]:
    """Where a store lives: ``("memory", ":memory:")``, ``("server", URL)`` for ``http(s)://host[:port][/path]``,
    or ``("path", folder)`` for a local folder (qdrant-client's local mode).

    >>> parse_location("http://localhost:6333")
    ('server', 'http://localhost:6333')
    >>> parse_location("grpc://x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    muses.errors.InputError: Qdrant location 'grpc://x' has the scheme 'grpc'; use http(s)://host:port, ...
    """
    if not isinstance(location, (str, os.PathLike)):
        raise InputError(f"a Qdrant location is a URL or a folder, not a {type(location).__name__}.")
    text = os.fspath(location)
    if not isinstance(text, str):
        raise InputError("a Qdrant location is a URL or a folder given as text, not bytes.")
    check_utf8(text, "Qdrant location")
    if not text.strip():
        raise InputError("the Qdrant location is empty; give http(s)://host:port, a local folder, or :memory:.")
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise InputError(f"Qdrant location {text[:60]!r} holds a control character; remove it.")
    if text == ":memory:":
        return "memory", text
    scheme, sep, _ = text.partition("://")
    if not sep:
        return "path", text
    if scheme.lower() not in ("http", "https"):
        raise InputError(
            f"Qdrant location {text[:60]!r} has the scheme {scheme[:20]!r}; use http(s)://host:port, a local "
            "folder, or :memory:."
        )
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise InputError(f"Qdrant URL {text[:60]!r} is malformed ({e}); use http(s)://host:port.") from None
    if not parts.hostname:
        raise InputError(f"Qdrant URL {text[:60]!r} names no host; use http(s)://host:port.")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InputError(
            f"Qdrant URL {text[:60]!r} carries a query, fragment or credentials; give http(s)://host:port and the "
            f"API key in ${API_KEY_ENV}."
        )
    del port
    return "server", text


def _unreachable(url: str, reason: object) -> QdrantError:
    why = " ".join(str(reason).split())[:200] or type(reason).__name__
    return QdrantError(
        f"cannot reach the Qdrant server at {url} ({why}); start it (e.g. `docker run -p 6333:6333 qdrant/qdrant`) "
        "or fix --qdrant-url."
    )


@contextmanager
def server_errors(url: str) -> Iterator[None]:
    """Turn qdrant-client's transport and HTTP errors into one-line :class:`QdrantError` naming ``url``."""
    try:
        yield
    except UnexpectedResponse as e:
        if e.status_code in (401, 403):
            raise QdrantError(
                f"the Qdrant server at {url} refused the request ({e.status_code} {e.reason_phrase}); set "
                f"${API_KEY_ENV} to its API key."
            ) from None
        body = " ".join(e.content.decode("utf-8", "replace").split())[:200]
        raise QdrantError(f"the Qdrant server at {url} answered {e.status_code} {e.reason_phrase}: {body}") from None
    except ResponseHandlingException as e:
        raise _unreachable(url, e.source) from None
    except (ConnectionError, TimeoutError) as e:
        raise _unreachable(url, e) from None


def connect(location: str, api_key: str | None, timeout: int) -> QdrantClient:
    """A client for ``location`` (see :func:`parse_location`); a local folder is opened (and locked) here."""
    kind, where = parse_location(location)
    if kind == "memory":
        return QdrantClient(location=":memory:")
    if kind == "server":
        key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        return QdrantClient(url=where, api_key=key, timeout=timeout, check_compatibility=False)
    folder = Path(where)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the local Qdrant store (or an http(s) URL).")
    others = sorted(f.name for f in folder.iterdir() if f.name not in _LOCAL_FILES) if folder.exists() else []
    if others:
        raise InputError(
            f"{folder} holds other files ({others[:3]}), not a local Qdrant store; give a new or empty folder."
        )
    try:
        return QdrantClient(path=str(folder), force_disable_check_same_thread=True)
    except RuntimeError as e:
        if "already accessed" in str(e):
            raise InputError(
                f"{folder} is open in another client or process (a local Qdrant folder has one user at a time); "
                "close it, or run a Qdrant server for concurrent access."
            ) from None
        raise

"""``muses serve``: a store over HTTP (FastAPI), with a small search page.

The store is any :class:`~muses.store.StoreBackend`: the embedded :class:`~muses.store.MemoryStore` or a
:class:`~muses.store.qdrant.QdrantStore` (``muses serve --qdrant-url URL``).

Endpoints (OpenAPI docs at ``/docs``): ``GET /health``, ``GET /stats`` (with the adapter cache's counters when the app
is created with an :class:`~muses.adapters.AdapterCache`), ``POST /search``, ``POST /zoom``,
``GET /documents/{id}``, and, with the write key (header ``X-API-Key``), ``POST /documents`` and
``DELETE /documents/{id}`` (ids may hold ``/``: percent-encode them). Without a configured key, writes are refused.
Concurrent queries are encoded in batches (:class:`~muses.service.batcher.QueryBatcher`); a bad query fails alone.
Requests over the size limits get a 413; bad input a 422 naming the field (ids, texts, metadata and filters are
checked with :mod:`muses.validation` before anything reaches the store) or a 400 from the store; unknown ids a
404. No request gets a traceback: an unexpected error is a 500 with one line, and the traceback goes to the log.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muses.errors import InputError, ModelError, UnknownIdError
from muses.service.batcher import QueryBatcher
from muses.store import EncodedQuery, StoreBackend
from muses.types import SearchScale
from muses.validation import check_filters, check_id, check_metadata, check_utf8

if TYPE_CHECKING:
    from muses.adapters import AdapterCache


class ServiceLimits(BaseModel):
    """Request limits; anything over them is refused with a 4xx naming the limit."""

    max_request_bytes: int = 8_000_000
    max_documents: int = 256
    max_document_chars: int = 200_000
    max_query_chars: int = 2_000
    max_k: int = 100


MAX_INT = 2**31 - 1
"""Upper bound of the request models' integers (dims, counts), far above any real value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Strict):
    id: str | None = Field(None, description="your id (a random one if missing; an empty id is refused)")
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "id")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_utf8(value, "text")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value, "metadata")


class AddRequest(_Strict):
    documents: list[DocumentIn]
    upsert: bool = Field(False, description="replace documents whose id is already stored")


class _Query(_Strict):
    """What every query request has: the query text, a dim and metadata filters, checked here."""

    query: str
    dim: int | None = Field(None, ge=1, le=MAX_INT)
    filters: dict[str, Any] | None = None

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        return check_utf8(value, "query")

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_filters(value)


class SearchRequest(_Query):
    scale: SearchScale = "fusion"
    k: int = Field(10, ge=1, le=MAX_INT)
    zoom_docs: int | None = Field(None, ge=1, le=MAX_INT, description="sentence scale: only inside the top documents")


class ZoomRequest(_Query):
    k_docs: int = Field(3, ge=1, le=MAX_INT)
    k_sentences: int = Field(2, ge=1, le=MAX_INT)


DocId = Annotated[
    str,
    Path(description="the document's id, percent-encoded (`a/b` is `a%2Fb`)"),
    AfterValidator(lambda value: check_id(value, "doc_id")),
]
"""A document id in a URL path: ``/`` is routable, and the id grammar of :func:`~muses.validation.check_id` holds."""


def _error_list(e: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's validation errors without the inputs they echo (which may be huge, deeply nested or not UTF-8)."""
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")} for err in e.errors()
    ]


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error naming a lone surrogate still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 before any parsing."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over the limit of {self.limit} bytes; send fewer or smaller documents."},
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


API_KEY_ENV = "MUSES_API_KEY"
"""The environment variable that holds the write key (the command line never does: it shows in the process list)."""
MAX_KEY_FILE_BYTES = 4_096


def load_api_key(key_file: FsPath | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The write key: the content of ``key_file`` (read once, stripped) if given, else ``$MUSES_API_KEY``, else
    None (read-only). A missing, unreadable, empty or non-ASCII key file, or a non-ASCII key, is an
    :class:`~muses.errors.InputError`."""
    if key_file is None:
        key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
        return _check_key(key, f"${API_KEY_ENV}") if key else None
    try:
        with open(key_file, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read the API key file {key_file}: {e.strerror or e}; give a readable file.") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise InputError(
            f"the API key file {key_file} is over {MAX_KEY_FILE_BYTES} bytes; it should hold only the key."
        )
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InputError(f"the API key file {key_file} is not ASCII text; write the key as printable ASCII.") from None
    if not key:
        raise InputError(f"the API key file {key_file} is empty; write the key into it, or leave --api-key-file out.")
    return _check_key(key, f"the API key file {key_file}")


def _check_key(key: str, source: str) -> str:
    """``key`` if it can travel in an HTTP header (printable ASCII, no line breaks)."""
    if not all(" " <= c <= "~" for c in key):
        raise InputError(f"{source} holds a key with characters other than printable ASCII; use a plain ASCII key.")
    return key


def create_app(
    store: StoreBackend,
    api_key: str | None = None,
    limits: ServiceLimits | None = None,
    adapters: AdapterCache | None = None,
) -> FastAPI:
    """The HTTP service over ``store``. ``api_key`` guards writes (None: writes refused). With ``adapters``, the
    adapter cache's counters (:meth:`~muses.adapters.AdapterCache.stats`) are part of ``GET /stats``."""
    limits = limits or ServiceLimits()
    batcher: QueryBatcher[EncodedQuery] = QueryBatcher(store.encode_queries)
    counters = {"requests": 0, "errors": 0}
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="MuSES memory",
        description="Multi-scale search (document, sentence, token, fusion) and zoom over a MuSES store.",
        version="1",
    )
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        counters["requests"] += 1
        response = await call_next(request)
        if response.status_code >= 400:
            counters["errors"] += 1
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        return _AsciiJSONResponse({"detail": _error_list(e)}, status_code=422)

    @app.exception_handler(InputError)
    async def bad_input(_: Request, e: InputError) -> JSONResponse:
        return _AsciiJSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:  # Starlette re-raises it to the server's log
        return JSONResponse(
            {"detail": f"internal error ({type(e).__name__}); the server log has the details."}, status_code=500
        )

    @app.exception_handler(UnknownIdError)
    async def unknown_id(_: Request, e: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(ModelError)
    async def model_error(_: Request, e: ModelError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    def require_key(x_api_key: str | None = Header(None, description="the write key")) -> None:
        if api_key is None:
            raise HTTPException(
                403, "writes are disabled: start the service with $MUSES_API_KEY or --api-key-file to enable them."
            )
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), api_key.encode()):
            raise HTTPException(401, "a valid X-API-Key header is required for writes.")

    def check_query(query: str, **counts: int | None) -> None:
        """The query's length and every result count (``k=...``, named as in the request) within the limits."""
        if len(query) > limits.max_query_chars:
            raise HTTPException(413, f"query over the limit of {limits.max_query_chars} characters.")
        for name, n in counts.items():
            if n is not None and n > limits.max_k:
                raise HTTPException(422, f"{name} = {n} is over the limit of {limits.max_k}.")
        if not query.strip():
            raise HTTPException(422, "the query is empty; give some text to search for.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("muses.service").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "documents": len(store), "uptime_s": round(time.time() - started, 1)}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        out = {"store": store.stats(), "service": {**counters, "query_batches": batcher.stats()}}
        if adapters is not None:
            out["adapters"] = adapters.stats()
        return out

    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        check_query(req.query, k=req.k, zoom_docs=req.zoom_docs)
        hits = store.search(batcher.encode(req.query), req.scale, req.k, req.dim, req.filters, req.zoom_docs)
        return {"query": req.query, "scale": req.scale, "hits": [h.to_dict() for h in hits]}

    @app.post("/zoom")
    def zoom(req: ZoomRequest) -> dict[str, Any]:
        check_query(req.query, k_docs=req.k_docs, k_sentences=req.k_sentences)
        results = store.zoom(batcher.encode(req.query), req.k_docs, req.k_sentences, req.dim, req.filters)
        return {"query": req.query, "results": [r.to_dict() for r in results]}

    @app.get("/documents/{doc_id:path}")
    def get_document(doc_id: DocId) -> dict[str, Any]:
        return store.get(doc_id)

    @app.post("/documents", dependencies=[Depends(require_key)])
    def add(req: AddRequest) -> dict[str, Any]:
        if len(req.documents) > limits.max_documents:
            raise HTTPException(413, f"{len(req.documents)} documents is over the limit of {limits.max_documents}.")
        for i, d in enumerate(req.documents):
            if len(d.text) > limits.max_document_chars:
                raise HTTPException(
                    413, f"document {i} has {len(d.text)} characters, over the limit of {limits.max_document_chars}."
                )
        ids = store.add([d.model_dump() for d in req.documents], upsert=req.upsert)
        return {"ids": ids, "documents": len(store)}

    @app.delete("/documents/{doc_id:path}", dependencies=[Depends(require_key)])
    def delete(doc_id: DocId) -> dict[str, Any]:
        store.delete([doc_id])
        return {"deleted": doc_id, "documents": len(store)}

    return app

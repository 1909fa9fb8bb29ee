"""``muses serve``: a MemoryStore over HTTP (FastAPI), with a small search page.

Endpoints (OpenAPI docs at ``/docs``): ``GET /health``, ``GET /stats`` (with the adapter cache's counters when the app
is created with an :class:`~muses.adapters.AdapterCache`), ``POST /search``, ``POST /zoom``,
``GET /documents/{id}``, and, with the write key (header ``X-API-Key``), ``POST /documents`` and
``DELETE /documents/{id}``. Without a configured key, writes are refused. Concurrent queries are encoded in
batches (:class:`~muses.service.batcher.QueryBatcher`). Requests over the size limits get a 413, bad input a
400 or 422 that says what is wrong, unknown ids a 404.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muses.errors import InputError, ModelError, UnknownIdError
from muses.service.batcher import QueryBatcher
from muses.store import EncodedQuery, MemoryStore

if TYPE_CHECKING:
    from muses.adapters import AdapterCache


class ServiceLimits(BaseModel):
    """Request limits; anything over them is refused with a 4xx naming the limit."""

    max_request_bytes: int = 8_000_000
    max_documents: int = 256
    max_document_chars: int = 200_000
    max_query_chars: int = 2_000
    max_k: int = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Strict):
    id: str | None = Field(None, description="your id (a random one if missing)")
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddRequest(_Strict):
    documents: list[DocumentIn]
    upsert: bool = Field(False, description="replace documents whose id is already stored")


class SearchRequest(_Strict):
    query: str
    scale: Literal["document", "sentence", "token", "fusion"] = "fusion"
    k: int = Field(10, ge=1)
    dim: int | None = None
    filters: dict[str, Any] | None = None
    zoom_docs: int | None = Field(None, ge=1, description="sentence scale: only inside the top documents")


class ZoomRequest(_Strict):
    query: str
    k_docs: int = Field(3, ge=1)
    k_sentences: int = Field(2, ge=1)
    dim: int | None = None
    filters: dict[str, Any] | None = None


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


def create_app(
    store: MemoryStore,
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

    @app.exception_handler(InputError)
    async def bad_input(_: Request, e: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(UnknownIdError)
    async def unknown_id(_: Request, e: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(ModelError)
    async def model_error(_: Request, e: ModelError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    def require_key(x_api_key: str | None = Header(None, description="the write key")) -> None:
        if api_key is None:
            raise HTTPException(403, "writes are disabled: start the service with --api-key or $MUSES_API_KEY.")
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), api_key.encode()):
            raise HTTPException(401, "a valid X-API-Key header is required for writes.")

    def check_query(query: str, k: int) -> None:
        if len(query) > limits.max_query_chars:
            raise HTTPException(413, f"query over the limit of {limits.max_query_chars} characters.")
        if k > limits.max_k:
            raise HTTPException(422, f"k = {k} is over the limit of {limits.max_k}.")
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
        check_query(req.query, req.k)
        hits = store.search(batcher.encode(req.query), req.scale, req.k, req.dim, req.filters, req.zoom_docs)
        return {"query": req.query, "scale": req.scale, "hits": [h.to_dict() for h in hits]}

    @app.post("/zoom")
    def zoom(req: ZoomRequest) -> dict[str, Any]:
        check_query(req.query, req.k_docs)
        results = store.zoom(batcher.encode(req.query), req.k_docs, req.k_sentences, req.dim, req.filters)
        return {"query": req.query, "results": [r.to_dict() for r in results]}

    @app.get("/documents/{doc_id}")
    def get_document(doc_id: str) -> dict[str, Any]:
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

    @app.delete("/documents/{doc_id}", dependencies=[Depends(require_key)])
    def delete(doc_id: str) -> dict[str, Any]:
        store.delete([doc_id])
        return {"deleted": doc_id, "documents": len(store)}

    return app

"""MuSES in LangChain: an ``Embeddings`` model and a zoom retriever over a :class:`~muses.store.MemoryStore`.

Needs the ``langchain`` extra (langchain-core): ``pip install 'muses[langchain]'``; the retriever also needs the
``store`` extra.

- :class:`MusesEmbeddings` embeds texts with a :class:`~muses.MultiScaleEncoder`, at document or sentence scale and
  any Matryoshka dim; queries get the model's query prompt. Use it in any LangChain vector store.
- :class:`MusesZoomRetriever` searches a MuSES store and returns LangChain ``Document`` objects: by default the best
  *sentences* of the best documents (zoom), each with its document id, span, highlighted words and per-scale scores
  in ``metadata`` (see :mod:`muses.integrations.hits`); or whole documents ranked by ``fusion`` (``unit="document"``).

Example::

    from muses import MultiScaleEncoder
    from muses.integrations.langchain import MusesEmbeddings, MusesZoomRetriever
    from muses.store import MemoryStore

    embeddings = MusesEmbeddings(dim=256)                     # the bundled all-MiniLM-L6-v2; or model="my-muses/"
    vectors = embeddings.embed_documents(["Leaves make oxygen. Roots take up water."])   # [[256 floats]]

    store = MemoryStore.create("mem/", MultiScaleEncoder.from_base())
    store.add([{"id": "a", "text": "Leaves make oxygen. Roots take up water.", "metadata": {"topic": "bio"}}])
    retriever = MusesZoomRetriever(store=store, k=4, filters={"topic": "bio"})
    for doc in retriever.invoke("where is water absorbed?"):
        print(doc.page_content, doc.metadata["highlighted_words"], doc.metadata["scores"])
    retriever.invoke("where is water absorbed?", k=1, unit="document")   # per-call overrides

Bad settings (an unknown ``unit`` or ``scale``, ``k < 1``, a dim the store or model lacks, bad filters) raise a
one-line :class:`~muses.errors.InputError` when the object is built, or when ``invoke`` is called with them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal

from muses.extras import require

require("langchain_core", "langchain")

from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_core.runnables.config import run_in_executor  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator  # noqa: E402

from muses.encoder import DEFAULT_BASE, MultiScaleEncoder  # noqa: E402
from muses.errors import InputError  # noqa: E402
from muses.heads import resolve_dim  # noqa: E402
from muses.integrations.hits import Retrieved, Unit, retrieve  # noqa: E402
from muses.validation import check_filters  # noqa: E402

__all__ = ["MusesEmbeddings", "MusesZoomRetriever", "load_encoder"]

EmbeddingScale = Literal["document", "sentence"]
DocumentScale = Literal["document", "token", "fusion"]


def load_encoder(model: str | None = None) -> MultiScaleEncoder:
    """The encoder for ``model`` (a saved MuSES folder, a sentence-transformers folder or hub name, or None /
    ``default`` for the bundled all-MiniLM-L6-v2), loaded once per process and shared: do not train or modify it."""
    name = model or DEFAULT_BASE
    if name != DEFAULT_BASE and Path(name).exists():
        name = str(Path(name).resolve())  # one cache entry per folder, however it is written
    return _load_encoder(name)


@functools.lru_cache(maxsize=4)
def _load_encoder(name: str) -> MultiScaleEncoder:
    return MultiScaleEncoder.from_base(name)


def _one_line(owner: str, error: ValidationError) -> InputError:
    """The first problem of a pydantic ``error`` as a one-line :class:`InputError` (an InputError raised by a
    validator is returned as it is)."""
    first = error.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, InputError):
        return cause
    field = ".".join(str(x) for x in first["loc"]) or "arguments"
    if first["type"] == "missing":
        return InputError(f"{owner} needs {field}; pass {field}=...")
    if first["type"] == "extra_forbidden":
        return InputError(f"{owner} has no setting {field!r}; check the spelling (see help({owner})).")
    given = repr(first.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return InputError(f"{owner}: {field}={given} is not usable: {first['msg']}.")


class MusesEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings from a MuSES encoder: ``embed_documents`` -> ``[N][dim]``, ``embed_query`` -> ``[dim]``.

    Give ``encoder`` (a loaded :class:`~muses.MultiScaleEncoder`), or ``model`` (a path or name, loaded once per
    process by :func:`load_encoder`), or neither (the bundled all-MiniLM-L6-v2).

    Documents are embedded at ``scale``: ``document`` (one vector per text, pooled from its sentences' context) or
    ``sentence`` (each text on its own, as a sentence). Queries use the standalone sentence scale with the model's
    query prompt (:meth:`~muses.MultiScaleEncoder.encode_queries`). Vectors are L2-normalised ``dim``-prefixes.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = Field(None, description="model path or name (None: the bundled all-MiniLM-L6-v2)")
    encoder: MultiScaleEncoder | None = Field(None, repr=False, exclude=True, description="a loaded encoder")
    scale: EmbeddingScale = Field("document", description="the scale documents are embedded at")
    dim: int | None = Field(None, ge=1, description="Matryoshka dim (None: the model's full dim)")
    batch_size: int = Field(32, ge=1, description="transformer windows per batch")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _one_line(type(self).__name__, e) from None

    @model_validator(mode="after")
    def _load(self) -> MusesEmbeddings:
        if self.encoder is not None and self.model is not None:
            raise InputError("give MusesEmbeddings either encoder or model, not both.")
        if self.encoder is None:
            self.encoder = load_encoder(self.model)
        resolve_dim(self.dim, self.encoder.embed_dim)  # a dim the model lacks: InputError naming the range
        return self

    @property
    def _encoder(self) -> MultiScaleEncoder:
        assert self.encoder is not None  # set by the validator
        return self.encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed ``N`` texts -> ``N`` lists of ``dim`` floats, at ``scale``.

        Raises:
            InputError: a text is not a string, or empty / whitespace only.
        """
        if not texts:
            return []
        enc = self._encoder
        if self.scale == "sentence":
            vecs = enc.encode_sentences(texts, dim=self.dim, batch_size=self.batch_size)
            return [[float(x) for x in v] for v in vecs]
        embs = enc.encode_documents(texts, scales=("document",), dim=self.dim, batch_size=self.batch_size)
        return [[float(x) for x in e.document] for e in embs]

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query -> ``dim`` floats (query prompt prepended, standalone sentence scale)."""
        vec = self._encoder.encode_queries([text], dim=self.dim, batch_size=self.batch_size)[0]
        return [float(x) for x in vec]


class MusesZoomRetriever(BaseRetriever):
    """A LangChain retriever over a MuSES :class:`~muses.store.MemoryStore`.

    ``unit="sentence"`` (default): the store's zoom: the top ``k`` documents (document scale), the best
    ``k_sentences`` sentences of each with their ``highlight`` best-matching words, and the first ``k`` of those
    sentences (document rank, then sentence score): so ``k`` sentences from the top ``ceil(k / k_sentences)``
    documents. ``unit="document"``: the top ``k`` whole documents by ``scale`` (``fusion``, ``document`` or
    ``token``).

    Each result is a ``Document`` whose ``page_content`` is the sentence (or document) text, whose ``id`` is the
    document id (``"{document id}#{sentence index}"`` for a sentence), and whose ``metadata`` is described in
    :mod:`muses.integrations.hits` (document id, sentence index, span, highlights, highlighted words, per-scale
    scores, the stored document's metadata).

    Every setting below except ``store`` can also be given to one call: ``retriever.invoke(query, k=2,
    filters={"topic": "bio"})``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    OPTIONS: ClassVar[tuple[str, ...]] = ("k", "unit", "scale", "k_sentences", "dim", "filters", "highlight")

    store: Any = Field(description="the muses.store.MemoryStore to search")
    k: int = Field(4, ge=1, description="results returned")
    unit: Unit = Field("sentence", description="sentence (zoom) or document results")
    scale: DocumentScale = Field("fusion", description="the scale ranking documents (unit='document' only)")
    k_sentences: int = Field(2, ge=1, description="sentences taken from each document (unit='sentence')")
    dim: int | None = Field(None, ge=1, description="Matryoshka prefix, at most the store's dim (None: the store's)")
    filters: dict[str, Any] | None = Field(None, description="{metadata key: value}, all must match")
    highlight: int = Field(3, ge=0, description="highlighted word groups per sentence (unit='sentence')")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _one_line(type(self).__name__, e) from None

    @field_validator("store")
    @classmethod
    def _check_store(cls, store: Any) -> Any:
        from muses.store import MemoryStore  # the store extra, needed by the retriever only

        if not isinstance(store, MemoryStore):
            raise InputError(
                f"store must be a muses.store.MemoryStore (MemoryStore.open(path)), not a {type(store).__name__}."
            )
        return store

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        check_filters(filters)
        return filters

    @model_validator(mode="after")
    def _check_dim(self) -> MusesZoomRetriever:
        if self.dim is not None and (self.dim not in self.store.encoder.dims or self.dim > self.store.dim):
            usable = [x for x in self.store.encoder.dims if x <= self.store.dim]
            raise InputError(f"dim {self.dim} is not available in this store; use one of {usable}.")
        return self

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """This retriever's settings with one call's ``overrides``, validated like the constructor's."""
        overrides = {key: v for key, v in overrides.items() if key != "verbose"}  # invoke's own, not ours
        unknown = sorted(set(overrides) - set(self.OPTIONS))
        if unknown:
            raise InputError(f"unknown retriever option(s) {unknown}; use any of {', '.join(self.OPTIONS)}.")
        if not overrides:
            return {name: getattr(self, name) for name in self.OPTIONS}
        current = {name: getattr(self, name) for name in self.OPTIONS}
        checked = MusesZoomRetriever(store=self.store, **(current | overrides))
        return {name: getattr(checked, name) for name in self.OPTIONS}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """The top results for ``query`` as ``Document`` objects, best first; ``kwargs`` override settings."""
        return [_document(r) for r in retrieve(self.store, query, **self._options(kwargs))]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """:meth:`_get_relevant_documents` in a worker thread (encoding and search are CPU / GPU bound)."""
        return await run_in_executor(
            None, functools.partial(self._get_relevant_documents, run_manager=run_manager.get_sync(), **kwargs), query
        )


def _document(r: Retrieved) -> Document:
    """A retrieved result as a LangChain ``Document`` (id: the document id, ``#sentence index`` for a sentence)."""
    meta = r.metadata
    ident = meta["document_id"] if meta["sentence_index"] is None else f"{meta['document_id']}#{meta['sentence_index']}"
    return Document(page_content=r.text, metadata=meta, id=ident)

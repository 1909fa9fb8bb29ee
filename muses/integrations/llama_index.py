"""MuSES in LlamaIndex: an embedding model and a retriever over a MuSES store (``pip install 'muses[llama-index]'``).

- :class:`MusesEmbedding` is a LlamaIndex ``BaseEmbedding``: texts are embedded at the document scale (one vector
  per text, pooled from one pass over the whole text) or the standalone sentence scale, queries with the model's
  query prompt, at any Matryoshka ``dim``. Use it wherever LlamaIndex takes an ``embed_model``.
- :class:`MusesRetriever` is a LlamaIndex ``BaseRetriever`` over a :class:`~muses.store.MemoryStore`: each result is a
  ``TextNode`` holding one sentence (zoom: top documents, then their best sentences, with the matching words
  highlighted) or one whole document (``fusion``, ``document`` or ``token`` scale), with the metadata of
  :mod:`muses.integrations.hits`. Only ``document_id`` and ``document_metadata`` are shown to an LLM or an embed model
  when a node is formatted; the spans, scores and highlights stay in ``node.metadata`` for code.

Example::

    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from muses.integrations.llama_index import MusesEmbedding, MusesRetriever
    from muses.store import MemoryStore

    embed = MusesEmbedding(dim=256)                      # the bundled base model, document scale
    index = VectorStoreIndex([TextNode(text="Leaves make oxygen. Roots take up water.")], embed_model=embed)
    index.as_retriever(similarity_top_k=1).retrieve("where is water absorbed?")

    store = MemoryStore.open("mem/")                     # a store built with `muses index` or MemoryStore.create
    retriever = MusesRetriever(store=store, k=4, filters={"topic": "bio"})
    for hit in retriever.retrieve("where is water absorbed?"):
        print(hit.score, hit.node.metadata["document_id"], hit.node.text, hit.node.metadata["highlighted_words"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from muses.extras import require

require("llama_index.core", "llama-index")  # one line naming `muses[llama-index]` when it is not installed

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding  # noqa: E402
from llama_index.core.bridge.pydantic import Field, PrivateAttr  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from muses.encoder import DEFAULT_BASE, MultiScaleEncoder  # noqa: E402
from muses.errors import InputError  # noqa: E402
from muses.integrations.hits import DOCUMENT_SCALES, UNITS, Retrieved, Unit, retrieve  # noqa: E402
from muses.validation import check_count, check_filters  # noqa: E402

if TYPE_CHECKING:
    from muses.store import MemoryStore

EmbeddingScale = Literal["document", "sentence"]
EMBEDDING_SCALES: tuple[EmbeddingScale, ...] = ("document", "sentence")
VISIBLE_METADATA = ("document_id", "document_metadata")
"""The node metadata keys an LLM or embed model sees by default when LlamaIndex formats a retrieved node."""

__all__ = ["MusesEmbedding", "MusesRetriever", "to_store_filters"]


def _check_dim(dim: int | None, encoder: MultiScaleEncoder, limit: int | None = None) -> None:
    """Refuse a ``dim`` that is not one of the encoder's Matryoshka dims (or is above ``limit``, a store's dim)."""
    if dim is None:
        return
    usable = [d for d in encoder.dims if limit is None or d <= limit]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in usable:
        default = "the store's dim" if limit is not None else "the full dim"
        raise InputError(f"dim {dim!r} is not available; use one of {usable} (or None: {default}).")


class MusesEmbedding(BaseEmbedding):
    """A MuSES encoder as a LlamaIndex embedding model.

    Texts (documents, nodes) are embedded at ``scale``: ``document`` (default; one vector per text, pooled over the
    whole text, windowed rather than truncated when it is long) or ``sentence`` (the text encoded on its own, as the
    base sentence-transformers model would). Queries are always embedded with
    :meth:`~muses.MultiScaleEncoder.encode_queries`, which prepends the model's query prompt. Vectors are the
    L2-normalised ``dim``-prefix (Matryoshka; default: the full dim).

    Args:
        encoder: a loaded :class:`~muses.MultiScaleEncoder` to use (then ``model_name`` is only a label).
        model_name: without ``encoder``: a saved or exported MuSES folder, a sentence-transformers folder or hub
            name (wrapped with fresh heads, see :meth:`~muses.MultiScaleEncoder.from_base`), or ``default`` (the
            bundled all-MiniLM-L6-v2).
        scale: ``document`` or ``sentence``, for texts.
        dim: a Matryoshka prefix of the model (``encoder.dims``), or None for the full dim.
        embed_batch_size: texts per encoder call (also the encoder's transformer batch size).

    Raises:
        InputError: an unknown scale or a dim the model does not have.
    """

    model_name: str = Field(default=DEFAULT_BASE, description="the MuSES model: a folder, a hub name or 'default'")
    scale: EmbeddingScale = Field(default="document", description="the scale texts are embedded at")
    dim: int | None = Field(default=None, description="Matryoshka dim (None: the model's full dim)")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="texts per encoder call")

    _encoder: MultiScaleEncoder = PrivateAttr()

    def __init__(
        self,
        encoder: MultiScaleEncoder | None = None,
        model_name: str | None = None,
        scale: EmbeddingScale = "document",
        dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        if scale not in EMBEDDING_SCALES:
            raise InputError(f"unknown scale {scale!r} for MusesEmbedding; use one of {', '.join(EMBEDDING_SCALES)}.")
        if encoder is not None and not isinstance(encoder, MultiScaleEncoder):
            raise InputError(
                f"encoder must be a muses.MultiScaleEncoder, not a {type(encoder).__name__}; or give model_name."
            )
        if encoder is None:
            encoder = MultiScaleEncoder.from_base(model_name or DEFAULT_BASE)  # a saved MuSES folder loads as saved
        _check_dim(dim, encoder)
        name = model_name or encoder.base_name or DEFAULT_BASE
        super().__init__(model_name=name, scale=scale, dim=dim, **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex records for this class."""
        return "MusesEmbedding"

    @property
    def encoder(self) -> MultiScaleEncoder:
        """The wrapped encoder."""
        return self._encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode_queries([query], dim=self.dim)[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)  # the encoder is synchronous (CPU/GPU bound)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        batch = self.embed_batch_size
        if self.scale == "sentence":
            return [v.tolist() for v in self._encoder.encode_sentences(texts, dim=self.dim, batch_size=batch)]
        embs = self._encoder.encode_documents(texts, scales=("document",), dim=self.dim, batch_size=batch)
        return [e.document.tolist() for e in embs]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._get_text_embeddings(texts)


def to_store_filters(filters: Mapping[str, Any] | MetadataFilters | None) -> dict[str, Any] | None:
    """A store filter ``{key: value}`` (all must match) from a mapping or from LlamaIndex ``MetadataFilters`` made
    of exact-match filters (``ExactMatchFilter``, or ``MetadataFilter`` with operator ``==``) joined by ``and``.

    Raises:
        InputError: another operator or condition, nested filters, or one key asked to equal two values.
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        return dict(filters)
    if isinstance(filters, MetadataFilter):
        filters = MetadataFilters(filters=[filters])
    if not isinstance(filters, MetadataFilters):
        raise InputError(
            f"filters must be a {{key: value}} dict or llama-index MetadataFilters, not a {type(filters).__name__}."
        )
    supported = "the store supports exact matches joined by 'and' ({key: value} or ExactMatchFilter / MetadataFilter"
    supported += " with operator '==', condition 'and')"
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise InputError(f"filter condition {filters.condition.value!r} is not supported; {supported}.")
    if filters.condition == FilterCondition.NOT:
        raise InputError(f"filter condition 'not' is not supported; {supported}.")
    out: dict[str, Any] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            raise InputError(f"nested MetadataFilters are not supported; {supported}.")
        if f.operator != FilterOperator.EQ:
            raise InputError(f"filter operator {f.operator.value!r} on {f.key!r} is not supported; {supported}.")
        if f.key in out and out[f.key] != f.value:
            raise InputError(f"filter key {f.key!r} is asked to equal both {out[f.key]!r} and {f.value!r}; give one.")
        out[f.key] = f.value
    return out


class MusesRetriever(BaseRetriever):
    """A LlamaIndex retriever over a MuSES store: sentences found by zoom, or whole documents.

    Each result is a ``NodeWithScore`` whose ``TextNode`` holds the text and the metadata of
    :mod:`muses.integrations.hits` (``document_id``, ``span``, ``highlights``, ``scores``...); its id is
    ``"{document_id}#{sentence_index}"`` for a sentence and the document id for a document, its source node
    (``node.ref_doc_id``) is the document, and ``start_char_idx`` / ``end_char_idx`` locate the text in it.

    Args:
        store: the :class:`~muses.store.MemoryStore` to search.
        k: results per query.
        unit: ``sentence`` (zoom into the top ``k`` documents, keep the best ``k_sentences`` sentences of each, return
            the first ``k``) or ``document`` (the top ``k`` documents at ``scale``).
        scale: ``document`` unit only: ``fusion`` (default), ``document`` or ``token``.
        k_sentences: sentences kept per document (``sentence`` unit).
        dim: a Matryoshka prefix, at most the store's dim (default: the store's dim).
        filters: ``{metadata key: value}`` (all must match), or LlamaIndex ``MetadataFilters`` of exact matches joined
            by ``and``.
        highlight: best-matching word groups highlighted per sentence (``sentence`` unit).
        visible_metadata: the metadata keys an LLM or embed model sees when LlamaIndex formats a node
            (``node.get_content(MetadataMode.LLM)``); the other keys are listed in the node's
            ``excluded_llm_metadata_keys`` / ``excluded_embed_metadata_keys``.

    Raises:
        InputError: an unknown unit or scale, ``k`` or ``k_sentences`` below 1, a negative ``highlight``, a dim the
            store does not have, or filters the store cannot apply.
    """

    def __init__(
        self,
        store: MemoryStore,
        *,
        k: int = 4,
        unit: Unit = "sentence",
        scale: str = "fusion",
        k_sentences: int = 2,
        dim: int | None = None,
        filters: Mapping[str, Any] | MetadataFilters | None = None,
        highlight: int = 3,
        visible_metadata: Sequence[str] = VISIBLE_METADATA,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if unit not in UNITS:
            raise InputError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}.")
        if scale not in DOCUMENT_SCALES:
            raise InputError(
                f"unknown scale {scale!r}; use one of {', '.join(DOCUMENT_SCALES)} (the ranking of unit='document'; "
                "unit='sentence' returns sentences by zoom)."
            )
        for name, value, least in (("k", k, 1), ("k_sentences", k_sentences, 1), ("highlight", highlight, 0)):
            check_count(name, value, least)
        if not hasattr(store, "zoom") or not hasattr(store, "search"):
            raise InputError(f"store must be a muses.store.MemoryStore, not a {type(store).__name__}.")
        _check_dim(dim, store.encoder, store.dim)
        if scale == "token" and unit == "document" and not store.config.token_pool:
            raise InputError("this store keeps no token vectors (token_pool = 0); use scale 'fusion' or 'document'.")
        self.store = store
        self.k = k
        self.unit: Unit = unit
        self.scale = scale
        self.k_sentences = k_sentences
        self.dim = dim
        self.filters = to_store_filters(filters)
        self.highlight = highlight
        self.visible_metadata = tuple(visible_metadata)
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        check_filters(self.filters)  # the store's own check, now rather than at the first query

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        results = retrieve(
            self.store,
            query_bundle.query_str,
            k=self.k,
            unit=self.unit,
            scale=self.scale,
            k_sentences=self.k_sentences,
            dim=self.dim,
            filters=self.filters,
            highlight=self.highlight,
        )
        return [NodeWithScore(node=self._node(r), score=r.score) for r in results]

    def _node(self, r: Retrieved) -> TextNode:
        meta = r.metadata
        doc_id = meta["document_id"]
        node_id = doc_id if meta["sentence_index"] is None else f"{doc_id}#{meta['sentence_index']}"
        hidden = [key for key in meta if key not in self.visible_metadata or meta[key] in ({}, None)]
        return TextNode(
            text=r.text,
            id_=node_id,
            metadata=meta,
            excluded_llm_metadata_keys=hidden,
            excluded_embed_metadata_keys=list(hidden),
            start_char_idx=meta["span"][0],
            end_char_idx=meta["span"][1],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
        )

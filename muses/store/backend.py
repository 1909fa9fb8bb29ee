"""The interface every store backend offers: what the CLI (``muses index``, ``muses serve``) and the HTTP service use.

Two backends implement it:

- :class:`~muses.store.MemoryStore`: the embedded default, a folder with SQLite and FAISS (one machine).
- :class:`~muses.store.qdrant.QdrantStore`: a Qdrant server or cluster (or qdrant-client's local mode for tests),
  for corpora that outgrow one machine.

Both take the same documents (strings, :class:`~muses.types.Document` objects or ``{"id", "text", "metadata"}``),
the same queries (text, or an :class:`~muses.store.EncodedQuery` with ``vector [D]`` and ``tokens [t, D]``) and
the same filters (``{metadata key: value}``, all must match, checked by :func:`~muses.validation.check_filters`),
and return the same :class:`~muses.store.Hit` / :class:`~muses.store.ZoomResult` objects. A test checks that they
rank the same documents, sentences and tokens with the same scores on the same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from muses.encoder import MultiScaleEncoder
from muses.store.base import EncodedQuery, Hit, StoreConfig, ZoomResult
from muses.types import Document, MultiScaleEmbedding, SearchScale

__all__ = ["StoreBackend"]


@runtime_checkable
class StoreBackend(Protocol):
    """A multi-scale document store: add, search at document / sentence / token / fusion scale, zoom.

    Attributes:
        encoder: the model whose vectors the store holds (queries are encoded with it).
        model_name: how the store records its model (a name or an absolute folder).
        fingerprint: the model's weights fingerprint (:meth:`MultiScaleEncoder.fingerprint`).
        dim: the stored Matryoshka dim ``D``; searches may use any smaller dim the store offers.
        config: the store's :class:`StoreConfig` (fixed at creation).
    """

    encoder: MultiScaleEncoder
    model_name: str
    fingerprint: str
    dim: int
    config: StoreConfig

    @property
    def path(self) -> object:
        """Where the store lives (a folder, or a Qdrant location), for messages."""
        ...

    def add(
        self, items: Iterable[str | Document | Mapping[str, Any]], upsert: bool = False, batch_size: int = 32
    ) -> list[str]:
        """Encode and store documents; an id already stored is an error unless ``upsert``. Returns the ids."""
        ...

    def add_encoded(self, embs: Sequence[MultiScaleEmbedding], upsert: bool = False) -> list[str]:
        """Store documents encoded elsewhere (vectors ``[D]``, ``[S, D]``, tokens ``[T, D]`` at the store's dim)."""
        ...

    def update(self, items: Iterable[str | Document | Mapping[str, Any]], batch_size: int = 32) -> list[str]:
        """Add or replace documents by id."""
        ...

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (all or nothing: an unknown id deletes none); returns how many."""
        ...

    def get(self, doc_id: str) -> dict[str, Any]:
        """A stored document: ``{"id", "text", "metadata", "sentences": [[start, end], ...]}``."""
        ...

    def __len__(self) -> int:
        """Number of stored documents."""
        ...

    def encode_queries(self, texts: Sequence[str], with_tokens: bool | None = None) -> list[EncodedQuery]:
        """Encode queries in one batch: ``vector [D]`` each, and ``tokens [t, D]`` when the store keeps tokens."""
        ...

    def search(
        self,
        query: str | EncodedQuery,
        scale: SearchScale = "document",
        k: int = 10,
        dim: int | None = None,
        filters: Mapping[str, Any] | None = None,
        zoom_docs: int | None = None,
    ) -> list[Hit]:
        """The top ``k`` hits at ``scale`` (``document``, ``sentence``, ``token`` or ``fusion``), best first."""
        ...

    def zoom(
        self,
        query: str | EncodedQuery,
        k_docs: int = 3,
        k_sentences: int = 2,
        dim: int | None = None,
        filters: Mapping[str, Any] | None = None,
        highlight: int = 3,
    ) -> list[ZoomResult]:
        """Top documents, their best sentences, and the matching words inside them (character spans)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counts, model, dim and settings, JSON-serialisable."""
        ...

    def check_settings(self, model: str | None = None, **settings: Any) -> None:
        """Refuse a ``model`` or settings (``dim``, :class:`StoreConfig` fields) that differ from the store's."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...

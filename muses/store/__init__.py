"""The multi-scale memory store: documents, sentences and token groups in SQLite, searched with FAISS."""

from muses.store.index import INDEX_KINDS, IndexKind, VectorIndex
from muses.store.store import (
    SEARCH_SCALES,
    EncodedQuery,
    Hit,
    MemoryStore,
    StoreConfig,
    StoreExistsError,
    ZoomResult,
)

__all__ = [
    "INDEX_KINDS",
    "SEARCH_SCALES",
    "EncodedQuery",
    "Hit",
    "IndexKind",
    "MemoryStore",
    "StoreConfig",
    "StoreExistsError",
    "VectorIndex",
    "ZoomResult",
]

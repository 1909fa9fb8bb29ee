"""The multi-scale memory store: documents, sentences and token groups in SQLite, searched with FAISS.

Needs the ``store`` extra (faiss-cpu, filelock): ``pip install 'muses[store]'``. ``QdrantStore`` and
``QdrantConfig`` (the same API on a Qdrant server or cluster, :mod:`muses.store.qdrant`) load on first use and need
the ``qdrant`` extra; both stores implement :class:`StoreBackend`.
"""

from typing import TYPE_CHECKING, Any

from muses.extras import require

require("faiss", "store")
require("filelock", "store")

from muses.store.backend import StoreBackend  # noqa: E402
from muses.store.base import EncodedQuery, Hit, StoreConfig, ZoomResult  # noqa: E402
from muses.store.index import INDEX_KINDS, IndexKind, VectorIndex  # noqa: E402
from muses.store.store import MemoryStore, StoreExistsError  # noqa: E402
from muses.types import SEARCH_SCALES  # noqa: E402

__all__ = [
    "INDEX_KINDS",
    "SEARCH_SCALES",
    "EncodedQuery",
    "Hit",
    "IndexKind",
    "MemoryStore",
    "StoreBackend",
    "StoreConfig",
    "StoreExistsError",
    "VectorIndex",
    "ZoomResult",
]

if TYPE_CHECKING:
    from muses.store.qdrant import QdrantConfig as QdrantConfig
    from muses.store.qdrant import QdrantStore as QdrantStore


def __getattr__(name: str) -> Any:
    """``QdrantStore`` and ``QdrantConfig``, imported on first use (they need the ``qdrant`` extra)."""
    if name in ("QdrantStore", "QdrantConfig"):
        from muses.store import qdrant

        return getattr(qdrant, name)
    raise AttributeError(f"module 'muses.store' has no attribute {name!r}")

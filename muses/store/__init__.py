"""The multi-scale memory store: documents, sentences and token groups in SQLite, searched with FAISS.

Needs the ``store`` extra (faiss-cpu, filelock): ``pip install 'muses[store]'``.
"""

from muses.extras import require

require("faiss", "store")
require("filelock", "store")

from muses.store.index import INDEX_KINDS, IndexKind, VectorIndex  # noqa: E402
from muses.store.store import (  # noqa: E402
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

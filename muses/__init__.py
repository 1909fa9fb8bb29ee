"""MuSES, the Multi-Scale Embedding System.

Token, sentence and document embeddings from one transformer pass over a document, at any Matryoshka dim, from
any sentence-transformers model.

    >>> import muses
    >>> enc = muses.MultiScaleEncoder.from_base()          # bundled all-MiniLM-L6-v2
    >>> [emb] = enc.encode_documents(["Cats purr. Dogs bark."], scales=("document", "sentence"), dim=64)
    >>> emb.document.shape, emb.sentences.shape
    ((64,), (2, 64))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from muses.backends import BACKENDS, Backend
from muses.errors import ConfigError, DataError, InputError, ModelError, MusesError
from muses.text import document_from_sentences, make_document
from muses.types import Document, MultiScaleEmbedding, Span

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``muses.MultiScaleEncoder`` is imported on first use, so that importing a light module of the package (the
    CLI's argument checks, a Ray task's function) does not import torch and transformers (seconds)."""
    if name == "MultiScaleEncoder":
        from muses.encoder import MultiScaleEncoder

        globals()["MultiScaleEncoder"] = MultiScaleEncoder  # later lookups find it (and so do type hints)
        return MultiScaleEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def load(path: str, backend: Backend | None = None, task: str | None = None) -> MultiScaleEncoder:
    """Load a saved or exported MuSES model folder (see :meth:`MultiScaleEncoder.save`, ``muses export``), running
    its transformer on ``backend`` (default: the one recorded in the folder; see :mod:`muses.backends`), with its
    adapter for ``task`` merged in (e.g. ``"similarity"``; see :mod:`muses.adapters.tasks`)."""
    if task is None:
        from muses.encoder import MultiScaleEncoder

        return MultiScaleEncoder.load(path, backend=backend)
    from muses.adapters.tasks import load_for_task

    return load_for_task(path, task, backend=backend)


__all__ = [
    "BACKENDS",
    "Backend",
    "ConfigError",
    "DataError",
    "Document",
    "InputError",
    "ModelError",
    "MultiScaleEmbedding",
    "MultiScaleEncoder",
    "MusesError",
    "Span",
    "document_from_sentences",
    "load",
    "make_document",
]

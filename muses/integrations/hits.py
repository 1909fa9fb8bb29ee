"""Store results as ``(text, score, metadata)``: what a framework's retriever returns, the same for every framework.

A *sentence* result is one sentence of a stored document, found by zoom (top documents, then their best sentences,
then the matching words); a *document* result is a whole document from one scale's search (``fusion`` by default).
Metadata is JSON-serialisable and flat::

    document_id        the stored document's id
    unit               "sentence" or "document"
    scale              the scale that ranked the result ("zoom" for sentences)
    score              the score that ranked it
    scores             {scale: score} for every scale scored (a zoom sentence: its own and its document's)
    sentence_index     the sentence's position in its document (None for a document)
    span               [start, end] character range of the text in the document
    highlights         [[start, end], ...] character ranges of the best-matching words, in the document
    highlighted_words  the text of each highlight
    document_metadata  the metadata stored with the document

Filters are the store's (``{metadata key: value}``, all must match).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from muses.errors import InputError

if TYPE_CHECKING:
    from muses.store import Hit, MemoryStore

Unit = Literal["sentence", "document"]
UNITS: tuple[Unit, ...] = ("sentence", "document")
DOCUMENT_SCALES = ("document", "token", "fusion")


@dataclass(frozen=True)
class Retrieved:
    """One result: its text, the score that ranked it, and the metadata above."""

    text: str
    score: float
    metadata: dict[str, Any]


def hit_metadata(hit: Hit, unit: Unit, scale: str) -> dict[str, Any]:
    """The flat metadata of one store hit (see the module docstring)."""
    start = hit.span[0] if hit.span is not None else 0
    span = list(hit.span) if hit.span is not None else [0, len(hit.text)]
    return {
        "document_id": hit.id,
        "unit": unit,
        "scale": scale,
        "score": float(hit.score),
        "scores": {s: float(v) for s, v in hit.scores.items()},
        "sentence_index": hit.sentence,
        "span": span,
        "highlights": [[int(a), int(b)] for a, b in hit.highlights],
        "highlighted_words": [hit.text[a - start : b - start] for a, b in hit.highlights],
        "document_metadata": dict(hit.metadata),
    }


def retrieve(
    store: MemoryStore,
    query: str,
    k: int = 4,
    unit: Unit = "sentence",
    scale: str = "fusion",
    k_sentences: int = 2,
    dim: int | None = None,
    filters: Mapping[str, Any] | None = None,
    highlight: int = 3,
) -> list[Retrieved]:
    """The top ``k`` results for ``query``, best first.

    Args:
        unit: ``sentence``: zoom into the top ``k`` documents (document scale), take the best ``k_sentences`` of
            each with their ``highlight`` best-matching words, and return the first ``k`` in that order
            (document rank, then sentence score). ``document``: the top ``k`` documents at ``scale``.
        scale: ``document`` unit only: ``document``, ``token`` or ``fusion``.
        dim: a Matryoshka prefix, at most the store's dim (default: the store's dim).
    """
    if unit not in UNITS:
        raise InputError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}.")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    if unit == "document":
        if scale not in DOCUMENT_SCALES:
            raise InputError(f"unknown scale {scale!r} for documents; use one of {', '.join(DOCUMENT_SCALES)}.")
        docs = store.search(query, scale, k=k, dim=dim, filters=filters)  # type: ignore[arg-type]
        return [Retrieved(h.text, float(h.score), hit_metadata(h, "document", scale)) for h in docs]
    results = store.zoom(query, k_docs=k, k_sentences=k_sentences, dim=dim, filters=filters, highlight=highlight)
    sentences = [s for r in results for s in r.sentences][:k]
    return [Retrieved(s.text, float(s.score), hit_metadata(s, "sentence", "zoom")) for s in sentences]

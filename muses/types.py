"""Core data types: documents with character spans, and the multi-scale embeddings of a document.

Shapes use ``S`` for sentences, ``T`` for (content) tokens and ``D`` for the embedding dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Scale = Literal["token", "sentence", "document"]
"""The scales an encoder embeds: every token, every sentence, the whole document."""
SCALES: tuple[Scale, ...] = ("token", "sentence", "document")
"""Every :data:`Scale`, in the order of the heads (a saved model's ``heads.{scale}`` weights)."""
SearchScale = Literal["document", "sentence", "token", "fusion"]
"""What a store search ranks: one scale, or ``fusion`` (the three scales' scores combined)."""
SEARCH_SCALES: tuple[SearchScale, ...] = ("document", "sentence", "token", "fusion")


@dataclass(frozen=True, order=True)
class Span:
    """A half-open character range ``text[start:end]``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid span [{self.start}, {self.end})")

    def slice(self, text: str) -> str:
        """Return the text this span covers."""
        return text[self.start : self.end]

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class Document:
    """A text with its sentences (and paragraphs) as character spans into ``text``.

    Build one with :func:`muses.text.make_document` (segments the text) or
    :func:`muses.text.document_from_sentences` (keeps the caller's sentences).

    Attributes:
        text: the full text.
        sentences: sentence spans, sorted, non-overlapping, each non-empty.
        paragraphs: paragraph spans (at least one, covering all sentences).
        sentence_paragraph: index of the paragraph of each sentence, length ``S``.
        id: optional document id (kept through encoding, storage and evaluation).
        metadata: free-form JSON-serialisable metadata.
    """

    text: str
    sentences: list[Span]
    paragraphs: list[Span]
    sentence_paragraph: list[int]
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def sentence_texts(self) -> list[str]:
        """The text of each sentence, in order."""
        return [s.slice(self.text) for s in self.sentences]


@dataclass
class MultiScaleEmbedding:
    """The linked token, sentence and document embeddings of one document, from one transformer pass.

    All vectors are L2-normalised at dim ``D`` (a Matryoshka prefix of the full embedding).

    Attributes:
        document: ``[D]`` the document vector.
        sentences: ``[S, D]`` one vector per sentence of ``doc.sentences``.
        sentence_token_ranges: ``[S, 2]`` int, the half-open range of content-token indices of each sentence
            (``start == end`` if a sentence has no token, which only happens for pure whitespace).
        tokens: ``[T, D]`` content-token vectors (no special tokens), or None unless requested.
        token_offsets: ``[T, 2]`` int, character offsets of each token into ``doc.text``.
        token_sentence_ids: ``[T]`` int, the sentence index of each token, ``-1`` for a token outside all sentences.
        doc: the :class:`Document` these vectors belong to.
        dim: the embedding dim ``D``.
        n_windows: how many transformer windows the document took (1 unless it was longer than the model's
            maximum sequence length).
    """

    document: np.ndarray
    sentences: np.ndarray
    sentence_token_ranges: np.ndarray
    token_offsets: np.ndarray
    token_sentence_ids: np.ndarray
    doc: Document
    dim: int
    n_windows: int = 1
    tokens: np.ndarray | None = None

    @property
    def sentence_spans(self) -> list[Span]:
        """Character spans of the sentences (same order as ``sentences``)."""
        return self.doc.sentences

    def index_record(self) -> dict[str, Any]:
        """A JSON-serialisable record of this document's structure (ids, spans, token offsets), no vectors."""
        return {
            "id": self.doc.id,
            "text": self.doc.text,
            "metadata": self.doc.metadata,
            "sentences": [[s.start, s.end] for s in self.doc.sentences],
            "paragraphs": [[p.start, p.end] for p in self.doc.paragraphs],
            "sentence_paragraph": list(self.doc.sentence_paragraph),
            "sentence_token_ranges": self.sentence_token_ranges.tolist(),
            "token_offsets": self.token_offsets.tolist(),
            "token_sentence_ids": self.token_sentence_ids.tolist(),
            "n_windows": self.n_windows,
            "dim": self.dim,
        }

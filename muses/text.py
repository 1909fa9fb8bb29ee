"""Text model: paragraphs and sentences as character spans, and token-to-sentence alignment.

Sentences are found by a real splitter library (blingfire by default, pysbd or sentencex on request; see
``docs/splitters.md`` for the measurement behind the default). Callers may also pass their own sentences.

Example::

    >>> doc = make_document("Roots anchor a plant. They absorb water.\\n\\nLeaves make sugar.")
    >>> doc.sentence_texts()
    ['Roots anchor a plant.', 'They absorb water.', 'Leaves make sugar.']
    >>> doc.sentences[1], doc.sentence_paragraph
    (Span(start=22, end=40), [0, 0, 1])
    >>> document_from_sentences(["Cats purr.", "Dogs bark."]).text
    'Cats purr. Dogs bark.'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from muses.errors import InputError
from muses.types import Document, Span
from muses.validation import check_utf8

Splitter = Callable[[str], list[tuple[int, int]]]
"""A function from a text to sentence character spans ``[(start, end), ...]``."""

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def _blingfire(text: str) -> list[tuple[int, int]]:
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [(int(s), int(e)) for s, e in offsets]


def _pysbd(text: str) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in _pysbd_segmenter().segment(text)]


@lru_cache(maxsize=1)
def _pysbd_segmenter() -> Any:
    try:
        import pysbd
    except ImportError as e:
        raise InputError("splitter 'pysbd' needs the pysbd package: pip install pysbd") from e
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def _sentencex(text: str) -> list[tuple[int, int]]:
    try:
        import sentencex
    except ImportError as e:
        raise InputError("splitter 'sentencex' needs the sentencex package: pip install sentencex") from e
    spans: list[tuple[int, int]] = []
    pos = 0
    for sent in sentencex.segment("en", text):
        piece = sent.strip()
        if not piece:
            continue
        start = text.find(piece, pos)
        if start < 0:  # the splitter changed the text; fall back to the running position
            start = pos
        spans.append((start, start + len(piece)))
        pos = start + len(piece)
    return spans


SPLITTERS: dict[str, Splitter] = {"blingfire": _blingfire, "pysbd": _pysbd, "sentencex": _sentencex}
DEFAULT_SPLITTER = "blingfire"


def get_splitter(splitter: str | Splitter = DEFAULT_SPLITTER) -> Splitter:
    """Return a splitter function by name (``blingfire``, ``pysbd``, ``sentencex``) or pass a callable through."""
    if callable(splitter):
        return splitter
    try:
        return SPLITTERS[splitter]
    except KeyError:
        raise InputError(f"Unknown sentence splitter {splitter!r}; use one of {', '.join(SPLITTERS)}.") from None


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` so that it neither starts nor ends with whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def paragraph_spans(text: str) -> list[Span]:
    """Split ``text`` at blank lines. Spans exclude surrounding whitespace; empty paragraphs are dropped."""
    spans: list[Span] = []
    pos = 0
    for m in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = m.start() if m else len(text)
        s, e = _strip_span(text, pos, end)
        if e > s:
            spans.append(Span(s, e))
        if m:
            pos = m.end()
    return spans


def make_document(
    text: str,
    id: str | None = None,
    metadata: dict[str, Any] | None = None,
    splitter: str | Splitter = DEFAULT_SPLITTER,
) -> Document:
    """Segment ``text`` into paragraphs (blank lines) and sentences (``splitter``) and return a Document.

    Every non-whitespace character of ``text`` lies in exactly one sentence: text that the splitter leaves out is
    kept as its own sentence, so nothing is silently dropped.

    Raises:
        InputError: if ``text`` is not a string, or is empty or whitespace-only.
    """
    _check_text(text, "document" if id is None else f"document {id!r}")
    split = get_splitter(splitter)
    sentences: list[Span] = []
    sentence_paragraph: list[int] = []
    paragraphs = paragraph_spans(text)
    for p_idx, para in enumerate(paragraphs):
        pos = para.start
        for s, e in split(para.slice(text)):
            s, e = _strip_span(text, para.start + s, para.start + e)
            if e <= s or s < pos:
                continue
            gs, ge = _strip_span(text, pos, s)  # text the splitter skipped: keep it as a sentence
            if ge > gs:
                sentences.append(Span(gs, ge))
                sentence_paragraph.append(p_idx)
            sentences.append(Span(s, min(e, para.end)))
            sentence_paragraph.append(p_idx)
            pos = min(e, para.end)
        gs, ge = _strip_span(text, pos, para.end)
        if ge > gs:
            sentences.append(Span(gs, ge))
            sentence_paragraph.append(p_idx)
    return Document(text, sentences, paragraphs, sentence_paragraph, id=id, metadata=dict(metadata or {}))


def document_from_sentences(
    sentences: Sequence[str],
    id: str | None = None,
    metadata: dict[str, Any] | None = None,
    separator: str = " ",
) -> Document:
    """Build a Document from pre-split sentences, joined by ``separator``; one paragraph.

    Raises:
        InputError: if there are no sentences, or one is not a string or is empty/whitespace-only.
    """
    if isinstance(sentences, str):
        raise InputError("document_from_sentences takes a list of sentences, not one string; use make_document.")
    if not sentences:
        raise InputError(f"document {id!r} has no sentences; pass at least one non-empty sentence.")
    spans: list[Span] = []
    parts: list[str] = []
    pos = 0
    for i, sent in enumerate(sentences):
        _check_text(sent, f"sentence {i} of document {id!r}")
        stripped = sent.strip()
        if parts:
            parts.append(separator)
            pos += len(separator)
        spans.append(Span(pos, pos + len(stripped)))
        parts.append(stripped)
        pos += len(stripped)
    text = "".join(parts)
    return Document(text, spans, [Span(0, len(text))], [0] * len(spans), id=id, metadata=dict(metadata or {}))


def word_window(text: str, fraction: float, start: float, min_words: int = 4) -> str:
    """A contiguous run of ``fraction`` of ``text``'s whitespace words (at least ``min_words``, at most all),
    beginning ``start`` (in [0, 1)) of the way through the possible starts: part of a sentence as a query, like a
    question that shares only some words with the sentence that answers it."""
    words = text.split()
    n = min(len(words), max(min_words, round(fraction * len(words))))
    first = min(int(start * (len(words) - n + 1)), len(words) - n)
    return " ".join(words[first : first + n])


def _check_text(text: object, what: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{what} is a {type(text).__name__}, not a string. Pass text as str.")
    if not text.strip():
        raise InputError(
            f"{what} is empty or whitespace-only. MuSES has nothing to embed there: drop it or replace it "
            "with text before encoding."
        )
    check_utf8(text, what)


def as_documents(items: Iterable[str | Document], splitter: str | Splitter = DEFAULT_SPLITTER) -> list[Document]:
    """Turn strings into Documents (segmenting them) and check Documents; errors name the item's index."""
    docs: list[Document] = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            if not item.sentences:
                raise InputError(f"item {i} (document {item.id!r}) has no sentences.")
            docs.append(item)
        elif isinstance(item, str):
            _check_text(item, f"item {i}")
            docs.append(make_document(item, splitter=splitter))
        else:
            raise InputError(f"item {i} is a {type(item).__name__}, not a string or Document.")
    return docs


def check_texts(items: Sequence[object], what: str = "item") -> list[str]:
    """Check that every item is a non-empty string; errors name the item's index."""
    if isinstance(items, str):
        raise InputError(f"expected a list of strings, got one string; wrap it in a list: [{items[:30]!r}...]")
    for i, item in enumerate(items):
        _check_text(item, f"{what} {i}")
    return list(items)  # type: ignore[arg-type]


def align_tokens_to_sentences(offsets: np.ndarray, sentences: Sequence[Span]) -> tuple[np.ndarray, np.ndarray]:
    """Map tokens to the sentences that contain them, through the tokenizer's character offsets.

    A token belongs to the sentence containing its first character.

    Args:
        offsets: ``[T, 2]`` int character offsets of the content tokens, in text order.
        sentences: ``S`` sorted, non-overlapping sentence spans.

    Returns:
        ``token_sentence_ids`` ``[T]`` (``-1`` for a token outside every sentence) and
        ``sentence_token_ranges`` ``[S, 2]``, the half-open token index range of each sentence.
    """
    starts = np.array([s.start for s in sentences], dtype=np.int64)
    ends = np.array([s.end for s in sentences], dtype=np.int64)
    tok_start = offsets[:, 0].astype(np.int64)
    idx = np.searchsorted(starts, tok_start, side="right") - 1
    inside = (idx >= 0) & (tok_start < ends[np.clip(idx, 0, None)])
    ids = np.where(inside, idx, -1)
    # tokens are in text order and sentences sorted, so the assigned ids are non-decreasing
    valid = np.flatnonzero(ids >= 0)
    sent = np.arange(len(sentences))
    left = np.searchsorted(ids[valid], sent, side="left")
    right = np.searchsorted(ids[valid], sent, side="right")
    ranges = np.zeros((len(sentences), 2), dtype=np.int64)
    has = right > left
    ranges[has, 0] = valid[left[has]]
    ranges[has, 1] = valid[right[has] - 1] + 1
    return ids, ranges

"""Text model: sentence and paragraph spans, pre-split sentences, token alignment, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from muses.errors import InputError
from muses.text import (
    align_tokens_to_sentences,
    as_documents,
    document_from_sentences,
    make_document,
    paragraph_spans,
)
from muses.types import Span

TEXT = "First paragraph here. It has two sentences!\n\n  Second paragraph: one sentence only.  \n"


def test_sentences_and_paragraphs_are_spans_into_the_text() -> None:
    doc = make_document(TEXT)
    assert doc.sentence_texts() == [
        "First paragraph here.",
        "It has two sentences!",
        "Second paragraph: one sentence only.",
    ]
    assert [p.slice(TEXT) for p in doc.paragraphs] == [
        "First paragraph here. It has two sentences!",
        "Second paragraph: one sentence only.",
    ]
    assert doc.sentence_paragraph == [0, 0, 1]


@pytest.mark.parametrize("splitter", ["blingfire", "pysbd", "sentencex"])
def test_every_non_space_character_is_in_exactly_one_sentence(splitter: str) -> None:
    text = "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday... Then?   Yes!\n\nNew para β-catenin rises."
    doc = make_document(text, splitter=splitter)
    covered = np.zeros(len(text), dtype=int)
    for s in doc.sentences:
        covered[s.start : s.end] += 1
    for i, ch in enumerate(text):
        assert covered[i] <= 1
        if not ch.isspace():
            assert covered[i] == 1, (splitter, i, ch)
    assert doc.sentences == sorted(doc.sentences)


def test_pre_split_sentences_are_kept_exactly() -> None:
    doc = document_from_sentences(["  One.", "Two, with  spaces.", "Three"], id="d")
    assert doc.sentence_texts() == ["One.", "Two, with  spaces.", "Three"]
    assert doc.text == "One. Two, with  spaces. Three"


def test_paragraph_spans_drop_blank_paragraphs() -> None:
    assert paragraph_spans("a\n\n\n \n b") == [Span(0, 1), Span(7, 8)]


def test_tokens_map_to_their_sentences() -> None:
    sentences = [Span(0, 10), Span(11, 20)]
    offsets = np.array([[0, 3], [4, 10], [11, 15], [16, 19], [19, 20]])
    ids, ranges = align_tokens_to_sentences(offsets, sentences)
    assert ids.tolist() == [0, 0, 1, 1, 1]
    assert ranges.tolist() == [[0, 2], [2, 5]]


def test_sentence_without_tokens_gets_empty_range() -> None:
    ids, ranges = align_tokens_to_sentences(np.array([[0, 2]]), [Span(0, 2), Span(3, 4)])
    assert ids.tolist() == [0]
    assert ranges.tolist() == [[0, 1], [0, 0]]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["ok text", ""], "item 1 is empty or whitespace-only"),
        (["ok text", " \n\t "], "item 1 is empty or whitespace-only"),
        (["ok", 42], "item 1 is a int, not a string"),
        ([None], "item 0 is a NoneType"),
    ],
)
def test_bad_documents_name_the_item(items: list[object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        as_documents(items)  # type: ignore[arg-type]


def test_bad_pre_split_sentences() -> None:
    with pytest.raises(InputError, match="has no sentences"):
        document_from_sentences([])
    with pytest.raises(InputError, match="sentence 1 of document 'x' is empty"):
        document_from_sentences(["fine", "  "], id="x")
    with pytest.raises(InputError, match="not one string"):
        document_from_sentences("a string")  # type: ignore[arg-type]


def test_unknown_splitter() -> None:
    with pytest.raises(InputError, match="Unknown sentence splitter 'nltk'"):
        make_document("Some text.", splitter="nltk")

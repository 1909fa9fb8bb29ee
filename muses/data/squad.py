"""SQuAD v1.1-format question answering data: articles > paragraphs (contexts) > questions > answer spans.

Local files:

- ``squad``: ``<data_dir>/squad/dev-v1.1.reconstructed.json`` (SQuAD v1.1 dev, rebuilt: about 12% of the
  ``answer_start`` offsets were inferred), with ``dev-v1.1.reconstructed.ambiguous_answer_starts.tsv``
  listing the answers whose offset is uncertain (columns ``id, answer_index, n_occurrences_in_context,
  answer_start_chosen, method, answer_text``): :attr:`SquadDataset.ambiguous` holds them as
  ``(question id, answer index)`` pairs;
- ``xquad``: ``<data_dir>/xquad/xquad.en.json`` (XQuAD English, a 1190-question subset of SQuAD v1.1 dev
  with the original offsets; nothing is ambiguous).

Every answer span is checked: ``context[answer_start:answer_start + len(text)] == text``.
Hub (``squad`` only): ``rajpurkar/squad``, ``validation`` split (the official offsets; nothing is ambiguous).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muses.data.paths import require_file, resolve_data_dir
from muses.errors import DataError

FILES = {
    "squad": ("squad", "dev-v1.1.reconstructed.json"),
    "xquad": ("xquad", "xquad.en.json"),
}
AMBIGUOUS_SUFFIX = ".ambiguous_answer_starts.tsv"
AMBIGUOUS_COLUMNS = (
    "id",
    "answer_index",
    "n_occurrences_in_context",
    "answer_start_chosen",
    "method",
    "answer_text",
)
HUB_NAME = "rajpurkar/squad"


@dataclass(frozen=True)
class SquadAnswer:
    """One gold answer span: ``context[answer_start:answer_start + len(text)] == text``."""

    text: str
    answer_start: int

    @property
    def answer_end(self) -> int:
        return self.answer_start + len(self.text)


@dataclass(frozen=True)
class SquadQuestion:
    """A question with its gold answers (several annotators; answers may repeat)."""

    id: str
    question: str
    answers: tuple[SquadAnswer, ...]


@dataclass(frozen=True)
class SquadParagraph:
    """A context paragraph and the questions asked about it."""

    context: str
    questions: tuple[SquadQuestion, ...]


@dataclass(frozen=True)
class SquadArticle:
    """A Wikipedia article: a title and its paragraphs, in order."""

    title: str
    paragraphs: tuple[SquadParagraph, ...]


@dataclass(frozen=True)
class SquadDataset:
    """A SQuAD-format dataset.

    Attributes:
        articles: the articles, in file order.
        name: ``"squad"`` or ``"xquad"``.
        source: the file (or hub dataset) it was read from.
        ambiguous: ``(question id, answer index)`` pairs whose ``answer_start`` is uncertain; exclude them
            when an exact offset matters.
    """

    articles: tuple[SquadArticle, ...]
    name: str
    source: str
    ambiguous: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def paragraphs(self) -> Iterator[tuple[SquadArticle, SquadParagraph]]:
        """Yield ``(article, paragraph)`` for every paragraph, in order."""
        for article in self.articles:
            for paragraph in article.paragraphs:
                yield article, paragraph

    def questions(self) -> Iterator[tuple[SquadParagraph, SquadQuestion]]:
        """Yield ``(paragraph, question)`` for every question, in order."""
        for _, paragraph in self.paragraphs():
            for question in paragraph.questions:
                yield paragraph, question

    def unambiguous_answers(self, question: SquadQuestion) -> list[SquadAnswer]:
        """The answers of ``question`` whose offset is certain (not in :attr:`ambiguous`)."""
        return [a for i, a in enumerate(question.answers) if (question.id, i) not in self.ambiguous]

    @property
    def num_paragraphs(self) -> int:
        return sum(len(a.paragraphs) for a in self.articles)

    @property
    def num_questions(self) -> int:
        return sum(len(p.questions) for a in self.articles for p in a.paragraphs)


def load_squad(name: str = "squad", data_dir: str | os.PathLike[str] | None = None, hub: bool = False) -> SquadDataset:
    """Load SQuAD v1.1 dev (``"squad"``) or XQuAD English (``"xquad"``) from ``data_dir``, or SQuAD from the
    hub (``hub=True``)."""
    if name not in FILES:
        raise DataError(f"Unknown SQuAD dataset {name!r}; use one of {', '.join(FILES)}.")
    if hub:
        if name != "squad":
            raise DataError("Only 'squad' can be loaded from the hub; load 'xquad' with --data-dir.")
        return _load_squad_hub()
    folder, filename = FILES[name]
    path = require_file(resolve_data_dir(data_dir) / folder / filename, f"SQuAD ({name})")
    dataset = read_squad_json(path, name=name)
    tsv = path.with_name(path.stem + AMBIGUOUS_SUFFIX)
    if tsv.is_file():
        ambiguous = read_ambiguous_tsv(tsv)
        _check_ambiguous(ambiguous, dataset, tsv)
        dataset = SquadDataset(dataset.articles, dataset.name, dataset.source, ambiguous)
    return dataset


# --- SQuAD JSON ---------------------------------------------------------------------------------------------


def read_squad_json(path: Path, name: str = "squad") -> SquadDataset:
    """Read a SQuAD v1.1 JSON file; bad JSON, a bad structure or a misplaced answer span raise a DataError."""
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}).") from None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a SQuAD object {{'data': [articles], 'version': ...}}.")
    articles = tuple(_parse_article(a, f"{path}: article {i}") for i, a in enumerate(data))
    return SquadDataset(articles, name=name, source=str(path))


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} is missing or has the wrong type.")
    return value


def _parse_article(raw: Any, where: str) -> SquadArticle:
    title = _require(raw, "title", str, where)
    paragraphs = _require(raw, "paragraphs", list, where)
    return SquadArticle(
        title,
        tuple(_parse_paragraph(p, f"{where} ({title!r}), paragraph {j}") for j, p in enumerate(paragraphs)),
    )


def _parse_paragraph(raw: Any, where: str) -> SquadParagraph:
    context = _require(raw, "context", str, where)
    qas = _require(raw, "qas", list, where)
    return SquadParagraph(context, tuple(_parse_question(q, context, where) for q in qas))


def _parse_question(raw: Any, context: str, where: str) -> SquadQuestion:
    qid = _require(raw, "id", str, where)
    where = f"{where}, question {qid}"
    question = _require(raw, "question", str, where)
    answers = tuple(_parse_answer(a, context, where) for a in _require(raw, "answers", list, where))
    return SquadQuestion(qid, question, answers)


def _parse_answer(raw: Any, context: str, where: str) -> SquadAnswer:
    answer = SquadAnswer(_require(raw, "text", str, where), _require(raw, "answer_start", int, where))
    if answer.answer_start < 0 or context[answer.answer_start : answer.answer_end] != answer.text:
        raise DataError(
            f"{where}: answer {answer.text!r} is not at answer_start={answer.answer_start} "
            f"of its context (found {context[answer.answer_start : answer.answer_end]!r})."
        )
    return answer


# --- ambiguous offsets --------------------------------------------------------------------------------------


def read_ambiguous_tsv(path: Path) -> frozenset[tuple[str, int]]:
    """Read the ambiguous-offsets TSV (with a header) into ``(question id, answer index)`` pairs."""
    pairs: set[tuple[str, int]] = set()
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(header) != AMBIGUOUS_COLUMNS:
            raise DataError(f"{path}:1: expected the header {' '.join(AMBIGUOUS_COLUMNS)!r}, got {header!r}.")
        for row in reader:
            pairs.add(_parse_ambiguous_row(row, f"{path}:{reader.line_num}"))
    return frozenset(pairs)


def _parse_ambiguous_row(row: list[str], where: str) -> tuple[str, int]:
    if len(row) != len(AMBIGUOUS_COLUMNS):
        raise DataError(f"{where}: expected {len(AMBIGUOUS_COLUMNS)} tab-separated fields, got {len(row)}.")
    try:
        index = int(row[1])
    except ValueError:
        raise DataError(f"{where}: answer_index {row[1]!r} is not an integer.") from None
    if not row[0] or index < 0:
        raise DataError(f"{where}: empty id or negative answer_index.")
    return row[0], index


def _check_ambiguous(ambiguous: frozenset[tuple[str, int]], dataset: SquadDataset, tsv: Path) -> None:
    n_answers: Mapping[str, int] = {q.id: len(q.answers) for _, q in dataset.questions()}
    for qid, index in sorted(ambiguous):
        if index >= n_answers.get(qid, 0):
            raise DataError(f"{tsv}: question {qid} answer {index} is not in {dataset.source}.")


# --- hub ----------------------------------------------------------------------------------------------------


def _load_squad_hub() -> SquadDataset:  # pragma: no cover - needs a network
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError("Loading from the hub needs `datasets`: pip install 'muses[data]'.") from e
    rows = load_dataset(HUB_NAME, split="validation")
    grouped: dict[str, dict[str, list[SquadQuestion]]] = {}
    for r in rows:
        answers = r["answers"]
        question = SquadQuestion(
            r["id"],
            r["question"],
            tuple(SquadAnswer(t, int(s)) for t, s in zip(answers["text"], answers["answer_start"], strict=True)),
        )
        grouped.setdefault(r["title"], {}).setdefault(r["context"], []).append(question)
    articles = tuple(
        SquadArticle(title, tuple(SquadParagraph(ctx, tuple(qs)) for ctx, qs in paragraphs.items()))
        for title, paragraphs in grouped.items()
    )
    return SquadDataset(articles, name="squad", source=f"{HUB_NAME} (validation)")

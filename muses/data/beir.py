"""BEIR-format retrieval datasets (e.g. SciFact): a corpus, queries and graded relevance judgements (qrels).

Local layout (``<data_dir>/<name>/``):

- ``corpus.jsonl``: one JSON object a line, ``{"_id", "title", "text", ...}``;
- ``queries.jsonl``: one JSON object a line, ``{"_id", "text", ...}``;
- ``qrels/<split>.tsv``: tab-separated, header ``query-id corpus-id score``, one judgement a line (LF or
  CRLF line endings).

Hub: ``BeIR/<name>`` (configs ``corpus`` and ``queries``) and ``BeIR/<name>-qrels`` (a split per qrels file).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muses.data.paths import require_file, resolve_data_dir
from muses.errors import DataError

QRELS_HEADER = ("query-id", "corpus-id", "score")
DEV_FRACTION = 0.2
"""Share of train queries held out as ``dev`` when a dataset ships no dev qrels (SciFact ships train and test)."""


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR retrieval dataset, with the queries restricted to those judged in ``split``.

    Attributes:
        corpus: doc id -> ``{"title": ..., "text": ...}``, in file order.
        queries: query id -> query text, only the queries that appear in ``qrels``.
        qrels: query id -> doc id -> relevance (``> 0`` is relevant), for :mod:`muses.evaluation.metrics`.
        name: the dataset name, e.g. ``"scifact"``.
        split: the qrels split, e.g. ``"test"``.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str
    split: str = "test"

    def __repr__(self) -> str:
        return (
            f"BeirDataset(name={self.name!r}, split={self.split!r}, corpus={len(self.corpus)} docs, "
            f"queries={len(self.queries)}, qrels={sum(len(d) for d in self.qrels.values())} judgements)"
        )


def load_beir(
    name: str = "scifact",
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    hub: bool = False,
) -> BeirDataset:
    """Load a BEIR dataset from ``<data_dir>/<name>/`` or, with ``hub=True``, from the Hugging Face hub.

    Splits are the qrels files, plus two derived ones when the dataset has no ``dev`` qrels: ``dev`` is a fixed
    20% of the train queries (chosen by a hash of the query id, so it never changes), and ``train-fit`` is the
    rest. Training uses ``train-fit``; fusion weights and model selection use ``dev``; ``test`` is only reported.
    """
    if hub:
        return _derived_split(split, lambda s: _load_beir_hub(name, s))
    folder = resolve_data_dir(data_dir) / name
    if not folder.is_dir():
        raise DataError(f"BEIR dataset {name!r}: folder {folder} is missing. Check --data-dir / the dataset name.")
    if split in ("dev", "train-fit") and not (folder / "qrels" / "dev.tsv").is_file():
        return _derived_split(split, lambda s: read_beir_folder(folder, s, name=name))
    return read_beir_folder(folder, split, name=name)


def is_heldout_dev(query_id: str, fraction: float = DEV_FRACTION) -> bool:
    """Whether a train query belongs to the derived ``dev`` split (a stable hash of its id)."""
    return zlib.crc32(query_id.encode("utf-8")) % 1000 < fraction * 1000


def _derived_split(split: str, load: Callable[[str], BeirDataset]) -> BeirDataset:
    if split not in ("dev", "train-fit"):
        return load(split)
    train = load("train")
    keep = {q for q in train.qrels if is_heldout_dev(q) == (split == "dev")}
    return BeirDataset(
        train.corpus,
        {q: t for q, t in train.queries.items() if q in keep},
        {q: r for q, r in train.qrels.items() if q in keep},
        name=train.name,
        split=split,
    )


def read_beir_folder(folder: Path, split: str = "test", name: str | None = None) -> BeirDataset:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)."""
    what = f"BEIR {name or folder.name}"
    qrels = read_qrels_tsv(require_file(folder / "qrels" / f"{split}.tsv", f"{what} qrels ({split})"))
    corpus = read_corpus_jsonl(require_file(folder / "corpus.jsonl", f"{what} corpus"))
    queries_path = require_file(folder / "queries.jsonl", f"{what} queries")
    all_queries = read_queries_jsonl(queries_path)
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise DataError(
            f"{queries_path}: {len(missing)} query ids of qrels/{split}.tsv are missing, e.g. {missing[0]!r}."
        )
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(corpus, queries, qrels, name=name or folder.name, split=split)


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("<path>:<line>", object)`` for each non-blank line; a bad line raises a :class:`DataError`."""
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            yield where, obj


def _get_str(obj: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and key == "_id":
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is missing or not a string.")
    return value


def read_corpus_jsonl(path: Path) -> dict[str, dict[str, str]]:
    """Read a BEIR ``corpus.jsonl``: doc id -> ``{"title", "text"}`` (a missing title becomes ``""``)."""
    corpus: dict[str, dict[str, str]] = {}
    for where, obj in iter_jsonl(path):
        doc_id = _get_str(obj, "_id", where)
        if doc_id in corpus:
            raise DataError(f"{where}: duplicate doc id {doc_id!r}.")
        corpus[doc_id] = {"title": _get_str(obj, "title", where, ""), "text": _get_str(obj, "text", where)}
    if not corpus:
        raise DataError(f"{path}: no documents. Is this a BEIR corpus.jsonl file?")
    return corpus


def read_queries_jsonl(path: Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl``: query id -> text."""
    queries: dict[str, str] = {}
    for where, obj in iter_jsonl(path):
        qid = _get_str(obj, "_id", where)
        if qid in queries:
            raise DataError(f"{where}: duplicate query id {qid!r}.")
        queries[qid] = _get_str(obj, "text", where)
    return queries


def read_qrels_tsv(path: Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (header ``query-id corpus-id score``): query id -> doc id -> relevance."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if lineno == 1 and tuple(x.strip() for x in fields) == QRELS_HEADER:
                continue
            qid, doc_id, score = _parse_qrels_row(fields, f"{path}:{lineno}")
            qrels.setdefault(qid, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{path}: no judgements. Is this a BEIR qrels file?")
    return qrels


def _parse_qrels_row(fields: list[str], where: str) -> tuple[str, str, int]:
    if len(fields) != 3:
        raise DataError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}.")
    qid, doc_id, score = (x.strip() for x in fields)
    if not qid or not doc_id:
        raise DataError(f"{where}: empty query-id or corpus-id.")
    try:
        return qid, doc_id, int(score)
    except ValueError:
        raise DataError(f"{where}: score {score!r} is not an integer.") from None


def _load_beir_hub(name: str, split: str) -> BeirDataset:  # pragma: no cover - needs a network
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError("Loading from the hub needs `datasets`: pip install 'muses[data]'.") from e
    corpus_ds = load_dataset(f"BeIR/{name}", "corpus", split="corpus")
    queries_ds = load_dataset(f"BeIR/{name}", "queries", split="queries")
    qrels_ds = load_dataset(f"BeIR/{name}-qrels", split=split)
    qrels: dict[str, dict[str, int]] = {}
    for row in qrels_ds:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    corpus = {str(r["_id"]): {"title": r.get("title") or "", "text": r["text"]} for r in corpus_ds}
    all_queries = {str(r["_id"]): r["text"] for r in queries_ds}
    queries = {qid: all_queries[qid] for qid in qrels if qid in all_queries}
    return BeirDataset(corpus, queries, qrels, name=name, split=split)

"""SciFact in its original release format: abstracts as sentence lists, claims with sentence-level rationales.

Local layout (``<data_dir>/scifact/original/``):

- ``corpus.jsonl``: ``{"doc_id": int, "title", "abstract": [sentences], "structured": bool}`` a line;
- ``claims_{train,dev,test}.jsonl``: ``{"id": int, "claim", "evidence": {doc_id: [{"sentences":
  [indices], "label": "SUPPORT"|"CONTRADICT"}]}, "cited_doc_ids": [int]}`` a line (``claims_test`` has
  ``id`` and ``claim`` only: its labels are hidden).

Ids are kept as strings, as in the BEIR version (:func:`muses.data.beir.load_beir`), whose ``test`` qrels are
the ``dev`` claims' ``cited_doc_ids``. Hub: ``allenai/scifact`` (configs ``corpus`` and ``claims``;
``dev`` is its ``validation`` split).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muses.data.beir import iter_jsonl
from muses.data.paths import require_file, resolve_data_dir
from muses.errors import DataError

SPLITS = ("train", "dev", "test")
LABELS = ("SUPPORT", "CONTRADICT")
HUB_NAME = "allenai/scifact"


@dataclass(frozen=True)
class SciFactAbstract:
    """One abstract: its title and its sentences (indexed by the claims' rationales)."""

    doc_id: str
    title: str
    sentences: tuple[str, ...]
    structured: bool

    @property
    def text(self) -> str:
        """The abstract as one string, built as BEIR does: the stripped sentences joined by spaces."""
        return " ".join(s.strip() for s in self.sentences)


@dataclass(frozen=True)
class SciFactEvidence:
    """One rationale: a minimal set of sentences of ``doc_id`` that support or contradict the claim."""

    doc_id: str
    sentences: tuple[int, ...]
    label: str


@dataclass(frozen=True)
class SciFactClaim:
    """A claim with its gold evidence.

    Attributes:
        id: claim id (a string, as in BEIR).
        claim: the claim text.
        evidence: the rationales, in file order; empty for claims without evidence (and for the test split).
        cited_doc_ids: the docs cited by the claim's source (the BEIR relevant docs).
        labelled: False for the test split, whose evidence is hidden.
    """

    id: str
    claim: str
    evidence: tuple[SciFactEvidence, ...]
    cited_doc_ids: tuple[str, ...]
    labelled: bool = True

    @property
    def rationale_sentences(self) -> list[tuple[str, int]]:
        """The gold rationale sentences as sorted, unique ``(doc_id, sentence_index)`` pairs."""
        return sorted({(ev.doc_id, i) for ev in self.evidence for i in ev.sentences})

    @property
    def evidence_doc_ids(self) -> list[str]:
        """The docs with at least one rationale, in file order."""
        return list(dict.fromkeys(ev.doc_id for ev in self.evidence))

    @property
    def has_evidence(self) -> bool:
        return bool(self.evidence)


# --- corpus -------------------------------------------------------------------------------------------------


def load_scifact_corpus(
    data_dir: str | os.PathLike[str] | None = None, hub: bool = False
) -> dict[str, SciFactAbstract]:
    """Load the SciFact abstracts (doc id -> abstract) from ``<data_dir>/scifact/original/corpus.jsonl``."""
    if hub:
        return _load_corpus_hub()
    path = require_file(resolve_data_dir(data_dir) / "scifact" / "original" / "corpus.jsonl", "SciFact corpus")
    return read_scifact_corpus(path)


def read_scifact_corpus(path: Path) -> dict[str, SciFactAbstract]:
    """Read a SciFact ``corpus.jsonl``; a malformed line raises a DataError naming the file and line."""
    corpus: dict[str, SciFactAbstract] = {}
    for where, obj in iter_jsonl(path):
        abstract = _parse_abstract(obj, where)
        if abstract.doc_id in corpus:
            raise DataError(f"{where}: duplicate doc_id {abstract.doc_id}.")
        corpus[abstract.doc_id] = abstract
    if not corpus:
        raise DataError(f"{path}: no abstracts. Is this a SciFact corpus.jsonl file?")
    return corpus


def _parse_abstract(obj: Mapping[str, Any], where: str) -> SciFactAbstract:
    doc_id = _parse_id(obj.get("doc_id"), "doc_id", where)
    title = obj.get("title")
    sentences = obj.get("abstract")
    if not isinstance(title, str):
        raise DataError(f"{where}: field 'title' is missing or not a string.")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise DataError(f"{where}: field 'abstract' must be a list of sentence strings.")
    return SciFactAbstract(doc_id, title, tuple(sentences), bool(obj.get("structured", False)))


def _parse_id(value: Any, key: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
        raise DataError(f"{where}: field {key!r} is missing or not an id (got {value!r}).")
    return str(value)


# --- claims -------------------------------------------------------------------------------------------------


def load_scifact_claims(
    split: str = "dev", data_dir: str | os.PathLike[str] | None = None, hub: bool = False
) -> list[SciFactClaim]:
    """Load the claims of a split (``train``, ``dev`` or ``test``) from ``<data_dir>/scifact/original/``."""
    if split not in SPLITS:
        raise DataError(f"Unknown SciFact split {split!r}; use one of {', '.join(SPLITS)}.")
    if hub:
        return _load_claims_hub(split)
    folder = resolve_data_dir(data_dir) / "scifact" / "original"
    return read_scifact_claims(require_file(folder / f"claims_{split}.jsonl", f"SciFact claims ({split})"))


def read_scifact_claims(path: Path) -> list[SciFactClaim]:
    """Read a SciFact ``claims_*.jsonl``; a malformed line raises a DataError naming the file and line."""
    claims = [_parse_claim(obj, where) for where, obj in iter_jsonl(path)]
    if not claims:
        raise DataError(f"{path}: no claims. Is this a SciFact claims file?")
    return claims


def _parse_claim(obj: Mapping[str, Any], where: str) -> SciFactClaim:
    claim_id = _parse_id(obj.get("id"), "id", where)
    text = obj.get("claim")
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'claim' is missing or not a string.")
    raw_evidence = obj.get("evidence")
    raw_cited = obj.get("cited_doc_ids", [])
    if not isinstance(raw_cited, list):
        raise DataError(f"{where}: field 'cited_doc_ids' must be a list of doc ids.")
    cited = tuple(_parse_id(d, "cited_doc_ids", where) for d in raw_cited)
    evidence = _parse_evidence(raw_evidence, where) if raw_evidence is not None else ()
    return SciFactClaim(claim_id, text, evidence, cited, labelled=raw_evidence is not None)


def _parse_evidence(raw: Any, where: str) -> tuple[SciFactEvidence, ...]:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: field 'evidence' must be an object {{doc_id: [rationales]}}.")
    evidence: list[SciFactEvidence] = []
    for doc_id, rationales in raw.items():
        if not isinstance(rationales, list):
            raise DataError(f"{where}: evidence for doc {doc_id} must be a list of rationales.")
        evidence.extend(_parse_rationale(str(doc_id), r, where) for r in rationales)
    return tuple(evidence)


def _parse_rationale(doc_id: str, raw: Any, where: str) -> SciFactEvidence:
    sentences = raw.get("sentences") if isinstance(raw, dict) else None
    label = raw.get("label") if isinstance(raw, dict) else None
    if not isinstance(sentences, list) or not all(isinstance(i, int) and i >= 0 for i in sentences):
        raise DataError(f"{where}: a rationale of doc {doc_id} needs 'sentences', a list of sentence indices.")
    if label not in LABELS:
        raise DataError(f"{where}: rationale label {label!r} of doc {doc_id} is not one of {', '.join(LABELS)}.")
    return SciFactEvidence(doc_id, tuple(sentences), label)


def check_rationales(claims: Iterable[SciFactClaim], corpus: Mapping[str, SciFactAbstract]) -> None:
    """Raise a DataError if a claim cites a doc not in ``corpus`` or a sentence index past its abstract."""
    for claim in claims:
        for doc_id in (*claim.cited_doc_ids, *claim.evidence_doc_ids):
            if doc_id not in corpus:
                raise DataError(f"SciFact claim {claim.id}: doc {doc_id} is not in the corpus.")
        for doc_id, index in claim.rationale_sentences:
            if index >= len(corpus[doc_id].sentences):
                raise DataError(
                    f"SciFact claim {claim.id}: sentence {index} of doc {doc_id} is past the end of its "
                    "abstract "
                    f"({len(corpus[doc_id].sentences)} sentences)."
                )


# --- hub ----------------------------------------------------------------------------------------------------


def _load_dataset(config: str, split: str) -> Any:  # pragma: no cover - needs a network
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError("Loading from the hub needs `datasets`: pip install 'muses[data]'.") from e
    return load_dataset(HUB_NAME, config, split=split)


def _load_corpus_hub() -> dict[str, SciFactAbstract]:  # pragma: no cover - needs a network
    rows = _load_dataset("corpus", "train")
    return {
        str(r["doc_id"]): SciFactAbstract(str(r["doc_id"]), r["title"], tuple(r["abstract"]), bool(r["structured"]))
        for r in rows
    }


def _load_claims_hub(split: str) -> list[SciFactClaim]:  # pragma: no cover - needs a network
    """The hub has a row per (claim, rationale), or one for a claim without evidence: regroup by claim id."""
    rows = _load_dataset("claims", {"dev": "validation"}.get(split, split))
    grouped: dict[str, dict[str, Any]] = {}
    for r in rows:
        claim = grouped.setdefault(
            str(r["id"]),
            {"claim": r["claim"], "cited": tuple(str(d) for d in r["cited_doc_ids"]), "evidence": []},
        )
        if r["evidence_doc_id"]:
            claim["evidence"].append(
                SciFactEvidence(str(r["evidence_doc_id"]), tuple(r["evidence_sentences"]), r["evidence_label"])
            )
    return [
        SciFactClaim(cid, c["claim"], tuple(c["evidence"]), c["cited"], labelled=split != "test")
        for cid, c in grouped.items()
    ]

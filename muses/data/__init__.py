"""Dataset loaders: each reads ``--data-dir`` / ``$MUSES_DATA_DIR`` (see :mod:`muses.data.paths`) or, with
``hub=True``, the Hugging Face hub."""

from __future__ import annotations

from muses.data.beir import BeirDataset, load_beir
from muses.data.paths import resolve_data_dir
from muses.data.scifact import (
    SciFactAbstract,
    SciFactClaim,
    SciFactEvidence,
    load_scifact_claims,
    load_scifact_corpus,
)
from muses.data.squad import (
    SquadAnswer,
    SquadArticle,
    SquadDataset,
    SquadParagraph,
    SquadQuestion,
    load_squad,
)
from muses.data.stsb import STSPairs, load_stsb
from muses.data.wikipedia import WikiArticle, load_wikipedia, stratified_split

__all__ = [
    "BeirDataset",
    "STSPairs",
    "SciFactAbstract",
    "SciFactClaim",
    "SciFactEvidence",
    "SquadAnswer",
    "SquadArticle",
    "SquadDataset",
    "SquadParagraph",
    "SquadQuestion",
    "WikiArticle",
    "load_beir",
    "load_scifact_claims",
    "load_scifact_corpus",
    "load_squad",
    "load_stsb",
    "load_wikipedia",
    "resolve_data_dir",
    "stratified_split",
]

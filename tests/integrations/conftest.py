"""A real SciFact slice in a MuSES store, shared by the framework integrations' tests (built once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from muses.data.beir import BeirDataset, load_beir
from muses.encoder import MultiScaleEncoder
from muses.evaluation.retrieval import beir_documents
from muses.store import MemoryStore

N_QUERIES = 8
N_DISTRACTORS = 40


@dataclass
class StoreSlice:
    """The slice's store, its test queries (``{qid: text}``) and their relevant documents (``{qid: {doc id}}``)."""

    store: MemoryStore
    queries: dict[str, str]
    relevant: dict[str, set[str]]


@pytest.fixture(scope="session")
def scifact_test(data_dir: Path) -> BeirDataset:
    return load_beir("scifact", "test", data_dir=data_dir)


@pytest.fixture(scope="session")
def scifact_store(
    encoder: MultiScaleEncoder, scifact_test: BeirDataset, tmp_path_factory: pytest.TempPathFactory
) -> StoreSlice:
    """The relevant abstracts of the first SciFact test claims plus distractors, each with ``{"half": "a"|"b"}``
    metadata (alternating, for filter tests), in a default store (token pool 4)."""
    qids = sorted(scifact_test.qrels)[:N_QUERIES]
    relevant = {q: set(scifact_test.qrels[q]) for q in qids}
    keep = sorted(set().union(*relevant.values()))
    keep += [d for d in scifact_test.corpus if d not in keep][:N_DISTRACTORS]
    docs = beir_documents({d: scifact_test.corpus[d] for d in keep})
    store = MemoryStore.create(tmp_path_factory.mktemp("integrations") / "store", encoder)
    store.add([{"id": d.id, "text": d.text, "metadata": {"half": "ab"[i % 2]}} for i, d in enumerate(docs)])
    return StoreSlice(store, {q: scifact_test.queries[q] for q in qids}, relevant)

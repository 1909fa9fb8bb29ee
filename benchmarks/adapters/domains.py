"""Each domain's evaluation data: held-out-sentence retrieval and k-NN data for a Wikipedia topic, SciFact claims
against their abstracts (the package docstring says which articles and claims)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.adapters.settings import BenchSettings, domain_topic
from muses.evaluation.retrieval import beir_documents
from muses.text import make_document
from muses.types import Document

if TYPE_CHECKING:
    from muses.training.config import TrainConfig


@dataclass
class DomainData:
    """One domain's evaluation data: retrieval queries, qrels and corpus; for Wikipedia also the k-NN index.

    The query side (traffic) is ``queries`` and, for Wikipedia, ``corpus`` again as articles to classify.
    """

    key: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: list[Document]
    topic: str | None = None
    index: list[Document] = field(default_factory=list)

    @property
    def classify(self) -> bool:
        """Whether its articles are also classified by k-NN (test data of a Wikipedia domain)."""
        return bool(self.index)


def held_out_retrieval(
    key: str, topic: str, articles: Sequence[Any], n: int, rng: np.random.Generator
) -> tuple[dict[str, str], dict[str, dict[str, int]], list[Document]]:
    """Up to ``n`` articles (in ``rng`` order) as held-out-sentence retrieval: queries, qrels and the corpus of the
    articles without their query sentence (:func:`~muses.training.data.held_out_sentence`)."""
    from muses.training.data import held_out_sentence

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    corpus: list[Document] = []
    for i in rng.permutation(len(articles)):
        art = articles[int(i)]
        pair = held_out_sentence(make_document(art.text, id=art.title), rng)
        if pair is None:
            continue
        corpus.append(make_document(pair[1], id=art.title, metadata={"topic": topic}))
        qid = f"{key}/{len(queries)}"
        queries[qid], qrels[qid] = pair[0], {art.title: 1}
        if len(corpus) == n:
            break
    return queries, qrels, corpus


def wiki_domain(
    key: str, topic: str, train_side: Sequence[Any], test_side: Sequence[Any], s: BenchSettings
) -> DomainData:
    """Held-out-sentence retrieval (test side) and k-NN data of one topic."""
    test = [a for a in test_side if a.topic == topic]
    queries, qrels, corpus = held_out_retrieval(key, topic, test, s.test_articles, np.random.default_rng(s.seed))
    train = [a for a in train_side if a.topic == topic]
    picked = np.random.default_rng(s.seed + 1).permutation(len(train))[: s.knn_index_articles]
    index = [make_document(train[int(i)].text, id=train[int(i)].title, metadata={"topic": topic}) for i in picked]
    return DomainData(key, queries, qrels, corpus, topic, index)


def wiki_dev_domain(key: str, topic: str, train_side: Sequence[Any], cfg: TrainConfig, s: BenchSettings) -> DomainData:
    """Held-out-sentence retrieval on train-side articles of the topic that the adapter (recipe ``cfg``) did not
    train on (dev)."""
    train = [a for a in train_side if a.topic == topic]
    unused = np.random.default_rng(cfg.seed).permutation(len(train))[cfg.data.wikipedia_articles :]  # as training
    rest = [train[int(i)] for i in sorted(unused)]
    queries, qrels, corpus = held_out_retrieval(key, topic, rest, s.dev_articles, np.random.default_rng(s.seed + 2))
    return DomainData(key, queries, qrels, corpus, topic)


def scifact_domain(key: str, s: BenchSettings, data_dir: str | os.PathLike[str] | None) -> DomainData:
    """SciFact test claims against their cited abstracts plus seeded distractors."""
    from muses.data.beir import load_beir
    from muses.training.dev import scifact_dev_subset

    test = scifact_dev_subset(
        load_beir("scifact", "test", data_dir), s.scifact_distractors, seed=s.seed, max_claims=s.scifact_claims
    )
    return DomainData(key, dict(test.queries), dict(test.qrels), beir_documents(test.corpus))


def load_domains(
    recipes: dict[str, TrainConfig], s: BenchSettings, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, DomainData], dict[str, DomainData]]:
    """Test data of every domain (in ``recipes`` order), and dev data of the Wikipedia domains."""
    from muses.data.wikipedia import load_wikipedia, stratified_split

    topics = {k: domain_topic(cfg) for k, cfg in recipes.items()}
    out: dict[str, DomainData] = {}
    dev: dict[str, DomainData] = {}
    if any(t is not None for t in topics.values()):
        train_side, test_side = stratified_split(load_wikipedia(), 0.2, seed=0)  # the split training and k-NN use
    for key, topic in topics.items():
        if topic is None:
            out[key] = scifact_domain(key, s, data_dir)
        else:
            out[key] = wiki_domain(key, topic, train_side, test_side, s)
            dev[key] = wiki_dev_domain(key, topic, train_side, recipes[key], s)
    return out, dev

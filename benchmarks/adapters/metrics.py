"""Quality per domain (retrieval nDCG@10, k-NN topic accuracy) from vectors already computed, and retention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from benchmarks.adapters.domains import DomainData
from benchmarks.adapters.traffic import CorpusSide, QuerySide
from muses.evaluation.corpus import CorpusVectors, EmbeddingCache
from muses.evaluation.knn import accuracy_macro_f1, knn_votes, predict
from muses.evaluation.retrieval import evaluate_scored, score_queries
from muses.scoring import prefix_normalize
from muses.types import Document

ALL_WIKI = "all-wiki"  # quality's key for the k-NN numbers over every Wikipedia domain


class _Fixed:
    """A :class:`~muses.evaluation.corpus.CorpusEncoder` answering queries from vectors computed already."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, dims: list[int]) -> None:
        self.name = "fixed"
        self.dims = dims
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def fingerprint(self) -> str:
        return "fixed"

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray:
        raise NotImplementedError("query vectors only")

    def encode_query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError("query vectors only")

    def encode_corpus(self, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        raise NotImplementedError("query vectors only")


def quality(
    domains: dict[str, DomainData],
    corpus: dict[str, CorpusSide],
    queries: dict[str, QuerySide],
    dims: list[int],
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Per domain: retrieval nDCG@10 (document, sentence) and, for Wikipedia, k-NN topic accuracy, at every dim."""
    out: dict[str, dict[str, float]] = {}
    for key, d in domains.items():
        model = _Fixed(list(d.queries.values()), queries[key].queries, dims)
        scored = score_queries(model, corpus[key].corpus, d.queries, dims, EmbeddingCache(None), with_tokens=False)
        m = evaluate_scored(scored, d.qrels, ks=(10,))
        out[key] = {f"{s}/ndcg@10@{dim}": m[f"{s}/ndcg@10@{dim}"] for s in ("document", "sentence") for dim in dims}
    wiki = [key for key, d in domains.items() if d.classify]
    if wiki:
        labels = np.concatenate([np.full(len(domains[w].index), i) for i, w in enumerate(wiki)])
        truth = np.concatenate([np.full(len(domains[w].corpus), i) for i, w in enumerate(wiki)])
        index = np.concatenate([cast(np.ndarray, corpus[w].index) for w in wiki])
        tests = np.concatenate([cast(np.ndarray, queries[w].articles) for w in wiki])
        for dim in dims:
            votes = knn_votes(prefix_normalize(index, dim), labels, prefix_normalize(tests, dim), len(wiki), k)
            pred = predict(votes)
            for i, w in enumerate(wiki):
                out[w][f"knn/accuracy@{dim}"] = float(np.mean(pred[truth == i] == i))
            acc, f1 = accuracy_macro_f1(truth, pred)
            out.setdefault(ALL_WIKI, {}).update({f"knn/accuracy@{dim}": acc, f"knn/macro_f1@{dim}": f1})
    return out


def retention(
    cached: dict[str, dict[str, float]], dedicated: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """100 x cached / dedicated, per domain and metric."""
    return {
        d: {m: 100.0 * v / dedicated[d][m] if dedicated[d][m] else float("nan") for m, v in metrics.items()}
        for d, metrics in cached.items()
    }


def mean_retention(results: dict[str, Any]) -> dict[str, float]:
    """Per condition: retention (%) averaged over every (domain, metric) cell at the full dim (the all-Wikipedia
    k-NN numbers left out: they are not one domain's)."""
    full = max(results["settings"]["dims"])
    return {
        c: float(
            np.mean(
                [v for d, per in by_domain.items() if d != ALL_WIKI for k, v in per.items() if k.endswith(f"@{full}")]
            )
        )
        for c, by_domain in results["retention"].items()
    }

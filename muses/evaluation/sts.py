"""STS evaluation: Spearman (and Pearson) of cosine similarity against gold scores, at every Matryoshka dim.

Each unique sentence is encoded once at full size; the score at dim ``d`` uses the renormalised ``d``-prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy.stats import pearsonr, spearmanr

from muses.data.stsb import STSPairs
from muses.scoring import prefix_normalize


class SentenceEncoder(Protocol):
    """Anything that embeds standalone sentences: ``encode_sentences(texts, dim) -> [N, dim]`` (L2-normalised)."""

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray: ...


def evaluate_sts(model: SentenceEncoder, pairs: STSPairs, dims: Sequence[int]) -> dict[str, float]:
    """Spearman and Pearson correlation (x100 not applied) of cosine vs gold, at each dim.

    Returns:
        ``{"spearman@384": ..., "pearson@384": ..., "spearman@64": ..., ...}``.
    """
    unique = sorted(set(pairs.sentences1) | set(pairs.sentences2))
    row = {s: i for i, s in enumerate(unique)}
    full = model.encode_sentences(unique)
    a = np.array([row[s] for s in pairs.sentences1])
    b = np.array([row[s] for s in pairs.sentences2])
    gold = np.asarray(pairs.scores)
    out: dict[str, float] = {}
    for d in dims:
        emb = prefix_normalize(full, d)
        cos = (emb[a] * emb[b]).sum(axis=1)
        out[f"spearman@{d}"] = float(spearmanr(cos, gold).statistic)
        out[f"pearson@{d}"] = float(pearsonr(cos, gold).statistic)
    return out

"""A cheap router: which domain adapter should serve a text, without a transformer pass.

A text's routing feature is the mean of its word pieces' input embeddings (a row lookup in the base model's frozen
word-embedding table, no attention layer): ``[N, H]`` for ``N`` texts. An adapter's centroid is the mean feature
of the texts it was trained on, stored in its ``muses_adapter.json``. A text goes to the adapter of the highest
cosine between its feature and the centroids, both taken relative to the mean of all centroids (the part every
English text shares would otherwise dominate the cosine). With ``min_similarity`` set, a text whose best cosine is
below it goes to the base model (no adapter).

The cost is one tokenisation (which encoding does anyway) and an ``embedding_bag``: no transformer layer runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from muses.errors import InputError

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder


def word_piece_means(encoder: MultiScaleEncoder, texts: Sequence[str], max_tokens: int = 512) -> np.ndarray:
    """Routing features: ``N`` texts -> ``[N, H]`` float32, the mean input embedding of each text's word pieces.

    Texts are cut to their first ``max_tokens`` word pieces; an empty text gets a zero row.
    """
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string.")
    table = embedding_table(encoder)
    if not texts:
        return np.zeros((0, table.shape[1]), dtype=np.float32)
    ids = encoder.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    ids = [row[:max_tokens] for row in ids]
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
    flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=table.device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]).to(table.device)
    with torch.no_grad():
        feats = torch.nn.functional.embedding_bag(flat, table, offsets, mode="mean")
    return feats.float().cpu().numpy()


def embedding_table(encoder: MultiScaleEncoder) -> torch.Tensor:
    """``[V, H]`` the base model's word-piece input embeddings (frozen; adapters do not touch them)."""
    model: Any = encoder.transformer.auto_model
    return model.get_input_embeddings().weight.detach()


def centroid(encoder: MultiScaleEncoder, texts: Sequence[str]) -> np.ndarray:
    """``[H]`` routing centroid of a domain: the mean :func:`word_piece_means` of its texts."""
    if not texts:
        raise InputError("a routing centroid needs at least one text of the domain.")
    return word_piece_means(encoder, texts).mean(axis=0)


class CentroidRouter:
    """Nearest-centroid routing of texts to adapter keys (see the module docstring).

    Args:
        encoder: the encoder whose word-embedding table gives the features (the same base the centroids used).
        centroids: adapter key -> ``[H]`` centroid.
        min_similarity: below this best cosine a text is routed to ``None`` (the base model); None: never.
    """

    def __init__(
        self,
        encoder: MultiScaleEncoder,
        centroids: Mapping[str, np.ndarray | Sequence[float]] | None = None,
        min_similarity: float | None = None,
    ) -> None:
        self.encoder = encoder
        self.min_similarity = min_similarity
        self._centroids: dict[str, np.ndarray] = {}
        for key, c in (centroids or {}).items():
            self.add(key, c)

    @property
    def keys(self) -> list[str]:
        """Keys that can be routed to, sorted."""
        return sorted(self._centroids)

    def add(self, key: str, centroid: np.ndarray | Sequence[float]) -> None:
        """Register (or replace) the centroid of ``key``."""
        c = np.asarray(centroid, dtype=np.float32).reshape(-1)
        width = embedding_table(self.encoder).shape[1]
        if c.shape != (width,):
            raise InputError(f"centroid of {key!r} has {c.shape[0]} values; this model's embeddings have {width}.")
        self._centroids[key] = c

    def remove(self, key: str) -> None:
        """Forget ``key``."""
        self._centroids.pop(key, None)

    def scores(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The keys and the ``[N, A]`` centred cosines of ``N`` texts to their ``A`` centroids."""
        keys = self.keys
        if not keys:
            return keys, np.zeros((len(texts), 0), dtype=np.float32)
        cents = np.stack([self._centroids[k] for k in keys])
        origin = cents.mean(axis=0) if len(keys) > 1 else np.zeros_like(cents[0])
        x = word_piece_means(self.encoder, texts) - origin
        c = cents - origin
        x /= np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
        c /= np.clip(np.linalg.norm(c, axis=1, keepdims=True), 1e-12, None)
        return keys, x @ c.T

    def route(self, texts: Sequence[str]) -> list[str | None]:
        """The adapter key for each text (None: the base model)."""
        keys, sims = self.scores(texts)
        if not keys:
            return [None] * len(texts)
        best = sims.argmax(axis=1)
        return [
            None if self.min_similarity is not None and sims[i, b] < self.min_similarity else keys[b]
            for i, b in enumerate(best)
        ]

    def route_group(self, texts: Sequence[str]) -> str | None:
        """One key for a whole group of texts (e.g. a request): routed by the mean feature of the group, which is
        steadier than any single short text's. None: the base model (no adapter, or below ``min_similarity``)."""
        keys = self.keys
        if not keys or not texts:
            return None
        cents = np.stack([self._centroids[k] for k in keys])
        origin = cents.mean(axis=0) if len(keys) > 1 else np.zeros_like(cents[0])
        x = word_piece_means(self.encoder, texts).mean(axis=0) - origin
        c = cents - origin
        sims = (c @ x) / np.clip(np.linalg.norm(c, axis=1) * np.linalg.norm(x), 1e-12, None)
        best = int(sims.argmax())
        return None if self.min_similarity is not None and sims[best] < self.min_similarity else keys[best]

    def nearest(self, texts: Sequence[str]) -> str | None:
        """The key nearest to a group of texts whatever ``min_similarity`` says, e.g. to seed a new adapter."""
        threshold, self.min_similarity = self.min_similarity, None
        try:
            return self.route_group(texts)
        finally:
            self.min_similarity = threshold

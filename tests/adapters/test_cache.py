"""The embedding cache: hits on repeat, a changed model never reads stale vectors, tokens serve token-less asks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from muses.encoder import MultiScaleEncoder
from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
from muses.text import make_document

DOCS = [
    make_document(t, id=str(i))
    for i, t in enumerate(
        [
            "Cells divide by mitosis. Each daughter gets a copy.",
            "Rivers carve valleys. Glaciers carve fjords.",
            "Prices rose in March. Wages did not follow.",
        ]
    )
]


def test_cache_hits_and_invalidation(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    cache = EmbeddingCache(tmp_path)
    model = MusesCorpusEncoder(encoder)
    first = cache.corpus(model, DOCS, with_tokens=True)
    assert (cache.hits, cache.misses) == (0, 1)
    again = cache.corpus(model, DOCS, with_tokens=True)
    no_tokens = cache.corpus(model, DOCS)
    assert (cache.hits, cache.misses) == (2, 1)
    assert np.array_equal(first.sentence, again.sentence) and first.token is not None and again.token is not None
    assert np.array_equal(first.token, again.token)
    assert no_tokens.token is None and np.array_equal(no_tokens.document, first.document)

    changed = MultiScaleEncoder.from_base()
    with torch.no_grad():
        changed.heads.heads["document"].fc2.bias.add_(0.1)  # type: ignore[union-attr]
    other = MusesCorpusEncoder(changed)
    assert other.fingerprint() != model.fingerprint()
    fresh = cache.corpus(other, DOCS)
    assert cache.misses == 2
    assert not np.allclose(fresh.document, first.document)
    q1, q2 = cache.queries(model, ["a question"]), cache.queries(model, ["a question"])
    assert np.array_equal(q1, q2) and cache.misses == 3

"""Model specs for evaluation: MuSES models and flat sentence-transformers baselines, resolved the same way.

A spec is a string:

- ``default`` or ``muses:default``: MuSES over the bundled all-MiniLM-L6-v2 (untrained = the base model);
- ``muses:<folder>`` or a folder holding ``muses.json``: a saved MuSES model;
- ``flat:default``: the bundled all-MiniLM-L6-v2 as a flat baseline (documents and sentences encoded apart);
- ``flat:<folder or hub name>``: any sentence-transformers model as a flat baseline. Hub names need a network
  (``HF_HUB_OFFLINE=0``); the short names in :data:`KNOWN_BASELINES` expand to their hub ids with their prompts.

Published figures appear in reports only from :data:`PUBLISHED`, always labelled as published.
"""

from __future__ import annotations

from dataclasses import dataclass

from muses.backends import Backend
from muses.encoder import MultiScaleEncoder, default_base_path, load_sentence_transformer
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, FlatCorpusEncoder, MusesCorpusEncoder


@dataclass(frozen=True)
class KnownBaseline:
    """A hub baseline: its id, query prompt and whether it needs ``trust_remote_code``."""

    hub_id: str
    query_prompt: str = ""
    trust_remote_code: bool = False


KNOWN_BASELINES: dict[str, KnownBaseline] = {
    "all-minilm-l6-v2": KnownBaseline("sentence-transformers/all-MiniLM-L6-v2"),
    "all-mpnet-base-v2": KnownBaseline("sentence-transformers/all-mpnet-base-v2"),
    "e5-base-v2": KnownBaseline("intfloat/e5-base-v2", query_prompt="query: "),
    "e5-small-v2": KnownBaseline("intfloat/e5-small-v2", query_prompt="query: "),
    "bge-base-en-v1.5": KnownBaseline(
        "BAAI/bge-base-en-v1.5", query_prompt="Represent this sentence for searching relevant passages: "
    ),
    "bge-small-en-v1.5": KnownBaseline(
        "BAAI/bge-small-en-v1.5", query_prompt="Represent this sentence for searching relevant passages: "
    ),
    "jina-embeddings-v3": KnownBaseline("jinaai/jina-embeddings-v3", trust_remote_code=True),
}

# Published figures (not measured here): STS-B test Spearman and BEIR SciFact nDCG@10. Source: DESIGN.md / MTEB.
PUBLISHED: dict[str, dict[str, float]] = {
    "bge-small-en-v1.5": {"stsb": 0.8586, "scifact_ndcg@10": 0.7127},
    "all-mpnet-base-v2": {"stsb": 0.8342, "scifact_ndcg@10": 0.6557},
    "e5-small-v2": {"stsb": 0.8492, "scifact_ndcg@10": 0.6885},
}


def load_corpus_encoder(
    spec: str, batch_size: int = 32, device: str | None = None, backend: Backend | None = None
) -> CorpusEncoder:
    """Resolve a model spec (see the module doc) to a :class:`CorpusEncoder`, named by the spec; a MuSES model's
    transformer runs on ``backend`` (see :mod:`muses.backends`)."""
    prefix, sep, rest = spec.partition(":")
    kind, name = (prefix, rest or "default") if sep and prefix in ("muses", "flat") else ("muses", spec)
    if kind == "flat":
        if backend not in (None, "torch"):
            raise InputError(f"--backend {backend} runs MuSES models; {spec} is a flat sentence-transformers baseline.")
        return _flat(name, spec, batch_size, device)
    known = KNOWN_BASELINES.get(name.lower())
    enc = MultiScaleEncoder.from_base(
        known.hub_id if known else name,
        device=device,
        query_prompt=known.query_prompt if known else "",
        backend=backend,
    )
    return MusesCorpusEncoder(enc, name=spec, batch_size=batch_size)


def _flat(name: str, spec: str, batch_size: int, device: str | None) -> FlatCorpusEncoder:
    from sentence_transformers import SentenceTransformer

    if name == "default":
        return FlatCorpusEncoder(
            load_sentence_transformer(str(default_base_path()), device), name=spec, batch_size=batch_size
        )
    known = KNOWN_BASELINES.get(name.lower())
    if known is None:
        return FlatCorpusEncoder(load_sentence_transformer(name, device), name=spec, batch_size=batch_size)
    model = SentenceTransformer(
        known.hub_id,
        device=device,
        trust_remote_code=known.trust_remote_code,
        prompts={"query": known.query_prompt} if known.query_prompt else None,
    )
    return FlatCorpusEncoder(model, name=spec, batch_size=batch_size, query_prompt=known.query_prompt)

"""How well a SciFact claim pool predicts a test-split drop: sentence max-sim and document nDCG@10 per claim pool.

Model selection holds each WiSE-FT mix to the starting model on SciFact dev claims (docs/results.md, round 19). This
script puts the pools beside each other for a few models, with the evaluation suite's own functions:

- ``dev``: the 151 held-out train claims (BEIR ``dev``), the claims selection reads by default;
- ``unused``: the 247 ``train-fit`` claims without rationale evidence, which only the ``scifact`` task trains on
  (``data.dev_scifact_unused_claims``);
- ``dev+unused``: both, the claims selection reads with the option;

all three over the corpus training builds with the option (the dev claims' cited abstracts, ``--distractors``
others drawn with ``--seed``, the recipe's, and the unused claims' cited abstracts), and, for reading afterwards
only, the 300 test claims over the whole corpus, split into the claims with rationale evidence and those without
(``--test``; vectors come from the embedding cache ``muses eval`` fills).

With ``--whole-corpus`` the dev claims and the unused claims are also ranked over the whole corpus, as the test
claims are (no distractor draw: the corpus is the test's, from the same cache), claim by claim, and every model
after the first is compared with the first claim by claim: the mean difference and its 90% one-sided bootstrap bound
(:func:`~muses.training.dev.paired_bootstrap_bound`), for the claims as they come and weighed by kind as SciFact's
train split has them (:func:`~muses.training.data.scifact_kind_weights`), beside the test claims' difference.

Usage::

    python benchmarks/scifact_claim_pools.py --models base=default,v3=/path/best [--test] [--whole-corpus] \
        [--json PATH]

Prints one line per model and pool; writes every number to ``--json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from muses.data.beir import BeirDataset, load_beir
from muses.data.scifact import load_scifact_claims
from muses.evaluation.baselines import load_corpus_encoder
from muses.evaluation.corpus import CorpusEncoder, EmbeddingCache
from muses.evaluation.metrics import query_ndcg, query_values, run_from_scores
from muses.evaluation.retrieval import beir_documents, evaluate_scored, score_queries
from muses.training.data import scifact_kind_weights, with_unused_claims
from muses.training.dev import paired_bootstrap_bound, scifact_dev_subset, weighted_mean

DIMS = [64, 384]


def pool_metrics(
    model: CorpusEncoder, data: BeirDataset, pools: Mapping[str, set[str]], cache: EmbeddingCache
) -> dict[str, dict[str, float]]:
    """Document and sentence max-sim nDCG@10 at :data:`DIMS` of each pool's claims, ranked over ``data.corpus``."""
    vecs = cache.corpus(model, beir_documents(data.corpus), with_tokens=False)
    scored = score_queries(model, vecs, data.queries, DIMS, cache, with_tokens=False)
    out = {}
    for name, ids in pools.items():
        m = evaluate_scored(scored, {q: data.qrels[q] for q in ids}, ks=(10,))
        out[name] = {k: m[k] for k in sorted(m) if k.startswith(("document/ndcg@10", "sentence/ndcg@10"))}
    return out


def claim_values(model: CorpusEncoder, data: BeirDataset, cache: EmbeddingCache) -> dict[str, dict[str, float]]:
    """``"<document|sentence>@<dim>"`` -> claim id -> nDCG@10 of each claim of ``data``, ranked over its corpus."""
    vecs = cache.corpus(model, beir_documents(data.corpus), with_tokens=False)
    scored = score_queries(model, vecs, data.queries, DIMS, cache, with_tokens=False)
    return {
        f"{s}@{d}": query_values(query_ndcg, data.qrels, run_from_scores(sq.query_ids, sq.doc_ids, sq.dense[s], 10), 10)
        for d, sq in scored.items()
        for s in ("document", "sentence")
    }


def whole_corpus_claim_sets(
    grown: BeirDataset, dev: set[str], test: BeirDataset, data_dir: str | None = None
) -> dict[str, tuple[set[str], dict[str, float] | None]]:
    """The claim sets :func:`compare_claims` reads over the whole corpus: the dev claims, the dev and unused claims
    (``grown``'s), each as they come and weighed by kind within that set, and the test claims."""

    def by_kind(claims: set[str]) -> dict[str, float]:
        only = BeirDataset({}, {}, {q: grown.qrels[q] for q in claims}, grown.name, grown.split)
        return scifact_kind_weights(only, data_dir)

    grown_claims = set(grown.qrels)
    return {
        "dev, whole corpus": (dev, None),
        "dev, whole corpus, by kind": (dev, by_kind(dev)),
        "dev+unused, whole corpus": (grown_claims, None),
        "dev+unused, whole corpus, by kind": (grown_claims, by_kind(grown_claims)),
        "test": (set(test.qrels), None),
    }


def compare_claims(
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    claim_sets: Mapping[str, tuple[set[str], Mapping[str, float] | None]],
    confidence: float = 0.9,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every model of ``values`` (label -> metric -> claim -> value) after the first against the first: for each
    claim set (name -> its claims and their weights, or None), each metric's mean difference and its bound."""
    first, *others = values
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for label in others:
        for name, (claims, weights) in claim_sets.items():
            for metric, ref in values[first].items():
                mine = {q: v for q, v in values[label][metric].items() if q in claims}
                diff = weighted_mean({q: v - ref[q] for q, v in mine.items()}, weights)
                bound = paired_bootstrap_bound(mine, ref, confidence, weights)
                out.setdefault(label, {}).setdefault(name, {})[metric] = {"difference": diff, "bound": bound}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="LABEL=SPEC,... (a model spec as muses eval takes)")
    ap.add_argument("--distractors", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="the recipe's seed: it draws the distractors")
    ap.add_argument("--test", action="store_true", help="also the test claims, by kind (reading only)")
    ap.add_argument("--whole-corpus", action="store_true", help="dev and unused claims over the whole corpus too")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "muses" / "embeddings"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if any("=" not in item for item in args.models.split(",")):
        ap.error(f"--models takes LABEL=SPEC,... (e.g. base=default), got {args.models!r}")
    models = dict(item.split("=", 1) for item in args.models.split(","))

    plain = scifact_dev_subset(load_beir("scifact", split="dev", data_dir=args.data_dir), args.distractors, args.seed)
    grown = with_unused_claims(plain, args.data_dir)
    dev = set(plain.queries)
    pools = {"dev": dev, "unused": set(grown.queries) - dev, "dev+unused": set(grown.queries)}
    test = load_beir("scifact", split="test", data_dir=args.data_dir)
    evidence = {c.id for c in load_scifact_claims("dev", args.data_dir) if c.has_evidence}  # BEIR test = SciFact dev
    by_kind = {"test": set(test.qrels), "test-evidence": set(test.qrels) & evidence}
    by_kind["test-no-evidence"] = by_kind["test"] - evidence
    print({k: len(v) for k, v in {**pools, **by_kind}.items()})

    results: dict[str, Any] = {"claims": {k: len(v) for k, v in {**pools, **by_kind}.items()}, "models": {}}
    whole = BeirDataset(test.corpus, {**grown.queries, **test.queries}, {**grown.qrels, **test.qrels}, "scifact", "all")
    values: dict[str, dict[str, dict[str, float]]] = {}
    for label, spec in models.items():
        model = load_corpus_encoder(spec)
        # the grown pool is encoded without a cache: its corpus is small and depends on --distractors
        res = pool_metrics(model, grown, pools, EmbeddingCache(None))
        if args.test:
            res |= pool_metrics(model, test, by_kind, EmbeddingCache(args.cache))
        if args.whole_corpus:
            values[label] = claim_values(model, whole, EmbeddingCache(args.cache))
        results["models"][label] = {"spec": spec, "pools": res}
        for pool, m in res.items():
            print(label, pool, {k: round(v, 4) for k, v in m.items()}, flush=True)
    if values:
        results["whole_corpus"] = compare_claims(values, whole_corpus_claim_sets(grown, dev, test, args.data_dir))
        results["claim_values"] = values
        for label, sets in results["whole_corpus"].items():
            for name, metrics in sets.items():
                line = {m: f"{v['difference']:+.4f} (bound {v['bound']:+.4f})" for m, v in metrics.items()}
                print(label, "-", next(iter(values)), name, line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

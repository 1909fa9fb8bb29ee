"""Model selection during training: dev-split metrics only (never a test split).

- STS-B dev Spearman at the full dim and at 64;
- SciFact ``dev`` retrieval (the 20% of train claims that training never sees, :func:`~muses.data.beir.load_beir`)
  against a small corpus: their cited abstracts plus seeded random distractors; nDCG@10 of document vectors and of
  sentence max-sim at the full dim and at 64; with ``data.dev_scifact_unused_claims``, the train-fit claims
  without rationale evidence too, which only the ``scifact`` task trains on, and the abstracts they cite
  (:func:`~muses.training.data.with_unused_claims`);
- hierarchy consistency (batch-32 accuracy) on held-out train-side Wikipedia articles;
- with ``data.dev_wikipedia_ict``, inverse-cloze retrieval over those articles (a held-out sentence of each ->
  the article without it, among all of them): a second retrieval collection, outside SciFact, scored like it;
- with ``data.dev_wikipedia_sentences``, picking a sentence from half of it (a seeded run of its words) among every
  sentence of those articles, pooled in context: MRR@100 at the full dim and at 64;
- with ``data.dev_scifact_evidence``, SciFact ``dev`` claims -> their rationale sentences: MRR@100 of flat
  sentence retrieval over every sentence of the SciFact dev pool (without the unused claims' abstracts), sentences
  pooled in context, at the full dim and at 64.

The dev score that picks the best checkpoint is the mean of these numbers, or (``dev_weights``) their weighted
mean, with weights per metric name without the dim (``stsb``, ``scifact-document``, ``scifact-sentence``,
``scifact-evidence``, ``ict-document``, ``ict-sentence``, ``wikipedia-sentence``, ``hierarchy``; a metric not named
weighs 0).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from muses.data.beir import BeirDataset
from muses.encoder import MultiScaleEncoder
from muses.types import Document


@dataclass
class EvidenceDev:
    """Dev sentence retrieval: queries (SciFact claims, or parts of Wikipedia sentences), the documents whose
    sentences are the candidates, and qrels over sentence ids ``"<doc id>:<sentence index>"`` (as
    :func:`muses.evaluation.evidence.scifact_evidence_qrels`)."""

    documents: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass
class DevSet:
    """Dev data for model selection.

    Attributes:
        stsb: STS-B dev pairs ``(sentence1, sentence2, score 0-5)``.
        documents: held-out Wikipedia articles for hierarchy consistency.
        scifact: SciFact dev claims with a reduced corpus (cited abstracts + distractors), or None.
        evidence: SciFact dev claims -> rationale sentences in that corpus, or None.
        ict: inverse-cloze retrieval over ``documents`` (:func:`wikipedia_ict`), or None.
        sentences: parts of sentences of ``documents`` -> those sentences, or None.
    """

    stsb: list[tuple[str, str, float]] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    scifact: BeirDataset | None = None
    evidence: EvidenceDev | None = None
    ict: BeirDataset | None = None
    sentences: EvidenceDev | None = None


def wikipedia_ict(pairs: Sequence[tuple[str, str]]) -> BeirDataset:
    """Inverse-cloze retrieval from ``(held-out sentence, article without it)`` pairs: query ``q<i>`` has one
    relevant document, ``d<i>``, among all of them."""
    return BeirDataset(
        {f"d{i}": {"title": "", "text": rest} for i, (_, rest) in enumerate(pairs)},
        {f"q{i}": sentence for i, (sentence, _) in enumerate(pairs)},
        {f"q{i}": {f"d{i}": 1} for i in range(len(pairs))},
        name="wikipedia-ict",
        split="dev",
    )


def scifact_dev_subset(dev: BeirDataset, distractors: int, seed: int, max_claims: int | None = None) -> BeirDataset:
    """The dev claims' cited abstracts plus ``distractors`` other abstracts (seeded), in corpus order.

    ``max_claims`` keeps only the first claims (in id order), for quick runs and tests.
    """
    if max_claims is not None:
        keep_q = sorted(dev.qrels)[:max_claims]
        dev = BeirDataset(
            dev.corpus, {q: dev.queries[q] for q in keep_q}, {q: dev.qrels[q] for q in keep_q}, dev.name, dev.split
        )
    cited = {d for rels in dev.qrels.values() for d, r in rels.items() if r > 0}
    others = [d for d in dev.corpus if d not in cited]
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(len(others), size=min(distractors, len(others)), replace=False).tolist())
    keep = cited | {others[i] for i in picked}
    corpus = {d: doc for d, doc in dev.corpus.items() if d in keep}
    return BeirDataset(corpus, dev.queries, dev.qrels, name=dev.name, split=f"{dev.split}+{distractors}")


def evaluate_dev(
    encoder: MultiScaleEncoder,
    dev: DevSet,
    weights: Mapping[str, float] | None = None,
    tasks: Collection[str] | None = None,
) -> dict[str, float]:
    """Dev metrics of ``encoder`` (``"dev/<task>@<dim>"``) and ``"dev/score"``: their mean, or with ``weights``
    (``{task: weight}``, e.g. ``{"stsb": 1.0}``) the weighted mean (:func:`dev_score`). ``tasks`` limits them to
    those tasks (``scifact-document`` and ``scifact-sentence`` come together, as do the two ``ict-`` ones); None:
    every task ``dev`` has."""

    def wanted(*names: str) -> bool:
        return tasks is None or any(n in tasks for n in names)

    from muses.data.stsb import STSPairs
    from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
    from muses.evaluation.hierarchy import evaluate_hierarchy
    from muses.evaluation.retrieval import beir_documents, evaluate_scored, score_queries
    from muses.evaluation.sts import evaluate_sts

    was_training = encoder.training
    encoder.eval()
    full = encoder.embed_dim
    dims = sorted({min(64, full), full})
    out: dict[str, float] = {}
    if dev.stsb and wanted("stsb"):
        pairs = STSPairs([r[0] for r in dev.stsb], [r[1] for r in dev.stsb], [r[2] for r in dev.stsb], "stsb dev")
        sts = evaluate_sts(encoder, pairs, dims)
        out.update({f"dev/stsb@{d}": sts[f"spearman@{d}"] for d in dims})
    model = MusesCorpusEncoder(encoder, name="training")
    no_cache = EmbeddingCache(None)
    for prefix, ds in (("scifact", dev.scifact), ("ict", dev.ict)):
        if ds is not None and wanted(f"{prefix}-document", f"{prefix}-sentence"):
            vecs = no_cache.corpus(model, beir_documents(ds.corpus))
            scored = score_queries(model, vecs, ds.queries, dims, no_cache, with_tokens=False)
            m = evaluate_scored(scored, ds.qrels, ks=(10,))
            out.update({f"dev/{prefix}-{s}@{d}": m[f"{s}/ndcg@10@{d}"] for s in ("document", "sentence") for d in dims})
    for name, sd in (("scifact-evidence", dev.evidence), ("wikipedia-sentence", dev.sentences)):
        if sd is not None and sd.queries and wanted(name):
            from muses.evaluation.evidence import evaluate_sentence_retrieval

            ev = evaluate_sentence_retrieval(model, sd.documents, sd.queries, {"": sd.qrels}, dims, no_cache)
            out.update({f"dev/{name}@{d}": ev[f"flat/mrr@100@{d}"] for d in dims})
    if dev.documents and wanted("hierarchy"):
        h = evaluate_hierarchy(model, dev.documents, cache=no_cache, dims=[full], seed=0)
        out[f"dev/hierarchy@{full}"] = h[f"hierarchy/batch32@{full}"]
    out["dev/score"] = dev_score(out, weights)
    encoder.train(was_training)
    return out


def metric_task(key: str) -> str:
    """The task of a ``"dev/<task>@<dim>"`` metric name: ``"dev/scifact-document@64"`` -> ``"scifact-document"``."""
    return key.removeprefix("dev/").split("@")[0]


def dev_score(metrics: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """The selection score of ``"dev/<task>@<dim>"`` metrics: their mean, or the ``weights``-weighted mean (weight
    by ``<task>``, every dim of a task weighing the same; a task not in ``weights`` weighs 0); 0 without metrics.

    Example::

        >>> round(dev_score({"dev/stsb@64": 0.8, "dev/stsb@384": 0.9, "dev/scifact-document@384": 0.5}, {"stsb": 1}), 4)
        0.85
    """
    values = {k: v for k, v in metrics.items() if k != "dev/score"}
    if not values:
        return 0.0
    if weights is None:
        return float(np.mean(list(values.values())))
    w = {k: weights.get(metric_task(k), 0.0) for k in values}
    total = sum(w.values())
    return float(sum(w[k] * v for k, v in values.items()) / total) if total > 0 else 0.0


def tolerance_misses(
    metrics: Mapping[str, float], reference: Mapping[str, float], tolerance: Mapping[str, float]
) -> list[str]:
    """The ``"dev/<task>@<dim>"`` metrics of ``metrics`` that fall more than ``tolerance[<task>]`` below
    ``reference`` (the same metric of another model, e.g. the starting one); a task not in ``tolerance``, or a
    metric ``reference`` lacks, is never a miss.

    Example::

        >>> tolerance_misses({"dev/stsb@64": 0.80, "dev/scifact-document@64": 0.70},
        ...                  {"dev/stsb@64": 0.85, "dev/scifact-document@64": 0.71}, {"scifact-document": 0.002})
        ['dev/scifact-document@64']
    """
    return sorted(
        k
        for k, v in metrics.items()
        if k != "dev/score"
        and k in reference
        and (task := metric_task(k)) in tolerance
        and v < reference[k] - tolerance[task]
    )


def interpolation_summary(record: Mapping[str, Any]) -> str:
    """One line on what WiSE-FT kept (a trainer's ``interpolation.json`` record; alpha 0 is the starting model, 1.0
    the checkpoint) and which mixes the tolerance refused.

    Example::

        >>> interpolation_summary({"alphas": {"0.0": 0.85, "0.5": 0.87}, "kept": 0.0, "dev_score": 0.85,
        ...                        "misses": {"0.0": [], "0.5": ["dev/stsb@64", "dev/stsb@384"]}})
        'WiSE-FT kept alpha 0.0 (dev score 0.8500); over the tolerance: 0.5 (stsb@64, stsb@384)'
    """
    line = f"WiSE-FT kept alpha {record['kept']} (dev score {record['dev_score']:.4f})"
    refused = [
        f"{alpha} ({', '.join(m.removeprefix('dev/') for m in missed)})"
        for alpha, missed in record.get("misses", {}).items()
        if missed
    ]
    return f"{line}; over the tolerance: {', '.join(refused)}" if refused else line

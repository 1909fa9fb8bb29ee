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
  pooled in context, at the full dim and at 64;
- with ``data.dev_scifact_hierarchy`` too, hierarchy consistency over that pool: whether each of its sentences, pooled
  in context, picks its own abstract among all of the pool's (``hierarchy/all``, the whole-corpus variant that the
  test report reads over all of SciFact), at the full dim and at 64, kept per sentence.

With ``data.dev_scifact_kind_weights`` the SciFact claims (dev, and the unused claims) are weighted so that claims with
rationale evidence and claims without weigh what they do in SciFact's train split
(:func:`~muses.training.data.scifact_kind_weights`).

Each retrieval metric is a mean over queries, and :func:`read_dev` keeps each query's value, so two models can be
compared claim by claim: :func:`paired_bootstrap_bound` bounds the difference (``interpolate_confidence``).

The dev score that picks the best checkpoint is the mean of these numbers, or (``dev_weights``) their weighted
mean, with weights per metric name without the dim (``stsb``, ``scifact-document``, ``scifact-sentence``,
``scifact-evidence``, ``ict-document``, ``ict-sentence``, ``wikipedia-sentence``, ``hierarchy``,
``scifact-hierarchy``; a metric not named weighs 0).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
        scifact_hierarchy: also read hierarchy consistency over ``evidence.documents`` (``scifact-hierarchy``).
    """

    stsb: list[tuple[str, str, float]] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    scifact: BeirDataset | None = None
    evidence: EvidenceDev | None = None
    ict: BeirDataset | None = None
    sentences: EvidenceDev | None = None
    scifact_weights: dict[str, float] | None = None
    scifact_hierarchy: bool = False

    def digest(self) -> str:
        """16 hex digits of a sha256 over every pair, text, id, qrel and weight: equal digests, the same dev sets."""
        fields = asdict(self)
        if not self.scifact_hierarchy:  # left out when off, so dev sets read before it existed keep their digests
            del fields["scifact_hierarchy"]
        raw = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]

    def query_weights(self, metric: str) -> Mapping[str, float] | None:
        """The per-query weights of the dev metric ``metric`` (``"dev/<task>@<dim>"``): ``scifact_weights`` for
        ``scifact-document`` and ``scifact-sentence``; None (every query alike) otherwise."""
        return self.scifact_weights if metric_task(metric) in ("scifact-document", "scifact-sentence") else None


@dataclass
class DevReading:
    """One model's dev numbers.

    Attributes:
        metrics: ``"dev/<task>@<dim>"`` -> value (no ``"dev/score"``).
        per_query: the same names, for the retrieval metrics and ``scifact-hierarchy`` only -> query id (for
            ``scifact-hierarchy`` a sentence id ``"<doc id>:<index>"``) -> that query's value (nDCG@10, MRR@100, or
            1.0 / 0.0: the sentence picks its own abstract or not), whose mean (weighted by
            :meth:`DevSet.query_weights`) is the metric.
    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]


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
    """Dev metrics of ``encoder`` (``"dev/<task>@<dim>"``, :func:`read_dev`) and ``"dev/score"``: their mean, or
    with ``weights`` (``{task: weight}``, e.g. ``{"stsb": 1.0}``) the weighted mean (:func:`dev_score`)."""
    out = read_dev(encoder, dev, tasks).metrics
    out["dev/score"] = dev_score(out, weights)
    return out


def read_dev(
    encoder: MultiScaleEncoder, dev: DevSet, tasks: Collection[str] | None = None, context: str = "document"
) -> DevReading:
    """Dev metrics of ``encoder``, with each query's value for the retrieval ones. ``tasks`` limits them to those
    tasks (``scifact-document`` and ``scifact-sentence`` come together, as do the two ``ict-`` ones); None: every
    task ``dev`` has. SciFact claims are weighted by ``dev.scifact_weights`` when it is set. ``context``: how the
    documents' sentence vectors are pooled (:meth:`~muses.encoder.MultiScaleEncoder.encode_documents`)."""

    def wanted(*names: str) -> bool:
        return tasks is None or any(n in tasks for n in names)

    with encoder.evaluating():
        return _read_dev(encoder, dev, wanted, context)


def _read_dev(encoder: MultiScaleEncoder, dev: DevSet, wanted: Callable[..., bool], context: str) -> DevReading:
    from muses.data.stsb import STSPairs
    from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
    from muses.evaluation.evidence import sentence_ids, sentence_runs
    from muses.evaluation.hierarchy import evaluate_hierarchy, parent_hits
    from muses.evaluation.metrics import query_mrr, query_ndcg, query_values, run_from_scores
    from muses.evaluation.retrieval import beir_documents, score_queries
    from muses.evaluation.sts import evaluate_sts
    from muses.scoring import prefix_normalize

    full = encoder.embed_dim
    dims = sorted({min(64, full), full})
    out: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    if dev.stsb and wanted("stsb"):
        pairs = STSPairs([r[0] for r in dev.stsb], [r[1] for r in dev.stsb], [r[2] for r in dev.stsb], "stsb dev")
        sts = evaluate_sts(encoder, pairs, dims)
        out.update({f"dev/stsb@{d}": sts[f"spearman@{d}"] for d in dims})
    model = MusesCorpusEncoder(encoder, name="training", context=context)
    no_cache = EmbeddingCache(None)
    for prefix, ds in (("scifact", dev.scifact), ("ict", dev.ict)):
        if ds is not None and wanted(f"{prefix}-document", f"{prefix}-sentence"):
            vecs = no_cache.corpus(model, beir_documents(ds.corpus))
            scored = score_queries(model, vecs, ds.queries, dims, no_cache, with_tokens=False)
            for d, sq in scored.items():
                for s in ("document", "sentence"):
                    run = run_from_scores(sq.query_ids, sq.doc_ids, sq.dense[s], k=10)
                    per_query[f"dev/{prefix}-{s}@{d}"] = query_values(query_ndcg, ds.qrels, run, 10)
    for name, sd in (("scifact-evidence", dev.evidence), ("wikipedia-sentence", dev.sentences)):
        hierarchy = name == "scifact-evidence" and dev.scifact_hierarchy and wanted("scifact-hierarchy")
        if sd is not None and sd.queries and (wanted(name) or hierarchy):
            vecs = no_cache.corpus(model, sd.documents)
            if wanted(name):
                qids = list(sd.queries)
                q = no_cache.queries(model, [sd.queries[i] for i in qids])
                for d in dims:
                    run = sentence_runs(q, vecs, qids, d, depth=100)["flat"]
                    per_query[f"dev/{name}@{d}"] = query_values(query_mrr, sd.qrels, run, 100)
            ids = sentence_ids(vecs)
            for d in dims if hierarchy else ():  # every sentence against every abstract of the pool
                sent, doc = prefix_normalize(vecs.sentence, d), prefix_normalize(vecs.document, d)
                hits = parent_hits(sent, doc, vecs.sentence_doc).astype(float).tolist()
                per_query[f"dev/scifact-hierarchy@{d}"] = dict(zip(ids, hits, strict=True))
    out.update({k: weighted_mean(v, dev.query_weights(k)) for k, v in per_query.items()})
    if dev.documents and wanted("hierarchy"):
        h = evaluate_hierarchy(model, dev.documents, cache=no_cache, dims=[full], seed=0)
        out[f"dev/hierarchy@{full}"] = h[f"hierarchy/batch32@{full}"]
    return DevReading(out, per_query)


def weighted_mean(values: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """The mean of per-query ``values``, or their ``weights``-weighted mean (a query without a weight weighs 0); 0
    without values."""
    if not values:
        return 0.0
    if weights is None:
        return float(np.mean(list(values.values())))
    w = np.array([weights.get(q, 0.0) for q in values])
    return float(np.dot(w, list(values.values())) / w.sum()) if w.sum() > 0 else 0.0


def paired_bootstrap_bound(
    values: Mapping[str, float],
    reference: Mapping[str, float],
    confidence: float,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
) -> float:
    """The lower one-sided ``confidence`` bound of the (``weights``-weighted) mean difference ``values - reference``
    over the queries both have: how far below ``reference`` the metric may be, given how few queries measured it. A
    paired BCa bootstrap over queries (``scipy.stats.bootstrap``, 2000 resamples; the percentile bootstrap where BCa
    is undefined); the mean itself when every difference is the same or there are fewer than 3 queries.

    Example::

        >>> paired_bootstrap_bound({"a": 0.5, "b": 0.7}, {"a": 0.4, "b": 0.6}, 0.9)
        0.1
    """
    from scipy.stats import bootstrap

    qids = [q for q in values if q in reference]
    diff = np.array([values[q] - reference[q] for q in qids])
    w = np.ones(len(qids)) if weights is None else np.array([weights.get(q, 0.0) for q in qids])
    if not len(qids) or w.sum() <= 0:
        return 0.0
    mean = float(np.dot(w, diff) / w.sum())
    if np.ptp(diff) == 0 or len(qids) < 3:
        return round(mean, 12)

    def stat(d: np.ndarray, ww: np.ndarray, axis: int = -1) -> np.ndarray:
        return (d * ww).sum(axis=axis) / np.maximum(ww.sum(axis=axis), 1e-12)

    low = float("nan")
    for method in ("BCa", "percentile"):  # BCa is undefined when every jackknife estimate is the same
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about the BCa case above; the percentile bound follows
            res = bootstrap(
                (diff, w),
                stat,
                paired=True,
                vectorized=True,
                n_resamples=2000,
                confidence_level=confidence,
                alternative="greater",
                method=method,
                rng=np.random.default_rng(seed),
            )
        low = float(res.confidence_interval.low)
        if np.isfinite(low):
            break
    return min(low, mean) if np.isfinite(low) else mean


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
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    tolerance: Mapping[str, float],
    bounds: Mapping[str, float] | None = None,
) -> list[str]:
    """The ``"dev/<task>@<dim>"`` metrics of ``metrics`` that fall more than ``tolerance[<task>]`` below
    ``reference`` (the same metric of another model, e.g. the starting one); a task not in ``tolerance``, or a
    metric ``reference`` lacks, is never a miss. A metric in ``bounds`` (:func:`difference_bounds`) is judged by
    its bound on the difference instead: it misses when the bound is below ``-tolerance[<task>]``.

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
        and (
            (bounds[k] < -tolerance[task]) if bounds is not None and k in bounds else v < reference[k] - tolerance[task]
        )
    )


def difference_bounds(
    reading: DevReading,
    reference: DevReading,
    tasks: Collection[str],
    confidence: float,
    dev: DevSet,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`paired_bootstrap_bound` of every retrieval metric of ``tasks`` that both readings have per query:
    ``"dev/<task>@<dim>"`` -> the lower bound of ``reading - reference``, with ``dev``'s query weights."""
    return {
        k: paired_bootstrap_bound(v, reference.per_query[k], confidence, dev.query_weights(k), seed)
        for k, v in sorted(reading.per_query.items())
        if metric_task(k) in tasks and k in reference.per_query
    }


def interpolation_summary(record: Mapping[str, Any]) -> str:
    """One line on what WiSE-FT kept (a trainer's ``interpolation.json`` record; alpha 0 is the starting model, 1.0
    the checkpoint) and which mixes the tolerance refused.

    Example::

        >>> interpolation_summary({"alphas": {"0.0": 0.85, "0.5": 0.87}, "kept": 0.0, "dev_score": 0.85,
        ...                        "misses": {"0.0": [], "0.5": ["dev/stsb@64", "dev/stsb@384"]}})
        'WiSE-FT kept alpha 0.0 (dev score 0.8500); over the tolerance: 0.5 (stsb@64, stsb@384)'
    """
    line = f"WiSE-FT kept alpha {record['kept']} (dev score {record['dev_score']:.4f})"
    if record.get("kept_by") == "interpolate_keep":
        line += f", by interpolate_keep (this run's dev would keep {record['dev_would_keep']})"
    if record.get("confidence") is not None:
        line += f"; retrieval held to {record['confidence']:.0%} bounds"
    refused = [
        f"{alpha} ({', '.join(m.removeprefix('dev/') for m in missed)})"
        for alpha, missed in record.get("misses", {}).items()
        if missed
    ]
    return f"{line}; over the tolerance: {', '.join(refused)}" if refused else line

"""Sentence-level evidence retrieval: find the gold sentences of a query among all sentences of a corpus.

Two tasks, both through a :class:`~muses.evaluation.corpus.CorpusEncoder` (so MuSES and flat baselines share the
code), at every Matryoshka dim (renormalised prefixes):

- SciFact: each ``claims_dev`` claim with evidence -> its rationale sentences among all ~46k abstract sentences.
  Abstracts are built with ``document_from_sentences(abstract.sentences)``, so sentence positions are the gold
  indices.
- SQuAD v1.1 dev, ReQA-style: each question -> the sentences containing its answers' ``answer_start``, among all
  sentences of all dev paragraphs (``make_document(context)``). Scored twice: ``unambiguous`` (answers whose
  offset was inferred, :attr:`~muses.data.squad.SquadDataset.ambiguous`, left out; questions left without an
  answer dropped) and ``all`` (every answer).

Sentence ids are ``"<doc id>:<sentence index>"``, so runs and qrels go straight to
:func:`~muses.evaluation.metrics.evaluate_run`. Two rankings:

- ``flat``: all sentences by cosine to the query.
- ``zoom``: documents first: the sentences of the top ``zoom_docs`` documents (by document-vector cosine),
  ranked by sentence cosine, then all other sentences, ranked by sentence cosine.

Whether sentence vectors are pooled in context or encoded standalone is the encoder's business: pass
``MusesCorpusEncoder(enc, context="sentence")`` for standalone MuSES sentence vectors.

Metrics, named ``"<ranking>/<metric>@<dim>"`` (SQuAD: ``"<answers>/<ranking>/<metric>@<dim>"``):
``recall@1``, ``recall@5``, ``recall@10``, ``recall@100`` (share of a query's gold sentences in the top k) and
``mrr@100`` (reciprocal rank of the first gold sentence, 0 beyond rank 100), plus counts (``n_queries``...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from muses.data.scifact import SciFactAbstract, SciFactClaim, load_scifact_claims, load_scifact_corpus
from muses.data.squad import SquadAnswer, SquadDataset, load_squad
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, EmbeddingCache
from muses.evaluation.metrics import evaluate_run, run_from_scores
from muses.scoring import prefix_normalize
from muses.text import document_from_sentences, make_document
from muses.types import Document

RANKINGS: tuple[str, ...] = ("flat", "zoom")
EVIDENCE_KS: tuple[int, ...] = (1, 5, 10, 100)
REPORTED: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "recall@100", "mrr@100")
ZOOM_OFFSET = 4.0  # > the spread of cosines (2): every zoomed sentence outranks every other one

__all__ = [
    "RANKINGS",
    "evaluate_scifact_evidence",
    "evaluate_sentence_retrieval",
    "evaluate_squad_sentences",
    "gold_sentence",
    "scifact_evidence_documents",
    "scifact_evidence_qrels",
    "sentence_ids",
    "sentence_runs",
    "squad_documents",
    "squad_qrels",
    "zoom_scores",
]

Qrels = dict[str, dict[str, int]]


def sentence_ids(vecs: CorpusVectors) -> list[str]:
    """``S`` sentence ids ``"<doc id>:<index in doc>"``, in the row order of ``vecs.sentence``."""
    return [
        f"{vecs.doc_ids[d]}:{p}" for d, p in zip(vecs.sentence_doc.tolist(), vecs.sentence_pos.tolist(), strict=True)
    ]


def zoom_scores(
    doc_scores: np.ndarray, sent_scores: np.ndarray, sentence_doc: np.ndarray, zoom_docs: int
) -> np.ndarray:
    """Sentence scores that rank the sentences of each query's top documents first.

    Args:
        doc_scores: ``[Q, N]`` document scores.
        sent_scores: ``[Q, S]`` sentence cosines.
        sentence_doc: ``[S]`` document row of each sentence.
        zoom_docs: how many top documents are zoomed into.

    Returns:
        ``[Q, S]``: ``sent_scores + 4`` for sentences of the top ``zoom_docs`` documents, ``sent_scores``
        elsewhere; ranking by it gives the zoom order (top documents' sentences by cosine, then the rest).
    """
    n = doc_scores.shape[1]
    k = min(max(zoom_docs, 1), n)
    top = np.argpartition(-doc_scores, k - 1, axis=1)[:, :k]
    in_top = np.zeros(doc_scores.shape, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    return sent_scores + ZOOM_OFFSET * in_top[:, sentence_doc]


def sentence_runs(
    queries: np.ndarray,
    vecs: CorpusVectors,
    query_ids: Sequence[str],
    dim: int,
    zoom_docs: int = 10,
    depth: int = 100,
    block: int = 256,
) -> dict[str, dict[str, dict[str, float]]]:
    """The ``flat`` and ``zoom`` sentence runs of every query at the ``dim``-prefix.

    Args:
        queries: ``[Q, D]`` full-size query vectors.
        vecs: corpus vectors (full size).
        query_ids: ``Q`` ids.
        dim: Matryoshka dim.
        zoom_docs: documents zoomed into.
        depth: sentences kept per query and ranking.
        block: queries per matrix product.

    Returns:
        ``{"flat": run, "zoom": run}``, runs over sentence ids (:func:`sentence_ids`).
    """
    ids = sentence_ids(vecs)
    q = prefix_normalize(queries, dim)
    sents = prefix_normalize(vecs.sentence, dim)
    docs = prefix_normalize(vecs.document, dim)
    runs: dict[str, dict[str, dict[str, float]]] = {r: {} for r in RANKINGS}
    for b in range(0, q.shape[0], block):
        qb, qids = q[b : b + block], list(query_ids[b : b + block])
        flat = qb @ sents.T
        runs["flat"].update(run_from_scores(qids, ids, flat, k=depth))
        zoom = zoom_scores(qb @ docs.T, flat, vecs.sentence_doc, zoom_docs)
        runs["zoom"].update(run_from_scores(qids, ids, zoom, k=depth))
    return runs


def evaluate_sentence_retrieval(
    model: CorpusEncoder,
    docs: Sequence[Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Qrels],
    dims: Sequence[int] | None = None,
    cache: EmbeddingCache | None = None,
    zoom_docs: int = 10,
) -> dict[str, float]:
    """Score ``flat`` and ``zoom`` sentence retrieval of ``queries`` over the sentences of ``docs``.

    Args:
        model: any :class:`CorpusEncoder`.
        docs: the corpus.
        queries: query id -> text (every query of every qrels set).
        qrels: label -> qrels over sentence ids; ``""`` for unlabelled names (SciFact), e.g. ``"all"`` for
            ``"all/flat/recall@1@384"``.
        dims: Matryoshka dims (default: the model's).
        cache: embedding cache.
        zoom_docs: documents zoomed into.

    Returns:
        ``"[<label>/]<ranking>/<metric>@<dim>"`` metrics (see the module docstring).
    """
    if not queries:
        raise InputError("no queries to evaluate (did the limits leave any with gold sentences?).")
    cache = cache or EmbeddingCache(None)
    vecs = cache.corpus(model, docs)
    qids = list(queries)
    q = cache.queries(model, [queries[i] for i in qids])
    out: dict[str, float] = {"n_docs": float(len(docs)), "n_sentences": float(len(vecs.sentence))}
    for label, qr in qrels.items():
        out[_key(label, "n_queries")] = float(sum(1 for rels in qr.values() if rels))
    for dim in dims or model.dims:
        for ranking, run in sentence_runs(q, vecs, qids, dim, zoom_docs, depth=max(EVIDENCE_KS)).items():
            for label, qr in qrels.items():
                metrics = evaluate_run(qr, run, EVIDENCE_KS)
                out.update({_key(label, f"{ranking}/{m}@{dim}"): metrics[m] for m in REPORTED})
    return out


def _key(label: str, name: str) -> str:
    return f"{label}/{name}" if label else name


# --- SciFact ------------------------------------------------------------------------------------------------


def scifact_evidence_documents(corpus: Mapping[str, SciFactAbstract]) -> list[Document]:
    """One Document per abstract, its sentences kept as given (sentence index = rationale index)."""
    return [document_from_sentences(a.sentences, id=doc_id) for doc_id, a in corpus.items()]


def scifact_evidence_qrels(claims: Sequence[SciFactClaim]) -> Qrels:
    """Claim id -> ``{"<doc id>:<sentence index>": 1}`` over its rationale sentences (claims with evidence)."""
    return {c.id: {f"{d}:{i}": 1 for d, i in c.rationale_sentences} for c in claims if c.has_evidence}


def evaluate_scifact_evidence(
    model: CorpusEncoder,
    *,
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    zoom_docs: int = 10,
    split: str = "dev",
    max_docs: int | None = None,
    max_claims: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """SciFact claims -> rationale sentences among all corpus sentences, ``flat`` and ``zoom``, at every dim.

    Args:
        split: claims split with labels (``dev`` = BEIR test, or ``train``).
        max_docs: keep the first ``max_docs`` abstracts plus every abstract with evidence for a kept claim (so
            every claim keeps its gold sentences; fewer distractors, for tests and quick runs).
        max_claims: keep the first ``max_claims`` claims with evidence.

    Returns:
        ``"<ranking>/<metric>@<dim>"`` metrics, plus ``n_queries``, ``n_docs``, ``n_sentences``.
    """
    corpus = load_scifact_corpus(data_dir)
    claims = [c for c in load_scifact_claims(split, data_dir) if c.has_evidence][:max_claims]
    if max_docs is not None:
        needed = {d for c in claims for d in c.evidence_doc_ids}
        keep = set(list(corpus)[:max_docs]) | needed
        corpus = {k: v for k, v in corpus.items() if k in keep}
    qrels = scifact_evidence_qrels(claims)
    queries = {c.id: c.claim for c in claims}
    return evaluate_sentence_retrieval(
        model, scifact_evidence_documents(corpus), queries, {"": qrels}, dims, cache, zoom_docs
    )


# --- SQuAD --------------------------------------------------------------------------------------------------


def squad_documents(dataset: SquadDataset, max_docs: int | None = None) -> list[Document]:
    """One segmented Document per paragraph (id ``"<article index>-<paragraph index>"``), the first ``max_docs``."""
    docs: list[Document] = []
    for a, article in enumerate(dataset.articles):
        for p, paragraph in enumerate(article.paragraphs):
            if max_docs is not None and len(docs) >= max_docs:
                return docs
            docs.append(make_document(paragraph.context, id=f"{a}-{p}", metadata={"title": article.title}))
    return docs


def gold_sentence(doc: Document, answer: SquadAnswer) -> int:
    """Index of the sentence of ``doc`` that contains the answer's first character (``answer_start``)."""
    starts = np.array([s.start for s in doc.sentences])
    return max(int(np.searchsorted(starts, answer.answer_start, side="right")) - 1, 0)


def squad_qrels(
    dataset: SquadDataset, docs: Sequence[Document], max_questions: int | None = None
) -> tuple[dict[str, str], dict[str, Qrels]]:
    """Questions of the paragraphs in ``docs`` and their gold sentences.

    Returns:
        ``(queries, {"unambiguous": qrels, "all": qrels})``: question id -> text, and question id -> gold
        sentence ids. ``unambiguous`` leaves out answers with an inferred offset (and questions left with none).
    """
    by_id = {d.id: d for d in docs}
    queries: dict[str, str] = {}
    qrels: dict[str, Qrels] = {"unambiguous": {}, "all": {}}
    for a, article in enumerate(dataset.articles):
        for p, paragraph in enumerate(article.paragraphs):
            doc = by_id.get(f"{a}-{p}")
            if doc is None:
                continue
            for question in paragraph.questions:
                if max_questions is not None and len(queries) >= max_questions:
                    return queries, qrels
                queries[question.id] = question.question
                for label, answers in (
                    ("all", question.answers),
                    ("unambiguous", dataset.unambiguous_answers(question)),
                ):
                    gold = {f"{doc.id}:{gold_sentence(doc, ans)}": 1 for ans in answers}
                    if gold:
                        qrels[label][question.id] = gold
    return queries, qrels


def evaluate_squad_sentences(
    model: CorpusEncoder,
    *,
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    zoom_docs: int = 10,
    name: str = "squad",
    max_docs: int | None = None,
    max_questions: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """SQuAD dev questions -> answer sentences among all sentences of all (or ``max_docs``) paragraphs.

    Args:
        name: ``"squad"`` (dev, rebuilt offsets) or ``"xquad"``.
        max_docs: the first ``max_docs`` paragraphs only (their questions only).
        max_questions: the first ``max_questions`` questions of those paragraphs.

    Returns:
        ``"<answers>/<ranking>/<metric>@<dim>"`` metrics with ``answers`` in ``unambiguous``/``all``, plus
        ``<answers>/n_queries``, ``n_docs``, ``n_sentences``.
    """
    dataset = load_squad(name, data_dir)
    docs = squad_documents(dataset, max_docs)
    queries, qrels = squad_qrels(dataset, docs, max_questions)
    return evaluate_sentence_retrieval(model, docs, queries, qrels, dims, cache, zoom_docs)

"""Training data: hierarchy documents, supervised pairs, dev sets, and a resumable mixed-task sampler."""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from muses.data.beir import BeirDataset, is_heldout_dev, load_beir
from muses.data.scifact import load_scifact_claims, load_scifact_corpus
from muses.data.stsb import load_stsb
from muses.data.wikipedia import WikiArticle, load_wikipedia, stratified_split
from muses.errors import DataError
from muses.evaluation.retrieval import doc_text
from muses.text import document_from_sentences, make_document, word_window
from muses.training.config import TrainConfig
from muses.training.dev import DevSet, EvidenceDev, scifact_dev_subset, wikipedia_ict
from muses.types import Document, Span

TASKS = ("hierarchy", "stsb", "scifact", "ict", "rationale", "siblings")


@dataclass(frozen=True)
class Rationale:
    """A claim and its gold sentences in one abstract (the ``rationale`` task's item).

    Attributes:
        query: the claim.
        document: the abstract, its sentences as SciFact gives them (sentence index = rationale index).
        positives: indices of the gold sentences in ``document.sentences``, sorted; empty for a claim without
            rationale evidence and an abstract it cites (``data.scifact_claims_without_evidence``).
    """

    query: str
    document: Document
    positives: tuple[int, ...]


@dataclass
class TrainingData:
    """Everything a run trains and selects on (no test split anywhere).

    Attributes:
        documents: Wikipedia lead sections (train side of the seeded topic-stratified split) for the hierarchy.
        stsb: STS-B train pairs ``(sentence1, sentence2, score 0-5)``.
        scifact: SciFact ``train-fit`` ``(claim, cited abstract)`` pairs (the ``dev`` claims are held out).
        dev: dev data for model selection (:class:`~muses.training.dev.DevSet`).
        ict: inverse-cloze pairs ``(sentence, its article without it)`` from ``documents`` (``data.ict``).
        rationales: SciFact train-fit claims with their gold sentences in context (``data.scifact_rationales``).
    """

    documents: list[Document]
    stsb: list[tuple[str, str, float]]
    scifact: list[tuple[str, str]]
    dev: DevSet
    ict: list[tuple[str, str]] = field(default_factory=list)
    rationales: list[Rationale] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        """Items per training task."""
        return {
            "hierarchy": len(self.documents),
            "stsb": len(self.stsb),
            "scifact": len(self.scifact),
            "ict": len(self.ict),
            "rationale": len(self.rationales),
            "siblings": len(self.documents),
        }


def load_training_data(config: TrainConfig, data_dir: str | os.PathLike[str] | None = None) -> TrainingData:
    """Load the sources a config asks for. Wikipedia comes from the PyPI package; the rest from ``data_dir``."""
    d = config.data
    documents: list[Document] = []
    dev = DevSet()
    if d.wikipedia_articles or d.dev_wikipedia_articles:
        train_side, _ = stratified_split(load_wikipedia(), 0.2, seed=0)  # the test side is the report's
        if d.wikipedia_topics is not None:
            train_side = _only_topics(train_side, d.wikipedia_topics)
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(train_side))
        picked = [train_side[i] for i in order[: d.wikipedia_articles + d.dev_wikipedia_articles]]
        docs = [make_document(a.text, id=a.title, metadata={"topic": a.topic}) for a in picked]
        documents, dev.documents = docs[: d.wikipedia_articles], docs[d.wikipedia_articles :]
    stsb: list[tuple[str, str, float]] = []
    if d.stsb:
        p = load_stsb("train", data_dir)
        stsb = list(zip(p.sentences1, p.sentences2, p.scores, strict=True))
    if d.dev_stsb_pairs:
        sd = load_stsb("dev", data_dir)
        dev.stsb = list(zip(sd.sentences1, sd.sentences2, sd.scores, strict=True))[: d.dev_stsb_pairs]
    scifact: list[tuple[str, str]] = []
    if d.scifact:
        ds = load_beir("scifact", split="train-fit", data_dir=data_dir)  # "dev" is held out
        for qid in sorted(ds.qrels):
            for doc_id in sorted(ds.qrels[qid]):
                doc = ds.corpus[doc_id]
                scifact.append((ds.queries[qid], doc_text(doc.get("title", ""), doc["text"])))
    if d.dev_scifact_distractors is not None:
        held_out = load_beir("scifact", split="dev", data_dir=data_dir)
        dev.scifact = scifact_dev_subset(
            held_out, d.dev_scifact_distractors, seed=config.seed, max_claims=d.dev_scifact_claims
        )
        if d.dev_scifact_rationale_fold is not None:  # before the evidence set, which reads the pool's claims
            dev.scifact = with_fold_claims(dev.scifact, d.dev_scifact_rationale_fold, data_dir)
        if d.dev_scifact_evidence:  # on the dev claims' pool alone, with or without the unused claims below
            dev.evidence = scifact_dev_evidence(dev.scifact, data_dir)
            dev.scifact_hierarchy = d.dev_scifact_hierarchy
        if d.dev_scifact_unused_claims:  # with claims without evidence trained on, only the held-out fold's
            fold = d.dev_scifact_rationale_fold if d.scifact_claims_without_evidence else None
            dev.scifact = with_unused_claims(dev.scifact, data_dir, fold)
        if d.dev_scifact_kind_weights:
            dev.scifact_weights = scifact_kind_weights(dev.scifact, data_dir)
    if d.dev_wikipedia_ict:
        dev.ict = wikipedia_ict(inverse_cloze_pairs(dev.documents, seed=config.seed))
    if d.dev_wikipedia_sentences:
        dev.sentences = partial_sentence_queries(dev.documents, seed=config.seed)
    ict = inverse_cloze_pairs(documents, seed=config.seed) if d.ict else []
    rationales = (
        scifact_rationales(data_dir, d.dev_scifact_rationale_fold, d.scifact_claims_without_evidence)
        if d.scifact_rationales
        else []
    )
    data = TrainingData(documents, stsb, scifact, dev, ict, rationales)
    active = [t for t in TASKS if config.task_weights.get(t, 0) > 0 and data.sizes()[t] == 0]  # type: ignore[call-overload]
    if active:
        raise DataError(
            f"task(s) {active} have a positive weight in task_weights but no data; enable their "
            "data source or set their weight to 0."
        )
    return data


def rationale_fold(claim: str, folds: int) -> int:
    """The fold (``0 .. folds - 1``) of a SciFact claim for ``data.dev_scifact_rationale_fold``: a stable hash of its
    text, so that claims of the same text under two ids (SciFact has them, e.g. 85 and 86) share a fold.

    Example::

        >>> rationale_fold("Adult tissue-resident macrophages are seeded before birth.", 5)
        3
    """
    return zlib.crc32(f"rationale-fold:{claim}".encode()) % folds


def fold_claim_ids(
    fold: tuple[int, int] | None, data_dir: str | os.PathLike[str] | None = None, evidence: bool = True
) -> list[str]:
    """The ``train-fit`` claims with rationale evidence (``evidence=False``: without) in fold ``fold = (i, k)``
    (None: all of them), sorted: what the rationale task leaves out and the dev pool adds
    (``data.dev_scifact_rationale_fold``; the claims without evidence with ``data.scifact_claims_without_evidence``
    and ``data.dev_scifact_unused_claims``)."""
    return sorted(
        c.id
        for c in load_scifact_claims("train", data_dir)
        if c.has_evidence == evidence
        and not is_heldout_dev(c.id)
        and (fold is None or rationale_fold(c.claim, fold[1]) == fold[0])
    )


def scifact_rationales(
    data_dir: str | os.PathLike[str] | None = None,
    hold_out: tuple[int, int] | None = None,
    without_evidence: bool = False,
) -> list[Rationale]:
    """One :class:`Rationale` per (claim, abstract with evidence) of the SciFact ``train`` claims outside the
    held-out ``dev`` 20% (:func:`~muses.data.beir.is_heldout_dev`, the same split as the ``scifact`` task's),
    in claim order; without the claims of fold ``hold_out = (i, k)`` (:func:`fold_claim_ids`) when given. With
    ``without_evidence`` (``data.scifact_claims_without_evidence``) also one per (claim, cited abstract) of the
    claims without rationale evidence outside that fold, with no gold sentence (``positives == ()``)."""
    corpus = load_scifact_corpus(data_dir)
    kinds = (True, False) if without_evidence else (True,)
    left_out = {q for e in kinds for q in fold_claim_ids(hold_out, data_dir, e)} if hold_out is not None else set()
    out = []
    for claim in load_scifact_claims("train", data_dir):
        if is_heldout_dev(claim.id) or claim.id in left_out or not (claim.has_evidence or without_evidence):
            continue
        gold: dict[str, set[int]] = {}
        for doc_id, i in claim.rationale_sentences:
            gold.setdefault(doc_id, set()).add(i)
        for doc_id in claim.evidence_doc_ids if claim.has_evidence else claim.cited_doc_ids:
            abstract = corpus[doc_id]
            doc = document_from_sentences(abstract.sentences, id=doc_id)
            out.append(Rationale(claim.claim, doc, tuple(sorted(gold.get(doc_id, ())))))
    return out


def with_unused_claims(
    pool: BeirDataset, data_dir: str | os.PathLike[str] | None = None, fold: tuple[int, int] | None = None
) -> BeirDataset:
    """``pool`` (SciFact dev claims and their corpus, :func:`~muses.training.dev.scifact_dev_subset`) plus the
    ``train-fit`` claims without rationale evidence, which only the ``scifact`` task trains on (and the rationale
    task with ``data.scifact_claims_without_evidence``: then pass its held-out ``fold`` and only that fold's are
    added), and the abstracts they cite (``data.dev_scifact_unused_claims``): ``pool``'s claims and abstracts are all
    kept, so its numbers stay comparable. Split ``"<pool's split>+unused"`` (``"+unused<i>of<k>"`` for a fold)."""
    fit = load_beir("scifact", split="train-fit", data_dir=data_dir)
    added = [q for q in fold_claim_ids(fold, data_dir, evidence=False) if q in fit.qrels]
    return _with_fit_claims(pool, fit, added, "unused" if fold is None else f"unused{fold[0]}of{fold[1]}")


def with_fold_claims(
    pool: BeirDataset, fold: tuple[int, int], data_dir: str | os.PathLike[str] | None = None
) -> BeirDataset:
    """``pool`` (SciFact dev claims and their corpus, :func:`~muses.training.dev.scifact_dev_subset`) plus the
    rationale claims of fold ``fold = (i, k)`` (:func:`fold_claim_ids`), which the rationale task then leaves out,
    and the abstracts they cite (``data.dev_scifact_rationale_fold``): ``pool``'s claims and abstracts are all kept,
    and its distractors are drawn as without the fold. Split ``"<pool's split>+fold<i>of<k>"``."""
    fit = load_beir("scifact", split="train-fit", data_dir=data_dir)
    return _with_fit_claims(pool, fit, fold_claim_ids(fold, data_dir), f"fold{fold[0]}of{fold[1]}")


def _with_fit_claims(pool: BeirDataset, fit: BeirDataset, added: Sequence[str], tag: str) -> BeirDataset:
    """``pool`` with the ``train-fit`` claims ``added`` and the abstracts they cite (in corpus order), split
    ``"<pool's split>+<tag>"``."""
    cited = {d for q in added for d, r in fit.qrels[q].items() if r > 0}
    return BeirDataset(
        {d: doc for d, doc in fit.corpus.items() if d in pool.corpus or d in cited},
        {**pool.queries, **{q: fit.queries[q] for q in added}},
        {**pool.qrels, **{q: fit.qrels[q] for q in added}},
        name=pool.name,
        split=f"{pool.split}+{tag}",
    )


def scifact_kind_weights(
    pool: BeirDataset | Collection[str], data_dir: str | os.PathLike[str] | None = None
) -> dict[str, float]:
    """Claim id -> weight for the claims of a SciFact dev ``pool`` (or of these claim ids;
    ``data.dev_scifact_kind_weights``): the claims with rationale evidence together weigh their share of SciFact's
    ``train`` claims, and the claims without the rest, each claim of a kind alike; the weights sum to 1. A pool with
    claims of one kind only weighs them alike."""
    train = load_scifact_claims("train", data_dir)
    share = sum(c.has_evidence for c in train) / len(train)
    with_evidence = {c.id for c in train if c.has_evidence}
    kinds = {q: q in with_evidence for q in (pool.qrels if isinstance(pool, BeirDataset) else pool)}
    n_with = sum(kinds.values())
    n_without = len(kinds) - n_with
    if not n_with or not n_without:
        return {q: 1 / len(kinds) for q in kinds}
    return {q: share / n_with if has else (1 - share) / n_without for q, has in kinds.items()}


def scifact_dev_evidence(pool: BeirDataset, data_dir: str | os.PathLike[str] | None = None) -> EvidenceDev:
    """The dev ``pool``'s claims with evidence in its abstracts (the held-out SciFact ``dev`` claims, the 20% of
    ``train`` claims that training never sees, and those of a held-out rationale fold, :func:`with_fold_claims`),
    with the pool's abstracts as gold-segmented documents: the corpus of the dev evidence-sentence metric."""
    corpus = load_scifact_corpus(data_dir)
    claims = [c for c in load_scifact_claims("train", data_dir) if c.has_evidence and c.id in pool.queries]
    claims = [c for c in claims if all(d in pool.corpus for d in c.evidence_doc_ids)]
    docs = [document_from_sentences(corpus[d].sentences, id=d) for d in pool.corpus if d in corpus]
    qrels = {c.id: {f"{d}:{i}": 1 for d, i in c.rationale_sentences} for c in claims}
    return EvidenceDev(docs, {c.id: c.claim for c in claims}, qrels)


def _inner_sentence(texts: Sequence[str], rng: np.random.Generator, min_words: int) -> int | None:
    """The index of a random sentence of ``texts`` (not the first, at least ``min_words`` words); None for fewer
    than 3 sentences or no such sentence (then nothing is drawn)."""
    picks = [j for j in range(1, len(texts)) if len(texts[j].split()) >= min_words]
    if len(texts) < 3 or not picks:
        return None
    return picks[int(rng.integers(len(picks)))]


def held_out_sentence(doc: Document, rng: np.random.Generator, min_words: int = 6) -> tuple[str, str] | None:
    """An inverse-cloze pair of a document: a random sentence (not the first, at least ``min_words`` words) and the
    document's text without it; None for a document of fewer than 3 sentences or with no such sentence."""
    texts = doc.sentence_texts()
    j = _inner_sentence(texts, rng, min_words)
    if j is None:
        return None
    span = doc.sentences[j]
    return texts[j], f"{doc.text[: span.start].rstrip()} {doc.text[span.end :].lstrip()}".strip()


def inverse_cloze_pairs(documents: Sequence[Document], seed: int) -> list[tuple[str, str]]:
    """One :func:`held_out_sentence` pair per document that has one (seeded), in document order."""
    rng = np.random.default_rng(seed)
    return [p for p in (held_out_sentence(d, rng) for d in documents) if p is not None]


def partial_sentence_queries(
    documents: Sequence[Document], seed: int, fraction: float = 0.5, min_words: int = 8
) -> EvidenceDev:
    """Sentence picking from part of a sentence: for each document of 3 or more sentences, a seeded sentence (not
    the first, at least ``min_words`` words) whose seeded run of ``fraction`` of its words is query ``q<i>``, with
    that sentence (``"<doc id>:<index>"``) its one gold among every sentence of ``documents``."""
    rng = np.random.default_rng(seed)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for doc in documents:
        texts = doc.sentence_texts()
        j = _inner_sentence(texts, rng, min_words)
        if j is None:
            continue
        qid = f"q{len(queries)}"
        queries[qid] = word_window(texts[j], fraction, float(rng.random()))
        qrels[qid] = {f"{doc.id}:{j}": 1}
    return EvidenceDev(list(documents), queries, qrels)


def _only_topics(articles: list[WikiArticle], topics: Sequence[str]) -> list[WikiArticle]:
    known = sorted({a.topic for a in articles})
    unknown = sorted(set(topics) - set(known))
    if unknown:
        raise DataError(f"data.wikipedia_topics: unknown topic(s) {unknown}; the topics are: {', '.join(known)}.")
    return [a for a in articles if a.topic in set(topics)]


class MixedTaskSampler:
    """Draws (task, item indices) batches: a task by weight, then the next items of that task's shuffled epoch.

    All state (the numpy generator, each task's permutation and position) is plain JSON, so a checkpoint resumes
    the exact same sequence of batches.
    """

    def __init__(
        self, sizes: dict[str, int], weights: dict[str, float], batch_sizes: dict[str, int], seed: int
    ) -> None:
        self.tasks = [t for t in sizes if sizes[t] > 0 and weights.get(t, 0) > 0]
        total = sum(weights[t] for t in self.tasks)
        self.probs = [weights[t] / total for t in self.tasks]
        self.sizes = sizes
        self.batch_sizes = batch_sizes
        self.rng = np.random.default_rng(seed)
        self.perm: dict[str, list[int]] = {t: self.rng.permutation(sizes[t]).tolist() for t in self.tasks}
        self.pos: dict[str, int] = dict.fromkeys(self.tasks, 0)
        self.epoch: dict[str, int] = dict.fromkeys(self.tasks, 0)

    def next(self) -> tuple[str, list[int]]:
        """The next batch: its task and the indices of its items."""
        task = self.tasks[int(self.rng.choice(len(self.tasks), p=self.probs))]
        n = min(self.batch_sizes[task], self.sizes[task])
        if self.pos[task] + n > self.sizes[task]:
            self.perm[task] = self.rng.permutation(self.sizes[task]).tolist()
            self.pos[task] = 0
            self.epoch[task] += 1
        items = self.perm[task][self.pos[task] : self.pos[task] + n]
        self.pos[task] += n
        return task, items

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return copy.deepcopy(
            {"rng": self.rng.bit_generator.state, "perm": self.perm, "pos": self.pos, "epoch": self.epoch}
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
        state = copy.deepcopy(state)
        self.perm, self.pos, self.epoch = state["perm"], state["pos"], state["epoch"]


def truncate_text(text: str, offsets: Sequence[tuple[int, int]], max_tokens: int) -> str:
    """``text`` cut after its ``max_tokens``-th token (given the tokenizer's character ``offsets``)."""
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def truncate_document(doc: Document, offsets: Sequence[tuple[int, int]], max_tokens: int) -> Document:
    """Keep the sentences that end within the first ``max_tokens`` tokens (at least the first sentence)."""
    if len(offsets) <= max_tokens:
        return doc
    limit = offsets[max_tokens - 1][1]
    keep = [i for i, s in enumerate(doc.sentences) if s.end <= limit] or [0]
    end = doc.sentences[keep[-1]].end
    return Document(
        doc.text[:end],
        [doc.sentences[i] for i in keep],
        [Span(p.start, min(p.end, end)) for p in doc.paragraphs if p.start < end],
        [doc.sentence_paragraph[i] for i in keep],
        id=doc.id,
        metadata=doc.metadata,
    )

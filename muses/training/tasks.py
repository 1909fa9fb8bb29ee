"""Training tasks: each turns a batch of item indices into a loss dict, from one forward pass of the model.

- :class:`HierarchyTask`: hierarchical InfoNCE over the tokens, sentences and documents of Wikipedia articles;
- :class:`STSTask`: CoSENT on STS-B pairs and their gold scores;
- :class:`ContrastivePairTask`: MultipleNegativesRanking on (query, passage) pairs (SciFact claim-abstract,
  inverse-cloze sentence-article);
- :class:`RationaleTask`: query -> its gold sentences among in-context sentences (SciFact claim -> rationale
  sentences, the abstract's other sentences as hard negatives);
- :class:`SiblingsTask`: self-supervised, each in-context sentence vector -> the base model's standalone vector of
  the same sentence, among those of its siblings (the other sentences of its document) and the batch's;
- :class:`Retention`: the retention terms, distilling the student's vectors to the frozen base model's.

Every task's loss goes through one Matryoshka wrapper (:class:`~muses.losses.CurriculumMatryoshkaLoss` or
:class:`~muses.losses.MatryoshkaAll`), so a task dict holds ``loss`` (task loss + consistency, weighted), ``task``,
``consistency``, ``dim`` (the drawn dim, curriculum only) and ``retention`` (a 0-d tensor, 0 when off).
:func:`make_tasks` builds the recipe's tasks by name and :func:`make_sampler` the sampler that picks them.

Under torchrun each task gets the global batch's items, encodes only this rank's slice (:func:`~muses.training.
distributed.shard`) and gathers the vectors of every rank with gradients before any loss: in-batch negatives
(hierarchical InfoNCE, MNRL), CoSENT's pairs, the consistency term and retention then see the global batch, as in
one process.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from muses.encoder import MultiScaleEncoder
from muses.heads import matryoshka
from muses.losses import (
    CoSENT,
    CurriculumMatryoshkaLoss,
    DimSchedule,
    HierarchicalInfoNCE,
    InContextSentenceRanking,
    MatryoshkaAll,
    MaxSimDocumentRanking,
    MultipleNegativesRanking,
    RetentionLoss,
)
from muses.text import document_from_sentences, word_window
from muses.training import distributed as dd
from muses.training.config import LossConfig, TrainConfig
from muses.training.data import MixedTaskSampler, Rationale, TrainingData, truncate_document, truncate_text
from muses.types import Document

PAD_GROUP = 16  # windows per forward batch, sorted by length: short texts are not padded to long ones

MatryoshkaWrapper = CurriculumMatryoshkaLoss | MatryoshkaAll


class Task(Protocol):
    """A training task: ``task(items, progress)`` -> loss dict (see the module docstring)."""

    def __call__(self, items: list[int], progress: float) -> dict[str, Any]: ...


class Retention:
    """Retention: distillation of the student's vectors to the frozen base model's (``loss.retention``).

    Args:
        teacher: the frozen base model, or None (retention off: every term is 0).
        loss: the loss config (``retention``, ``retention_weight``, ``retention_task_weights``,
            ``retention_dims``: prefix dims whose term is added to the full-dim one).
        device: where the student's vectors live (targets are moved there).
    """

    def __init__(self, teacher: MultiScaleEncoder | None, loss: LossConfig, device: torch.device) -> None:
        self.teacher = teacher
        self.loss = RetentionLoss(loss.retention) if loss.retention != "none" else None
        self.base_weight = loss.retention_weight
        self.task_weights = {str(k): v for k, v in loss.retention_task_weights.items()}
        self.dims = sorted(set(loss.retention_dims))
        self.device = device
        self._cache: dict[str, Tensor] = {}

    def weight(self, task: str) -> float:
        """The retention weight of ``task``: ``retention_weight`` x its task weight (default 1); 0 when off."""
        return 0.0 if self.loss is None else self.base_weight * self.task_weights.get(task, 1.0)

    def distil(self, student: Tensor, target: Tensor) -> Tensor:
        """The retention loss of ``student`` ``[N, D]`` to ``target`` ``[N, D]`` at the full dim plus, for each of
        ``retention_dims`` below ``D``, on the first ``d`` coordinates; 0-d, unweighted."""
        assert self.loss is not None, "retention is off"
        target = target.to(student.device)
        terms = [self.loss(student, target)]
        terms += [self.loss(student[:, :d], target[:, :d]) for d in self.dims if d < student.shape[-1]]
        return torch.stack(terms).sum()

    def targets(self, texts: Sequence[str], cache: bool = True) -> Tensor:
        """Frozen base-model sentence vectors ``[N, D]`` (full dim, normalised), computed once per text; with
        ``cache=False`` (texts drawn afresh each step, e.g. random parts of sentences) computed and not kept."""
        if not cache:
            assert self.teacher is not None, "retention without a teacher"
            return torch.from_numpy(self.teacher.encode_sentences(list(texts), batch_size=64)).to(self.device)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            assert self.teacher is not None, "retention without a teacher"
            vecs = self.teacher.encode_sentences(missing, batch_size=64)
            self._cache.update(zip(missing, torch.from_numpy(vecs), strict=True))
        return torch.stack([self._cache[t] for t in texts]).to(self.device)

    def standalone(self, student: Tensor, texts: Sequence[str], task: str) -> Tensor:
        """Retention of ``student`` ``[N, D]`` to the base model's standalone vectors of ``texts`` (N); 0-d."""
        w = self.weight(task)
        if w == 0 or self.loss is None:
            return student.new_zeros(())
        return w * self.distil(student, self.targets(texts))

    def in_context_target(self, docs: Sequence[Document], task: str = "hierarchy") -> Tensor | None:
        """The base model's in-context sentence vectors ``[S, D]`` (S: all sentences of ``docs``, in order,
        normalised) on the student's device; None when ``task``'s retention is off."""
        if self.weight(task) == 0 or self.loss is None:
            return None
        with torch.no_grad():
            assert self.teacher is not None, "retention without a teacher"
            states = self.teacher.token_states([d.text for d in docs], batch_size=PAD_GROUP)
            target = torch.cat(
                [
                    self.teacher.document_vectors(d, st, ("sentence",))["sentence"]
                    for d, st in zip(docs, states, strict=True)
                ]
            )
        return torch.nn.functional.normalize(target, dim=-1).to(self.device)

    def in_context(
        self, sentence: Tensor, docs: Sequence[Document], target: Tensor | None = None, task: str = "hierarchy"
    ) -> Tensor:
        """Retention of in-context sentence vectors ``[S, D]`` (S: all sentences of ``docs``, in order) to the base
        model's, pooled from the same documents (``target`` ``[S, D]``: those, already computed), weighted by
        ``task``'s retention weight; 0-d."""
        w = self.weight(task)
        if w == 0 or self.loss is None:
            return sentence.new_zeros(())
        if target is None:
            target = self.in_context_target(docs, task)
            assert target is not None
        return w * self.distil(sentence, target)


def matryoshka_wrapper(dims: Sequence[int], loss: LossConfig) -> MatryoshkaWrapper:
    """The Matryoshka wrapper of ``loss.matryoshka``: all dims at once, or one dim a step from a schedule."""
    if loss.matryoshka == "all":
        return MatryoshkaAll(dims, consistency_weights=loss.consistency_weight)
    return CurriculumMatryoshkaLoss(dims, DimSchedule(dims, loss.matryoshka), loss.consistency_weight)


@dataclass
class TaskContext:
    """What every task shares.

    Attributes:
        encoder: the model being trained.
        wrapper: the Matryoshka wrapper (:func:`matryoshka_wrapper`), one for all tasks.
        generator: the run's seeded generator (token subsampling, the Matryoshka dim draw).
        retention: the retention terms.
        loss: the loss config.
    """

    encoder: MultiScaleEncoder
    wrapper: MatryoshkaWrapper
    generator: torch.Generator
    retention: Retention
    loss: LossConfig

    def matryoshka(self, loss_fn: Callable[[int], Tensor], embeddings: list[Tensor], progress: float) -> dict[str, Any]:
        """``loss_fn(d)`` under the Matryoshka wrapper at training ``progress`` in [0, 1]: the wrapper's dict."""
        return dict(self.wrapper(loss_fn, embeddings, progress, self.generator))


def cut_documents(encoder: MultiScaleEncoder, docs: Sequence[Document], max_tokens: int) -> list[Document]:
    """``docs`` cut to the sentences that end within their first ``max_tokens`` tokens (at least one sentence)."""
    offsets = encoder.tokenizer(
        [d.text for d in docs], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )["offset_mapping"]
    return [truncate_document(d, o, max_tokens) for d, o in zip(docs, offsets, strict=True)]


class HierarchyTask:
    """Hierarchical InfoNCE on whole documents (:class:`~muses.losses.HierarchicalInfoNCE`).

    Each document (cut to ``max_doc_tokens``) passes through the model once; its vectors are
    token ``[T, D]`` (T: all tokens of the batch, subsampled to ``loss.tokens_per_batch``) with their sentence ids
    ``[T]`` (-1: no sentence), sentence ``[S, D]`` with their document ids ``[S]``, and document ``[B, D]``
    (B: documents in the batch). Retention: the document vectors to the base model's standalone vectors of the
    texts, plus (``loss.retain_sentences``) the sentence vectors to the base model's in-context ones. Under
    torchrun a rank encodes its slice of the documents and the vectors of all ranks are gathered
    (:func:`_gather_hierarchy`) before the token subsampling and the loss.
    """

    name = "hierarchy"

    def __init__(self, ctx: TaskContext, documents: Sequence[Document], max_doc_tokens: int) -> None:
        self.ctx = ctx
        self.documents = documents
        self.max_doc_tokens = max_doc_tokens
        self.infonce = HierarchicalInfoNCE(temperature=ctx.loss.temperature, alpha=ctx.loss.alpha)

    def __call__(self, items: list[int], progress: float) -> dict[str, Any]:
        enc, lc = self.ctx.encoder, self.ctx.loss
        docs = cut_documents(enc, [self.documents[i] for i in items], self.max_doc_tokens)
        local = dd.shard(docs)  # this rank's slice of the global batch (all of it in one process)
        states = enc.token_states([d.text for d in local], batch_size=PAD_GROUP)
        tok, tok_sent, sent, sent_doc, doc_vecs = [], [], [], [], []
        n_sent = 0
        for i, (doc, st) in enumerate(zip(local, states, strict=True)):
            v = enc.document_vectors(doc, st)
            tok.append(v["token"])
            ids = v["token_sentence_ids"].to(v["token"].device)
            tok_sent.append(torch.where(ids >= 0, ids + n_sent, ids))
            sent.append(v["sentence"])
            sent_doc.append(torch.full((len(v["sentence"]),), i, dtype=torch.long))
            doc_vecs.append(v["document"])
            n_sent += len(v["sentence"])
        token, token_sentence = torch.cat(tok), torch.cat(tok_sent)
        sentence, sentence_doc, document = torch.cat(sent), torch.cat(sent_doc), torch.stack(doc_vecs)
        target = self.ctx.retention.in_context_target(local) if lc.retain_sentences else None
        if dd.is_distributed():
            token, token_sentence, sentence, sentence_doc, document, target = _gather_hierarchy(
                token, token_sentence, sentence, sentence_doc, document, target
            )
        if len(token) > lc.tokens_per_batch:
            pick = torch.randperm(len(token), generator=self.ctx.generator)[: lc.tokens_per_batch]
            token, token_sentence = token[pick.to(token.device)], token_sentence[pick.to(token.device)]

        def loss_fn(d: int) -> Tensor:
            out = self.infonce(
                token[:, :d],
                token_sentence,
                sentence[:, :d],
                sentence_doc,
                document[:, :d],
                same_doc_sentence_negatives=lc.same_doc_negatives,
            )
            return lc.hierarchy_weight * out["loss"]

        res = self.ctx.matryoshka(loss_fn, [sentence, document], progress)
        res["retention"] = self.ctx.retention.standalone(document, [d.text for d in docs], self.name)
        if lc.retain_sentences:
            res["retention"] = res["retention"] + self.ctx.retention.in_context(sentence, docs, target)
        if lc.retain_standalone_sentences:
            res["retention"] = res["retention"] + self._standalone_sentences(local, docs)
        return res

    def _standalone_sentences(self, local: Sequence[Document], docs: Sequence[Document]) -> Tensor:
        """Retention of the sentences of the batch encoded alone ``[S, D]`` (S: all sentences of ``docs``, in order;
        a rank encodes those of its ``local`` slice, gathered with gradients) to the base model's standalone
        vectors; 0-d. It anchors the standalone space, which no in-context term touches."""
        enc = self.ctx.encoder
        if self.ctx.retention.weight(self.name) == 0:
            return torch.zeros((), device=enc.device)
        mine = [s for d in local for s in d.sentence_texts()]
        (emb,), _ = dd.gather_parts(
            [enc.standalone_vectors(enc.token_states(mine, batch_size=PAD_GROUP, branch=False))]
        )
        return self.ctx.retention.standalone(emb, [s for d in docs for s in d.sentence_texts()], self.name)


def _gather_hierarchy(
    token: Tensor,
    token_sentence: Tensor,
    sentence: Tensor,
    sentence_doc: Tensor,
    document: Tensor,
    target: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One rank's hierarchy batch -> the global batch, as one process would have built it from all the documents.

    Vectors (token ``[T, D]``, sentence ``[S, D]``, document ``[B, D]``) are gathered with gradients; the sentence
    ids of tokens ``[T]`` and document ids of sentences ``[S]`` are shifted by the sentences and documents of the
    ranks before; the retention ``target`` ``[S, D]`` (or None) is gathered without gradients.
    """
    (token, sentence, document), counts = dd.gather_parts([token, sentence, document])
    ids, id_counts = dd.gather_rows(torch.cat([token_sentence.to(token.device), sentence_doc.to(token.device)]))
    tok_ids, sent_ids, n_sent, n_doc = [], [], 0, 0
    for (n_tok, n_s, n_d), block in zip(counts, ids.split(id_counts), strict=True):
        t, s = block[:n_tok], block[n_tok:]
        tok_ids.append(torch.where(t >= 0, t + n_sent, t))
        sent_ids.append(torch.where(s >= 0, s + n_doc, s))
        n_sent, n_doc = n_sent + n_s, n_doc + n_d
    if target is not None:
        target = dd.gather_rows(target)[0]
    return token, torch.cat(tok_ids), sentence, torch.cat(sent_ids), document, target


class _PairTask:
    """A pair task: the 2B texts of B pairs pass through the model standalone, giving ``a`` ``[B, D]`` (first
    texts) and ``b`` ``[B, D]`` (second texts); the pair loss runs on their renormalised ``d``-prefixes.
    Retention: all 2B vectors to the base model's standalone vectors of the texts. Under torchrun a rank encodes
    the 2b texts of its b pairs and ``a``, ``b`` are gathered over ranks (with gradients) into the global ``[B, D]``."""

    name: str

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def _batch(self, items: list[int]) -> tuple[list[str], Tensor | None]:
        """The 2B texts (firsts, then seconds) and per-pair targets ``[B]`` or None."""
        raise NotImplementedError

    def _pair_loss(self, a: Tensor, b: Tensor, target: Tensor | None) -> Tensor:
        """The weighted pair loss of ``a`` and ``b`` ``[B, d]``; 0-d."""
        raise NotImplementedError

    def __call__(self, items: list[int], progress: float) -> dict[str, Any]:
        texts, target = self._batch(items)
        enc = self.ctx.encoder
        if dd.is_distributed():  # encode this rank's pairs only, then gather the global batch's vectors
            mine = dd.shard(range(len(items)))
            local = [texts[i] for i in mine] + [texts[len(items) + i] for i in mine]
            emb_local = enc.standalone_vectors(enc.token_states(local, batch_size=PAD_GROUP, branch=False))
            (a, b), _ = dd.gather_parts([emb_local[: len(mine)], emb_local[len(mine) :]])
            emb = torch.cat([a, b])
        else:
            emb = enc.standalone_vectors(enc.token_states(texts, batch_size=PAD_GROUP, branch=False))
            a, b = emb[: len(items)], emb[len(items) :]

        def loss_fn(d: int) -> Tensor:
            return self._pair_loss(matryoshka(a, d), matryoshka(b, d), target)

        res = self.ctx.matryoshka(loss_fn, [emb], progress)
        res["retention"] = self.ctx.retention.standalone(emb, texts, self.name)
        return res


class STSTask(_PairTask):
    """CoSENT (:class:`~muses.losses.CoSENT`) on STS-B pairs ``(sentence1, sentence2, score 0-5)``: ``a``, ``b``
    ``[B, D]`` and gold scores ``[B]`` scaled to 0-1, weighted by ``loss.cosent_weight``."""

    name = "stsb"

    def __init__(self, ctx: TaskContext, rows: Sequence[tuple[str, str, float]]) -> None:
        super().__init__(ctx)
        self.rows = rows
        self.cosent = CoSENT()

    def _batch(self, items: list[int]) -> tuple[list[str], Tensor | None]:
        rows = [self.rows[i] for i in items]
        scores = torch.tensor([r[2] / 5.0 for r in rows], device=self.ctx.encoder.device)
        return [r[0] for r in rows] + [r[1] for r in rows], scores

    def _pair_loss(self, a: Tensor, b: Tensor, target: Tensor | None) -> Tensor:
        assert target is not None
        return self.ctx.loss.cosent_weight * self.cosent(a, b, target)


class ContrastivePairTask(_PairTask):
    """MultipleNegativesRanking (:class:`~muses.losses.MultipleNegativesRanking`) on ``(query, passage)`` pairs:
    queries ``a`` ``[B, D]``, passages ``b`` ``[B, D]`` (cut to ``max_pair_tokens``), in-batch negatives;
    weighted by ``loss.mnrl_weight``."""

    def __init__(self, ctx: TaskContext, name: str, pairs: Sequence[tuple[str, str]], max_pair_tokens: int) -> None:
        super().__init__(ctx)
        self.name = name
        self.pairs = pairs
        self.max_pair_tokens = max_pair_tokens
        self.mnrl = MultipleNegativesRanking()

    def _short(self, text: str) -> str:
        """``text`` cut to ``max_pair_tokens`` tokens."""
        offsets = self.ctx.encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return truncate_text(text, offsets["offset_mapping"], self.max_pair_tokens)

    def _batch(self, items: list[int]) -> tuple[list[str], Tensor | None]:
        pairs = [self.pairs[i] for i in items]
        return [p[0] for p in pairs] + [self._short(p[1]) for p in pairs], None

    def _pair_loss(self, a: Tensor, b: Tensor, target: Tensor | None) -> Tensor:
        return self.ctx.loss.mnrl_weight * self.mnrl(a, b)


class RationaleTask:
    """Query -> its gold sentences in context (:class:`~muses.losses.InContextSentenceRanking`): SciFact claims ->
    their rationale sentences, the other sentences of the same abstract as hard negatives.

    A batch of ``B`` items (claim, abstract, gold sentence indices) encodes each distinct abstract (a longer one
    cut to the window of its sentences around the first gold sentence of the first item with gold that fits
    ``max_tokens``, :meth:`window`; gold sentences outside it are dropped, and an item left without one is skipped)
    in one pass,
    giving in-context sentence vectors ``[S, D]`` (S: all sentences of the batch's abstracts), and the claims
    standalone, ``[B, D]``. Every claim ranks all ``S`` sentences: its abstract's other sentences are the hard
    negatives, the other abstracts' the easy ones (with ``loss.rationale_candidates: document``, only its own
    abstract's sentences are candidates, ``[B, S]`` bool). With ``loss.rationale_maxsim_weight`` the claims also
    rank the batch's ``A`` abstracts, each scored by its best sentence
    (:class:`~muses.losses.MaxSimDocumentRanking`), as sentence max-sim retrieval ranks documents; an item without
    gold sentences (``data.scifact_claims_without_evidence``: a claim and one abstract it cites, windowed from its
    first sentence when no item with gold shares it; the claim's other cited abstracts in the batch count as
    negatives, as for a claim with evidence) takes part in this term and the claims' retention only. Retention
    (``retention_task_weights.rationale``): the in-context sentences to the base model's, and the claims to the base
    model's standalone vectors; with ``loss.rationale_retain_documents`` also the abstracts' document vectors
    ``[A, D]`` (from the same pass) to the base model's standalone ones. Under torchrun every rank computes the
    whole batch (gradients averaged over ranks are then the batch's own).
    """

    name = "rationale"

    def __init__(self, ctx: TaskContext, items: Sequence[Rationale], max_tokens: int) -> None:
        self.ctx = ctx
        self.items = items
        self.max_tokens = max_tokens
        self.ranking = InContextSentenceRanking(scale=1.0 / ctx.loss.temperature)
        self.maxsim = MaxSimDocumentRanking(scale=1.0 / ctx.loss.temperature)

    def window(self, r: Rationale) -> tuple[Document, int]:
        """The consecutive sentences of ``r.document`` around its first gold sentence (its first sentence for an item
        without gold) that fit ``max_tokens`` (grown forwards, then backwards, one sentence at a time), as a
        document, and the index of its first sentence."""
        doc = r.document
        offsets = self.ctx.encoder.tokenizer(
            doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        if len(offsets) <= self.max_tokens:
            return doc, 0
        ends = [e for _, e in offsets]
        counts = [bisect.bisect_right(ends, s.end) - bisect.bisect_right(ends, s.start) for s in doc.sentences]
        a = b = r.positives[0] if r.positives else 0
        used = counts[a]
        grew = True
        while grew:
            grew = False
            if b + 1 < len(counts) and used + counts[b + 1] <= self.max_tokens:
                b, used, grew = b + 1, used + counts[b + 1], True
            if a > 0 and used + counts[a - 1] <= self.max_tokens:
                a, used, grew = a - 1, used + counts[a - 1], True
        texts = doc.sentence_texts()[a : b + 1]
        return document_from_sentences(texts, id=doc.id), a

    def __call__(self, items: list[int], progress: float) -> dict[str, Any]:
        enc = self.ctx.encoder
        batch = [self.items[i] for i in items]
        windows: dict[str, tuple[Document, int]] = {}  # doc id -> (its window, index of its first sentence)
        for r in sorted(batch, key=lambda r: not r.positives):  # an item with gold sentences places the window
            if str(r.document.id) not in windows:
                windows[str(r.document.id)] = self.window(r)
        docs = {str(r.document.id): windows[str(r.document.id)] for r in batch}  # in batch order
        order = list(docs)
        sizes = [len(docs[d][0].sentences) for d in order]
        start = dict(zip(order, itertools.accumulate(sizes[:-1], initial=0), strict=True))
        gold: list[list[int]] = []  # per kept item: its gold sentences' rows in the batch's sentences
        kept = []
        for r in batch:
            window, first = docs[str(r.document.id)]
            rows = [
                start[str(r.document.id)] + p - first for p in r.positives if 0 <= p - first < len(window.sentences)
            ]
            if rows or not r.positives:  # a claim without evidence ranks only abstracts (the max-sim term)
                kept.append(r)
                gold.append(rows)
        states = enc.token_states([docs[d][0].text for d in order], batch_size=PAD_GROUP)
        retain_documents = self.ctx.loss.rationale_retain_documents
        scales = ("sentence", "document") if retain_documents else ("sentence",)
        vectors = [enc.document_vectors(docs[d][0], st, scales) for d, st in zip(order, states, strict=True)]
        sentence = torch.cat([v["sentence"] for v in vectors])
        positives = torch.zeros(len(kept), len(sentence), dtype=torch.bool)
        candidates = None
        if self.ctx.loss.rationale_candidates == "document":
            candidates = torch.zeros(len(kept), len(sentence), dtype=torch.bool)
        for i, (r, rows) in enumerate(zip(kept, gold, strict=True)):
            positives[i, rows] = True
            if candidates is not None:
                first_row = start[str(r.document.id)]
                candidates[i, first_row : first_row + len(docs[str(r.document.id)][0].sentences)] = True
        texts = [r.query for r in kept]
        query = enc.standalone_vectors(enc.token_states(texts, batch_size=PAD_GROUP, branch=False))
        owner = torch.repeat_interleave(torch.arange(len(order)), torch.tensor(sizes))  # [S]: each row's abstract
        own = torch.tensor([order.index(str(r.document.id)) for r in kept])  # [B]: each claim's abstract
        maxsim_weight = self.ctx.loss.rationale_maxsim_weight

        has_gold = positives.any(dim=1)  # [B]: False for the claims without evidence

        def loss_fn(d: int) -> Tensor:
            q, s = matryoshka(query, d), matryoshka(sentence, d)
            ranked = (
                self.ctx.loss.rationale_weight
                * self.ranking(
                    q[has_gold], s, positives[has_gold], None if candidates is None else candidates[has_gold]
                )
                if bool(has_gold.any())
                else q.new_zeros(())
            )
            return ranked + maxsim_weight * self.maxsim(q, s, owner, own) if maxsim_weight else ranked

        res = self.ctx.matryoshka(loss_fn, [query, sentence], progress)
        ordered = [docs[d][0] for d in order]
        res["retention"] = self.ctx.retention.standalone(query, texts, self.name) + self.ctx.retention.in_context(
            sentence, ordered, task=self.name
        )
        if retain_documents:
            document = torch.stack([v["document"] for v in vectors])
            res["retention"] = res["retention"] + self.ctx.retention.standalone(
                document, [w.text for w in ordered], self.name
            )
        return res


class SiblingsTask:
    """Self-supervised sentence identity in context: the frozen base model's standalone vector of each sentence
    (the query, as at search time) must pick that sentence's in-context vector among those of every sentence of the
    batch (:class:`~muses.losses.InContextSentenceRanking`, one positive each; ``loss.siblings_direction:
    identify`` swaps the roles, as round 6 did). Its siblings, the other sentences of the same document, are the
    hard negatives: context may shape a sentence's vector but may not make it say what its neighbours say. This is
    the failure the hierarchy's sentence -> document term causes, and the one SQuAD's answer sentences show (in
    context below standalone at Recall@1). With ``loss.siblings_query_words`` below 1 the query is a seeded run of
    that fraction of the sentence's words (:func:`~muses.text.word_window`), as a question shares only part of
    its answer's words.

    A batch of ``B`` Wikipedia documents (cut to ``max_doc_tokens``) passes through the model once, giving
    in-context sentence vectors ``[S, D]`` (S: all sentences of the batch) and document vectors ``[B, D]``; the
    targets are the teacher's standalone vectors of the ``S`` sentence texts ``[S, D]`` (computed once per text,
    no gradient). Retention (``retention_task_weights.siblings``): the document vectors to the teacher's standalone
    vectors of the document texts, and the student's standalone vectors of the ``S`` sentences ``[S, D]`` (one more
    pass, of short texts) to the targets, since queries are encoded alone. Needs the teacher (``loss.retention`` not
    ``none``). Under torchrun every rank computes the whole batch.
    """

    name = "siblings"

    def __init__(self, ctx: TaskContext, documents: Sequence[Document], max_doc_tokens: int) -> None:
        self.ctx = ctx
        self.documents = documents
        self.max_doc_tokens = max_doc_tokens
        self.ranking = InContextSentenceRanking(scale=1.0 / ctx.loss.temperature)

    def __call__(self, items: list[int], progress: float) -> dict[str, Any]:
        enc = self.ctx.encoder
        docs = cut_documents(enc, [self.documents[i] for i in items], self.max_doc_tokens)
        states = enc.token_states([d.text for d in docs], batch_size=PAD_GROUP)
        vecs = [enc.document_vectors(d, st, ("sentence", "document")) for d, st in zip(docs, states, strict=True)]
        sentence = torch.cat([v["sentence"] for v in vecs])
        document = torch.stack([v["document"] for v in vecs])
        texts = [s for d in docs for s in d.sentence_texts()]
        frac = self.ctx.loss.siblings_query_words
        queries = texts
        if frac < 1:  # only then a draw: whole-sentence runs keep the generator's stream
            draws = torch.rand(len(texts), generator=self.ctx.generator).tolist()
            queries = [word_window(t, frac, u) for t, u in zip(texts, draws, strict=True)]
        target = self.ctx.retention.targets(queries, cache=frac >= 1)  # random parts are rarely drawn twice
        positives = torch.eye(len(sentence), dtype=torch.bool)
        retrieval = self.ctx.loss.siblings_direction == "retrieval"

        def loss_fn(d: int) -> Tensor:
            s, t = matryoshka(sentence, d), matryoshka(target, d)
            ranked = self.ranking(t, s, positives) if retrieval else self.ranking(s, t, positives)
            return self.ctx.loss.siblings_weight * ranked

        res = self.ctx.matryoshka(loss_fn, [sentence, document], progress)
        res["retention"] = self.ctx.retention.standalone(document, [d.text for d in docs], self.name)
        if self.ctx.retention.weight(self.name) > 0:  # queries are encoded alone: that space must not follow
            alone = enc.standalone_vectors(enc.token_states(texts, batch_size=PAD_GROUP, branch=False))
            res["retention"] = res["retention"] + self.ctx.retention.standalone(alone, texts, self.name)
        return res


def make_tasks(
    config: TrainConfig,
    data: TrainingData,
    encoder: MultiScaleEncoder,
    retention: Retention,
    generator: torch.Generator,
) -> dict[str, Task]:
    """The recipe's tasks by name (``hierarchy``, ``stsb``, ``scifact``, ``ict``, ``rationale``, ``siblings``),
    sharing one Matryoshka wrapper, one generator and one retention."""
    ctx = TaskContext(encoder, matryoshka_wrapper(encoder.dims, config.loss), generator, retention, config.loss)
    pair_tokens = config.data.max_pair_tokens
    return {
        "hierarchy": HierarchyTask(ctx, data.documents, config.data.max_doc_tokens),
        "stsb": STSTask(ctx, data.stsb),
        "scifact": ContrastivePairTask(ctx, "scifact", data.scifact, pair_tokens),
        "ict": ContrastivePairTask(ctx, "ict", data.ict, pair_tokens),
        "rationale": RationaleTask(ctx, data.rationales, config.data.max_rationale_tokens),
        "siblings": SiblingsTask(ctx, data.documents, config.data.max_doc_tokens),
    }


def make_sampler(config: TrainConfig, data: TrainingData) -> MixedTaskSampler:
    """The seeded sampler of (task, item indices): documents per hierarchy batch, pairs per pair batch."""
    return MixedTaskSampler(
        data.sizes(),
        {str(k): v for k, v in config.task_weights.items()},
        {
            "hierarchy": config.docs_per_batch,
            "stsb": config.pairs_per_batch,
            "scifact": config.pairs_per_batch,
            "ict": config.pairs_per_batch,
            "rationale": config.docs_per_batch,
            "siblings": config.docs_per_batch,
        },
        seed=config.seed,
    )

"""Query -> sentence ranking among in-context sentences, the other sentences of the same document as hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ScaledCosine(nn.Module):
    """Shared by the losses below: ``scale * cos(query_i, sentence_j)``, ``[B, D]``, ``[S, D]`` -> ``[B, S]`` float."""

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale

    def logits(self, query: Tensor, sentence: Tensor) -> Tensor:
        return (F.normalize(query, dim=-1) @ F.normalize(sentence, dim=-1).T * self.scale).float()


class InContextSentenceRanking(_ScaledCosine):
    """InfoNCE of queries against the in-context sentence vectors of a batch of documents, with several positives.

    Each query ``i`` (e.g. a SciFact claim) has one or more gold sentences (its rationale) among the ``S``
    sentences of the batch's documents. The candidates are all ``S`` sentences: the other sentences of the gold
    document are the hard negatives (they share its context, so only the sentence itself can tell them apart), the
    other documents' sentences the easy ones. With several gold sentences the loss is the multi-positive InfoNCE
    ``-log(sum_{p in P_i} exp(s_ip) / sum_j exp(s_ij))`` with ``s_ij = scale * cos(query_i, sentence_j)``: the
    query may put its mass on any of its gold sentences, and none of them is pushed away as a negative.

    Inputs (forward):
        query: ``[B, D]`` un-normalised query vectors.
        sentence: ``[S, D]`` un-normalised sentence vectors (all sentences of the batch's documents).
        positives: ``[B, S]`` bool, True where sentence ``j`` is gold for query ``i``; every row needs at least one.
        candidates: optional ``[B, S]`` bool, False where a sentence is not a candidate for that query (e.g. only
            its own document's sentences: ``candidates = same_document``); positives are always candidates.

    Returns:
        Scalar: the mean over queries.

    Reference:
        van den Oord et al. (2018), InfoNCE; Khosla et al. (2020), Supervised Contrastive Learning (several
        positives); the sentence-level SciFact task of Wadden et al. (2020), Fact or Fiction.

    Example::

        >>> q = torch.tensor([[1.0, 0.0]]); s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(InContextSentenceRanking()(q, s, torch.tensor([[True, False]]))) < 1e-8
        True
    """

    def forward(self, query: Tensor, sentence: Tensor, positives: Tensor, candidates: Tensor | None = None) -> Tensor:
        """``[B, D]``, ``[S, D]``, ``[B, S]`` bool (, ``[B, S]`` bool) -> scalar."""
        if positives.shape != (query.shape[0], sentence.shape[0]):
            raise ValueError(f"positives must be [{query.shape[0]}, {sentence.shape[0]}], got {list(positives.shape)}")
        if not bool(positives.any(dim=1).all()):
            raise ValueError("every query needs at least one positive sentence")
        positives = positives.to(query.device)
        logits = self.logits(query, sentence)
        if candidates is not None:
            logits = logits.masked_fill(~(candidates.to(query.device) | positives), float("-inf"))
        all_ = torch.logsumexp(logits, dim=1)
        pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
        return (all_ - pos).mean()


class MaxSimDocumentRanking(_ScaledCosine):
    """InfoNCE of queries against documents scored by max-sim over their in-context sentences: each query's own
    document must come first, the way sentence max-sim retrieval ranks documents.

    A sentence-ranking loss with the document's other sentences as hard negatives sharpens which sentence a query
    points at, and can lower the document's best match when that match is not a gold sentence; this term, added
    beside it, holds the document's best sentence above every other document's.

    Inputs (forward):
        query: ``[B, D]`` un-normalised query vectors.
        sentence: ``[S, D]`` un-normalised sentence vectors (all sentences of the batch's ``A`` documents).
        owner: ``[S]`` long, the document (``0 .. A-1``) each sentence belongs to; every document has one or more.
        target: ``[B]`` long, each query's own document.

    Returns:
        Scalar: the mean over queries of ``-log softmax_a(scale * max_{j in a} cos(query_i, sentence_j))[target_i]``.

    Example::

        >>> q = torch.tensor([[1.0, 0.0]]); s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        >>> float(MaxSimDocumentRanking()(q, s, torch.tensor([0, 0, 1]), torch.tensor([0]))) < 1e-8
        True
    """

    def forward(self, query: Tensor, sentence: Tensor, owner: Tensor, target: Tensor) -> Tensor:
        """``[B, D]``, ``[S, D]``, ``[S]`` long, ``[B]`` long -> scalar."""
        if owner.shape != (sentence.shape[0],) or target.shape != (query.shape[0],):
            raise ValueError(f"owner must be [{sentence.shape[0]}] and target [{query.shape[0]}]")
        owner, target = owner.to(query.device), target.to(query.device)
        logits = self.logits(query, sentence)
        n_docs = int(owner.max()) + 1
        per_doc = logits.new_full((len(query), n_docs), float("-inf"))
        per_doc = per_doc.scatter_reduce(1, owner.expand_as(logits), logits, reduce="amax", include_self=False)
        return F.cross_entropy(per_doc, target)

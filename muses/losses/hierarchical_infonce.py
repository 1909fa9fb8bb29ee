"""Hierarchical InfoNCE: each token is pulled to its sentence, each sentence to its document."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(
    anchors: Tensor, candidates: Tensor, targets: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Mean InfoNCE (cross-entropy over cosine similarities) of ``anchors`` against ``candidates``.

    Args:
        anchors: ``[A, D]``, un-normalised.
        candidates: ``[C, D]``, un-normalised.
        targets: ``[A]`` long, index of each anchor's positive in ``candidates``.
        temperature: softmax temperature (``scale = 1 / temperature``).
        mask: optional ``[A, C]`` bool, True where a candidate is removed from that anchor's softmax. The
            positive is never removed.

    Returns:
        Scalar ``mean_a -log softmax(cos(a, .) / temperature)[target_a]``; 0 (still attached to the graph) for
        ``A == 0``.
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0 + candidates.sum() * 0.0
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    if mask is not None:
        keep_positive = F.one_hot(targets, candidates.shape[0]).bool()
        logits = logits.masked_fill(mask & ~keep_positive, float("-inf"))
    return F.cross_entropy(logits.float(), targets)


class HierarchicalInfoNCE(nn.Module):
    """InfoNCE at two links of the scale hierarchy: token -> its sentence, sentence -> its document.

    The batch holds ``B`` documents, their ``S`` sentences and ``T`` tokens, all concatenated (e.g. from
    :meth:`MultiScaleEncoder.document_vectors` over several documents, with sentence ids offset to batch indices).

    - token -> sentence: each token's positive is its own sentence; the candidates are all ``S`` sentences of the
      batch, so the other sentences of the same document are natural hard negatives. With
      ``same_doc_sentence_negatives=False`` those are masked out of the softmax (only other documents' sentences
      remain as negatives).
    - sentence -> document: each sentence's positive is its document; the negatives are the other ``B - 1``
      documents plus ``N`` optional extra hard-negative documents mined by the caller (e.g. nearest other documents).

    ``loss = alpha * token_sentence + (1 - alpha) * sentence_document``; each part is a mean over its valid anchors
    (so long documents weigh more than short ones).

    Inputs (forward):
        token: ``[T, D]`` un-normalised token vectors.
        token_sentence: ``[T]`` long, index into ``sentence`` of each token's sentence; ``-1`` = ignore the token
            (special tokens, tokens between sentences).
        sentence: ``[S, D]`` un-normalised sentence vectors.
        sentence_doc: ``[S]`` long, index into ``document`` of each sentence's document; ``-1`` = ignore the
            sentence as an anchor (e.g. an empty sentence); it stays a candidate for tokens.
        document: ``[B, D]`` un-normalised document vectors.
        extra_negative_documents: ``[N, D]`` or None; negatives shared by every sentence.
        same_doc_sentence_negatives: keep (True) or mask (False) same-document sentences as token negatives.

    Returns:
        dict with scalar tensors ``loss``, ``token_sentence`` and ``sentence_document``.

    Requirements:
        All vectors share the dim ``D`` (pass Matryoshka prefixes to train a smaller dim; the loss L2-normalises).
        With one document and ``same_doc_sentence_negatives=False`` a token has no negative (its loss is 0).

    Reference:
        van den Oord, Li & Vinyals (2018), Representation Learning with Contrastive Predictive Coding (InfoNCE).
        Not built on sentence-transformers' MultipleNegativesRankingLoss: that loss takes the positive of anchor
        ``i`` to be candidate ``i``, whereas here many tokens share one sentence (and many sentences one document),
        so a candidate set of one row per anchor would repeat positives as false negatives. In the one-to-one case
        the two agree (checked in ``tests/losses/test_losses.py``).
    """

    def __init__(self, temperature: float = 0.05, alpha: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = temperature
        self.alpha = alpha

    def forward(
        self,
        token: Tensor,
        token_sentence: Tensor,
        sentence: Tensor,
        sentence_doc: Tensor,
        document: Tensor,
        extra_negative_documents: Tensor | None = None,
        same_doc_sentence_negatives: bool = True,
    ) -> dict[str, Tensor]:
        """Compute both InfoNCE terms and their ``alpha``-weighted sum (see the class docstring)."""
        if token.shape[0] != token_sentence.shape[0] or sentence.shape[0] != sentence_doc.shape[0]:
            raise ValueError(
                f"token {tuple(token.shape)} / token_sentence {tuple(token_sentence.shape)} or sentence "
                f"{tuple(sentence.shape)} / sentence_doc {tuple(sentence_doc.shape)} do not match in length"
            )
        token_sentence = token_sentence.to(token.device).long()
        sentence_doc = sentence_doc.to(sentence.device).long()

        valid_t = token_sentence >= 0
        t_targets = token_sentence[valid_t]
        mask = None
        if not same_doc_sentence_negatives:
            # [T', S]: True for a sentence of the same document as the token's own sentence.
            mask = sentence_doc[t_targets][:, None] == sentence_doc[None, :]
        token_sentence_loss = info_nce(token[valid_t], sentence, t_targets, self.temperature, mask)

        docs = document if extra_negative_documents is None else torch.cat([document, extra_negative_documents])
        valid_s = sentence_doc >= 0
        sentence_document_loss = info_nce(sentence[valid_s], docs, sentence_doc[valid_s], self.temperature)

        loss = self.alpha * token_sentence_loss + (1.0 - self.alpha) * sentence_document_loss
        return {"loss": loss, "token_sentence": token_sentence_loss, "sentence_document": sentence_document_loss}

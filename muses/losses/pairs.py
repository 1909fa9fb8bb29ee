"""Supervised pair losses for sentence embeddings, on embedding tensors.

Each class wraps the sentence-transformers loss of the same idea and calls its embeddings-level entry point,
``compute_loss_from_embeddings``, so the numbers are sentence-transformers' own; only the model-level ``forward``
(which would run the model) is bypassed. The wrapped loss is built with ``model=None``: in sentence-transformers 6
these five losses use the model only in ``forward``.

All inputs are un-normalised ``[B, D]`` tensors (slice / renormalise a Matryoshka prefix beforehand if needed);
the cosine-based losses are scale invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, cast

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    ContrastiveLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    MultipleNegativesRankingLoss,
    SiameseDistanceMetric,
    TripletDistanceMetric,
    TripletLoss,
)
from torch import Tensor, nn

Distance = Literal["cosine", "euclidean", "manhattan"]
Metric = Callable[[Tensor, Tensor], Tensor]
_NO_MODEL = cast(SentenceTransformer, None)  # the wrapped losses only touch the model in forward(), never called
_SIAMESE: dict[str, Metric] = {
    "cosine": SiameseDistanceMetric.COSINE_DISTANCE,
    "euclidean": SiameseDistanceMetric.EUCLIDEAN,
    "manhattan": SiameseDistanceMetric.MANHATTAN,
}
_TRIPLET: dict[str, Metric] = {
    "cosine": TripletDistanceMetric.COSINE,
    "euclidean": TripletDistanceMetric.EUCLIDEAN,
    "manhattan": TripletDistanceMetric.MANHATTAN,
}


def _metric(table: Mapping[str, Metric], distance: str) -> Metric:
    if distance not in table:
        raise ValueError(f"unknown distance {distance!r}; use one of {', '.join(table)}")
    return table[distance]


class CoSENT(nn.Module):
    """CoSENT ranking loss for scored pairs (e.g. STS-B), on embeddings.

    ``loss = log(1 + sum_{s_ij > s_kl} exp(scale * (cos(k, l) - cos(i, j))))``: every pair whose gold score is
    higher must get a higher cosine. Only the order of the scores matters, so STS-B's 0-5 scores can be passed as
    they are.

    Inputs (forward):
        a: ``[B, D]``, b: ``[B, D]`` the two sides of the pairs; scores: ``[B]`` float gold similarities.

    Reference:
        Huang et al. (2024), CoSENT: Consistent Sentence Embedding via Similarity Ranking (IEEE/ACM TASLP).
        Implementation: sentence-transformers ``CoSENTLoss``.
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.st_loss = CoSENTLoss(_NO_MODEL, scale=scale)

    def forward(self, a: Tensor, b: Tensor, scores: Tensor) -> Tensor:
        """``[B, D]``, ``[B, D]``, ``[B]`` -> scalar."""
        return self.st_loss.compute_loss_from_embeddings([a, b], scores)


class MultipleNegativesRanking(nn.Module):
    """InfoNCE with in-batch negatives (MNRL), for query -> positive passage (e.g. SciFact claim -> cited abstract).

    Each anchor ``i`` must rank its positive ``i`` above the other positives of the batch and above all hard
    negatives: ``mean_i -log softmax_j(scale * cos(anchor_i, cand_j))[i]``, ``cand = [positive; negatives...]``.

    Inputs (forward):
        anchor: ``[B, D]``; positive: ``[B, D]``; negatives: optional list of ``[B, D]`` hard negatives (column
        ``k`` holds a hard negative for each anchor; all are shared as candidates by every anchor).

    Requirements:
        No duplicate positives in a batch (they would be false negatives).

    Reference:
        van den Oord et al. (2018) (InfoNCE); Henderson et al. (2017), Efficient Natural Language Response
        Suggestion for Smart Reply. Implementation: sentence-transformers ``MultipleNegativesRankingLoss``.
    """

    def __init__(
        self,
        scale: float = 20.0,
        directions: tuple[Literal["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"], ...] = (
            "query_to_doc",
        ),
        partition_mode: Literal["joint", "per_direction"] = "joint",
    ) -> None:
        super().__init__()
        self.st_loss = MultipleNegativesRankingLoss(
            _NO_MODEL, scale=scale, directions=directions, partition_mode=partition_mode
        )

    def forward(self, anchor: Tensor, positive: Tensor, negatives: list[Tensor] | None = None) -> Tensor:
        """``[B, D]``, ``[B, D]``, ``k x [B, D]`` -> scalar."""
        # labels are unused by the loss
        return self.st_loss.compute_loss_from_embeddings([anchor, positive, *(negatives or [])], anchor.new_zeros(0))


class Contrastive(nn.Module):
    """Classic contrastive loss for labelled pairs (1 = similar, 0 = dissimilar).

    ``loss = mean 0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2)`` with ``d`` the chosen distance (default cosine
    distance ``1 - cos``).

    Inputs (forward):
        a: ``[B, D]``, b: ``[B, D]``, labels: ``[B]`` in {0, 1}.

    Reference:
        Hadsell, Chopra & LeCun (2006), Dimensionality Reduction by Learning an Invariant Mapping.
        Implementation: sentence-transformers ``ContrastiveLoss``.
    """

    def __init__(self, margin: float = 0.5, distance: Distance = "cosine") -> None:
        super().__init__()
        self.st_loss = ContrastiveLoss(_NO_MODEL, distance_metric=_metric(_SIAMESE, distance), margin=margin)

    def forward(self, a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
        """``[B, D]``, ``[B, D]``, ``[B]`` -> scalar."""
        return self.st_loss.compute_loss_from_embeddings([a, b], labels)


class Triplet(nn.Module):
    """Triplet margin loss: ``mean relu(d(anchor, positive) - d(anchor, negative) + margin)``.

    Inputs (forward):
        anchor, positive, negative: ``[B, D]`` each.

    Note: the default (euclidean, margin 5) is sentence-transformers'; on normalised vectors (distances <= 2)
    use e.g. ``distance="cosine", margin=0.2``.

    Reference:
        Schroff, Kalenichenko & Philbin (2015), FaceNet; Hermans, Beyer & Leibe (2017), In Defense of the Triplet
        Loss. Implementation: sentence-transformers ``TripletLoss``.
    """

    def __init__(self, margin: float = 5.0, distance: Distance = "euclidean") -> None:
        super().__init__()
        self.st_loss = TripletLoss(_NO_MODEL, distance_metric=_metric(_TRIPLET, distance), triplet_margin=margin)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """``[B, D]`` x 3 -> scalar."""
        return self.st_loss.compute_loss_from_embeddings([anchor, positive, negative], anchor.new_zeros(0))


class CosineSimilarity(nn.Module):
    """Regress the cosine of each pair on its gold score: ``mean (cos(a, b) - score)^2``.

    Inputs (forward):
        a: ``[B, D]``, b: ``[B, D]``, scores: ``[B]`` in ``[-1, 1]`` (rescale STS-B's 0-5 to ``[0, 1]``).

    Reference:
        Reimers & Gurevych (2019), Sentence-BERT. Implementation: sentence-transformers ``CosineSimilarityLoss``.
        :class:`CoSENT` usually trains better on the same data.
    """

    def __init__(self) -> None:
        super().__init__()
        self.st_loss = CosineSimilarityLoss(_NO_MODEL)

    def forward(self, a: Tensor, b: Tensor, scores: Tensor) -> Tensor:
        """``[B, D]``, ``[B, D]``, ``[B]`` -> scalar."""
        return self.st_loss.compute_loss_from_embeddings([a, b], scores)

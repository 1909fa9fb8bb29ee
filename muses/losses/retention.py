"""Retention: keep the trained model's embeddings close to the frozen base model's, against catastrophic forgetting."""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from torch import Tensor, nn

RetentionKind = Literal["cosine", "mse", "kl"]
RETENTION_KINDS: tuple[str, ...] = get_args(RetentionKind)


def in_batch_kl(student: Tensor, teacher: Tensor, temperature: float = 0.05) -> Tensor:
    """``KL(P_teacher || P_student)`` of the in-batch similarity distributions, averaged over rows.

    ``P[i, :] = softmax_{j != i}(cos(x_i, x_j) / temperature)``: each row is one item's distribution over the
    other ``B - 1`` items of the batch (the diagonal, always the largest, is left out so it does not swamp the
    rest). The teacher is detached. Not scaled by ``temperature**2``.

    Args:
        student: ``[B, D]``, un-normalised.
        teacher: ``[B, D']``, un-normalised (``D'`` may differ from ``D``: only the ``B x B`` similarities are
            compared).

    Returns:
        Scalar, >= 0; 0 when both batches have the same cosine matrix, and always 0 for ``B <= 2``.

    sentence-transformers' ``DistillKLDivLoss`` scores each query against its own row of candidates, not the
    whole batch, hence this short functional form (cross-checked against it in ``tests/losses/test_losses.py``).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in batch size")
    b = student.shape[0]
    if b <= 2:
        return student.sum() * 0.0
    off = ~torch.eye(b, dtype=torch.bool, device=student.device)
    zs = F.normalize(student.float(), dim=-1)
    zt = F.normalize(teacher.detach().float(), dim=-1)
    s_logits = (zs @ zs.T / temperature)[off].view(b, b - 1)
    t_logits = (zt @ zt.T / temperature)[off].view(b, b - 1)
    return F.kl_div(
        F.log_softmax(s_logits, dim=-1), F.log_softmax(t_logits, dim=-1), reduction="batchmean", log_target=True
    )


class RetentionLoss(nn.Module):
    """Distil the frozen base model into the model being trained, so it keeps what the base knew.

    Kinds:
        - ``cosine``: ``mean_i (1 - cos(student_i, teacher_i))``.
        - ``mse``: mean squared error between the L2-normalised vectors (``(2 - 2 cos) / D`` per row), as in
          Reimers & Gurevych (2020).
        - ``kl``: ``KL(teacher || student)`` of the rows of the temperature-scaled in-batch cosine matrices
          (see :func:`in_batch_kl`): it keeps the base model's similarity structure rather than its coordinates,
          so it leaves the heads free to rotate the space.

    ``cosine`` and ``mse`` reuse sentence-transformers' ``EmbedDistillLoss.compute_loss_from_embeddings``.

    Inputs (forward):
        student: ``[B, D]`` vectors of the model being trained (un-normalised).
        teacher: ``[B, D]`` vectors of the same texts from the frozen base model, computed by the caller under
            ``torch.no_grad()`` (detached here anyway).

    Returns:
        Scalar tensor, 0 for ``student == teacher`` (up to scale for ``cosine``/``kl``) and positive otherwise.

    Requirements:
        ``kl`` needs ``B >= 3`` (it is 0 otherwise).

    References:
        Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network.
        Reimers & Gurevych (2020), Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation.
    """

    def __init__(self, kind: RetentionKind = "cosine", temperature: float = 0.05) -> None:
        super().__init__()
        if kind not in RETENTION_KINDS:
            raise ValueError(f"unknown retention kind {kind!r}; use one of {', '.join(RETENTION_KINDS)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.kind: RetentionKind = kind
        self.temperature = temperature
        # The model is only used by EmbedDistillLoss.forward, which we never call.
        self.distill = EmbedDistillLoss(
            cast(SentenceTransformer, None), distance_metric="mse" if kind == "mse" else "cosine"
        )

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """``[B, D]``, ``[B, D]`` -> scalar loss."""
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")
        teacher = teacher.detach()
        if self.kind == "kl":
            return in_batch_kl(student, teacher, self.temperature)
        if self.kind == "mse":
            student, teacher = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        return self.distill.compute_loss_from_embeddings([student], [teacher])

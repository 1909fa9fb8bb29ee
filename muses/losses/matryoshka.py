"""Matryoshka training: which dims to train when (DimSchedule), and losses that wrap a task loss over dims.

The task loss is a callable ``loss_fn(dim) -> Tensor`` that closes over the batch's full-dim embeddings and computes
its loss on their renormalised ``dim``-prefixes (:func:`muses.heads.matryoshka`), so one forward pass serves every
dim and every loss.

Example (``a``, ``b`` full-dim ``[B, D]`` pair embeddings, ``scores`` ``[B]``)::

    sched = DimSchedule([32, 64, 128, 256, 384], kind="curriculum")
    mat = CurriculumMatryoshkaLoss(sched.dims, sched, consistency_weights=0.1)
    cosent = CoSENT()
    out = mat(lambda d: cosent(matryoshka(a, d), matryoshka(b, d), scores), [a, b], step / total, generator)
    out["loss"].backward()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypedDict, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muses.heads import check_dims
from muses.losses.retention import in_batch_kl

ScheduleKind = Literal["curriculum", "uniform", "ladder", "starbucks", "full"]
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)
ConsistencyKind = Literal["similarity", "kl", "pointwise"]
CONSISTENCY_KINDS: tuple[str, ...] = get_args(ConsistencyKind)
LossFn = Callable[[int], Tensor]


class DimSchedule:
    """Probabilities over Matryoshka dims as a function of training progress ``p`` in ``[0, 1]``.

    Kinds (``K = len(dims)``, ranks ``r_i = i / (K - 1)`` from 0 for the smallest dim to 1 for the largest):

    - ``curriculum``: ``P_i(p) = softmax_i((2p - 1) * r_i / temperature)``. The slope ``(2p - 1) / temperature``
      goes from ``-1/temperature`` (favouring small dims) through 0 at ``p = 0.5`` (uniform) to ``+1/temperature``
      (favouring large dims). At the ends the largest / smallest dim is ``exp(1/temperature)`` times more likely
      than the other end (``e^2 ~ 7.4`` for the default 0.5).
    - ``uniform``: ``1/K`` each.
    - ``ladder``: training is cut into ``K`` equal consecutive stages and stage ``i = min(floor(p K), K - 1)``
      trains ``dims[i]`` only: small to large, one dim at a time.
    - ``starbucks``: alias of ``ladder``. Note: the Starbucks paper (Zhuang et al. 2024, arXiv:2410.13230) does
      *not* train its small-to-large ladder in stages; it sums the loss over the whole fixed ladder at every step
      (plus a KL alignment term). That recipe is :class:`MatryoshkaAll` (optionally with
      ``consistency="kl"``); ``ladder`` is the staged reading of it.
    - ``full``: always the largest dim (no Matryoshka training).
    """

    def __init__(self, dims: Sequence[int], kind: ScheduleKind = "curriculum", temperature: float = 0.5) -> None:
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; use one of {', '.join(SCHEDULE_KINDS)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.dims: tuple[int, ...] = check_dims(dims, max(dims) if len(dims) else 0)
        self.kind: ScheduleKind = kind
        self.temperature = temperature

    def stage(self, progress: float) -> int:
        """Index of the ``ladder`` stage at ``progress``."""
        return min(int(_progress(progress) * len(self.dims)), len(self.dims) - 1)

    def probabilities(self, progress: float) -> np.ndarray:
        """``[K]`` float64 probabilities of each dim at ``progress`` (clamped to ``[0, 1]``); they sum to 1."""
        p = _progress(progress)
        k = len(self.dims)
        if self.kind == "uniform":
            return np.full(k, 1.0 / k)
        if self.kind in ("ladder", "starbucks", "full"):
            out = np.zeros(k)
            out[self.stage(p) if self.kind != "full" else k - 1] = 1.0
            return out
        ranks = np.arange(k) / max(k - 1, 1)
        logits = (2.0 * p - 1.0) * ranks / self.temperature
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def sample(self, progress: float, generator: torch.Generator | None = None) -> int:
        """Draw one dim at ``progress``; deterministic for a seeded ``generator``."""
        probs = torch.from_numpy(self.probabilities(progress))
        return self.dims[int(torch.multinomial(probs, 1, generator=generator).item())]


def _progress(progress: float) -> float:
    p = float(progress)
    if not np.isfinite(p):
        raise ValueError(f"progress must be a finite float in [0, 1], got {progress}")
    return min(max(p, 0.0), 1.0)


def _weights(weights: Mapping[int, float] | float, dims: Sequence[int]) -> dict[int, float]:
    if isinstance(weights, Mapping):
        unknown = set(weights) - set(dims)
        if unknown:
            raise ValueError(f"consistency weights for dims {sorted(unknown)} not in dims {list(dims)}")
        return {d: float(weights.get(d, 0.0)) for d in dims}
    return {d: float(weights) for d in dims}


def matryoshka_consistency(
    embeddings: Sequence[Tensor],
    weights: Mapping[int, float],
    kind: ConsistencyKind = "similarity",
    temperature: float = 0.05,
) -> Tensor:
    """``sum_d lambda_d * c_d``, summed over the tensors in ``embeddings``; ``c_d`` compares dim ``d`` with full.

    For each ``[N, D]`` tensor ``x`` of full-dim (un-normalised) vectors, ``z_d`` is the L2-normalised ``d``-prefix
    and ``z_full = stopgrad(normalize(x))`` (no gradient ever flows into the full-dim target):

    - ``pointwise``: ``c_d = mean_i (1 - cos(pad(z_d,i), z_full,i))`` with ``pad`` zero-padding to ``D``. It equals
      ``1 - ||x[:d]|| / ||x||``: the share of the vector's norm outside the prefix. **Its gradient is identically
      zero** here, because ``z_full[:d]`` is parallel to ``z_d`` (the prefix of one vector already points its
      best way), so it can only be monitored, not trained; it would train a ``z_d`` coming from another network
      (e.g. fewer layers, as in 2D Matryoshka).
    - ``similarity`` (default): ``c_d = mean_{i != j} (z_d,i . z_d,j - z_full,i . z_full,j)^2``: the ``d``-dim
      space keeps the full space's pairwise cosines (Matryoshka-Adaptor, Yoon et al. 2024). ``O(N^2)``: subsample
      large token sets.
    - ``kl``: ``c_d = KL(softmax(S_full / t) || softmax(S_d / t))`` over in-batch rows (:func:`in_batch_kl`), the
      alignment term of 2D Matryoshka (Li et al. 2024) and Starbucks (Zhuang et al. 2024).

    Every kind is 0 when the prefix carries the whole vector (``x[d:] = 0``) and positive otherwise (for
    ``similarity``/``kl``: when the prefix changes the batch's cosines; they need ``N >= 2`` / ``N >= 3``).
    Dims ``>= D`` contribute 0.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"unknown consistency kind {kind!r}; use one of {', '.join(CONSISTENCY_KINDS)}")
    total: Tensor | None = None
    for x in embeddings:
        full = F.normalize(x, dim=-1).detach()
        n, size = x.shape[0], x.shape[-1]
        off = ~torch.eye(n, dtype=torch.bool, device=x.device)
        sim_full = full @ full.T if kind == "similarity" else None
        for d, lam in weights.items():
            if lam == 0.0 or d >= size:
                continue
            z = F.normalize(x[..., :d], dim=-1)
            if kind == "pointwise":
                c = (1.0 - (F.pad(z, (0, size - d)) * full).sum(-1)).mean()
            elif kind == "similarity":
                assert sim_full is not None
                c = ((z @ z.T - sim_full)[off] ** 2).mean() if n > 1 else z.sum() * 0.0
            else:
                c = in_batch_kl(z, full, temperature)
            total = lam * c if total is None else total + lam * c
    if total is None:
        ref = embeddings[0] if len(embeddings) else torch.zeros(())
        return ref.sum() * 0.0
    return total


class CurriculumOutput(TypedDict):
    """Output of :class:`CurriculumMatryoshkaLoss`: scalar tensors and the dim trained this step."""

    loss: Tensor
    task: Tensor
    consistency: Tensor
    dim: int


class CurriculumMatryoshkaLoss(nn.Module):
    """Train one scheduled Matryoshka dim per step, plus a consistency term tying every dim to the full one.

    ``loss = loss_fn(d) + sum_d' lambda_d' * c_d'``, with ``d ~ schedule.probabilities(progress)`` and ``c_d'``
    from :func:`matryoshka_consistency` over all dims (not only the sampled one).

    Args:
        dims: Matryoshka dims, strictly increasing (must equal ``schedule.dims``).
        schedule: which dim to train at which progress.
        consistency_weights: ``lambda_d``: one float for every dim, or a ``{dim: weight}`` dict (missing dims 0).
        consistency: ``similarity`` (default), ``kl`` or ``pointwise`` (zero gradient, monitoring only; see
            :func:`matryoshka_consistency`).
        consistency_temperature: temperature of the ``kl`` consistency.

    Inputs (forward):
        loss_fn: ``loss_fn(dim) -> scalar Tensor``, the task loss on prefix-renormalised vectors at ``dim``.
        embeddings: list of ``[N, D]`` full-dim vectors to regularise (e.g. the batch's sentence and document
            vectors).
        progress: training progress in ``[0, 1]`` (``step / total_steps``).
        generator: seeded ``torch.Generator`` for a reproducible dim draw.

    Returns:
        :class:`CurriculumOutput` dict: ``loss``, ``task``, ``consistency`` and ``dim`` (int).

    Reference:
        Kusupati et al. (2022), Matryoshka Representation Learning; Bengio et al. (2009), Curriculum Learning.
    """

    def __init__(
        self,
        dims: Sequence[int],
        schedule: DimSchedule,
        consistency_weights: Mapping[int, float] | float = 0.1,
        consistency: ConsistencyKind = "similarity",
        consistency_temperature: float = 0.05,
    ) -> None:
        super().__init__()
        self.dims: tuple[int, ...] = check_dims(dims, max(dims) if len(dims) else 0)
        if tuple(schedule.dims) != self.dims:
            raise ValueError(f"schedule dims {list(schedule.dims)} differ from loss dims {list(self.dims)}")
        if consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"unknown consistency kind {consistency!r}; use one of {', '.join(CONSISTENCY_KINDS)}")
        self.schedule = schedule
        self.consistency_weights = _weights(consistency_weights, self.dims)
        self.consistency: ConsistencyKind = consistency
        self.consistency_temperature = consistency_temperature

    def forward(
        self,
        loss_fn: LossFn,
        embeddings: Sequence[Tensor],
        progress: float,
        generator: torch.Generator | None = None,
    ) -> CurriculumOutput:
        """Sample a dim, compute the task loss there and the consistency over all dims."""
        dim = self.schedule.sample(progress, generator)
        task = loss_fn(dim)
        cons = matryoshka_consistency(
            embeddings, self.consistency_weights, self.consistency, self.consistency_temperature
        ).to(task)
        return {"loss": task + cons, "task": task, "consistency": cons, "dim": dim}


class MatryoshkaAll(nn.Module):
    """The classic Matryoshka loss: the weighted sum of the task loss over all dims at every step.

    ``loss = sum_d w_d * loss_fn(d) [+ consistency]``, numerically the same as sentence-transformers'
    ``MatryoshkaLoss`` (which cannot be reused here: it runs the model, patching its ``forward`` to cache and
    truncate the embeddings, while MuSES losses take embeddings; cross-checked in ``tests/losses/test_losses.py``).
    With the consistency it is also the (width-only) Starbucks recipe: the whole small-to-large ladder every step.

    Args:
        dims: Matryoshka dims, strictly increasing.
        weights: one weight per dim (default all 1).
        n_dims_per_step: train only this many randomly drawn dims per step (-1: all), as in sentence-transformers.
        consistency_weights, consistency, consistency_temperature: as in :class:`CurriculumMatryoshkaLoss`;
            off by default.

    Inputs (forward): as :class:`CurriculumMatryoshkaLoss` (``progress`` is unused), so the two can be swapped.

    Returns:
        dict of scalar tensors: ``loss``, ``task`` (weighted sum), ``consistency`` and ``task@{d}`` for each dim
        trained (detached, for logging).

    Reference:
        Kusupati et al. (2022), Matryoshka Representation Learning.
    """

    def __init__(
        self,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        n_dims_per_step: int = -1,
        consistency_weights: Mapping[int, float] | float = 0.0,
        consistency: ConsistencyKind = "similarity",
        consistency_temperature: float = 0.05,
    ) -> None:
        super().__init__()
        self.dims: tuple[int, ...] = check_dims(dims, max(dims) if len(dims) else 0)
        if weights is not None and len(weights) != len(self.dims):
            raise ValueError(f"{len(weights)} weights for {len(self.dims)} dims")
        self.weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(self.dims)
        self.n_dims_per_step = n_dims_per_step
        if consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"unknown consistency kind {consistency!r}; use one of {', '.join(CONSISTENCY_KINDS)}")
        self.consistency_weights = _weights(consistency_weights, self.dims)
        self.consistency: ConsistencyKind = consistency
        self.consistency_temperature = consistency_temperature

    def forward(
        self,
        loss_fn: LossFn,
        embeddings: Sequence[Tensor] = (),
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Sum the weighted task loss over the dims (all, or ``n_dims_per_step`` drawn with ``generator``)."""
        idx = list(range(len(self.dims)))
        if 0 < self.n_dims_per_step < len(idx):
            idx = sorted(torch.randperm(len(idx), generator=generator)[: self.n_dims_per_step].tolist())
        out: dict[str, Tensor] = {}
        task: Tensor | None = None
        for i in idx:
            value = loss_fn(self.dims[i])
            out[f"task@{self.dims[i]}"] = value.detach()
            task = self.weights[i] * value if task is None else task + self.weights[i] * value
        assert task is not None
        cons = torch.zeros((), device=task.device, dtype=task.dtype)
        if embeddings:
            cons = matryoshka_consistency(
                embeddings, self.consistency_weights, self.consistency, self.consistency_temperature
            ).to(task)
        return {"loss": task + cons, "task": task, "consistency": cons, **out}

"""Per-scale projection heads that start as the identity, and Matryoshka prefixes.

A fresh head maps the pooled base vector to itself, so an untrained MuSES reproduces its base model exactly;
training then moves it away from the identity only as far as the losses ask.

Example::

    >>> head = ProjectionHead(4, 4, "residual-mlp")
    >>> x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    >>> torch.equal(head(x), x)          # a fresh head is the identity
    True
    >>> matryoshka(torch.tensor([[3.0, 4.0, 12.0]]), 2)   # the 2-prefix, renormalised
    tensor([[0.6000, 0.8000]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from muses.errors import InputError

HeadKind = Literal["residual-mlp", "linear", "identity", "random-linear"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)
DEFAULT_DIMS: tuple[int, ...] = (32, 64, 128, 256, 384)


class ProjectionHead(nn.Module):
    """Map ``[..., in_dim]`` to ``[..., out_dim]``, starting as the identity (except ``random-linear``).

    - ``residual-mlp``: ``x + W2 gelu(W1 x + b1) + b2`` with ``W2, b2`` zero at start.
    - ``linear``: ``W x + b`` with ``W = I`` and ``b = 0`` at start.
    - ``identity``: no parameters.
    - ``random-linear``: ``W x + b`` with PyTorch's default (seeded) random init: the original MuSES heads, which
      do *not* start as the identity; kept for the ablation that shows why the others do.

    If ``in_dim > out_dim`` (mean-max pooling), a bias-free input projection first keeps the first ``out_dim``
    features (``[I 0]`` at start), i.e. the mean part.
    """

    def __init__(
        self, in_dim: int, out_dim: int, kind: HeadKind = "residual-mlp", hidden: int | None = None, init_seed: int = 0
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}; use one of {', '.join(HEAD_KINDS)}")
        if in_dim < out_dim:
            raise ValueError(f"head input dim {in_dim} is smaller than its output dim {out_dim}")
        self.kind: HeadKind = kind
        self.in_proj: nn.Linear | None = None
        if in_dim != out_dim:
            self.in_proj = nn.Linear(in_dim, out_dim, bias=False)
            with torch.no_grad():
                self.in_proj.weight.zero_()
                self.in_proj.weight[:, :out_dim].copy_(torch.eye(out_dim))
        self.fc1: nn.Linear | None = None
        self.fc2: nn.Linear | None = None
        if kind == "residual-mlp":
            self.fc1 = nn.Linear(out_dim, hidden or out_dim)
            self.fc2 = nn.Linear(hidden or out_dim, out_dim)
            # seeded, so that a fresh model is the same in every process (determinism, cache fingerprints)
            gen = torch.Generator().manual_seed(init_seed)
            bound = 1.0 / math.sqrt(out_dim)
            nn.init.uniform_(self.fc1.weight, -bound, bound, generator=gen)
            nn.init.uniform_(self.fc1.bias, -bound, bound, generator=gen)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        elif kind == "linear":
            self.fc2 = nn.Linear(out_dim, out_dim)
            with torch.no_grad():
                self.fc2.weight.copy_(torch.eye(out_dim))
                self.fc2.bias.zero_()
        elif kind == "random-linear":
            self.fc2 = nn.Linear(out_dim, out_dim)
            gen = torch.Generator().manual_seed(init_seed)
            bound = 1.0 / math.sqrt(out_dim)  # nn.Linear's default init, from a seeded generator
            nn.init.uniform_(self.fc2.weight, -bound, bound, generator=gen)
            nn.init.uniform_(self.fc2.bias, -bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_dim]`` -> ``[..., out_dim]``."""
        if self.in_proj is not None:
            x = self.in_proj(x)
        if self.kind == "residual-mlp":
            assert self.fc1 is not None and self.fc2 is not None
            return x + self.fc2(F.gelu(self.fc1(x)))
        if self.kind in ("linear", "random-linear"):
            assert self.fc2 is not None
            return self.fc2(x)
        return x


def check_dims(dims: Sequence[int], full_dim: int) -> tuple[int, ...]:
    """Validate a Matryoshka dim list: positive, strictly increasing, ending at ``full_dim``."""
    out = tuple(int(d) for d in dims)
    if not out or any(d <= 0 for d in out) or list(out) != sorted(set(out)):
        raise InputError(f"Matryoshka dims must be positive and strictly increasing, got {list(dims)}.")
    if out[-1] != full_dim:
        raise InputError(f"the last Matryoshka dim must be the embedding size {full_dim}, got {list(dims)}.")
    return out


def resolve_dim(dim: int | None, full_dim: int) -> int:
    """Return the dim to embed at (``None`` = full) or raise an InputError naming the valid range."""
    if dim is None:
        return full_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= full_dim:
        raise InputError(
            f"dim {dim!r} is not available: this model's embeddings have {full_dim} dims, so use an int in "
            f"1..{full_dim} (its Matryoshka dims are the best choices)."
        )
    return dim


def matryoshka(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The ``dim``-prefix of ``x`` ``[..., D]``, L2-normalised -> ``[..., dim]``."""
    return F.normalize(x[..., :dim], p=2, dim=-1)

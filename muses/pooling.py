"""Pooling of contextual token states into one vector: over padded batches, or over spans of one sequence.

Strategies: ``mean`` (masked, the default), ``max``, ``cls`` (the first token of the sequence or span),
``mean-max`` (concatenation, twice the width) and ``attention`` (a learned query; it starts as ``mean``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

PoolingMode = Literal["mean", "max", "cls", "mean-max", "attention"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)
_SPAN_CHUNK = 512  # spans pooled at a time, to bound memory on very long documents


class Pooling(nn.Module):
    """Pool token states ``[B, L, H]`` with a mask ``[B, L]`` into ``[B, out_dim]``.

    ``attention`` pooling scores each token by ``states @ query / sqrt(H)``; the query starts at zero, so a fresh
    attention pooling is exactly mean pooling.

    Example:
        >>> pool = Pooling("mean", hidden=4)
        >>> x = torch.ones(1, 3, 4); m = torch.tensor([[1, 1, 0]])
        >>> pool(x, m).shape
        torch.Size([1, 4])
    """

    def __init__(self, mode: PoolingMode = "mean", hidden: int = 384) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {mode!r}; use one of {', '.join(POOLING_MODES)}")
        self.mode: PoolingMode = mode
        self.hidden = hidden
        self.query = nn.Parameter(torch.zeros(hidden)) if mode == "attention" else None

    @property
    def out_dim(self) -> int:
        """Width of the pooled vector: ``2 * hidden`` for mean-max, else ``hidden``."""
        return 2 * self.hidden if self.mode == "mean-max" else self.hidden

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``states`` ``[B, L, H]`` over the positions where ``mask`` ``[B, L]`` is nonzero -> ``[B, out_dim]``."""
        m = mask.to(states.dtype).unsqueeze(-1)  # [B, L, 1]
        if self.mode == "mean":
            return _masked_mean(states, m)
        if self.mode == "max":
            return _masked_max(states, m)
        if self.mode == "cls":
            first = mask.to(torch.long).argmax(dim=1)  # first position with mask 1
            return states[torch.arange(states.shape[0], device=states.device), first]
        if self.mode == "mean-max":
            return torch.cat([_masked_mean(states, m), _masked_max(states, m)], dim=-1)
        assert self.query is not None
        scores = (states @ self.query) / self.hidden**0.5  # [B, L]
        scores = scores.masked_fill(mask == 0, torch.finfo(states.dtype).min)
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1) * m
        return (weights * states).sum(1) / weights.sum(1).clamp_min(1e-9)

    def pool_spans(self, states: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
        """Pool one sequence ``states`` ``[N, H]`` over half-open token ``ranges`` ``[S, 2]`` -> ``[S, out_dim]``.

        An empty range gives a zero vector.
        """
        out = []
        for chunk in ranges.split(_SPAN_CHUNK):
            lengths = (chunk[:, 1] - chunk[:, 0]).clamp_min(0)
            width = max(int(lengths.max()) if len(chunk) else 0, 1)
            pos = chunk[:, :1] + torch.arange(width, device=states.device)  # [s, width]
            mask = torch.arange(width, device=states.device) < lengths[:, None]
            gathered = states[pos.clamp(max=states.shape[0] - 1)]  # [s, width, H]
            pooled = self(gathered, mask)
            out.append(pooled * (lengths > 0).to(pooled.dtype)[:, None])
        if not out:
            return states.new_zeros(0, self.out_dim)
        return torch.cat(out)


def _masked_mean(states: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (states * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _masked_max(states: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return states.masked_fill(m == 0, torch.finfo(states.dtype).min).max(1).values

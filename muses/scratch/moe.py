"""A Mixture-of-Experts feed-forward layer, with routing statistics for per-topic expert analysis.

A :class:`MoEFeedForward` replaces a transformer's dense feed-forward block (``w_out(gelu(w_in(x)))``) by
``n_experts`` such blocks ("experts") and a linear router that sends every token to its ``top_k`` experts:

* **Router.** ``logits = router(x)`` (no bias, computed in float32), ``probs = softmax(logits)``; a token goes to the
  experts with the ``top_k`` largest probabilities, first choice first.
* **Gates.** ``top_k == 1``: the raw probability of the chosen expert, so the router still gets a gradient
  (Switch Transformers, Fedus et al. 2021). ``top_k == 2``: the two probabilities renormalised to sum 1
  (GShard, Lepikhin et al. 2020; ST-MoE, Zoph et al. 2022).
* **Capacity.** Each expert takes at most ``ceil(capacity_factor * top_k * N / n_experts)`` assignments, ``N`` being
  the number of routed (non-padding) tokens; the factor is ``capacity_factor_train`` in training mode and
  ``capacity_factor_eval`` in eval mode, ``None`` meaning unlimited. All first choices are served before any second
  choice, and within one choice rank tokens are served in order (GShard). An assignment past its expert's capacity
  is dropped: its gate is 0 and the other gate is not renormalised. A token whose assignments are all dropped gets
  output 0, so the residual connection around the layer carries it unchanged (Switch Transformers).
* **Output.** ``sum over kept assignments of gate * expert(x)``; each expert runs only on its kept tokens.
* **Auxiliary losses.** The Switch load-balancing loss ``n_experts * sum_i f_i * P_i`` (``f_i``: fraction of routed
  tokens whose first choice is expert ``i``, before capacity; ``P_i``: mean router probability of expert ``i``),
  which is 1 for uniform routing; and the ST-MoE router z-loss ``mean(logsumexp(logits) ** 2)``, which keeps the
  router logits small. :meth:`MoEFeedForward.aux_loss` weights and sums them; add it to the training loss.
* **Upcycling.** :meth:`MoEFeedForward.from_dense` starts every expert as a copy of a pretrained dense FFN
  (Sparse Upcycling, Komatsuzaki et al. 2022); with ``top_k == 2`` and no dropped token it computes exactly the
  dense FFN at initialisation, whatever the router says.

Routing statistics: :func:`record_routing` attaches a :class:`RoutingStats` to every MoE layer of a model, and
:func:`set_domain` labels the next forwards (e.g. a Wikipedia topic), giving per-layer expert loads, balance, drop
rates and a (layer, domain, expert) count tensor (:func:`routing_counts`) for heatmaps::

    with record_routing(model) as stats:          # {layer name: RoutingStats}
        for topic, texts in articles.items():
            set_domain(model, topic)
            model.encode(texts)
    layers, topics, counts = routing_counts(stats)  # counts: [n_layers, n_topics, n_experts]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muses.errors import InputError

__all__ = [
    "Expert",
    "MoEConfig",
    "MoEFeedForward",
    "MoEOutput",
    "RoutingStats",
    "moe_layers",
    "record_routing",
    "routing_counts",
    "set_domain",
]


@dataclass
class MoEConfig:
    """Hyper-parameters of a :class:`MoEFeedForward` layer (validated on construction and by :meth:`validate`).

    Attributes:
        n_experts: number of experts (>= 1).
        top_k: experts per token, 1 (Switch) or 2 (GShard / ST-MoE); at most ``n_experts``.
        capacity_factor_train: capacity factor in training mode (> 0); ``None`` = unlimited, no token ever dropped.
        capacity_factor_eval: capacity factor in eval mode (> 0); ``None`` = unlimited.
        balance_weight: weight of the Switch load-balancing loss in :meth:`MoEFeedForward.aux_loss` (>= 0).
        z_loss_weight: weight of the ST-MoE router z-loss in :meth:`MoEFeedForward.aux_loss` (>= 0).
        expert_dropout: dropout on each expert's hidden activations, training mode only (Switch Transformers
            "expert dropout"); in [0, 1).
        router_init_std: the router weights start as N(0, std**2) (>= 0); the router has no bias.
    """

    n_experts: int = 4
    top_k: int = 2
    capacity_factor_train: float | None = 1.25
    capacity_factor_eval: float | None = 2.0
    balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    expert_dropout: float = 0.0
    router_init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> MoEConfig:
        """Check every field; return ``self``. Raises :class:`InputError` naming the bad field and the fix."""
        if not _is_int(self.n_experts) or self.n_experts < 1:
            raise InputError(f"MoEConfig.n_experts must be an integer >= 1, got {self.n_experts!r}; use e.g. 4")
        if not _is_int(self.top_k) or self.top_k not in (1, 2):
            raise InputError(f"MoEConfig.top_k must be 1 (Switch) or 2 (GShard/ST-MoE), got {self.top_k!r}")
        if self.top_k > self.n_experts:
            raise InputError(
                f"MoEConfig.top_k={self.top_k} is larger than n_experts={self.n_experts}; "
                f"use top_k <= n_experts (top_k=1 for a single expert)"
            )
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value) or value <= 0):
                raise InputError(
                    f"MoEConfig.{name} must be a number > 0 or None (no capacity limit), got {value!r}; "
                    f"use e.g. 1.25, or None to never drop a token"
                )
        for name in ("balance_weight", "z_loss_weight", "router_init_std"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise InputError(f"MoEConfig.{name} must be a finite number >= 0, got {value!r}")
        if not _is_number(self.expert_dropout) or not 0.0 <= self.expert_dropout < 1.0:
            raise InputError(
                f"MoEConfig.expert_dropout must be in [0, 1), got {self.expert_dropout!r}; use 0.0 for no dropout"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoEConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise :class:`InputError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown MoEConfig key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**dict(data))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Expert(nn.Module):
    """One feed-forward expert, like BERT's FFN: ``w_out(dropout(gelu(w_in(x))))``, with exact (erf) GELU.

    Args:
        hidden: model width H.
        ffn: inner width F.
        dropout: dropout on the hidden activations [.., F], active in training mode only.
    """

    def __init__(self, hidden: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_in = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.w_out = nn.Linear(ffn, hidden)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., H] -> [..., H]."""
        return self.w_out(self.dropout(self.act(self.w_in(x))))


@dataclass
class MoEOutput:
    """What :meth:`MoEFeedForward.forward` returns. ``N`` is the number of routed (non-padding) tokens, ``k`` top_k.

    Attributes:
        output: [..., H], same shape as the input; 0 for padding tokens and tokens with every assignment dropped.
        balance_loss: scalar float32, the unweighted Switch load-balancing loss (1 for uniform routing).
        z_loss: scalar float32, the unweighted router z-loss.
        expert_index: [N, k] long, chosen experts per routed token, in choice order (routed tokens in input order).
        gate: [N, k] float32, the combine weights actually used (0 where the assignment was dropped).
        kept: [N, k] bool, False where capacity dropped that assignment.
    """

    output: Tensor
    balance_loss: Tensor
    z_loss: Tensor
    expert_index: Tensor
    gate: Tensor
    kept: Tensor


class MoEFeedForward(nn.Module):
    """Top-k routed Mixture-of-Experts feed-forward layer (see the module docstring for the exact semantics).

    Args:
        hidden: model width H (input and output).
        ffn: inner width F of each expert.
        config: the :class:`MoEConfig`; validated here.

    Attributes:
        router: ``nn.Linear(H, n_experts, bias=False)``, weights N(0, router_init_std**2).
        experts: ``n_experts`` :class:`Expert` modules.
        stats: when not None, every forward adds its routing to it (under ``stats.domain``); see :func:`record_routing`.
    """

    def __init__(self, hidden: int, ffn: int, config: MoEConfig) -> None:
        super().__init__()
        if not _is_int(hidden) or not _is_int(ffn) or hidden < 1 or ffn < 1:
            raise InputError(f"MoEFeedForward needs integer widths hidden >= 1 and ffn >= 1, got {hidden!r}, {ffn!r}")
        self.config = config.validate()
        self.hidden = hidden
        self.ffn = ffn
        self.router = nn.Linear(hidden, config.n_experts, bias=False)
        nn.init.normal_(self.router.weight, mean=0.0, std=config.router_init_std)
        self.experts = nn.ModuleList(Expert(hidden, ffn, config.expert_dropout) for _ in range(config.n_experts))
        self.stats: RoutingStats | None = None

    @classmethod
    def from_dense(cls, w_in: nn.Linear, w_out: nn.Linear, config: MoEConfig) -> MoEFeedForward:
        """Sparse upcycling (Komatsuzaki et al. 2022): every expert is a copy of the dense FFN ``w_out(gelu(w_in(x)))``.

        Weights and biases are copied (a missing bias becomes a zero bias); the router is freshly initialised and the
        layer takes the device and dtype of ``w_in``. With ``top_k == 2`` the gates sum to 1, so as long as no
        assignment is dropped (e.g. capacity factors None) the output equals the dense FFN's on every real token.

        Args:
            w_in: dense ``nn.Linear(H, F)``.
            w_out: dense ``nn.Linear(F, H)``.
            config: the MoE configuration.
        """
        hidden, ffn = w_in.in_features, w_in.out_features
        if w_out.in_features != ffn or w_out.out_features != hidden:
            raise InputError(
                f"from_dense needs w_in: Linear(H, F) and w_out: Linear(F, H); got w_in {hidden}->{ffn} and "
                f"w_out {w_out.in_features}->{w_out.out_features}; pass the FFN's input and output projections"
            )
        layer = cls(hidden, ffn, config).to(device=w_in.weight.device, dtype=w_in.weight.dtype)
        with torch.no_grad():
            for expert in layer.experts:
                assert isinstance(expert, Expert)
                for mine, dense in ((expert.w_in, w_in), (expert.w_out, w_out)):
                    mine.weight.copy_(dense.weight)
                    if dense.bias is None:
                        mine.bias.zero_()
                    else:
                        mine.bias.copy_(dense.bias)
        return layer

    def capacity(self, n_tokens: int) -> int | None:
        """Per-expert capacity for ``n_tokens`` routed tokens in the current mode; None = unlimited.

        ``ceil(factor * top_k * n_tokens / n_experts)``, rounded to 9 decimals before the ceiling so that float noise
        (``1.1 * 10 = 11.000000000000002``) does not add a slot.
        """
        cfg = self.config
        factor = cfg.capacity_factor_train if self.training else cfg.capacity_factor_eval
        if factor is None:
            return None
        return math.ceil(round(factor * cfg.top_k * n_tokens / cfg.n_experts, 9))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MoEOutput:
        """Route every real token to its top-k experts and combine their outputs.

        Args:
            x: [..., H] (typically [B, L, H]).
            mask: [...] (``x.shape[:-1]``), bool or 0/1, True/1 for real tokens; None = every token is real.
                Padding tokens are not routed, do not count for capacity, the losses or the stats, and get output 0.

        Returns:
            :class:`MoEOutput`, with ``output`` [..., H] and the routing of the N routed tokens.
        """
        cfg = self.config
        if x.shape[-1:] != (self.hidden,):
            raise InputError(f"MoEFeedForward expects x of shape [..., {self.hidden}], got {tuple(x.shape)}")
        flat = x.reshape(-1, self.hidden)  # [T, H]
        routed: Tensor | None = None  # [N] positions of the real tokens in flat; None = all
        if mask is not None:
            if mask.shape != x.shape[:-1]:
                raise InputError(
                    f"mask must have the shape of x without its last dim, {tuple(x.shape[:-1])}, "
                    f"got {tuple(mask.shape)}; pass one 0/1 or bool entry per token"
                )
            keep = mask.reshape(-1).to(device=x.device, dtype=torch.bool)
            if not bool(keep.all()):
                routed = keep.nonzero().squeeze(-1)
        tokens = flat if routed is None else flat.index_select(0, routed)  # [N, H]
        n, k = tokens.shape[0], cfg.top_k

        if n == 0:
            zero = torch.zeros((), device=x.device, dtype=torch.float32)
            return MoEOutput(
                output=torch.zeros_like(x),
                balance_loss=zero,
                z_loss=zero.clone(),
                expert_index=torch.zeros(0, k, dtype=torch.long, device=x.device),
                gate=torch.zeros(0, k, dtype=torch.float32, device=x.device),
                kept=torch.zeros(0, k, dtype=torch.bool, device=x.device),
            )

        with torch.autocast(device_type=x.device.type, enabled=False):  # router in float32 even under autocast
            logits = F.linear(tokens.float(), self.router.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        top_probs, expert_index = probs.topk(k, dim=-1)  # [N, k], in choice order
        gate = top_probs if k == 1 else top_probs / top_probs.sum(dim=-1, keepdim=True)
        kept = self._apply_capacity(expert_index, self.capacity(n))
        gate = gate * kept  # dropped assignments: gate 0, no renormalisation

        combined = self._combine(tokens, expert_index, gate, kept)  # [N, H]
        if routed is None:
            output = combined.reshape(x.shape)
        else:
            output = flat.new_zeros(flat.shape).index_copy(0, routed, combined).reshape(x.shape)

        first_choice = torch.bincount(expert_index[:, 0], minlength=cfg.n_experts).float() / n  # f_i, [E]
        balance_loss = cfg.n_experts * (first_choice * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()

        if self.stats is not None:
            self.stats.update(expert_index.detach(), kept.detach())
        return MoEOutput(output, balance_loss, z_loss, expert_index, gate, kept)

    def _apply_capacity(self, expert_index: Tensor, capacity: int | None) -> Tensor:
        """expert_index [N, k] -> kept [N, k] bool: first choices before second ones, tokens in order within a rank."""
        kept = torch.ones_like(expert_index, dtype=torch.bool)
        if capacity is None:
            return kept
        n_experts = self.config.n_experts
        used = torch.zeros(n_experts, dtype=torch.long, device=expert_index.device)  # slots already taken
        for rank in range(expert_index.shape[1]):
            choice = expert_index[:, rank]  # [N]
            one_hot = F.one_hot(choice, n_experts)  # [N, E]
            before = (one_hot.cumsum(dim=0) - one_hot).gather(1, choice.unsqueeze(1)).squeeze(1)  # same rank, earlier
            kept[:, rank] = used[choice] + before < capacity
            used = used + torch.bincount(choice[kept[:, rank]], minlength=n_experts)
        return kept

    def _combine(self, tokens: Tensor, expert_index: Tensor, gate: Tensor, kept: Tensor) -> Tensor:
        """tokens [N, H], expert_index/gate/kept [N, k] -> [N, H]: gate-weighted sum of each token's kept experts."""
        n, k = expert_index.shape
        token_of = torch.arange(n, device=tokens.device).repeat_interleave(k)  # [N*k]
        flat_expert, flat_gate, flat_kept = expert_index.reshape(-1), gate.reshape(-1), kept.reshape(-1)
        out = tokens.new_zeros(tokens.shape)
        for e, expert in enumerate(self.experts):
            slots = (flat_kept & (flat_expert == e)).nonzero().squeeze(-1)
            if slots.numel() == 0:
                continue
            who = token_of.index_select(0, slots)
            y = expert(tokens.index_select(0, who)) * flat_gate.index_select(0, slots).unsqueeze(-1)
            out.index_add_(0, who, y.to(out.dtype))
        return out

    def aux_loss(self, out: MoEOutput) -> Tensor:
        """Weighted auxiliary loss to add to the training loss: ``balance_weight * balance + z_loss_weight * z``."""
        return self.config.balance_weight * out.balance_loss + self.config.z_loss_weight * out.z_loss

    def extra_repr(self) -> str:
        cfg = self.config
        return f"hidden={self.hidden}, ffn={self.ffn}, n_experts={cfg.n_experts}, top_k={cfg.top_k}"


@dataclass
class RoutingStats:
    """Routing counts of one MoE layer, accumulated per domain (e.g. per Wikipedia topic).

    Attributes:
        n_experts: number of experts of the layer.
        domain: the label the next forwards are counted under.
        counts: domain -> [n_experts] long CPU tensor, assignments (kept or dropped) per expert.
        dropped: domain -> assignments dropped by capacity.
        tokens: domain -> routed tokens.
    """

    n_experts: int
    domain: str = ""
    counts: dict[str, Tensor] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        """The domains seen so far, in first-seen order."""
        return list(self.counts)

    def update(self, expert_index: Tensor, kept: Tensor) -> None:
        """Count one forward's routing under :attr:`domain`. expert_index [N, k] long, kept [N, k] bool."""
        counts = torch.bincount(expert_index.reshape(-1).cpu(), minlength=self.n_experts)
        if counts.numel() != self.n_experts:
            raise InputError(f"expert index out of range for a RoutingStats of {self.n_experts} experts")
        d = self.domain
        self.counts[d] = self.counts.get(d, torch.zeros(self.n_experts, dtype=torch.long)) + counts
        self.dropped[d] = self.dropped.get(d, 0) + int((~kept).sum())
        self.tokens[d] = self.tokens.get(d, 0) + int(expert_index.shape[0])

    def count(self, domain: str | None = None) -> Tensor:
        """[n_experts] long assignments per expert, for one domain or (None) all domains together."""
        if domain is None:
            total = torch.zeros(self.n_experts, dtype=torch.long)
            for c in self.counts.values():
                total += c
            return total
        if domain not in self.counts:
            raise InputError(f"no routing recorded for domain {domain!r}; recorded domains: {self.domains}")
        return self.counts[domain].clone()

    def load(self, domain: str | None = None) -> Tensor:
        """[n_experts] float fraction of assignments per expert (sums to 1; all zeros if nothing was recorded)."""
        c = self.count(domain).double()
        total = c.sum()
        return (c / total).float() if total > 0 else c.float()

    def balance(self, domain: str | None = None) -> float:
        """Max expert load / mean expert load: 1.0 is perfect balance, n_experts is everything on one expert.

        NaN when nothing was recorded.
        """
        c = self.count(domain)
        total = int(c.sum())
        return float(c.max()) * self.n_experts / total if total > 0 else math.nan

    def drop_rate(self, domain: str | None = None) -> float:
        """Fraction of assignments dropped by capacity (0.0 when nothing was recorded)."""
        total = int(self.count(domain).sum())
        dropped = sum(self.dropped.values()) if domain is None else self.dropped[domain]
        return dropped / total if total > 0 else 0.0

    def reset(self) -> None:
        """Forget all counts (the current domain stays)."""
        self.counts.clear()
        self.dropped.clear()
        self.tokens.clear()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict: n_experts, domain, and counts (lists) / dropped / tokens per domain."""
        return {
            "n_experts": self.n_experts,
            "domain": self.domain,
            "counts": {d: c.tolist() for d, c in self.counts.items()},
            "dropped": dict(self.dropped),
            "tokens": dict(self.tokens),
        }


def moe_layers(module: nn.Module) -> list[tuple[str, MoEFeedForward]]:
    """The MoE layers inside ``module`` (itself included, under the name ``""``), as (qualified name, layer)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, MoEFeedForward)]


@contextmanager
def record_routing(module: nn.Module, domain: str = "") -> Iterator[dict[str, RoutingStats]]:
    """Record the routing of every MoE layer of ``module`` while the block runs; yields {layer name: RoutingStats}.

    A layer that is already recording (an enclosing ``record_routing``) keeps its :class:`RoutingStats`, so nested
    blocks accumulate into the same objects; either way the stats' domain is set to ``domain`` for the block. On exit,
    layers that were not recording before stop recording (the yielded stats keep their counts), and layers that were
    keep recording under their previous domain. Change the domain inside the block with :func:`set_domain`.
    """
    layers = moe_layers(module)
    previous: list[tuple[MoEFeedForward, RoutingStats | None, str]] = []
    stats: dict[str, RoutingStats] = {}
    for name, layer in layers:
        old = layer.stats
        previous.append((layer, old, old.domain if old is not None else ""))
        if old is None:
            layer.stats = RoutingStats(layer.config.n_experts)
        assert layer.stats is not None
        layer.stats.domain = domain
        stats[name] = layer.stats
    try:
        yield stats
    finally:
        for layer, old, old_domain in previous:
            layer.stats = old
            if old is not None:
                old.domain = old_domain


def set_domain(module: nn.Module, domain: str) -> None:
    """Count the next forwards of every recording MoE layer in ``module`` under ``domain``.

    A no-op for a module without MoE layers; raises :class:`InputError` if it has MoE layers but none is recording.
    """
    layers = moe_layers(module)
    recording = [layer for _, layer in layers if layer.stats is not None]
    if layers and not recording:
        raise InputError("no MoE layer is recording routing; call set_domain inside `with record_routing(model):`")
    for layer in recording:
        assert layer.stats is not None
        layer.stats.domain = domain


def routing_counts(
    stats: Mapping[str, RoutingStats], domains: list[str] | None = None
) -> tuple[list[str], list[str], Tensor]:
    """Stack recorded counts for heatmaps: (layer names, domains, counts [n_layers, n_domains, n_experts] long).

    ``domains`` defaults to every domain seen by any layer, in first-seen order; a layer that never saw a domain
    contributes zeros. All layers must have the same number of experts.
    """
    names = list(stats)
    if domains is None:
        domains = list(dict.fromkeys(d for s in stats.values() for d in s.counts))
    sizes = {s.n_experts for s in stats.values()}
    if len(sizes) > 1:
        raise InputError(f"routing_counts needs layers with one number of experts, got {sorted(sizes)}")
    n_experts = sizes.pop() if sizes else 0
    out = torch.zeros(len(names), len(domains), n_experts, dtype=torch.long)
    for i, name in enumerate(names):
        for j, d in enumerate(domains):
            if d in stats[name].counts:
                out[i, j] = stats[name].counts[d]
    return names, domains, out

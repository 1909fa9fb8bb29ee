"""Throughput and Mixture-of-Experts routing on held-out Wikipedia articles, topic by topic.

For every MuSES model: encoding throughput in tokens per second (the articles' token states, one pass each). For a
model with MoE layers (from scratch or upcycled), per layer:

- ``load/eK``: the share of routed assignments that expert K received; ``balance``: max load / mean load (1.0 is
  perfect balance; the issue's "load balance"); ``drop_rate``: the share of assignments capacity dropped;
- ``topic/<topic>/eK``: the share of one topic's assignments that expert K received (the routing heatmaps);
- ``specialisation``: the mutual information between an assignment's topic and its expert, as a share of the
  expert entropy (0: every topic routes alike; 1: the expert is determined by the topic).

Throughput is measured on this machine in this run: compare it between models of one report, never across runs.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from muses.data.wikipedia import WikiArticle, load_wikipedia, stratified_split
from muses.evaluation.corpus import CorpusEncoder, MusesCorpusEncoder
from muses.scratch.moe import RoutingStats, moe_layers, record_routing, set_domain

Metrics = dict[str, float]
_LAYER = re.compile(r"\.(\d+)\.")  # the layer's index: the last number in model.0.auto_model.blocks.3.ffn


def routing_articles(n: int, seed: int = 0) -> list[WikiArticle]:
    """``n`` held-out Wikipedia articles (the test side of the training split), every topic in its share."""
    _, held_out = stratified_split(load_wikipedia(), 0.2, seed=0)
    if n >= len(held_out):
        return held_out
    return stratified_split(held_out, test_fraction=n / len(held_out), seed=seed)[1]


def routing_matrix(stats: RoutingStats, topics: Sequence[str]) -> np.ndarray:
    """``[n_topics, n_experts]`` assignment counts of one layer."""
    return np.stack([stats.counts[t].cpu().numpy() if t in stats.counts else np.zeros(stats.n_experts) for t in topics])


def specialisation(counts: np.ndarray) -> float:
    """Mutual information of topic and expert over their entropy: ``I(T; E) / H(E)`` of a ``[T, E]`` count matrix."""
    total = counts.sum()
    if total == 0:
        return 0.0
    joint = counts / total
    p_t, p_e = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (p_t @ p_e)[nz])).sum())
    h_e = float(-(p_e[p_e > 0] * np.log(p_e[p_e > 0])).sum())
    return mi / h_e if h_e > 0 else 0.0


def evaluate_routing(model: CorpusEncoder, articles: Sequence[WikiArticle], batch_size: int = 16) -> Metrics:
    """Tokens/s of encoding ``articles`` and, for MoE models, the routing statistics above (flat metric keys).

    Flat (non-MuSES) baselines return nothing: their throughput is the ``efficiency`` task's.
    """
    if not isinstance(model, MusesCorpusEncoder):
        return {}
    enc = model.encoder
    by_topic: dict[str, list[str]] = defaultdict(list)
    for a in articles:
        by_topic[a.topic].append(a.text)
    topics = sorted(by_topic)
    enc.eval()
    tokens, seconds = 0, 0.0
    with record_routing(enc) as stats:
        for topic in topics:
            set_domain(enc, topic)
            t0 = time.perf_counter()
            states = enc.token_states(by_topic[topic], batch_size=batch_size, branch=False)
            seconds += time.perf_counter() - t0
            tokens += sum(int(s.content.shape[0]) for s in states)
    out: Metrics = {"tokens_per_s": tokens / seconds if seconds else 0.0, "tokens": float(tokens)}
    if not moe_layers(enc):
        return out
    balances, drops, specs = [], [], []
    for i, (name, layer_stats) in enumerate(stats.items()):
        numbers = _LAYER.findall(f".{name.replace('.', '..')}.")
        key = f"layer{numbers[-1] if numbers else i}"
        load = layer_stats.load().cpu().numpy()
        out.update({f"{key}/load/e{e}": float(v) for e, v in enumerate(load)})
        out[f"{key}/balance"] = layer_stats.balance()
        out[f"{key}/drop_rate"] = layer_stats.drop_rate()
        counts = routing_matrix(layer_stats, topics)
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        for t, topic in enumerate(topics):
            out.update({f"{key}/topic/{topic}/e{e}": float(v) for e, v in enumerate(shares[t])})
        out[f"{key}/specialisation"] = specialisation(counts)
        balances.append(out[f"{key}/balance"])
        drops.append(out[f"{key}/drop_rate"])
        specs.append(out[f"{key}/specialisation"])
    out.update(
        {
            "moe/balance": float(np.mean(balances)),
            "moe/max_balance": float(np.max(balances)),
            "moe/drop_rate": float(np.mean(drops)),
            "moe/specialisation": float(np.mean(specs)),
            "moe/layers": float(len(balances)),
        }
    )
    return out

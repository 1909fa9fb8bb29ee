"""Dense vs Mixture-of-Experts encoders: tokens per second and parameters, measured side by side.

Every model encodes the same held-out Wikipedia articles (token states, one pass each); the models take turns
within each repeat and each keeps its best time, so a load change on a shared machine hits all of them alike. Speed
is reported as a ratio to the first model, the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.evaluation.routing import routing_articles
from muses.scratch.model import count_parameters


def bench_moe(
    models: Mapping[str, MultiScaleEncoder], n_articles: int = 200, repeats: int = 3, batch_size: int = 16
) -> dict[str, Any]:
    """Tokens/s of each model on ``n_articles`` held-out articles, and total and active parameters.

    Returns:
        ``{"articles", "tokens" (the baseline's), "threads", "models": {name: {"seconds", "tokens", "tokens_per_s",
        "speed_vs_baseline", "params_total", "params_active"}}}``; the baseline is the first model, and the speed
        ratio compares the time to encode the same texts.
    """
    if not models:
        raise InputError("bench moe needs at least one model (the first is the baseline).")
    texts = [a.text for a in routing_articles(n_articles)]
    best = dict.fromkeys(models, float("inf"))
    tokens = dict.fromkeys(models, 0)  # per model: the models need not share a tokenizer
    for enc in models.values():
        enc.eval()
    with torch.inference_mode():
        for enc in models.values():  # warm-up
            enc.token_states(texts[:8], batch_size=batch_size)
        for _ in range(repeats):
            for name, enc in models.items():
                t0 = time.perf_counter()
                states = enc.token_states(texts, batch_size=batch_size)
                best[name] = min(best[name], time.perf_counter() - t0)
                tokens[name] = sum(int(s.content.shape[0]) for s in states)
    first = next(iter(models))
    out: dict[str, Any] = {
        "articles": len(texts),
        "tokens": tokens[first],
        "threads": torch.get_num_threads(),
        "models": {},
    }
    for name, enc in models.items():
        params = count_parameters(enc.transformer.auto_model)
        out["models"][name] = {
            "seconds": best[name],
            "tokens": tokens[name],
            "tokens_per_s": tokens[name] / best[name],
            "speed_vs_baseline": best[first] / best[name],
            "params_total": params["total"],
            "params_active": params["active"],
        }
    return out

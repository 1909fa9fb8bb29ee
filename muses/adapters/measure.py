"""Measurements of an :class:`~muses.adapters.AdapterCache` on a user's own traffic: how often the router picks the
right adapter, and what an active adapter adds to the forward pass.

Both take what to measure from the caller (labelled texts, a unit of work), so they serve any set of adapters; the
project's domain-shift experiment (``benchmarks/adapters/`` in a source checkout) is one caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from muses.adapters.cache import AdapterCache


def router_accuracy(
    cache: AdapterCache, texts: Mapping[str, Sequence[str]], group_size: int | None = None
) -> dict[str, dict[str, float]]:
    """Share of each key's texts that the cache's router sends to that key.

    Args:
        cache: the cache whose :class:`~muses.adapters.CentroidRouter` is measured (its ``min_similarity`` holds:
            a text sent to the base model counts as wrong).
        texts: expected adapter key -> texts of that domain (a key with no texts is skipped).
        group_size: also route consecutive groups of this many texts together (``route_group``, as a cache with
            ``routing="request"`` routes a request); None: per text only.

    Returns:
        key -> ``{"texts": share routed right per text}``, plus ``"groups"``: share of the groups routed right, when
        ``group_size`` is given.
    """
    out: dict[str, dict[str, float]] = {}
    for key, items in texts.items():
        items = list(items)
        if not items:
            continue
        out[key] = {"texts": float(np.mean([r == key for r in cache.router.route(items)]))}
        if group_size is not None:
            groups = [items[i : i + group_size] for i in range(0, len(items), group_size)]
            out[key]["groups"] = float(np.mean([cache.router.route_group(g) == key for g in groups]))
    return out


def adapter_overhead(
    cache: AdapterCache, keys: Sequence[str], work: Callable[[str], object], repeats: int = 1
) -> dict[str, float]:
    """Time of ``work(key)`` with each adapter already active, as a % over the base model's (``work("base")``).

    Every adapter is loaded before the clock starts, so no switching is timed: this is the forward cost of an
    active, unmerged LoRA adapter. The base and adapter runs are interleaved (a load change on the machine hits them
    alike) and each keeps its fastest of ``repeats``.

    Args:
        cache: the cache holding ``keys``; it needs capacity for all of them to keep them loaded.
        keys: adapter keys to compare with the base model.
        work: encodes something through ``cache`` under the key it is given (it runs inside ``cache.use(key)``).
        repeats: timed runs per key.

    Returns:
        ``{key: overhead %}`` for each key, and ``"base_ms"``: the base model's time in ms.
    """
    every = ["base", *keys]
    for k in every:
        with cache.use(k):  # loaded before timing
            pass
    best: dict[str, float] = {}
    for _ in range(max(repeats, 1)):
        for k in every:
            with cache.use(k):
                t = time.perf_counter()
                work(k)
                best[k] = min(best.get(k, float("inf")), time.perf_counter() - t)
    return {k: round(100.0 * (best[k] / best["base"] - 1.0), 2) for k in keys} | {
        "base_ms": round(1000 * best["base"], 1)
    }

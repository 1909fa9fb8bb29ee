"""The whole run: train and merge the adapters, encode every condition, send the traffic through caches of each
capacity, and assemble the results (JSON-ready)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.adapters.domains import DomainData, load_domains
from benchmarks.adapters.metrics import quality, retention
from benchmarks.adapters.settings import MERGED, BenchSettings, domain_topic, load_bench_settings, load_recipes
from benchmarks.adapters.traffic import (
    CorpusSide,
    QuerySide,
    corpus_side_drift,
    domain_requests,
    encode_corpus_side,
    encode_query_side,
    run_traffic,
    serve,
)
from benchmarks.adapters.training import Log, merge_adapters, train_adapters
from muses.adapters import AdapterCache
from muses.adapters.lora import list_adapters
from muses.adapters.measure import adapter_overhead, router_accuracy
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError

if TYPE_CHECKING:
    from muses.training.config import TrainConfig

CACHE_MODES = ("explicit key", "routed per text", "routed per request")


def routing_shares(cache: AdapterCache, domains: dict[str, DomainData], size: int) -> dict[str, dict[str, float]]:
    """Share of each domain's traffic the router sends to the domain's own adapter: per query text, per request
    of ``size`` queries routed together, and (Wikipedia) per article to classify."""
    by_query = router_accuracy(cache, {k: list(d.queries.values()) for k, d in domains.items()}, group_size=size)
    by_article = router_accuracy(cache, {k: [x.text for x in d.corpus] for k, d in domains.items() if d.classify})
    return {
        k: {"queries": v["texts"], "requests": v["groups"]}
        | ({"articles": by_article[k]["texts"]} if k in by_article else {})
        for k, v in by_query.items()
    }


def run_adapter_bench(
    s: BenchSettings,
    recipes: dict[str, TrainConfig],
    work: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Run the whole measurement (the package docstring defines every number) and return its results, JSON-ready.

    Args:
        s: the run's sizes (:func:`~benchmarks.adapters.settings.load_bench_settings`).
        recipes: domain key -> adapter recipe (:func:`~benchmarks.adapters.settings.load_recipes`); adapters
            already trained in their ``output_dir`` are reused, interrupted ones resumed.
        work: where the merged adapters are written (beside the trained ones, usually).
    """
    missing = [k for k in recipes if k not in s.sequence]
    if missing:
        raise InputError(f"the traffic sequence never visits {missing}; every domain needs at least one phase.")
    unknown = sorted(set(s.sequence) - set(recipes))
    if unknown:
        raise InputError(f"the traffic sequence names {unknown}, which no recipe trains; domains: {list(recipes)}.")
    work = Path(work)
    t_start = time.perf_counter()
    wiki_domains = {k: topic for k, cfg in recipes.items() if (topic := domain_topic(cfg)) is not None}
    training = train_adapters(recipes, data_dir, log)
    folders = {k: Path(v["folder"]) for k, v in training.items()}
    merged = merge_adapters(folders, work, log)
    domains, dev_domains = load_domains(recipes, s, data_dir)
    log(f"domains: {', '.join(f'{k} ({len(d.queries)} queries, {len(d.corpus)} docs)' for k, d in domains.items())}")

    enc = MultiScaleEncoder.from_base()
    every = AdapterCache(enc, {**folders, **merged}, capacity=len(folders) + len(merged))
    conditions = {"none": {k: "base" for k in domains}, "dedicated": {k: k for k in domains}}
    conditions |= {m: dict.fromkeys(domains, m) for m in MERGED}
    corpus_side: dict[str, dict[str, CorpusSide]] = {}
    query_side: dict[str, dict[str, QuerySide]] = {}
    for name, keys in conditions.items():
        t = time.perf_counter()
        corpus_side[name] = {k: encode_corpus_side(every, d, keys[k]) for k, d in domains.items()}
        query_side[name] = {k: encode_query_side(every, d, keys[k], s.request_size) for k, d in domains.items()}
        log(f"encoded condition {name} in {time.perf_counter() - t:.0f}s")
    dev = {
        name: quality(
            dev_domains,
            {k: encode_corpus_side(every, d, keys[k]) for k, d in dev_domains.items()},
            {k: encode_query_side(every, d, keys[k], s.request_size) for k, d in dev_domains.items()},
            s.dims,
        )
        for name, keys in conditions.items()
        if name in ("none", "dedicated")
    }
    first = domains[s.sequence[0]]
    first_requests = domain_requests(first, s.request_size)
    timing = adapter_overhead(
        every,
        [s.sequence[0], MERGED[0]],
        lambda key: [serve(every, first, r, key) for r in first_requests],
        s.timing_repeats,
    )
    routing = routing_shares(every, domains, s.request_size)
    every.clear()

    results: dict[str, Any] = {"quality": {}, "retention": {}, "traffic": {}}
    for name in conditions:
        results["quality"][name] = quality(domains, corpus_side[name], query_side[name], s.dims)
    dedicated = results["quality"]["dedicated"]
    for name in ("none", *MERGED):
        results["retention"][name] = retention(results["quality"][name], dedicated)
    serving = MultiScaleEncoder.from_base()
    for capacity in s.capacities:
        corpus_name = "none" if capacity == 0 else "dedicated"
        for mode in CACHE_MODES:
            granularity = "request" if mode == "routed per request" else "text"
            cache = AdapterCache(serving, folders, capacity=capacity, routing=granularity)
            startup_ms = round(1000 * cache.reserve(), 1)  # slots attached at startup: misses then copy weights
            vecs, stats = run_traffic(cache, domains, s, routed=mode != "explicit key")
            stats["startup_reserve_ms"] = startup_ms
            check = corpus_side_drift(cache, domains, corpus_side[corpus_name], s.request_size)
            cache.clear()
            name = f"cache K={capacity} {mode}"
            q = quality(domains, corpus_side[corpus_name], vecs, s.dims)
            results["quality"][name] = q
            results["retention"][name] = retention(q, dedicated)
            results["traffic"][name] = {**stats, "corpus_side_max_abs_diff": check}
            log(f"{name}: hit rate {stats['hit_rate']}, switch overhead {stats['switch_overhead_pct']}%")
    results.update(
        {
            "settings": s.model_dump(),
            "wiki_domains": wiki_domains,
            "recipes": {k: cfg.model_dump(mode="json") for k, cfg in recipes.items()},
            "training": training,
            "merged": {k: str(v) for k, v in merged.items()},
            "adapters": [{**i.__dict__, "path": str(i.path)} for i in list_adapters(work)],
            "data": {
                k: {"queries": len(d.queries), "corpus": len(d.corpus), "knn_index": len(d.index)}
                for k, d in domains.items()
            },
            "router_accuracy": routing,
            "dev": dev,
            "lora_forward_overhead_pct": timing,
            "machine": {"platform": platform.platform(), "torch_threads": _threads()},
            "seconds": round(time.perf_counter() - t_start, 1),
        }
    )
    return results


def run_configured(
    config: str | os.PathLike[str],
    recipes: str | os.PathLike[str],
    work: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """:func:`run_adapter_bench` from YAML: the profile ``config``, the recipes in folder ``recipes`` (their
    ``output_dir`` moved under ``work``), ``overrides`` (dotted keys) laid over every recipe."""
    s = load_bench_settings(config)
    return run_adapter_bench(s, load_recipes(recipes, s, work, overrides), work, data_dir, log)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())

"""The experiment's report: ``adapters.md`` from ``results.json``."""

from __future__ import annotations

from typing import Any

from benchmarks.adapters.metrics import ALL_WIKI, mean_retention
from benchmarks.adapters.settings import MERGED

METRICS = (("document/ndcg@10", "nDCG@10 doc"), ("sentence/ndcg@10", "nDCG@10 sent"), ("knn/accuracy", "k-NN acc"))


def _recipe_summary(results: dict[str, Any]) -> str:
    """``LoRA rank R, alpha A, N steps per adapter`` (per domain when the recipes differ)."""
    if "recipes" not in results:  # results.json written before the recipes were YAML: the settings held them
        s = results["settings"]
        return f"LoRA rank {s['rank']}, alpha {s['alpha']}, {s['steps']} steps per adapter."
    recipes = results["recipes"]
    each = {k: (r["model"]["adapter"]["rank"], r["model"]["adapter"]["alpha"], r["steps"]) for k, r in recipes.items()}
    if len(set(each.values())) == 1:
        rank, alpha, steps = next(iter(each.values()))
        return f"LoRA rank {rank}, alpha {alpha}, {steps} steps per adapter."
    return "LoRA " + "; ".join(f"{k}: rank {r}, alpha {a}, {n} steps" for k, (r, a, n) in each.items()) + "."


def render(results: dict[str, Any]) -> str:
    """The markdown report: quality and retention per domain, cache behaviour, costs."""
    s = results["settings"]
    full = max(s["dims"])
    quality_cols = ["none", "dedicated", *[c for c in results["quality"] if c.startswith("cache")], *MERGED]
    cache_cols = list(results["traffic"])
    wiki = results.get("wiki_domains") or s["wiki_domains"]
    lines = [
        "# Domain adapters served from an LRU AdapterCache",
        "",
        "Made by `python -m benchmarks.adapters` (the docstring of benchmarks/adapters/__init__.py defines every "
        "number). "
        f"Wikipedia domains: {', '.join(f'{k} ({v})' for k, v in wiki.items())}; and SciFact. "
        f"{_recipe_summary(results)} "
        f"Traffic: {' -> '.join(s['sequence'])}, requests of {s['request_size']} texts.",
        "",
        f"## Quality per domain at {full} dims, and retention (% of the dedicated adapter's number)",
        "",
        "| domain | metric | " + " | ".join(quality_cols) + " |",
        "|---|---|" + "---:|" * len(quality_cols),
    ]
    domains = [d for d in results["quality"]["dedicated"] if d != ALL_WIKI]
    for d in domains:
        for m, label in METRICS:
            key = f"{m}@{full}"
            if key not in results["quality"]["dedicated"][d]:
                continue
            cells = []
            for c in quality_cols:
                v = results["quality"][c][d][key]
                r = results["retention"].get(c, {}).get(d, {}).get(key)
                cells.append(f"{v:.4f}" + (f" ({r:.1f}%)" if r is not None else ""))
            lines.append(f"| {d} | {label} | " + " | ".join(cells) + " |")
    mean_ret = mean_retention(results)
    lines += [
        "| **mean retention** | | "
        + " | ".join(f"{mean_ret[c]:.2f}%" if c in mean_ret else "" for c in quality_cols)
        + " |",
        "",
        "## Cache behaviour on the traffic (one row per capacity K and keying)",
        "",
        "| run | requests | hits | misses | hit rate | loads | evictions | miss latency ms (mean / p50 / max) "
        "| KB per adapter | switch ms | encode ms | switch overhead | startup ms |",
        "|---|" + "---:|" * 12,
    ]
    for c in cache_cols:
        t = results["traffic"][c]
        lat = t["miss_latency_ms"]
        kb = max(t["memory_kb"].values()) if t["memory_kb"] else 0.0
        lines.append(
            f"| {c} | {t['requests']} | {t['hits']} | {t['misses']} | {t['hit_rate']:.3f} | {t['loads']} | "
            f"{t['evictions']} | {lat['mean']:.1f} / {lat['p50']:.1f} / {lat['max']:.1f} | {kb:.0f} | "
            f"{t['switch_ms_total']:.0f} | {t['encode_ms_total']:.0f} | {t['switch_overhead_pct']:.2f}% | "
            f"{t.get('startup_reserve_ms', 0):.0f} |"
        )
    routing = results["router_accuracy"]
    timing = results["lora_forward_overhead_pct"]
    lines += [
        "",
        "Phase by phase (misses per visit, explicit keys): "
        + "; ".join(
            f"K={c.split('K=')[1].split()[0]}: "
            + " ".join(f"{p['domain']}:{p['misses']}" for p in results["traffic"][c]["phases"])
            for c in cache_cols
            if c.endswith("explicit key")
        )
        + ".",
        "",
        "## Routing and compute",
        "",
        "Router accuracy (share of a domain's traffic sent to its own adapter; per query text, per request of "
        f"{s['request_size']} queries routed together, per article): "
        + "; ".join(
            f"{d}: queries {v['queries']:.2f}, requests {v['requests']:.2f}"
            + (f", articles {v['articles']:.2f}" if "articles" in v else "")
            for d, v in routing.items()
        )
        + ".",
        "",
        f"Dev check (held-out-sentence retrieval on {s['dev_articles']} train-side articles per topic that the "
        f"adapters did not train on; nDCG@10 doc at {full} dims, none -> dedicated): "
        + "; ".join(
            f"{d}: {results['dev']['none'][d][f'document/ndcg@10@{full}']:.4f} -> "
            f"{results['dev']['dedicated'][d][f'document/ndcg@10@{full}']:.4f}"
            for d in results["dev"]["dedicated"]
        )
        + ".",
        "",
        "Forward overhead of an active, unmerged LoRA adapter over the base model on the same requests (no switching): "
        + ", ".join(f"{k} +{v:.1f}%" for k, v in timing.items() if k != "base_ms")
        + f" (base: {timing['base_ms']:.0f} ms for the traffic of {s['sequence'][0]}).",
        "",
        f"Corpus-side check: vectors served by the cache under a domain's key differ from the indexed ones by at most "
        f"{max(t['corpus_side_max_abs_diff'] for t in results['traffic'].values()):.1e}.",
        "",
        "Training: "
        + "; ".join(f"{k}: {v['steps']} steps, {v['seconds_per_step']} s/step" for k, v in results["training"].items())
        + f". Whole run: {results['seconds'] / 60:.1f} min on {results['machine']['torch_threads']} CPU thread(s).",
        "",
    ]
    return "\n".join(lines)

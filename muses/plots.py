"""Figures for evaluation reports (matplotlib, headless): dimension sweeps, scale vs fusion, latency vs quality.

Needs the ``plots`` extra (matplotlib): ``pip install 'muses[plots]'``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from muses.evaluation.tables import HEADLINES, dim_table
from muses.extras import require

matplotlib = require("matplotlib", "plots")  # one line naming `muses[plots]` when it is not installed
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCORINGS = ("document", "sentence", "token-rerank", "fusion-wsum", "fusion-rrf")


def plot_report(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Write the report's figures into ``out``; returns the files written (tasks missing are skipped)."""
    written = [plot_dim_sweep(results, out / "dim_sweep.png")]
    if any("scifact" in m["tasks"] for m in results["models"]):
        written.append(plot_scale_vs_fusion(results, out / "scale_vs_fusion.png"))
    if any("scifact" in m["tasks"] and "efficiency" in m["tasks"] for m in results["models"]):
        written.append(plot_latency_vs_quality(results, out / "latency_vs_quality.png"))
    return written


def plot_dim_sweep(results: Mapping[str, Any], path: Path) -> Path:
    """One panel per task: each headline metric against the Matryoshka dim, one line style per model."""
    tasks = [t for t in HEADLINES if any(t in m["tasks"] for m in results["models"])]
    cols = min(3, max(len(tasks), 1))
    rows = -(-max(len(tasks), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, model in enumerate(results["models"]):
            block = model["tasks"].get(task)
            if not block:
                continue
            dims, table = dim_table(block["metrics"], HEADLINES[task])
            for name, by_dim in table.items():
                ds = [d for d in dims if d in by_dim]
                ax.plot(
                    ds,
                    [by_dim[d] for d in ds],
                    styles[i % len(styles)],
                    marker="o",
                    markersize=3,
                    label=f"{name} ({model['model']})" if len(results["models"]) > 1 else name,
                )
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("dim")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scale_vs_fusion(results: Mapping[str, Any], path: Path) -> Path:
    """SciFact nDCG@10 at each model's full dim: document, sentence, token MaxSim and the fusions."""
    models = [m for m in results["models"] if "scifact" in m["tasks"]]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        full = max(model["dims"])
        metrics = model["tasks"]["scifact"]["metrics"]
        values = [metrics.get(f"{s}/ndcg@10@{full}", 0.0) for s in SCORINGS]
        xs = [j + i * width for j in range(len(SCORINGS))]
        bars = ax.bar(xs, values, width=width, label=model["model"])
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(SCORINGS))], SCORINGS)
    ax.set_ylabel("SciFact nDCG@10")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_vs_quality(results: Mapping[str, Any], path: Path) -> Path:
    """Per dim: FAISS query latency (batch 1, document index) against SciFact document-scale nDCG@10."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in results["models"]:
        if "scifact" not in model["tasks"] or "efficiency" not in model["tasks"]:
            continue
        eff, sci = model["tasks"]["efficiency"]["metrics"], model["tasks"]["scifact"]["metrics"]
        pts = [
            (eff[k], sci[f"document/ndcg@10@{d}"], d)
            for d in model["dims"]
            if (k := f"{model['model']}/search/document/batch1_ms@{d}") in eff and f"document/ndcg@10@{d}" in sci
        ]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model["model"])
        for x, y, d in pts:
            ax.annotate(f"{d}d", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("query latency, ms (batch 1, FAISS flat, document index)")
    ax.set_ylabel("SciFact nDCG@10 (document scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training(histories: Mapping[str, Path], path: Path, smooth: int = 10) -> Path:
    """Loss curves of one or more training runs (``name -> history.jsonl``): per-task loss (moving average over
    ``smooth`` logged steps of that task) and the dev metrics, against the step."""
    runs = {
        name: [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln]
        for name, p in histories.items()
    }
    loss_keys = sorted({k for rows in runs.values() for r in rows for k in r if k.endswith("/loss")})
    dev_keys = sorted(
        {k for rows in runs.values() for r in rows for k in r if k.startswith("dev/") and k != "dev/score"}
    )
    panels = [*loss_keys, *dev_keys] or ["loss"]
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels, strict=False):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if not pts:
                continue
            steps, values = zip(*pts, strict=True)
            if key.endswith("/loss") and len(values) > smooth:
                kernel = [1.0 / smooth] * smooth
                values = tuple(np.convolve(values, kernel, mode="valid"))
                steps = steps[smooth - 1 :]
            ax.plot(steps, values, marker="" if key.endswith("/loss") else "o", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    drawn = [ax for ax in list(axes.flat)[: len(panels)] if ax.get_lines()]
    in_first = {line.get_label() for line in drawn[0].get_lines()} if drawn else set()
    every_panel = set(runs) - in_first  # runs that log other losses (e.g. the stages of one chain)
    for ax in drawn if every_panel else drawn[:1]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_routing(metrics: Mapping[str, float], title: str, path: Path) -> Path | None:
    """Expert load per MoE layer (bars) and, per layer, the expert-by-topic routing heatmap.

    ``metrics`` are the ``routing`` task's (``layerL/load/eK``, ``layerL/topic/<topic>/eK``); returns None when
    the model has no MoE layer.
    """
    layers = sorted({int(k.split("/")[0][5:]) for k in metrics if k.startswith("layer") and "/load/" in k})
    if not layers:
        return None
    n_experts = 1 + max(int(k.rsplit("/e", 1)[1]) for k in metrics if "/load/e" in k)
    topics = sorted({k.split("/")[2] for k in metrics if k.startswith(f"layer{layers[0]}/topic/")})
    cols = min(4, 1 + len(layers))
    rows = -(-(1 + len(layers)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    panels = list(axes.flat)
    for ax in panels[1 + len(layers) :]:
        ax.axis("off")
    load_ax = panels[0]
    width = 0.8 / len(layers)
    for i, layer in enumerate(layers):
        load = [metrics[f"layer{layer}/load/e{e}"] for e in range(n_experts)]
        load_ax.bar(np.arange(n_experts) + i * width, load, width, label=f"layer {layer}")
    load_ax.axhline(1 / n_experts, color="k", lw=0.8, ls=":", label="uniform")
    load_ax.set(xlabel="expert", ylabel="share of assignments", title="expert load per layer")
    load_ax.set_xticks(np.arange(n_experts) + width * (len(layers) - 1) / 2, [str(e) for e in range(n_experts)])
    load_ax.legend(fontsize=7)
    for ax, layer in zip(panels[1 : 1 + len(layers)], layers, strict=True):
        grid = np.array([[metrics[f"layer{layer}/topic/{t}/e{e}"] for e in range(n_experts)] for t in topics])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)])
        ax.set_yticks(range(len(topics)), [t[:22] for t in topics], fontsize=7)
        spec = metrics.get(f"layer{layer}/specialisation", 0.0)
        ax.set(xlabel="expert", title=f"layer {layer}: topic -> expert (spec. {spec:.3f})")
    fig.colorbar(im, ax=panels[len(layers)], fraction=0.05)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

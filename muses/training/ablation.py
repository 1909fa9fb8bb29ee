"""The training ablation: train several recipes on the same data and budget, evaluate each, tabulate.

``muses ablation configs/ablation/*.yaml --out docs/reports/ablation`` trains every recipe (resuming any that
was interrupted; a finished one is not retrained), evaluates it and the base model with the ``ablation`` report
profile (STS-B, SciFact, evidence sentences, hierarchy; 64 and 384 dims), and writes ``results.json``,
``ablation.md`` (the table for ``docs/results.md``) and ``loss_curves.png``. Results are saved after every
task, and a rerun skips what is already done (unless the model changed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from muses.evaluation.corpus import CorpusEncoder, EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.report import PROFILES, TaskContext, environment, run_report

# (column label, task, headline metric); each is shown at 384 and 64 dims.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("STS-B test", "sts", "spearman"),
    ("SciFact doc nDCG@10", "scifact", "document/ndcg@10"),
    ("SciFact fusion nDCG@10", "scifact", "fusion-wsum/ndcg@10"),
    ("evidence R@10 (flat)", "evidence", "flat/recall@10"),
    ("evidence MRR (zoom)", "evidence", "zoom/mrr@100"),
    ("hierarchy all (SciFact)", "hierarchy", "scifact/hierarchy/all"),
)
DIMS = (384, 64)


def _load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    return {"profile": "ablation", "environment": environment(), "models": {}}


def _save(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_ablation(
    configs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    cache: EmbeddingCache | None = None,
    base: str = "default",
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or resume) each recipe, evaluate it and the base model, write the table; returns ``out``."""
    from muses.encoder import MultiScaleEncoder
    from muses.evaluation.baselines import load_corpus_encoder
    from muses.plots import plot_training
    from muses.training.config import load_config
    from muses.training.data import load_training_data
    from muses.training.trainer import BEST, Trainer

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    results = _load_results(path)
    profile = PROFILES["ablation"]
    ctx = TaskContext(data_dir, cache or EmbeddingCache(None), profile)
    recipes = [load_config(c) for c in configs]

    def evaluate(name: str, make: Callable[[], CorpusEncoder]) -> None:
        model = make()
        block = results["models"].setdefault(name, {"tasks": {}})
        if block.get("fingerprint") != model.fingerprint():  # a retrained model: its old numbers are stale
            block.update({"fingerprint": model.fingerprint(), "tasks": {}})
        todo = [t for t in profile.tasks if t not in block["tasks"]]

        def saved(task: str, metrics: dict[str, float], seconds: float) -> None:
            block["tasks"][task] = {"metrics": metrics, "seconds": seconds}
            _save(results, path)
            log(f"{name} {task}: {seconds:.0f} s")

        run_report(model, todo, ctx, on_task=saved)

    base_name = f"base ({base})"
    results["models"].setdefault(base_name, {"tasks": {}})  # first row of the table, evaluated last (cache-friendly)
    histories = {}
    for cfg in recipes:
        run_dir = Path(cfg.output_dir)
        log(f"training {cfg.name} -> {run_dir}")
        summary = Trainer(cfg, load_training_data(cfg, data_dir)).train(resume=True)
        results.setdefault("training", {})[cfg.name] = {k: summary[k] for k in ("steps", "best_dev_score", "seconds")}
        histories[cfg.name] = run_dir / "history.jsonl"

        def trained(d: Path = run_dir, name: str = cfg.name) -> CorpusEncoder:
            return MusesCorpusEncoder(MultiScaleEncoder.load(d / BEST), name=name)

        evaluate(cfg.name, trained)
    evaluate(base_name, lambda: load_corpus_encoder(base))
    _save(results, path)
    plot_training(histories, folder / "loss_curves.png")
    (folder / "ablation.md").write_text(render_table(results), encoding="utf-8")
    return folder


def render_table(results: dict[str, Any]) -> str:
    """The markdown table: one row per model, each column metric at 384 and 64 dims."""
    head = ["model"] + [f"{label} @{d}" for label, _, _ in COLUMNS for d in DIMS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, block in results["models"].items():
        cells = [name]
        for _, task, metric in COLUMNS:
            metrics = block["tasks"].get(task, {}).get("metrics", {})
            cells += [f"{metrics[f'{metric}@{d}']:.4f}" if f"{metric}@{d}" in metrics else "" for d in DIMS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

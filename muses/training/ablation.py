"""The training ablation: train several recipes on the same data and budget, evaluate each, tabulate.

``muses ablation configs/ablation/*.yaml --out docs/reports/ablation`` trains every recipe (resuming any that
was interrupted; a finished one is not retrained), evaluates it and the base model with a report profile
(``ablation``: STS-B, SQuAD answer sentences, SciFact and hierarchy on subsets; ``training``: the same and
SciFact evidence sentences at full size; 64 and 384 dims), and writes ``results.json``, ``ablation.md`` (the
table for ``docs/results.md``) and ``loss_curves.png``. Results are saved after every task, and a rerun skips
what is already done (unless the model or the profile's settings changed).

An arm is a recipe or a stage list (``stages: [...]``, as ``muses train -c`` takes; :mod:`muses.training.stages`):
a stage list is one row, named for its file, the model its stages end with, its adapter stages shipped as task
adapters that the tasks they serve run on (STS-B on ``similarity``; noted under the table).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from muses.adapters.tasks import EVAL_TASK_ADAPTERS, task_adapter_digest
from muses.errors import InputError
from muses.evaluation.corpus import CorpusEncoder, EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.report import PROFILES, Profile, TaskContext, environment, run_report
from muses.training.config import TrainConfig, read_stage_list
from muses.training.stages import load_stages, task_adapter_target, train_stages

# (column label, task, headline metric); each is shown at 384 and 64 dims.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("STS-B test", "sts", "spearman"),
    ("SciFact doc nDCG@10", "scifact", "document/ndcg@10"),
    ("SciFact fusion nDCG@10", "scifact", "fusion-wsum/ndcg@10"),
    ("SQuAD answer sentence R@1", "squad", "unambiguous/flat/recall@1"),
    ("SQuAD MRR", "squad", "unambiguous/flat/mrr@100"),
    ("evidence R@10 (flat)", "evidence", "flat/recall@10"),
    ("evidence MRR (zoom)", "evidence", "zoom/mrr@100"),
    ("hierarchy all (SciFact)", "hierarchy", "scifact/hierarchy/all"),
    ("k-NN topic accuracy", "knn", "knn/document/accuracy"),
)
# Columns without a dim: throughput and MoE routing (the `routing` task).
PLAIN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("tokens/s", "routing", "tokens_per_s"),
    ("MoE balance (max/mean load)", "routing", "moe/balance"),
    ("MoE drop rate", "routing", "moe/drop_rate"),
    ("MoE topic specialisation", "routing", "moe/specialisation"),
)
DIMS = (384, 64)


def _load_results(path: Path, profile: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The saved results, if they were made with the same profile settings; else a fresh record.

    A setting added to the profiles after the results were saved (absent from their record) does not make them
    stale while the profile leaves it at its default, the behaviour the results were made with; the record then
    lists it under ``settings_added``.
    """
    settings = json.loads(json.dumps(asdict(PROFILES[profile])))  # tuples -> lists, as saved
    defaults = {f.name: f.default for f in fields(Profile)}
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        saved = data.get("profile_settings")
        if isinstance(saved, dict):
            added = [k for k in settings if k not in saved]
            same = saved == {k: v for k, v in settings.items() if k in saved}
            if same and all(settings[k] == defaults.get(k) for k in added):
                if added:
                    data["profile_settings"] = settings
                    data["settings_added"] = sorted({*data.get("settings_added", []), *added})
                return data
        log(f"{path} was made with other profile settings: evaluating every model again")
    return {"profile": profile, "profile_settings": settings, "environment": environment(), "models": {}}


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
    profile: str = "ablation",
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or resume) each recipe, evaluate it and the base model, write the table; returns ``out``."""
    from muses.encoder import MultiScaleEncoder
    from muses.evaluation.baselines import load_corpus_encoder
    from muses.plots import plot_routing, plot_training
    from muses.training.data import load_training_data
    from muses.training.trainer import Trainer

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; use one of {sorted(PROFILES)}.")
    results = _load_results(path, profile, log)
    ctx = TaskContext(data_dir, cache or EmbeddingCache(None), PROFILES[profile])
    arms = _arms(configs)  # all checked before anything trains

    def evaluate(name: str, make: Callable[[], CorpusEncoder]) -> None:
        model = make()
        block = results["models"].setdefault(name, {"tasks": {}})
        fingerprint = _fingerprint(model, ctx.profile.tasks)
        if block.get("fingerprint") != fingerprint:  # a retrained model or adapter: its old numbers are stale
            block.update({"fingerprint": fingerprint, "tasks": {}})
        todo = [t for t in ctx.profile.tasks if t not in block["tasks"]]
        ran: dict[str, Any] = {"tasks": {}}  # run_report's record of each task (with the task adapter it ran on)

        def saved(task: str, metrics: dict[str, float], seconds: float) -> None:
            block["tasks"][task] = ran["tasks"].get(task) or {"metrics": metrics, "seconds": seconds}
            _save(results, path)
            log(f"{name} {task}: {seconds:.0f} s")

        run_report(model, todo, ctx, on_task=saved, into=ran)

    def train(cfg: TrainConfig) -> dict[str, Any]:
        log(f"training {cfg.name} -> {cfg.output_dir}")
        return Trainer(cfg, load_training_data(cfg, data_dir)).train(resume=True)

    base_name = f"base ({base})"
    results["models"].setdefault(base_name, {"tasks": {}})  # first row of the table, evaluated last (cache-friendly)
    histories = {}
    for name, stages in arms:
        summaries = train_stages(stages, train, log)
        for cfg, summary in zip(stages, summaries, strict=True):
            label = cfg.name if len(stages) == 1 else f"{name}/{cfg.name}"
            results.setdefault("training", {})[label] = {k: summary[k] for k in ("steps", "best_dev_score", "seconds")}
            histories[label] = Path(cfg.output_dir) / "history.jsonl"
        model_dir = task_adapter_target(stages)
        assert model_dir is not None  # _arm refuses an arm of adapters alone

        def trained(d: Path = model_dir, name: str = name) -> CorpusEncoder:
            return MusesCorpusEncoder(MultiScaleEncoder.load(d), name=name)

        evaluate(name, trained)
    evaluate(base_name, lambda: load_corpus_encoder(base))
    _save(results, path)
    plot_training(histories, folder / "loss_curves.png")
    for name, block in results["models"].items():
        routing = block["tasks"].get("routing", {}).get("metrics", {})
        plot_routing(routing, name, folder / f"routing_{_slug(name)}.png")
    (folder / "ablation.md").write_text(render_table(results), encoding="utf-8")
    return folder


def _arms(configs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, list[TrainConfig]]]:
    """Each arm's row name and stages: a recipe is its own row (its ``name``); a stage list (``stages: [...]``) is
    one row named for its file, the model its stages end with (adapter stages as its task adapters).

    Raises:
        InputError: an arm of adapter stages alone, two rows with one name, or two stages (of any arms) writing to
            one output_dir (the second would resume the first's checkpoint, or add its adapter to it).
    """
    arms: list[tuple[str, list[TrainConfig]]] = []
    written: dict[Path, str] = {}
    for config in configs:
        path = Path(config)
        stages = load_stages([path])
        if task_adapter_target(stages) is None:
            raise InputError(f"{path} trains adapters only: an ablation arm needs a whole-model recipe first.")
        name = path.stem if read_stage_list(path) is not None else stages[0].name
        if name in {n for n, _ in arms} or name.startswith("base ("):
            raise InputError(f"two ablation rows would be named {name!r}: rename {path} (or its recipe's name).")
        for cfg in stages:
            out = Path(cfg.output_dir).resolve()
            if out in written:
                raise InputError(
                    f"{path} and {written[out]} both write to {cfg.output_dir}: give each arm its own output_dir."
                )
            written[out] = str(path)
        arms.append((name, stages))
    return arms


def _fingerprint(model: CorpusEncoder, tasks: Sequence[str]) -> str:
    """The model's fingerprint, joined with the digest of each task adapter ``tasks`` run on
    (:func:`~muses.adapters.tasks.task_adapter_digest`, as ``eval all --resume`` checks them), so a retrained adapter
    makes its tasks' numbers stale too; a model without one keeps its own fingerprint."""
    folder = model.encoder.folder if isinstance(model, MusesCorpusEncoder) else None
    adapters = sorted({a for t in tasks if (a := EVAL_TASK_ADAPTERS.get(t))})
    digests = [f"{a}={d}" for a in adapters if (d := task_adapter_digest(folder, a))]
    if not digests:
        return model.fingerprint()
    return hashlib.sha256("\x00".join([model.fingerprint(), *digests]).encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.4f}"


def render_table(results: dict[str, Any]) -> str:
    """The markdown table: one row per model, each column metric at the profile's dims (largest first)."""
    models = results["models"]
    dims = sorted(results.get("profile_settings", {}).get("dims") or DIMS, reverse=True)

    def value(block: dict[str, Any], task: str, key: str) -> float | None:
        v = block["tasks"].get(task, {}).get("metrics", {}).get(key)
        return None if v is None else float(v)

    cols = [
        (f"{label} @{d}", task, f"{metric}@{d}")
        for label, task, metric in COLUMNS
        for d in dims
        if any(value(b, task, f"{metric}@{d}") is not None for b in models.values())
    ] + [c for c in PLAIN_COLUMNS if any(value(b, c[1], c[2]) is not None for b in models.values())]
    lines = ["| model | " + " | ".join(c[0] for c in cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for name, block in models.items():
        cells = [name] + [_cell(value(block, task, key)) for _, task, key in cols]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{name}: {task} on its `{run['task_adapter']}` task adapter"
        for name, block in models.items()
        for task, run in block["tasks"].items()
        if run.get("task_adapter")
    ]
    return "\n".join(lines) + "\n" + ("\n" + "; ".join(notes) + ".\n" if notes else "")

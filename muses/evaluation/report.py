"""Evaluation reports: run every task for one or more models, write ``results.json``, a markdown table and plots.

Tasks (all through a :class:`~muses.evaluation.corpus.CorpusEncoder`, so MuSES and flat baselines do the same work):

====================  ==========================================================================================
``sts``               STS-B test Spearman at every dim
``scifact``           SciFact (BEIR) retrieval: document, sentence max-sim, token MaxSim rerank, fusion fitted on dev
``evidence``          SciFact evidence sentences among all ~46k corpus sentences: flat and zoom
``squad``             SQuAD dev answer sentences (ReQA-style), sentence vectors in context: flat and zoom
``squad-standalone``  the same with standalone sentence vectors (MuSES models only)
``squad-local``       the same with sentence vectors in local context (``context="local"``; MuSES models only)
``evidence-local``    ``evidence`` with sentence vectors in local context (MuSES models only)
``hierarchy``         parent-document accuracy of sentences: 1000 held-out Wikipedia articles and SciFact abstracts
``knn``               k-NN topic classification of Wikipedia articles, document and sentence scale
``efficiency``        encode throughput, FAISS query latency per dim, memory, checkpoint size, peak RSS
``routing``           tokens/s on held-out Wikipedia articles; for MoE models expert load, balance, topic routing
====================  ==========================================================================================

Profiles: ``full`` runs every task at full size (the numbers in ``docs/results.md``); ``quick`` runs a short report
(STS-B, SQuAD, hierarchy and k-NN on subsets) in a few minutes, for ``make run``; ``ablation`` runs the training
ablation's tasks on subsets at 64 and 384 dims; ``training`` reports a trained recipe at full size at 64 and 384.
Each is a YAML file in ``muses/evaluation/profiles/`` (:func:`get_profile` also takes a path to one's own).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from muses.adapters.tasks import EVAL_TASK_ADAPTERS, task_adapter_digest
from muses.data.stsb import load_stsb
from muses.data.wikipedia import load_wikipedia, stratified_split
from muses.errors import ConfigError, InputError
from muses.evaluation.corpus import CorpusEncoder, EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.evidence import evaluate_scifact_evidence, evaluate_squad_sentences
from muses.evaluation.hierarchy import evaluate_hierarchy, scifact_documents, wikipedia_documents
from muses.evaluation.knn import evaluate_knn
from muses.evaluation.retrieval import evaluate_beir_retrieval
from muses.evaluation.sts import evaluate_sts
from muses.evaluation.tables import HEADLINES, dim_table

Metrics = dict[str, float]


@dataclass(frozen=True)
class Profile:
    """Size limits of a report run (None = full size)."""

    name: str
    tasks: tuple[str, ...]
    squad_docs: int | None = None
    hierarchy_wiki_docs: int = 1000
    hierarchy_scifact_docs: int | None = None
    knn_articles: int | None = None
    knn_folds: int | None = None  # k-NN: cross-validate over this many folds instead of one 80/20 split
    knn_scales: tuple[str, ...] = ("document", "sentence")
    efficiency_docs: int = 300
    scifact_docs: int | None = None  # SciFact retrieval on the first N corpus docs (subset_beir)
    routing_articles: int = 600  # held-out Wikipedia articles for the routing task
    dims: tuple[int, ...] | None = None  # None: every dim of the model

    def dims_for(self, model: CorpusEncoder) -> list[int]:
        """The dims to report for ``model``: the profile's that the model has, else all of the model's."""
        return [d for d in self.dims if d in model.dims] if self.dims else list(model.dims)


ALL_TASKS = (
    "sts",
    "scifact",
    "evidence",
    "evidence-local",
    "squad",
    "squad-standalone",
    "squad-local",
    "hierarchy",
    "knn",
    "efficiency",
    "routing",
)
PROFILE_DIR = Path(__file__).with_name("profiles")
"""The named profiles, one YAML file each (``full``, ``quick``, ``training``, ``ablation``, ``moe``, ``upcycle``).

They ship inside the package (package data), so ``--profile quick`` works from a checkout and from a pip install
alike; a profile of one's own is a YAML file with the same keys, passed by path.
"""


def profile_settings(profile: Profile) -> dict[str, Any]:
    """The settings of ``profile`` that its numbers depend on (every field but its name and task list), as JSON
    values: ``results.json`` records them so that ``--resume`` can tell an edited profile from the one it ran."""
    settings = {f.name: getattr(profile, f.name) for f in fields(profile) if f.name not in ("name", "tasks")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """A :class:`Profile` from a YAML file: ``name`` (default: the file's stem), ``tasks`` and size limits."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read profile {file}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {file} is not a YAML mapping of {', '.join(_PROFILE_FIELDS)}.")
    unknown = sorted(set(raw) - set(_PROFILE_FIELDS))
    if unknown:
        raise ConfigError(f"profile {file}: unknown key(s) {unknown}; use any of {', '.join(_PROFILE_FIELDS)}.")
    if not raw.get("tasks"):
        raise ConfigError(f"profile {file} lists no tasks; use any of {', '.join(ALL_TASKS)}.")
    values = {"name": file.stem, **raw}
    for key in ("tasks", "knn_scales", "dims"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    folds = values.get("knn_folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ConfigError(f"profile {file}: knn_folds must be an integer >= 2 (or null: one split), got {folds!r}.")
    profile = Profile(**values)
    parse_tasks(profile.tasks, profile)  # unknown task names fail here, with the list of known ones
    try:  # results.json records the settings (see :func:`profile_settings`): plain, finite values only
        json.dumps(profile_settings(profile), allow_nan=False)
    except (TypeError, ValueError):
        raise ConfigError(f"profile {file}: settings must be plain numbers, strings or lists of them.") from None
    return profile


def load_profiles(folder: Path = PROFILE_DIR) -> dict[str, Profile]:
    """Every ``*.yaml`` profile of ``folder``, by name."""
    profiles = (load_profile(f) for f in sorted(folder.glob("*.yaml")))
    return {p.name: p for p in profiles}


_PROFILE_FIELDS = tuple(f.name for f in fields(Profile))


@dataclass
class TaskContext:
    """What tasks share: where the data is, the embedding cache and the profile."""

    data_dir: str | os.PathLike[str] | None
    cache: EmbeddingCache
    profile: Profile
    extra_models: Sequence[CorpusEncoder] = field(default_factory=list)
    task_adapters: bool = True  # a task runs on the model's adapter for it, where the model ships one


def _task_sts(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    return evaluate_sts(model, load_stsb("test", ctx.data_dir), ctx.profile.dims_for(model))


def _task_scifact(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    dims = ctx.profile.dims_for(model)
    return evaluate_beir_retrieval(
        model, "scifact", "test", cache=ctx.cache, dims=dims, max_docs=ctx.profile.scifact_docs, data_dir=ctx.data_dir
    )


def _task_evidence(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    dims = ctx.profile.dims_for(model)
    return evaluate_scifact_evidence(model, cache=ctx.cache, dims=dims, data_dir=ctx.data_dir)


def _task_squad(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    return evaluate_squad_sentences(
        model,
        cache=ctx.cache,
        dims=ctx.profile.dims_for(model),
        max_docs=ctx.profile.squad_docs,
        data_dir=ctx.data_dir,
    )


def _in_context(
    task: Callable[[CorpusEncoder, TaskContext], Metrics], context: str, label: str
) -> Callable[[CorpusEncoder, TaskContext], Metrics]:
    """``task`` with a MuSES model's sentence vectors in ``context`` (its cache entries under ``<name>/<label>``);
    nothing for a flat baseline, whose only sentence vectors are standalone ones (``task`` itself reports them)."""

    def run(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
        if not isinstance(model, MusesCorpusEncoder):
            return {}
        view = MusesCorpusEncoder(
            model.encoder, name=f"{model.name}/{label}", context=context, batch_size=model.batch_size
        )
        return task(view, ctx)

    return run


def _task_hierarchy(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    _, held_out = stratified_split(load_wikipedia(), 0.2, seed=0)
    wiki = wikipedia_documents(held_out[: ctx.profile.hierarchy_wiki_docs])
    dims = ctx.profile.dims_for(model)
    wiki_scores = evaluate_hierarchy(model, wiki, cache=ctx.cache, dims=dims, seed=0)
    out = {f"wikipedia/{k}": v for k, v in wiki_scores.items()}
    sci = scifact_documents(ctx.data_dir, ctx.profile.hierarchy_scifact_docs)
    sci_scores = evaluate_hierarchy(model, sci, cache=ctx.cache, dims=dims, seed=0)
    out.update({f"scifact/{k}": v for k, v in sci_scores.items()})
    return out


def _task_knn(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    return evaluate_knn(
        model,
        load_wikipedia(),
        cache=ctx.cache,
        scales=ctx.profile.knn_scales,  # type: ignore[arg-type]
        max_articles=ctx.profile.knn_articles,
        folds=ctx.profile.knn_folds,
        dims=ctx.profile.dims_for(model),
    )


def _task_routing(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    from muses.evaluation.routing import evaluate_routing, routing_articles

    return evaluate_routing(model, routing_articles(ctx.profile.routing_articles))


def _task_efficiency(model: CorpusEncoder, ctx: TaskContext) -> Metrics:
    from muses.evaluation.efficiency import measure_efficiency

    docs = scifact_documents(ctx.data_dir, ctx.profile.efficiency_docs)
    return measure_efficiency([model, *ctx.extra_models], docs)  # type: ignore[return-value]


TASKS: dict[str, Callable[[CorpusEncoder, TaskContext], Metrics]] = {
    "sts": _task_sts,
    "scifact": _task_scifact,
    "evidence": _task_evidence,
    "evidence-local": _in_context(_task_evidence, "local", "local"),
    "squad": _task_squad,
    "squad-standalone": _in_context(_task_squad, "sentence", "standalone"),
    "squad-local": _in_context(_task_squad, "local", "local"),
    "hierarchy": _task_hierarchy,
    "knn": _task_knn,
    "efficiency": _task_efficiency,
    "routing": _task_routing,
}


def parse_tasks(tasks: str | Sequence[str] | None, profile: Profile) -> list[str]:
    """Task names from a comma-separated string (or the profile's), checked against :data:`TASKS`."""
    names = list(profile.tasks) if not tasks else tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {unknown}; use any of {', '.join(TASKS)}.")
    return names


PROFILES: dict[str, Profile] = load_profiles()


def get_profile(name: str) -> Profile:
    """A profile by name (``muses/evaluation/profiles/NAME.yaml``) or a path to a YAML profile of one's own."""
    if name in PROFILES:
        return PROFILES[name]
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_profile(name)
    raise InputError(f"unknown profile {name!r}; use one of {', '.join(PROFILES)} or a path to a YAML profile.")


def run_report(
    model: CorpusEncoder,
    tasks: Sequence[str],
    ctx: TaskContext,
    on_task: Callable[[str, Metrics, float], None] | None = None,
    into: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` for ``model``; returns the ``results.json`` structure of one model.

    With ``into``, the results are filled into that dict as each task ends, so a caller can save them from
    ``on_task`` and an interrupted run keeps every finished task; the tasks ``into`` holds already are kept. A task
    that does not apply to the model (no metrics) is listed under ``"skipped"``.
    """
    out: dict[str, Any] = into if into is not None else {}
    out.update(
        {
            "model": model.name,
            "fingerprint": model.fingerprint(),
            "dims": list(model.dims),
            "profile": ctx.profile.name,
        }
    )
    out.setdefault("tasks", {})  # a resumed block keeps its finished tasks (see :func:`finished_blocks`)
    for name in tasks:
        t0 = time.perf_counter()
        adapter = EVAL_TASK_ADAPTERS.get(name) if ctx.task_adapters else None
        view = model.with_task_adapter(adapter) if adapter and isinstance(model, MusesCorpusEncoder) else None
        metrics = TASKS[name](view or model, ctx)
        seconds = time.perf_counter() - t0
        if metrics:
            out["tasks"][name] = {"metrics": metrics, "seconds": seconds}
            if name == "efficiency":  # measured side by side: a resume that adds a model reruns it (tasks_left)
                out["tasks"][name]["models"] = [model.name, *(m.name for m in ctx.extra_models)]
            if isinstance(model, MusesCorpusEncoder) and view is not None and adapter is not None:
                out["tasks"][name]["task_adapter"] = adapter
                digest = task_adapter_digest(model.encoder.folder, adapter)
                out["tasks"][name]["task_adapter_digest"] = digest  # a resume refuses a retrained adapter
            if not ctx.task_adapters:
                out["tasks"][name]["task_adapters"] = False  # --no-task-adapters: a resume with them reruns it
        elif name not in out.setdefault("skipped", []):
            out["skipped"].append(name)
        if on_task:
            on_task(name, metrics, seconds)
    return out


def finished_blocks(out_dir: str | os.PathLike[str], profile: Profile) -> list[dict[str, Any]]:
    """The model blocks of an earlier run into ``out_dir`` (``muses eval all --resume``), each with the
    ``environment`` it ran in; none when there is no ``results.json`` there yet.

    Raises:
        InputError: the file is not a MuSES results.json, or was written with another profile, or with this profile's
            name and other settings (its numbers would not line up with this run's).
    """
    if not (Path(out_dir) / "results.json").is_file():
        return []
    earlier = load_results(out_dir)
    if earlier.get("profile") != profile.name:
        raise InputError(
            f"{out_dir} holds a report of profile {earlier.get('profile')!r}, not {profile.name!r}: resume it with the "
            "--profile it was written with, or pass another --out."
        )
    recorded = earlier.get("profile_settings", {})  # absent in reports from before it was recorded: the name decides
    now = profile_settings(profile)
    changed = sorted(k for k in now if isinstance(recorded, dict) and k in recorded and recorded[k] != now[k])
    if changed or not isinstance(recorded, dict):
        raise InputError(
            f"{out_dir} was written with other settings of profile {profile.name!r} "
            f"({', '.join(changed) or 'profile_settings unreadable'}): resume it with the profile as it was, or pass "
            "another --out."
        )
    blocks = earlier["models"]
    fix = "drop --resume to start over, or pass another --out"
    if not isinstance(blocks, list) or not all(_resumable(b) for b in blocks):
        raise InputError(f"{out_dir}/results.json has a model block --resume cannot read; {fix}.")
    names = [b["model"] for b in blocks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{out_dir}/results.json holds {twice[0]!r} twice, so --resume cannot tell which; {fix}.")
    kept = [dict(b) for b in blocks]
    for block in kept:
        block.setdefault("environment", earlier.get("environment", {}))
    return kept


def _resumable(block: object) -> bool:
    """A model block as :func:`run_report` writes it: a model name, and tasks each with a metrics mapping."""
    if not isinstance(block, dict) or not isinstance(block.get("model"), str):
        return False
    tasks, skipped = block.get("tasks"), block.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(t, str) for t in skipped):
        return False
    return isinstance(tasks, dict) and all(_task_block(name, t) for name, t in tasks.items())


def _task_block(name: str, block: object) -> bool:
    """One task's results as :func:`run_report` writes them: numeric metrics (efficiency's also describe the machine
    in words) and the seconds it took."""
    if not isinstance(block, dict) or not isinstance(block.get("metrics"), dict) or not _number(block.get("seconds")):
        return False
    return all(_number(v) or (name == "efficiency" and isinstance(v, str)) for v in block["metrics"].values())


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def tasks_left(
    block: Mapping[str, Any] | None, wanted: Sequence[str], task_adapters: bool = True, measured: Sequence[str] = ()
) -> list[str]:
    """The tasks of ``wanted`` that ``block`` (an earlier run's results of one model, or None) has not finished.
    A task that ran on a task adapter is unfinished when this run turns task adapters off, and one run with them
    off is unfinished when this run turns them on; a task that did not apply to the model (``"skipped"``) is done.
    ``efficiency`` measures several models side by side: it is unfinished while one of ``measured`` (the names of
    this run's models) has no numbers in it, e.g. a baseline added on resume."""
    finished = (block or {}).get("tasks", {})
    skipped = (block or {}).get("skipped", [])

    def done(t: str) -> bool:
        if t in skipped:
            return True
        if t not in finished:
            return False
        ran_on = finished[t]
        if t == "efficiency" and not set(measured) <= set(efficiency_models(ran_on)):
            return False
        return bool(ran_on.get("task_adapter") is None if not task_adapters else ran_on.get("task_adapters", True))

    return [t for t in wanted if not done(t)]


def stale_task_adapters(block: Mapping[str, Any] | None, model_dir: str | os.PathLike[str]) -> list[str]:
    """The tasks of an earlier run's ``block`` that ran on a task adapter ``model_dir`` no longer ships as it was
    (retrained or removed since: :func:`~muses.adapters.tasks.task_adapter_digest`); blocks from before digests
    were recorded have none."""
    runs = (block or {}).get("tasks", {})
    return [
        t
        for t, run in runs.items()
        if run.get("task_adapter_digest")
        and task_adapter_digest(model_dir, run["task_adapter"]) != run["task_adapter_digest"]
    ]


def efficiency_models(efficiency: Mapping[str, Any]) -> list[str]:
    """The models an efficiency task's numbers are of: as recorded, or in a report from before that was recorded,
    those with a document count (``NAME/n_document``, which it writes for every model)."""
    models = efficiency.get("models")
    if isinstance(models, list):
        return [m for m in models if isinstance(m, str)]
    suffix = "/n_document"
    return [k.removesuffix(suffix) for k in efficiency["metrics"] if k.endswith(suffix)]


def environment() -> dict[str, Any]:
    """Machine, date and library versions for the report header."""
    import sentence_transformers
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def render_markdown(results: Mapping[str, Any]) -> str:
    """A markdown report: first each baseline against the model side by side (:func:`side_by_side`), then per task,
    headline metrics (rows) by dim (columns), one block per model."""
    env = results["environment"]
    lines = [
        f"# MuSES evaluation report ({results['profile']} profile)",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {env['date']}; machine: {env['machine']}; GPU: {env['gpu']}",
        f"- torch {env['torch']}, sentence-transformers {env['sentence_transformers']}",
    ]
    earlier = [e for e in _environments(results["models"]) if e != env]
    if earlier:  # a resumed report: its numbers come from more than one run
        lines.append("- Earlier runs that wrote into this report (each model's `environment` and `resumed_in`):")
        lines += [f"  - {_describe(e)}" for e in sorted(earlier, key=lambda e: str(e.get("date")))]
    lines.append("")
    tasks = [t for t in ALL_TASKS if any(t in m["tasks"] for m in results["models"])]
    for baseline in results["models"][1:]:
        lines += side_by_side(results["models"][0], baseline)
    for task in tasks:
        lines += [f"## {task}", ""]
        for model in results["models"]:
            block = model["tasks"].get(task)
            if not block:
                continue
            if task == "efficiency":
                lines += [
                    f"**{model['model']}** ({block['seconds']:.0f} s): see `results.json` for all "
                    f"{len(block['metrics'])} numbers; speed-ups measured in the same run:",
                    "",
                ]
                lines += [f"- {k}: {v:.2f}" for k, v in block["metrics"].items() if k.startswith("speedup/")]
                lines.append("")
                continue
            dims, rows = dim_table(block["metrics"], HEADLINES.get(task, ()))
            via = f", with its `{block['task_adapter']}` task adapter" if block.get("task_adapter") else ""
            lines += [
                f"**{model['model']}** ({block['seconds']:.0f} s{via})",
                "",
                "| metric | " + " | ".join(f"{d}d" for d in dims) + " |",
                "|---|" + "---:|" * len(dims),
            ]
            for name, by_dim in rows.items():
                cells = [f"{by_dim[d]:.4f}" if d in by_dim else "" for d in dims]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _environments(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every distinct environment the model blocks ran in (``environment``, then each of ``resumed_in``), in order."""
    seen: list[dict[str, Any]] = []
    for block in blocks:
        for env in [block.get("environment"), *resumed_in(block)]:
            if isinstance(env, dict) and env and env not in seen:
                seen.append(env)
    return seen


def resumed_in(block: Mapping[str, Any]) -> list[Any]:
    """The environments of the runs that topped ``block`` up (``resumed_in``), as a list even where a hand-edited
    file holds one value or none."""
    resumed = block.get("resumed_in") or []
    return resumed if isinstance(resumed, list) else [resumed]


def _describe(env: Mapping[str, Any]) -> str:
    """One line for an environment: its date, machine, GPU and library versions, as far as it records them."""
    parts = [str(env.get("date") or "date unknown")]
    keys = ("machine", "gpu", "python", "torch", "sentence_transformers")
    parts += [f"{key} {env[key]}" for key in keys if key in env]
    return "; ".join(parts)


@dataclass
class Comparison:
    """A model against a baseline: per headline metric, the baseline's and the model's value at each of ``dims``
    (the full dim and 64, where both report them); a value is None where a side lacks it."""

    model: str
    baseline: str
    dims: list[int]
    rows: list[tuple[str, str, dict[int, float], dict[int, float]]]  # task, metric, baseline by dim, model by dim

    def cells(self, row: tuple[str, str, dict[int, float], dict[int, float]]) -> list[str]:
        """Baseline, model and difference (model - baseline) per dim, as ``0.8203``-style strings ("" if absent)."""
        out = []
        for d in self.dims:
            vb, va = row[2].get(d), row[3].get(d)
            diff = f"{va - vb:+.4f}" if va is not None and vb is not None else ""
            out += [f"{vb:.4f}" if vb is not None else "", f"{va:.4f}" if va is not None else "", diff]
        return out


def compare_models(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> Comparison | None:
    """``model`` against ``baseline`` (two ``results.json`` model blocks) on the headline metrics of the tasks both
    ran; None if they share none."""
    ma, mb = model["tasks"], baseline["tasks"]
    rows: list[tuple[str, str, dict[int, float], dict[int, float]]] = []
    common: set[int] = set()
    for task in ALL_TASKS:
        if task not in ma or task not in mb or task == "efficiency":
            continue
        heads = HEADLINES.get(task, ())
        da, ra = dim_table(ma[task]["metrics"], heads)
        db, rb = dim_table(mb[task]["metrics"], heads)
        common |= set(da) & set(db)
        rows += [(task, name, rb[name], ra[name]) for name in heads if name in ra and name in rb]
    if not rows or not common:
        return None
    top = max(common)
    return Comparison(model["model"], baseline["model"], [top, 64] if 64 in common and top != 64 else [top], rows)


def side_by_side(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Markdown lines: ``baseline`` and ``model`` (two ``results.json`` model blocks) side by side per headline
    metric, with the difference (model - baseline), at the full dim and at 64 (the dims both report).

    Example row (baseline, model, difference at 384, then at 64):
    ``| sts | spearman | 0.8203 | 0.8250 | +0.0047 | 0.7921 | 0.7889 | -0.0032 |``.
    """
    c = compare_models(model, baseline)
    if c is None:
        return []
    head = " | ".join(f"baseline @{d} | model @{d} | Δ @{d}" for d in c.dims)
    lines = [
        f"## {c.model} against {c.baseline}",
        "",
        f"Model: `{c.model}`; baseline: `{c.baseline}`; Δ = model - baseline (headline metrics; every metric is in "
        "`results.json`).",
        "",
        f"| task | metric | {head} |",
        "|---|---|" + "---:|" * (3 * len(c.dims)),
    ]
    lines += [f"| {row[0]} | {row[1]} | " + " | ".join(c.cells(row)) + " |" for row in c.rows]
    for who in (model, baseline):
        via = {t: b["task_adapter"] for t, b in who["tasks"].items() if b.get("task_adapter")}
        lines += [f"\n`{who['model']}` ran {t} with its `{a}` task adapter." for t, a in via.items()]
    return [*lines, ""]


def write_report(results: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``results.json``, ``report.md`` and the plots into ``out_dir``; returns the folder."""
    from muses.plots import plot_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "results.json")
    (out / "report.md").write_text(render_markdown(results), encoding="utf-8")
    plot_report(results, out)
    return out


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``results.json`` (or the report folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise InputError(f"{p} does not exist; pass a results.json or a report folder written by `muses eval all`.")
    try:
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}).") from None
    if "models" not in data:
        raise InputError(f"{p} is not a MuSES results.json (no 'models').")
    return data

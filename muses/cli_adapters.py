"""``muses adapters``: train, list, route and encode with domain LoRA adapters; and ``muses bench adapters``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from muses.cli_common import DataDirOpt, DeviceOpt, FreshOpt, ModelOpt, console, load_recipe, run_training, user_errors
from muses.errors import InputError

adapters_app = typer.Typer(
    help="Domain LoRA adapters (PEFT) on a MuSES model, served from an LRU cache.", no_args_is_help=True
)

RootArg = Annotated[Path, typer.Argument(help="Folder holding adapter folders (searched recursively).")]
InputOpt = Annotated[Path | None, typer.Option("--input", help="A text file, one text a line.")]


def _texts(texts: list[str] | None, input_file: Path | None) -> list[str]:
    out = list(texts or [])
    if input_file is not None:
        if not input_file.is_file():
            raise InputError(f"--input {input_file} does not exist.")
        out += [ln for ln in input_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not out:
        raise InputError("no texts: pass them as arguments or with --input FILE (one a line).")
    return out


@adapters_app.command("train")
def train_adapter(
    config: Annotated[Path, typer.Option("--config", "-c", help="Recipe with model.adapter set (configs/adapters/).")],
    data_dir: DataDirOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: --set model.adapter.rank=4 (YAML value).")
    ] = None,
    fresh: FreshOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Train one adapter with the project's trainer (base and heads frozen); best/ is the adapter folder."""
    with user_errors():
        from muses.errors import ConfigError

        cfg = load_recipe(config, set_)
        if cfg.model.adapter is None:
            raise ConfigError(
                f"{config} trains the whole model (no model.adapter); add e.g. 'model: {{adapter: {{rank: 8}}}}' or "
                "use `muses train`."
            )
        run_training(cfg, data_dir, fresh, device, f"adapter of {cfg.name}")


@adapters_app.command("add")
def add_cmd(
    model: Annotated[Path, typer.Argument(help="A saved MuSES model folder.")],
    adapter: Annotated[Path, typer.Argument(help="An adapter folder trained on that model (e.g. runs/X/best).")],
    task: Annotated[str, typer.Option(help="The task it serves; evaluation uses 'similarity' for STS.")] = "similarity",
    replace: Annotated[bool, typer.Option(help="Overwrite the model's adapter for this task.")] = False,
) -> None:
    """Ship an adapter inside a model folder as its adapter for a task (model/adapters/TASK/)."""
    with user_errors():
        from muses.adapters.tasks import add_task_adapter, list_tasks

        folder = add_task_adapter(model, adapter, task, replace=replace)
        console.print(f"wrote {folder}; {model} now has task adapters: {', '.join(list_tasks(model))}")


@adapters_app.command("list")
def list_cmd(
    root: RootArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The adapters under a folder: key, rank, alpha, target layers, size, base model."""
    with user_errors():
        from muses.adapters import list_adapters

        infos = list_adapters(root)
        if json_out:
            rows = [{**i.__dict__, "path": str(i.path)} for i in infos]
            typer.echo(json.dumps(rows, indent=1))
            return
        table = Table(title=f"{len(infos)} adapters under {root}")
        for col in ("key", "rank", "alpha", "targets", "KB", "base", "path"):
            table.add_column(col)
        for i in infos:
            table.add_row(
                i.key, str(i.rank), str(i.alpha), ",".join(i.target_modules), str(i.size_kb), i.base_model, str(i.path)
            )
        console.print(table)


@adapters_app.command("route")
def route_cmd(
    root: RootArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to route.")] = None,
    input_file: InputOpt = None,
    model: ModelOpt = "default",
    min_similarity: Annotated[float | None, typer.Option(help="Below this cosine: the base model.")] = None,
) -> None:
    """Which adapter the cheap centroid router picks for each text, and its cosine to every centroid."""
    with user_errors():
        from muses.adapters import AdapterCache
        from muses.encoder import MultiScaleEncoder

        items = _texts(texts, input_file)
        cache = AdapterCache(MultiScaleEncoder.from_base(model), root, capacity=0, min_similarity=min_similarity)
        keys, sims = cache.router.scores(items)
        routes = cache.route(items)
        table = Table(title="routing (centred cosine to each adapter's centroid)")
        table.add_column("text")
        table.add_column("adapter")
        for k in keys:
            table.add_column(k, justify="right")
        for text, r, row in zip(items, routes, sims, strict=True):
            table.add_row(text[:60], r or "base", *(f"{x:.3f}" for x in row))
        console.print(table)


@adapters_app.command("encode")
def encode_cmd(
    root: RootArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to embed (as queries).")] = None,
    input_file: InputOpt = None,
    key: Annotated[str | None, typer.Option(help="Adapter key, or 'base'; default: routed per text.")] = None,
    capacity: Annotated[int, typer.Option(help="Adapters kept in memory (0: always the base model).")] = 2,
    dim: Annotated[int | None, typer.Option(help="Matryoshka dim (default: full).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the [N, dim] vectors here (.npy).")] = None,
    model: ModelOpt = "default",
) -> None:
    """Embed texts through an AdapterCache (explicit key or routed) and print the cache's stats."""
    with user_errors():
        import numpy as np

        from muses.adapters import AdapterCache
        from muses.encoder import MultiScaleEncoder

        items = _texts(texts, input_file)
        cache = AdapterCache(MultiScaleEncoder.from_base(model), root, capacity=capacity)
        vecs = cache.encode_queries(items, key=key, dim=dim)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, vecs)
            console.print(f"wrote {vecs.shape} to {out}")
        console.print_json(json.dumps({"routes": cache.route(items) if key is None else None, **cache.stats()}))


def bench_adapters_cmd() -> None:
    """Moved: the domain-shift experiment is `python -m benchmarks.adapters`, run from a source checkout."""
    typer.echo(
        "muses bench adapters moved out of the installed package: from the root of a source checkout, run "
        "`python -m benchmarks.adapters` (e.g. --config configs/bench/adapters/quick.yaml; see docs/adapters.md).",
        err=True,
    )
    raise typer.Exit(2)

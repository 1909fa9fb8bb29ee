"""What every ``muses`` subcommand shares: consoles, common options, and one-line user errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from muses.errors import InputError, MusesError

if TYPE_CHECKING:
    from muses.backends import Backend
    from muses.training.config import TrainConfig

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="MuSES folder, sentence-transformers folder or hub name; 'default' = bundled all-MiniLM-L6-v2.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data root (stsb/, scifact/, ...). Default: $MUSES_DATA_DIR."),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Where the transformer runs: torch, onnx, onnx-int8, openvino or openvino-int8 (CPU; exported once and "
        "cached, or read from a `muses export` folder). Default: the model's own (torch).",
    ),
]


def backend_option(value: str | None) -> Backend | None:
    """A ``--backend`` value checked (one line naming the backends when it is unknown), or None."""
    from muses.backends import check_backend

    return None if value is None else check_backend(value)


FreshOpt = Annotated[bool, typer.Option(help="Ignore an existing checkpoint in output_dir.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")]


def load_recipe(config: Path, overrides: list[str] | None, base: str | None = None) -> TrainConfig:
    """A YAML recipe with ``--set key.path=value`` overrides (values parsed as YAML), validated; ``base``, if given,
    replaces its ``model.base``."""
    import yaml

    from muses.training.config import load_config

    parsed: dict[str, object] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r} must look like key.path=value.")
        parsed[key] = yaml.safe_load(value)
    if base is not None:
        parsed["model.base"] = base
    return load_config(config, parsed)


def expand_stage_lists(configs: list[Path]) -> list[Path]:
    """``configs`` with each stage list (:func:`~muses.training.config.read_stage_list`) replaced by its recipes."""
    from muses.training.config import read_stage_list

    return [stage for c in configs for stage in read_stage_list(c) or [c]]


def load_stages(configs: list[Path], overrides: list[str] | None) -> list[TrainConfig]:
    """Recipes trained one after another, all validated before the first starts; a stage list
    (:func:`~muses.training.config.read_stage_list`) stands for the recipes it names. Each after the first starts from
    the model the stages before it keep: its ``model.base`` becomes the last whole-model stage's
    ``output_dir/best``. Adapter stages (``model.adapter``) come last; each becomes a task adapter of that model
    (:func:`task_adapter_target`). ``--set`` overrides apply to every stage.

    Raises:
        InputError: two stages write to the same output_dir (the second would resume the first's checkpoint), or a
            whole-model stage follows an adapter stage (the adapter would serve weights that are gone).
    """
    stages: list[TrainConfig] = []
    written: dict[Path, Path] = {}
    for config in expand_stage_lists(configs):
        model = task_adapter_target(stages)
        cfg = load_recipe(config, overrides, str(model) if model else None)
        if cfg.model.adapter is None and stages and stages[-1].model.adapter is not None:
            raise InputError(
                f"{config} trains the whole model after an adapter stage; put adapter stages last (an adapter "
                "serves the weights it was trained on)."
            )
        out = Path(cfg.output_dir).resolve()
        if out in written:
            raise InputError(
                f"{config} and {written[out]} both write to {cfg.output_dir}: give each stage its own output_dir "
                "(a --set output_dir=... applies to every stage)."
            )
        written[out] = config
        stages.append(cfg)
    return stages


def task_adapter_target(stages: list[TrainConfig]) -> Path | None:
    """The model the next stage starts from: the last whole-model stage's ``output_dir/best``, or None before the
    first; an adapter stage after it is added to that folder as its task adapter."""
    models = [s for s in stages if s.model.adapter is None]
    return Path(models[-1].output_dir) / "best" if models else None


def run_training(cfg: TrainConfig, data_dir: Path | None, fresh: bool, device: str | None, what: str) -> None:
    """Load the recipe's data, train (resuming unless ``fresh``) and print the summary as JSON, then one line on
    what WiSE-FT kept, if the recipe mixes."""
    import json

    from muses.training.data import load_training_data
    from muses.training.trainer import Trainer

    data = load_training_data(cfg, data_dir)
    console.print(f"training {what}: {data.sizes()} items, {cfg.steps} steps -> {cfg.output_dir}")
    summary = Trainer(cfg, data, device=device).train(resume=not fresh)
    console.print_json(json.dumps(summary))
    if "interpolation" in summary:
        from muses.training.dev import interpolation_summary

        console.print(interpolation_summary(summary["interpolation"]), highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print user errors (bad input, missing data, bad model) as one line, without a traceback; exit code 2."""
    try:
        yield
    except MusesError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

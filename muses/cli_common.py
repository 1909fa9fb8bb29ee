"""What every ``muses`` subcommand shares: consoles, common options, and one-line user errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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


def parse_overrides(overrides: list[str] | None) -> dict[str, object]:
    """``--set key.path=value`` items as dotted keys, the values parsed as YAML."""
    import yaml

    parsed: dict[str, object] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r} must look like key.path=value.")
        parsed[key] = yaml.safe_load(value)
    return parsed


def load_recipe(config: Path, overrides: list[str] | None, base: str | None = None) -> TrainConfig:
    """A YAML recipe with ``--set key.path=value`` overrides (values parsed as YAML), validated; ``base``, if given,
    replaces its ``model.base``."""
    from muses.training.config import load_config

    parsed = parse_overrides(overrides)
    if base is not None:
        parsed["model.base"] = base
    return load_config(config, parsed)


def load_stages(configs: list[Path], overrides: list[str] | None) -> list[TrainConfig]:
    """:func:`muses.training.stages.load_stages` with ``--set`` overrides, which apply to every stage."""
    from muses.training.stages import load_stages as load

    return load(configs, parse_overrides(overrides))


def run_training(cfg: TrainConfig, data_dir: Path | None, fresh: bool, device: str | None, what: str) -> dict[str, Any]:
    """Load the recipe's data, train (resuming unless ``fresh``) and print the summary as JSON, then one line on
    what WiSE-FT kept, if the recipe mixes; returns the summary."""
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
    return summary


@contextmanager
def user_errors() -> Iterator[None]:
    """Print user errors (bad input, missing data, bad model) as one line, without a traceback; exit code 2."""
    try:
        yield
    except MusesError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

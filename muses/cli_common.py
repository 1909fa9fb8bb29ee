"""What every ``muses`` subcommand shares: consoles, common options, and one-line user errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from muses.errors import MusesError

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


@contextmanager
def user_errors() -> Iterator[None]:
    """Print user errors (bad input, missing data, bad model) as one line, without a traceback; exit code 2."""
    try:
        yield
    except MusesError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

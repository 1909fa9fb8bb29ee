"""Where datasets live: ``--data-dir``, then ``$MUSES_DATA_DIR``, with an error that says how to fix it."""

from __future__ import annotations

import os
from pathlib import Path

from muses.errors import DataError

ENV_VAR = "MUSES_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$MUSES_DATA_DIR``.

    Raises:
        DataError: if neither is set, or the folder does not exist.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not chosen:
        raise DataError(
            f"No data directory given. Pass --data-dir PATH or set {ENV_VAR}=PATH "
            "(a folder holding stsb/, scifact/, squad/ ...), or use --hub to load from the Hugging Face hub."
        )
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Data directory {root} does not exist. Pass --data-dir or set {ENV_VAR} to an existing folder."
        )
    return root


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DataError` naming ``what`` was expected there."""
    if not path.is_file():
        raise DataError(f"{what}: expected file {path} is missing. Check --data-dir / ${ENV_VAR}.")
    return path

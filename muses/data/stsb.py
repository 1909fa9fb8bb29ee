"""STS Benchmark (English): sentence pairs with a 0-5 similarity score.

Local layout (``<data_dir>/stsb/stsb-en-{train,dev,test}.csv``): comma-separated, Excel quoting, no header, columns
``sentence1, sentence2, score``. Hub: ``sentence-transformers/stsb`` (scores already in 0-1; rescaled to 0-5).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from muses.data.paths import require_file, resolve_data_dir
from muses.errors import DataError

SPLITS = ("train", "dev", "test")
HUB_NAME = "sentence-transformers/stsb"


@dataclass(frozen=True)
class STSPairs:
    """Parallel lists of sentence pairs and gold scores (0-5)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    source: str

    def __len__(self) -> int:
        return len(self.scores)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"Unknown STS-B split {split!r}; use one of {', '.join(SPLITS)}.")


def load_stsb(split: str = "test", data_dir: str | os.PathLike[str] | None = None, hub: bool = False) -> STSPairs:
    """Load an STS-B split from ``<data_dir>/stsb/`` or, with ``hub=True``, from the Hugging Face hub."""
    _check_split(split)
    if hub:
        return _load_stsb_hub(split)
    path = require_file(resolve_data_dir(data_dir) / "stsb" / f"stsb-en-{split}.csv", "STS-B")
    return read_stsb_csv(path)


def read_stsb_csv(path: Path) -> STSPairs:
    """Read one STS-B CSV file; a malformed row raises a :class:`DataError` with the file and line number."""
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            line = f"{path}:{len(scores) + 1}"
            if len(row) != 3:
                raise DataError(f"{line}: expected 3 fields (sentence1, sentence2, score), got {len(row)}.")
            try:
                score = float(row[2])
            except ValueError:
                raise DataError(f"{line}: score {row[2]!r} is not a number.") from None
            if not 0.0 <= score <= 5.0:
                raise DataError(f"{line}: score {score} is outside 0-5.")
            s1.append(row[0])
            s2.append(row[1])
            scores.append(score)
    if not scores:
        raise DataError(f"{path}: no rows. Is this an STS-B CSV file?")
    return STSPairs(s1, s2, scores, source=str(path))


def _load_stsb_hub(split: str) -> STSPairs:  # pragma: no cover - needs a network
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError("Loading from the hub needs `datasets`: pip install 'muses[data]'.") from e
    hub_split = {"dev": "validation"}.get(split, split)
    ds = load_dataset(HUB_NAME, split=hub_split)
    return STSPairs(
        list(ds["sentence1"]), list(ds["sentence2"]), [5.0 * float(s) for s in ds["score"]], source=HUB_NAME
    )

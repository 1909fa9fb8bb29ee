"""Shared fixtures: the base model and MuSES encoder are loaded once per session; data comes from the real files."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite on several workers (pytest-xdist) that share the cores: each worker, and the processes it
# starts, gets its share of threads, rather than every one contending for all of them
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import pytest
from sentence_transformers import SentenceTransformer

from muses.encoder import MultiScaleEncoder, default_base_path

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reproduce", action="store_true", help="also run the full-dataset reproductions (`make reproduce`)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``reproduce`` encode a whole benchmark corpus (minutes each): skipped, saying so, unless
    ``--reproduce`` is given. ``make test`` checks the same code paths on slices of the same data."""
    if config.getoption("--reproduce"):
        return
    skip = pytest.mark.skip(reason="full-dataset reproduction (minutes): run `make reproduce`")
    for item in items:
        if "reproduce" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data root: $MUSES_DATA_DIR, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("MUSES_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "stsb").is_dir():
        pytest.fail(f"test data not found at {root}; set MUSES_DATA_DIR to the shared data folder")
    return root


@pytest.fixture(scope="session")
def encoder() -> MultiScaleEncoder:
    """An untrained MuSES over the bundled all-MiniLM-L6-v2 (do not modify it in tests)."""
    return MultiScaleEncoder.from_base()


@pytest.fixture(scope="session")
def base_model() -> SentenceTransformer:
    """The plain sentence-transformers all-MiniLM-L6-v2, as the reference."""
    return SentenceTransformer(str(default_base_path()), device="cpu")

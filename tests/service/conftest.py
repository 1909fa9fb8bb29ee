"""The service tests' fixture: a small store of their documents, one per test module."""

from __future__ import annotations

import pytest
from service_data import DOCS

from muses.encoder import MultiScaleEncoder
from muses.store import MemoryStore, StoreConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> MemoryStore:
    """A small store of :data:`DOCS` (128 d), one per test module; tests that add documents delete them again."""
    s = MemoryStore.create(tmp_path_factory.mktemp("svc") / "mem", encoder, StoreConfig(dim=128), model="default")
    s.add(DOCS)
    return s

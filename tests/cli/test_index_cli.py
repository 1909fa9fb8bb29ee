"""``muses index`` on hostile input (issue 13): empty filter results, corrupt store files, conflicting settings on
an existing store, relative model paths, concurrent first adds, duplicate ids to rm, unfinished stores, --durable.
Every user error is one line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from muses.cli import app
from muses.encoder import MultiScaleEncoder, default_base_path
from muses.errors import InputError
from muses.store import MemoryStore
from muses.store import db as store_db
from tests.cli_checks import one_line_error

runner = CliRunner()
DOCS = (
    '{"id": "a", "text": "Bees make honey. They live in hives.", "metadata": {"topic": "bio"}}\n'
    '{"id": "b", "text": "Income tax is due in April.", "metadata": {"topic": "money"}}\n'
)


def index(*args: str | Path) -> Result:
    return runner.invoke(app, ["index", *map(str, args)])


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    src = tmp_path / "docs.jsonl"
    src.write_text(DOCS)
    return src


@pytest.fixture
def fast_model(monkeypatch: pytest.MonkeyPatch, encoder: MultiScaleEncoder) -> None:
    """``from_base`` hands out the session's encoder for the bundled model (no reload per command)."""
    real = MultiScaleEncoder.from_base.__func__  # type: ignore[attr-defined]
    bundled = str(default_base_path().resolve())

    def from_base(cls: type, base: str | None = None, **kwargs: object) -> MultiScaleEncoder:
        if base in (None, "default") or str(Path(base).resolve()) == bundled:
            return encoder
        return real(cls, base, **kwargs)

    monkeypatch.setattr(MultiScaleEncoder, "from_base", classmethod(from_base))


@pytest.fixture
def store(tmp_path: Path, docs: Path, fast_model: None) -> Path:
    path = tmp_path / "mem"
    result = index("add", docs, "--store", path, "--dim", "32", "--token-pool", "2")
    assert result.exit_code == 0, result.output
    return path


def test_fusion_search_with_a_filter_matching_nothing(store: Path) -> None:
    for scale in ("fusion", "token"):
        result = index("search", "bees", "--store", store, "--scale", scale, "--filter", "topic=zzz", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == []
    result = index("search", "bees", "--store", store, "--filter", f"n={2**70}")
    one_line_error(result, "64-bit")


@pytest.mark.parametrize("content", [b"garbage, not SQLite\n" * 50, "truncated"], ids=["garbage", "truncated"])
def test_a_corrupt_store_file_is_one_line(store: Path, docs: Path, content: bytes | str) -> None:
    file = store / "store.sqlite"
    con = sqlite3.connect(file)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every commit into the file itself
    con.close()
    data = file.read_bytes()
    file.write_bytes(data[:8192] if content == "truncated" else content)  # type: ignore[arg-type]
    for args in (["search", "bees"], ["stats"], ["rm", "a"], ["add", docs]):
        one_line_error(index(*args, "--store", store), str(file), "not a readable SQLite database", "backup")


def test_a_zero_byte_store_file(tmp_path: Path, docs: Path, fast_model: None) -> None:
    path = tmp_path / "mem"
    path.mkdir()
    (path / "store.sqlite").write_bytes(b"")
    one_line_error(index("search", "bees", "--store", path), "creation was interrupted", "muses index add")
    assert index("add", docs, "--store", path, "--dim", "32").exit_code == 0  # nothing to lose: taken over
    assert json.loads(index("stats", "--store", path).stdout)["documents"] == 2


def test_an_unfinished_store_is_taken_over(tmp_path: Path, docs: Path, fast_model: None) -> None:
    path = tmp_path / "mem"
    path.mkdir()
    con = sqlite3.connect(path / "store.sqlite")  # a creation killed before its first commit
    con.executescript(store_db.SCHEMA)
    con.close()
    one_line_error(index("stats", "--store", path), str(path / "store.sqlite"), "muses index add")
    result = index("add", docs, "--store", path, "--dim", "32", "--token-pool", "0")
    assert result.exit_code == 0, result.output
    assert json.loads(index("stats", "--store", path).stdout)["documents"] == 2


@pytest.mark.parametrize(
    "option,said",
    [
        (["--dim", "64"], "dim 64 (the store has 32)"),
        (["--index", "hnsw"], "index 'hnsw' (the store has 'flat')"),
        (["--token-pool", "0"], "token_pool 0 (the store has 2)"),
        (["--durable"], "durable True (the store has False)"),
        (["--model", "sentence-transformers/other"], "model 'sentence-transformers/other'"),
    ],
)
def test_add_refuses_settings_that_differ_from_the_store(store: Path, docs: Path, option: list[str], said: str) -> None:
    one_line_error(index("add", docs, "--store", store, "--upsert", *option), said, "other settings")
    assert json.loads(index("stats", "--store", store).stdout)["dim"] == 32


def test_add_accepts_settings_that_match_the_store(store: Path, docs: Path) -> None:
    same = ["--dim", "32", "--index", "flat", "--token-pool", "2", "--model", str(default_base_path())]
    result = index("add", docs, "--store", store, "--upsert", *same)
    assert result.exit_code == 0, result.output
    assert index("add", docs, "--store", store, "--upsert").exit_code == 0  # nothing given: nothing to compare
    one_line_error(index("add", docs, "--store", store, "--index", "annoy"), "--index")


def test_a_relative_model_path_works_from_another_directory(
    tmp_path: Path, docs: Path, fast_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(default_base_path())
    result = index("add", docs, "--store", "mem", "--model", relative, "--dim", "32", "--token-pool", "0")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(docs.parent.parent)
    stats = index("stats", "--store", tmp_path / "mem")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["model"] == str(default_base_path().resolve())


def test_rm_counts_an_id_given_twice_once(store: Path) -> None:
    result = index("rm", "a", "a", "--store", store)
    assert result.exit_code == 0 and "deleted 1 document (1 left)" in result.output, result.output


def test_durable_applies_to_new_stores(tmp_path: Path, docs: Path, fast_model: None) -> None:
    path = tmp_path / "mem"
    assert index("add", docs, "--store", path, "--dim", "32", "--token-pool", "0", "--durable").exit_code == 0
    s = MemoryStore.open(path)
    assert s.config.durable and s._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_two_first_adds_at_once(tmp_path: Path, fast_model: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both `index add` commands find no store (as when both start before either has created it): one creates it,
    the other adds to it; a third with another dim gets the conflict."""
    from muses import cli_index

    monkeypatch.setattr(MemoryStore, "exists", classmethod(lambda cls, path: False))
    path = tmp_path / "mem"
    barrier = threading.Barrier(2)

    def add(i: int) -> list[str]:
        barrier.wait()
        s = cli_index._open_or_create(path, None, {"dim": 32, "token_pool": 0})
        return s.add([{"id": f"d{i}", "text": f"Document {i}."}])

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(add, range(2))) == [["d0"], ["d1"]]
    assert len(MemoryStore.open(path)) == 2
    with pytest.raises(InputError, match=r"dim 64 \(the store has 32\)"):
        cli_index._open_or_create(path, None, {"dim": 64})


def test_funnel_int8_stores_rebuild_and_list_filters(tmp_path: Path) -> None:
    """``index add --funnel-dim --token-dtype`` makes a store whose indexes ``index rebuild`` saves; a list-valued
    metadata filter matches the stored list; bad values are one-line errors."""
    src = tmp_path / "docs.jsonl"
    src.write_text(
        '{"id": "a", "text": "Bees make honey. They live in hives.", "metadata": {"tags": [1, 2]}}\n'
        '{"id": "b", "text": "Income tax is due in April.", "metadata": {"tags": [3]}}\n'
    )
    store = tmp_path / "mem"
    result = index("add", src, "--store", store, "--funnel-dim", "64", "--token-dtype", "int8")
    assert result.exit_code == 0, result.output
    stats = json.loads(index("rebuild", "--store", store).stdout)
    assert stats["index"]["sentence"]["dim"] == 64 and stats["index"]["document"]["vectors"] == 2
    assert stats["index_snapshot"]["generation"] == stats["generation"] == 1
    assert stats["config"]["token_dtype"] == "int8" and stats["change_log"] == 0
    found = json.loads(index("search", "honey", "--store", store, "--filter", "tags=[1, 2]", "--json").stdout)
    assert [h["id"] for h in found] == ["a"]
    one_line_error(index("add", src, "--store", tmp_path / "x", "--funnel-dim", "100"), "funnel_dim 100")
    one_line_error(index("add", src, "--store", tmp_path / "y", "--token-dtype", "int4"), "--token-dtype")
    one_line_error(index("rebuild", "--store", tmp_path / "none"), "holds no MuSES store")

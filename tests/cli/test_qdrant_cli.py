"""``muses index`` and ``muses serve`` on a Qdrant store (qdrant-client's local mode in a folder): the same results
as the embedded store from the same files, stats and rm, separate stores by name, the service over a Qdrant store,
and one-line errors for options that do not fit a Qdrant store or a server that is not there."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from muses.cli import app
from muses.encoder import MultiScaleEncoder, default_base_path
from tests.cli_checks import one_line_error

runner = CliRunner()
DOCS = (
    '{"id": "a", "text": "Bees make honey. They live in hives.", "metadata": {"topic": "bio"}}\n'
    '{"id": "b", "text": "Income tax is due in April. Late payers owe interest.", "metadata": {"topic": "money"}}\n'
    '{"id": "c/1", "text": "Pollen feeds the larvae of bees.", "metadata": {"topic": "bio", "year": 2024}}\n'
)


def index(*args: str | Path) -> Result:
    return runner.invoke(app, ["index", *map(str, args)])


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
def docs(tmp_path: Path) -> Path:
    src = tmp_path / "docs.jsonl"
    src.write_text(DOCS)
    return src


@pytest.fixture
def stores(tmp_path: Path, docs: Path, fast_model: None) -> tuple[Path, Path]:
    """The same file in an embedded store and in a local Qdrant folder."""
    mem, qd = tmp_path / "mem", tmp_path / "qd"
    for target in (["--store", mem], ["--qdrant-url", qd]):
        result = index("add", docs, *target, "--dim", "32", "--token-pool", "2")
        assert result.exit_code == 0, result.output
    return mem, qd


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_search_zoom_stats_rm_match_the_embedded_store(stores: tuple[Path, Path]) -> None:
    mem, qd = stores
    for scale in ("document", "sentence", "token", "fusion"):
        for extra in ([], ["--filter", "topic=bio"], ["--dim", "32"]):
            args = ["search", "where do bees live?", "--scale", scale, "-k", "3", "--json", *extra]
            want, got = _json(index(*args, "--store", mem)), _json(index(*args, "--qdrant-url", qd))
            assert [(h["id"], h["sentence"]) for h in got] == [(h["id"], h["sentence"]) for h in want], scale
            assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-4)
    zoom = ["search", "bees", "--zoom", "--json"]
    want, got = _json(index(*zoom, "--store", mem)), _json(index(*zoom, "--qdrant-url", qd))
    assert [[(s["span"], s["highlights"]) for s in r["sentences"]] for r in got] == [
        [(s["span"], s["highlights"]) for s in r["sentences"]] for r in want
    ]
    table = index("search", "bees", "--qdrant-url", qd, "--zoom")
    assert table.exit_code == 0 and "Bees make honey" in table.stdout
    stats = _json(index("stats", "--qdrant-url", qd))
    assert stats["documents"] == 3 and stats["dim"] == 32 and stats["store_backend"] == "qdrant"
    result = index("rm", "c/1", "--qdrant-url", qd)
    assert result.exit_code == 0 and "deleted 1 document (2 left)" in result.stdout, result.output
    assert {h["id"] for h in _json(index("search", "bees", "--qdrant-url", qd, "--json", "-k", "5"))} == {"a", "b"}


def test_add_refuses_settings_that_differ_or_do_not_apply(stores: tuple[Path, Path], docs: Path) -> None:
    _, qd = stores
    one_line_error(index("add", docs, "--qdrant-url", qd, "--upsert", "--dim", "64"), "dim 64 (the store has 32)")
    one_line_error(index("add", docs, "--qdrant-url", qd, "--shards", "2"), "shards 2 (the store has None)")
    one_line_error(index("add", docs, "--qdrant-url", qd, "--index", "hnsw"), "--index", "local FAISS")
    one_line_error(index("add", docs, "--qdrant-url", qd, "--durable"), "--durable", "local FAISS")
    one_line_error(index("add", docs, "--qdrant-url", qd), "already in the store", "--upsert")
    one_line_error(index("add", docs, "--store", qd.parent / "x", "--shards", "2"), "--qdrant-url")
    one_line_error(index("add", docs, "--qdrant-url", qd, "--replication-factor", "0"), "at least 1")
    assert index("add", docs, "--qdrant-url", qd, "--upsert", "--dim", "32", "--token-pool", "2").exit_code == 0
    assert _json(index("stats", "--qdrant-url", qd))["documents"] == 3


def test_stores_are_separate_by_name_and_the_url_comes_from_the_environment(
    tmp_path: Path, docs: Path, fast_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    qd = tmp_path / "qd"
    monkeypatch.setenv("MUSES_QDRANT_URL", str(qd))
    assert index("add", docs, "--dim", "32", "--token-pool", "0").exit_code == 0
    result = index("add", docs, "--qdrant-collection", "other", "--dim", "64", "--token-pool", "0", "--shards", "1")
    assert result.exit_code == 0, result.output
    assert _json(index("stats"))["dim"] == 32
    other = _json(index("stats", "--qdrant-collection", "other"))
    assert other["dim"] == 64 and other["qdrant"]["shards"] == 1
    one_line_error(index("search", "bees", "--scale", "token"), "token_pool = 0")
    one_line_error(index("stats", "--qdrant-collection", "nope"), "no MuSES store named 'nope'")
    one_line_error(index("stats", "--qdrant-collection", "bad name"), "store name")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_locations_are_one_line(tmp_path: Path, docs: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (["search", "bees"], ["stats"], ["rm", "a"], ["add", docs]):
        one_line_error(index(*args, "--qdrant-url", url), f"cannot reach the Qdrant server at {url}", "--qdrant-url")
    one_line_error(index("stats", "--qdrant-url", "grpc://localhost:6334"), "scheme 'grpc'")
    one_line_error(index("stats", "--qdrant-url", tmp_path / "missing"), "holds no local Qdrant store")
    one_line_error(index("stats", "--qdrant-url", tmp_path, "--store", tmp_path), "not both")
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "store.sqlite").write_text("x")
    one_line_error(index("stats", "--qdrant-url", tmp_path / "mem"), "holds other files")


def test_serve_runs_the_service_over_a_qdrant_store(stores: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, qd = stores
    served: dict[str, Any] = {}

    def run(app_: Any, **kwargs: Any) -> None:  # instead of listening: exercise the app in-process
        with TestClient(app_) as client:
            served["health"] = client.get("/health").json()
            served["search"] = client.post("/search", json={"query": "bees", "scale": "fusion", "k": 2}).json()
            served["zoom"] = client.post("/zoom", json={"query": "bees", "filters": {"topic": "bio"}}).json()
            served["doc"] = client.get("/documents/c%2F1").json()
            served["stats"] = client.get("/stats").json()
            key = {"X-API-Key": "secret"}
            new = {"documents": [{"id": "d", "text": "Wasps also sting.", "metadata": {"topic": "bio"}}]}
            served["add"] = client.post("/documents", json=new, headers=key).json()
            served["delete"] = client.delete("/documents/a", headers=key).json()
            served["missing"] = client.get("/documents/a").status_code
            served["bad"] = client.post("/search", json={"query": "bees", "dim": 1024}).status_code

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("MUSES_API_KEY", "secret")
    result = runner.invoke(app, ["serve", "--qdrant-url", str(qd)])
    assert result.exit_code == 0, result.output
    assert f"serving {qd}#muses (3 documents)" in " ".join(result.stdout.split())
    assert served["health"]["documents"] == 3
    assert served["search"]["hits"][0]["id"] in ("a", "c/1")
    assert {r["id"] for r in served["zoom"]["results"]} == {"a", "c/1"}
    assert served["doc"]["metadata"] == {"topic": "bio", "year": 2024}
    assert served["stats"]["store"]["store_backend"] == "qdrant"
    assert served["add"] == {"ids": ["d"], "documents": 4} and served["delete"]["documents"] == 3
    assert served["missing"] == 404 and served["bad"] == 400

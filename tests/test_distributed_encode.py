"""``muses encode --engine ray`` (local Ray, 2 CPUs): the same vectors as one process, resumable, and
``muses index add --from-encoded`` giving the same store as ``index add`` from text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muses.encoder import MultiScaleEncoder
from muses.io import read_documents
from tests.cli_checks import one_line_error
from tests.procs import kill_session

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from muses.cli import app  # noqa: E402
from muses.distributed_encode import (  # noqa: E402
    MANIFEST,
    WRITTEN_BY,
    EncodeSettings,
    encode_with_ray,
    read_encoded,
    read_manifest,
    shard_name,
)
from muses.errors import InputError, MusesError  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()
SCALES = ("document", "sentence", "token")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (2 CPUs, no dashboard); the encode runs use it rather than starting their own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """20 SciFact abstracts (with titles as metadata), a blank line, and one document of 7 abstracts (> 600 tokens)."""
    rows = []
    with (data_dir / "scifact" / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if len(rec["text"]) > 200:
                rows.append(rec)
            if len(rows) == 26:
                break
    docs = [{"id": r["_id"], "text": r["text"], "metadata": {"title": r["title"]}} for r in rows[:19]]
    docs.append({"id": "long", "text": " ".join(r["text"] for r in rows[19:26])})
    path = tmp_path_factory.mktemp("ray-corpus") / "docs.jsonl"
    lines = [json.dumps(d) for d in docs]
    lines.insert(6, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoded(local_ray: None, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus encoded through the CLI with 2 actors, 6 lines per shard (4 shards)."""
    out = tmp_path_factory.mktemp("ray-out") / "enc"
    args = ["encode", str(corpus), "-o", str(out), "--engine", "ray", "--workers", "2", "--shard-rows", "6"]
    result = runner.invoke(app, [*args, "--scales", ",".join(SCALES)])
    assert result.exit_code == 0, result.output
    return out


def test_vectors_equal_single_process(encoded: Path, corpus: Path, encoder: MultiScaleEncoder) -> None:
    meta, embs = read_encoded(encoded)
    docs = list(read_documents(corpus))
    ref = encoder.encode_documents(docs, scales=SCALES)
    assert meta["n_shards"] == 4 and meta["fingerprint"] == encoder.fingerprint() and meta["complete"]
    assert len(embs) == len(ref) == 20
    assert ref[-1].n_windows > 1 and embs[-1].n_windows == ref[-1].n_windows  # longer than one window
    worst = 0.0
    for a, b in zip(ref, embs, strict=True):
        assert a.index_record() == b.index_record()  # ids, text, metadata, spans, token offsets and links
        assert a.tokens is not None and b.tokens is not None
        for x, y in ((a.document, b.document), (a.sentences, b.sentences), (a.tokens, b.tokens)):
            assert x.shape == y.shape
            worst = max(worst, float(np.abs(x - y).max()))
    assert worst <= 1e-5


def test_resume_skips_finished_shards(encoded: Path, corpus: Path, tmp_path: Path) -> None:
    """An interrupted run resumes: shards on disk stay untouched (listed in the manifest or not), a shard the manifest
    lists but the folder lacks is encoded again, and so is a missing one. One encode, from a copy of a finished run."""
    settings = EncodeSettings(scales=SCALES)
    out = tmp_path / "enc"
    shutil.copytree(encoded, out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / shard_name(1)).unlink()  # listed, then lost
    (out / shard_name(2)).unlink()
    del manifest["shards"]["2"]  # never written
    del manifest["shards"]["3"]  # renamed into place, killed before the manifest listed it
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="unfinished"):
        read_manifest(out)
    mtimes = {k: (out / shard_name(k)).stat().st_mtime_ns for k in (0, 3)}

    # max_shards=0 encodes nothing but adopts shard 3 into the manifest
    none = encode_with_ray(str(corpus), str(out), settings, workers=1, shard_rows=6, max_shards=0)
    assert none.shards_written == [] and none.shards_skipped == [0, 3]
    assert sorted(json.loads((out / MANIFEST).read_text())["shards"]) == ["0", "3"]

    again = encode_with_ray(str(corpus), str(out), settings, workers=1, shard_rows=6)
    assert again.shards_skipped == [0, 3] and again.shards_written == [1, 2]
    assert {k: (out / shard_name(k)).stat().st_mtime_ns for k in (0, 3)} == mtimes
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    assert read_manifest(out)["complete"]
    _, a = read_encoded(out)
    _, b = read_encoded(encoded)
    assert [e.doc.id for e in a] == [e.doc.id for e in b]
    assert max(float(np.abs(x.sentences - y.sentences).max()) for x, y in zip(a, b, strict=True)) <= 1e-5

    # a finished folder is a no-op; another setting in it is refused (rerun the same command, or --overwrite)
    done = encode_with_ray(str(corpus), str(out), settings, workers=1, shard_rows=6)
    assert done.shards_written == [] and done.shards_skipped == [0, 1, 2, 3]
    with pytest.raises(InputError, match="other settings"):
        encode_with_ray(str(corpus), str(out), EncodeSettings(scales=SCALES, dim=64), shard_rows=6)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the run's processes in /proc (Linux)")
def test_sigkill_mid_run_resumes_without_redoing_shards(
    local_ray: None, corpus: Path, encoded: Path, tmp_path: Path, data_dir: Path
) -> None:
    """SIGKILL the whole `muses encode --engine ray` process group (driver, Ray and the actor) once the manifest lists
    a shard; the rerun keeps every shard on disk, encodes only the rest, and gives the same vectors."""
    out = tmp_path / "enc"
    cmd = [sys.executable, "-m", "muses.cli", "encode", str(corpus), "-o", str(out), "--engine", "ray"]
    cmd += ["--workers", "1", "--shard-rows", "2", "--scales", ",".join(SCALES)]
    env = {**os.environ, "MUSES_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    listed: dict[str, object] = {}
    try:
        while proc.poll() is None and not listed:
            time.sleep(0.02)
            if (out / MANIFEST).exists():
                listed = json.loads((out / MANIFEST).read_text()).get("shards", {})
        assert proc.poll() is None, "the run ended before it could be killed"
        kill_session(proc.pid)
    finally:
        proc.wait()
    on_disk = sorted(int(p.name[6:11]) for p in out.glob("shard-*.parquet"))
    assert len(listed) >= 1 and len(on_disk) < 11, (listed, on_disk)
    mtimes = {k: (out / shard_name(k)).stat().st_mtime_ns for k in on_disk}
    again = encode_with_ray(str(corpus), str(out), EncodeSettings(scales=SCALES), workers=1, shard_rows=2)
    assert again.shards_skipped == on_disk and sorted(again.shards_skipped + again.shards_written) == list(range(11))
    assert {k: (out / shard_name(k)).stat().st_mtime_ns for k in on_disk} == mtimes
    _, a = read_encoded(out)
    _, b = read_encoded(encoded)
    assert [e.doc.id for e in a] == [e.doc.id for e in b]
    assert max(float(np.abs(x.tokens - y.tokens).max()) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_index_from_encoded_equals_index_from_text(encoded: Path, corpus: Path, tmp_path: Path) -> None:
    """Encoded shards load into the embedded store and, the cluster path (encode on Ray, index into Qdrant), into a
    Qdrant store (qdrant-client's local mode in a folder): both search as the store built from the text does."""
    pytest.importorskip("qdrant_client")
    s1, s2, s3 = tmp_path / "from-text", tmp_path / "from-encoded", tmp_path / "qdrant"
    assert runner.invoke(app, ["index", "add", str(corpus), "--store", str(s1)]).exit_code == 0
    for target in (["--store", str(s2)], ["--qdrant-url", str(s3)]):
        result = runner.invoke(app, ["index", "add", "--from-encoded", str(encoded), *target])
        assert result.exit_code == 0, result.output
        assert "added 20 documents" in result.output
    for scale in ("document", "sentence", "token", "fusion"):
        args = ["index", "search", "cerebral white matter in newborns", "--scale", scale, "-k", "5", "--json"]
        h1 = json.loads(runner.invoke(app, [*args, "--store", str(s1)]).stdout)
        for target in (["--store", str(s2)], ["--qdrant-url", str(s3)]):
            h2 = json.loads(runner.invoke(app, [*args, *target]).stdout)
            assert [h["id"] for h in h1] == [h["id"] for h in h2], (scale, target)
            assert [h.get("span") for h in h1] == [h.get("span") for h in h2], (scale, target)
            assert np.allclose([h["score"] for h in h1], [h["score"] for h in h2], atol=1e-5), (scale, target)
    again = runner.invoke(app, ["index", "add", "--from-encoded", str(encoded), "--store", str(s2)])
    one_line_error(again, "already in the store")


def test_bad_input_is_one_line(encoded: Path, tmp_path: Path) -> None:
    one_line_error(
        runner.invoke(app, ["index", "add", "--from-encoded", str(tmp_path / "nope"), "--store", str(tmp_path / "s")]),
        "nope",
    )
    other = tmp_path / "other-model"
    other.mkdir()
    for f in encoded.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["fingerprint"] = "0123456789abcdef"
    (other / MANIFEST).write_text(json.dumps(manifest))
    one_line_error(
        runner.invoke(app, ["index", "add", "--from-encoded", str(other), "--store", str(tmp_path / "s")]),
        "another model",
    )
    one_line_error(
        runner.invoke(app, ["encode", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o"), "--engine", "ray"]),
        "does not exist",
    )
    one_line_error(runner.invoke(app, ["encode", "x.jsonl", "-o", str(tmp_path / "o"), "--engine", "spark"]), "spark")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda own, fields: json.dumps({**({"written_by": WRITTEN_BY, "complete": True} if own else {}), **fields}),
            st.booleans(),
            st.dictionaries(
                st.sampled_from(["written_by", "complete", "model", "fingerprint", "context", "dim", "n_shards", "x"]),
                st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=8), st.lists(st.integers())),
            ),
        ).map(str.encode),
    )
)
def test_fuzzed_manifests_are_refused_in_one_line_or_read(body: bytes, tmp_path: Path) -> None:
    """Any bytes in manifest.json: ``--from-encoded`` reads it or refuses it with a MuSES error, never a crash."""
    folder = tmp_path / "enc"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(body)
    try:
        meta = read_manifest(folder)
    except MusesError as e:
        assert "\n" not in str(e)
    else:
        assert meta["n_shards"] == 0 and meta["dim"] >= 1 and isinstance(meta["fingerprint"], str)

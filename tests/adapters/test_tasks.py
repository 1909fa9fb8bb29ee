"""Task adapters (muses.adapters.tasks): an adapter shipped inside a model folder, merged into the weights on load,
on the real all-MiniLM-L6-v2 with a tiny adapter (rank 2, random non-zero B); the CLI's add and its checks; the
evaluation running STS-B on a model's similarity adapter and saying so."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import muses
from muses.adapters import AdapterConfig, attach_adapter, load_adapter, remove_adapter, save_adapter
from muses.adapters.lora import adapter_parameters, read_adapter
from muses.adapters.tasks import (
    SIMILARITY,
    add_task_adapter,
    list_tasks,
    load_for_task,
    merge_adapter,
    task_adapter_digest,
    task_folder,
)
from muses.cli import app
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError

TINY = AdapterConfig(rank=2, alpha=4, target_modules=["query", "value", "intermediate.dense"])
TEXTS = ["A man is playing a guitar.", "The cat sits on the mat. It purrs.", "Stocks fell sharply on Monday."]
runner = CliRunner()


def _adapter(enc: MultiScaleEncoder, folder: Path, seed: int = 0) -> Path:
    """Attach a rank-2 adapter with random B to ``enc``, save it to ``folder`` and detach it again."""
    attach_adapter(enc, "tiny", TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter_parameters(enc, "tiny").items():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    save_adapter(enc, "tiny", folder)
    remove_adapter(enc, "tiny")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved model (the base's weights) shipping a similarity adapter trained on it."""
    root = tmp_path_factory.mktemp("task")
    enc = MultiScaleEncoder.from_base()
    enc.save(root / "model")
    add_task_adapter(root / "model", _adapter(enc, root / "adapter"), SIMILARITY)
    return root / "model"


def test_a_merged_task_adapter_encodes_as_the_attached_one(model_dir: Path) -> None:
    """Loading with a task merges ``W + alpha / r * B @ A``: the vectors are PEFT's (adapter attached, unmerged) to
    float precision and differ from the shared weights'; the encoder says which task it carries."""
    assert list_tasks(model_dir) == [SIMILARITY] and list_tasks(None) == []
    merged = load_for_task(model_dir, SIMILARITY)
    shared = MultiScaleEncoder.load(model_dir)
    plain = shared.encode_sentences(TEXTS)
    load_adapter(shared, task_folder(model_dir, SIMILARITY))
    attached, vecs = shared.encode_sentences(TEXTS), merged.encode_sentences(TEXTS)
    assert np.abs(vecs - attached).max() < 1e-5
    assert np.abs(vecs - plain).max() > 1e-3
    assert (merged.task, shared.task) == (SIMILARITY, None) and merged.folder == model_dir
    assert merged.fingerprint() != MultiScaleEncoder.load(model_dir).fingerprint()  # caches keep them apart
    for again in (load_for_task(str(model_dir), SIMILARITY), muses.load(str(model_dir), task=SIMILARITY)):
        assert again.task == SIMILARITY and np.array_equal(again.encode_sentences(TEXTS), vecs)


def test_task_adapter_errors_are_one_line(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no adapter for task 'retrieval' \\(it has: similarity\\)"):
        load_for_task(model_dir, "retrieval")
    with pytest.raises(InputError, match="inside a saved MuSES model folder"):
        load_for_task("default", SIMILARITY)
    with pytest.raises(InputError, match="already has an adapter for task 'similarity'; pass --replace"):
        add_task_adapter(model_dir, task_folder(model_dir, SIMILARITY), SIMILARITY)
    with pytest.raises(InputError, match="is not usable"):
        add_task_adapter(model_dir, task_folder(model_dir, SIMILARITY), "two words")
    # an adapter trained on other weights would add its update to the wrong matrices: refused
    other = MultiScaleEncoder.from_base()
    with torch.no_grad():
        other.transformer.auto_model.encoder.layer[0].attention.self.query.weight[0, 0] += 0.5
    other.save(tmp_path / "other")
    with pytest.raises(InputError, match="was trained on other weights"):
        add_task_adapter(tmp_path / "other", task_folder(model_dir, SIMILARITY), SIMILARITY)
    assert list_tasks(tmp_path / "other") == []
    # a model retrained in place keeps its adapters/ folder (the trainer saves into best/): loading with the task
    # then refuses the stale adapter instead of merging it into weights it was not trained on
    shutil.copytree(model_dir, tmp_path / "retrained")
    other.save(tmp_path / "retrained")
    assert list_tasks(tmp_path / "retrained") == [SIMILARITY]
    with pytest.raises(InputError, match=r"was trained on other weights .* train it again with model.base"):
        load_for_task(tmp_path / "retrained", SIMILARITY)


def test_merge_refuses_adapters_it_cannot_reproduce(model_dir: Path) -> None:
    """Per-layer ranks (or DoRA, biases...) would merge to other vectors than PEFT's, and a layer the model lacks
    cannot merge at all: both refused, leaving the weights as they were."""
    files = read_adapter(task_folder(model_dir, SIMILARITY))
    enc = MultiScaleEncoder.load(model_dir)
    before = enc.encode_sentences(TEXTS[:1])
    files.peft_config.rank_pattern = {"query": 4}
    with pytest.raises(ModelError, match="only plain LoRA"):
        merge_adapter(enc, files)
    files.peft_config.rank_pattern = {}
    files.weights = {k.replace("attention.self.query", "attention.self.nowhere"): v for k, v in files.weights.items()}
    with pytest.raises(ModelError, match=r"names layer .*nowhere.*which this model lacks"):
        merge_adapter(enc, files)
    assert np.array_equal(enc.encode_sentences(TEXTS[:1]), before)  # checked before any weight changed


def test_cli_add_and_sts_on_the_similarity_adapter(model_dir: Path, tmp_path: Path, data_dir: Path) -> None:
    """`muses adapters add` ships an adapter in a model folder (exit 2, one line, when it does not fit); `muses eval
    sts` and `muses eval all` run STS-B on it by default and say so, and `--no-task-adapters` runs the shared weights
    (the base's Spearman here)."""
    enc = MultiScaleEncoder.load(model_dir)
    copy = tmp_path / "copy"
    enc.save(copy)
    adapter = str(task_folder(model_dir, SIMILARITY))
    out = runner.invoke(app, ["adapters", "add", str(copy), adapter, "--task", "paraphrase"])
    assert out.exit_code == 0, out.output
    assert list_tasks(copy) == ["paraphrase"]
    bad = runner.invoke(app, ["adapters", "add", str(copy), str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "no adapter_config.json" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output

    results = {}
    for flag in ("--task-adapters", "--no-task-adapters"):
        path = tmp_path / f"{flag}.json"
        args = ["eval", "sts", "--model", str(model_dir), "--data-dir", str(data_dir), "--json", str(path), flag]
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
        results[flag] = json.loads(path.read_text())
    with_it, without = results["--task-adapters"], results["--no-task-adapters"]
    assert (with_it["task_adapter"], without["task_adapter"]) == (SIMILARITY, None)
    assert without["metrics"]["spearman@384"] == pytest.approx(0.8203, abs=5e-4)  # the base's, docs/results.md
    assert with_it["metrics"]["spearman@384"] != without["metrics"]["spearman@384"]

    report = tmp_path / "report"
    args = ["eval", "all", "--model", str(model_dir), "--profile", "quick", "--tasks", "sts", "--no-cache"]
    out = runner.invoke(app, [*args, "--data-dir", str(data_dir), "-o", str(report)])
    assert out.exit_code == 0, out.output
    block = json.loads((report / "results.json").read_text())["models"][0]["tasks"]["sts"]
    assert block["task_adapter"] == SIMILARITY
    assert block["metrics"]["spearman@384"] == pytest.approx(with_it["metrics"]["spearman@384"], abs=1e-6)
    assert "with its `similarity` task adapter" in (report / "report.md").read_text()

    # the shared weights' fingerprint does not see a retrained adapter: the report records the adapter's digest, and
    # a resume over numbers it no longer gives is refused in one line (exit 2), the file left as it was
    add_task_adapter(copy, task_folder(model_dir, SIMILARITY), SIMILARITY)
    args = ["eval", "all", "--model", str(copy), "--profile", "quick", "--tasks", "sts", "--no-cache"]
    args += ["--data-dir", str(data_dir), "-o", str(tmp_path / "resumed")]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0  # the same adapter: nothing to do
    saved = (tmp_path / "resumed" / "results.json").read_text()
    assert json.loads(saved)["models"][0]["tasks"]["sts"]["task_adapter_digest"] == task_adapter_digest(
        copy, SIMILARITY
    )
    add_task_adapter(copy, _adapter(enc, tmp_path / "retrained", seed=1), SIMILARITY, replace=True)
    out = runner.invoke(app, [*args, "--resume"])
    line = " ".join(out.output.split())
    assert out.exit_code == 2 and "the task adapter that sts ran on has changed" in line, out.output
    assert "Traceback" not in out.output and (tmp_path / "resumed" / "results.json").read_text() == saved


def test_cli_encode_with_a_task(model_dir: Path, tmp_path: Path) -> None:
    """`muses encode --task` writes the merged model's vectors and records the task; an unknown task is one line,
    exit 2, and leaves no output folder."""
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = runner.invoke(
        app, ["encode", str(docs), "-o", str(tmp_path / "v"), "--model", str(model_dir), "--task", SIMILARITY]
    )
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "v" / "meta.json").read_text())["task"] == SIMILARITY
    want = load_for_task(model_dir, SIMILARITY).encode_documents(TEXTS)
    assert np.abs(np.load(tmp_path / "v" / "document.npy") - np.stack([e.document for e in want])).max() < 1e-5
    bad = runner.invoke(app, ["encode", str(docs), "-o", str(tmp_path / "w"), "--model", str(model_dir), "--task", "x"])
    assert bad.exit_code == 2 and "has no adapter for task 'x'" in " ".join(bad.output.split())
    assert not (tmp_path / "w").exists()


def test_a_store_keeps_the_task_it_was_built_with(model_dir: Path, tmp_path: Path) -> None:
    """`muses index add --task` builds a store with the merged model and records the task: reopening loads it again
    (searches encode queries with the adapter, as the documents were), a model loaded for another task is refused,
    and `--task` on an existing store must agree with the store's (exit 2, one line, nothing written otherwise)."""
    from muses.store import MemoryStore
    from muses.store.qdrant import QdrantStore

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)), "utf-8")
    store = tmp_path / "store"
    add = ["index", "add", str(docs), "--store", str(store), "--model", str(model_dir)]
    out = runner.invoke(app, [*add, "--task", SIMILARITY])
    assert out.exit_code == 0, out.output
    merged = load_for_task(model_dir, SIMILARITY)
    s = MemoryStore.open(store)
    assert s.task == SIMILARITY == s.encoder.task and s.stats()["task"] == SIMILARITY
    assert s.fingerprint == merged.fingerprint()
    assert np.array_equal(s.encoder.encode_sentences(TEXTS), merged.encode_sentences(TEXTS))
    assert s.search("someone plays the guitar", "document", 1)[0].id == "d0"
    s.close()
    with pytest.raises(ModelError, match="was built with the 'similarity' task adapter; the model given is loaded "):
        MemoryStore.open(store, MultiScaleEncoder.load(model_dir))
    with pytest.raises(InputError, match=r"you asked for task None \(the store has 'similarity'\)"):
        MemoryStore.create(store, MultiScaleEncoder.load(model_dir), exist_ok=True)
    with pytest.raises(InputError, match="use --backend torch for task 'similarity'"):
        load_for_task(model_dir, SIMILARITY, backend="onnx")  # refused before anything is exported
    # a store built with a merged model before stores recorded tasks: the encoder that made it still opens it
    shutil.copytree(store, tmp_path / "older")
    con = sqlite3.connect(tmp_path / "older" / "store.sqlite")
    con.execute("DELETE FROM meta WHERE key = 'task'")
    con.commit()
    con.close()
    s = MemoryStore.open(tmp_path / "older", merged)
    assert s.task is None and len(s) == len(TEXTS)
    s.close()
    s = MemoryStore.create(tmp_path / "older", merged, exist_ok=True)  # and so does create(exist_ok=True)
    assert s.task is None and len(s) == len(TEXTS)
    s.close()
    with pytest.raises(ModelError, match=r"is another \(fingerprint"):  # but not one whose vectors differ
        MemoryStore.create(tmp_path / "older", MultiScaleEncoder.load(model_dir), exist_ok=True)
    again = runner.invoke(app, [*add, "--task", SIMILARITY, "--upsert"])  # the same task, or none: the store's
    assert again.exit_code == 0, again.output
    found = runner.invoke(app, ["index", "search", "stock prices dropped", "--store", str(store), "--json"])
    assert found.exit_code == 0 and json.loads(found.stdout)[0]["id"] == "d2", found.output

    plain = tmp_path / "plain"
    assert (
        runner.invoke(app, ["index", "add", str(docs), "--store", str(plain), "--model", str(model_dir)]).exit_code == 0
    )
    bad = runner.invoke(app, ["index", "add", str(docs), "--store", str(plain), "--task", SIMILARITY, "--upsert"])
    assert bad.exit_code == 2 and "task 'similarity' (the store has None)" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output
    s = MemoryStore.open(plain)
    assert s.task is None and s.encoder.task is None and s.stats()["task"] is None
    assert s.stats()["generation"] == 1 and len(s) == len(TEXTS)  # the refused add wrote nothing
    s.close()

    q = QdrantStore.create(str(tmp_path / "qdrant"), merged, model=str(model_dir))  # Qdrant's local mode
    q.add([{"id": "d1", "text": TEXTS[1]}])
    q.close()
    q = QdrantStore.open(str(tmp_path / "qdrant"))
    assert q.task == SIMILARITY == q.encoder.task and q.stats()["task"] == SIMILARITY
    q.close()
    with pytest.raises(ModelError, match="built with the 'similarity' task adapter; the model given is loaded without"):
        QdrantStore.open(str(tmp_path / "qdrant"), MultiScaleEncoder.load(model_dir))


def test_vectors_encoded_elsewhere_fill_a_task_store(model_dir: Path, tmp_path: Path) -> None:
    """`index add --from-encoded` into a store built with `--task` takes the vectors of its model merged with that
    adapter and saved (Ray encodes a model folder, not a task): the fingerprint decides, not the folder's name."""
    pytest.importorskip("ray")
    from muses.distributed_encode import EncodeSettings, encode_with_ray
    from muses.store import MemoryStore

    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    rows = [json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)]
    first.write_text(rows[0], "utf-8")
    rest.write_text("".join(rows[1:]), "utf-8")
    store = tmp_path / "store"
    made = runner.invoke(
        app, ["index", "add", str(first), "--store", str(store), "--model", str(model_dir), "--task", SIMILARITY]
    )
    assert made.exit_code == 0, made.output
    merged = tmp_path / "merged"
    load_for_task(model_dir, SIMILARITY).save(merged)
    encoded = tmp_path / "encoded"
    settings = EncodeSettings(model=str(merged), scales=("document", "sentence", "token"))
    encode_with_ray(str(rest), str(encoded), settings, shard_rows=2)
    added = runner.invoke(app, ["index", "add", "--from-encoded", str(encoded), "--store", str(store)])
    assert added.exit_code == 0 and "added 2 documents" in added.output, added.output
    s = MemoryStore.open(store)
    assert s.task == SIMILARITY and len(s) == 3
    assert s.search("stock prices dropped", "document", 1)[0].id == "d2"
    s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.text(max_size=80) | st.sampled_from(["base", "../similarity", "similarity", "a" * 65]))
def test_any_task_name_is_a_folder_inside_the_model_or_one_line_error(model_dir: Path, task: str) -> None:
    """Fuzzed task names: a usable key names a folder under the model's adapters/ (a missing one is refused in one
    line), anything else (``../x``, spaces, empty, too long) is an InputError before any file is read or written."""
    try:
        folder = task_folder(model_dir, task)
    except InputError as e:
        assert "\n" not in str(e) and ("is not usable" in str(e) or "is reserved" in str(e))
        with pytest.raises(InputError):
            add_task_adapter(model_dir, task_folder(model_dir, SIMILARITY), task)
        return
    assert folder.parent == model_dir / "adapters" and folder.name == task
    if task != SIMILARITY:
        with pytest.raises(InputError, match="has no adapter for task"):
            load_for_task(model_dir, task)

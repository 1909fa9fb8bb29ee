"""configs/smoke.yaml: the install check `muses train --config configs/smoke.yaml` trains end to end in seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import muses
from muses.adapters.tasks import list_tasks
from muses.encoder import MultiScaleEncoder
from muses.training.config import load_config

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
SIMILARITY_RECIPE = SMOKE.with_name("similarity.yaml")
TEXTS = ["A cat sat on the mat.", "Stock markets fell sharply on Monday.", "Proteins fold into 3D shapes."]


def test_smoke_recipe_is_small() -> None:
    """The recipe stays an install check: a few steps on a few items, a tiny dev set, output under runs/."""
    cfg = load_config(SMOKE)
    assert cfg.steps <= 10 and cfg.data.wikipedia_articles <= 32 and cfg.data.dev_stsb_pairs <= 64
    assert cfg.data.dev_scifact_distractors is None and cfg.data.dev_wikipedia_articles == 0
    assert Path(cfg.output_dir).parts[0] == "runs"


@pytest.mark.slow
def test_smoke_recipe_trains_through_the_cli(tmp_path: Path, data_dir: Path) -> None:
    """`muses train --config configs/smoke.yaml` finishes, writes a loadable model that moved from the base, and a
    history of finite losses for every task. A second `-c` stage (two more steps) then starts from the model the
    first kept: its step-0 dev score is the first stage's best, not the base's. A third, adapter stage (the
    similarity recipe, two steps) trains on that model and is shipped in its folder as the task adapter it loads
    with. Its wall time is printed, not
    asserted (timing belongs in benchmarks: docs/benchmarks.md); it runs on one thread, which keeps it short on a
    shared machine."""
    out, out2, out3 = tmp_path / "smoke", tmp_path / "stage2", tmp_path / "similarity"
    first, second, third = tmp_path / "first.yaml", tmp_path / "second.yaml", tmp_path / "third.yaml"
    first.write_text(f"extends: {SMOKE}\noutput_dir: {out}\n")
    second.write_text(f"extends: {SMOKE}\nname: stage2\nsteps: 2\neval_every: 2\noutput_dir: {out2}\n")
    third.write_text(
        f"extends: {SIMILARITY_RECIPE}\nsteps: 2\neval_every: 2\ncheckpoint_every: 2\noutput_dir: {out3}\n"
        "data: {dev_stsb_pairs: 32, max_pair_tokens: 48}\n"
    )
    cmd = [sys.executable, "-m", "muses.cli", "train", "-c", str(first), "-c", str(second), "-c", str(third)]
    cmd += ["--data-dir", str(data_dir)]
    cmd += ["--set", "eval_at_start=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"smoke recipe, a 2-step second stage and a 2-step adapter stage: {seconds:.1f} s")
    printed = " ".join(proc.stdout.split())
    assert f"stage 2/3 stage2: starts from {out / 'best'}" in printed
    assert f"stage 3/3 similarity: starts from {out2 / 'best'}" in printed

    cfg = load_config(SMOKE)
    history = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [int(h["step"]) for h in history] == list(range(cfg.steps + 1))
    losses = [h["loss"] for h in history[1:]]
    assert all(math.isfinite(x) and x >= 0 for x in losses)
    assert {k.split("/")[0] for h in history for k in h if k.endswith("/loss")} == {"hierarchy", "stsb", "scifact"}
    assert "dev/score" in history[-1] and math.isfinite(history[-1]["dev/score"])
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == cfg.steps

    trained = muses.load(str(out / "best"))
    base = MultiScaleEncoder.from_base()
    moved = np.abs(trained.encode_sentences(TEXTS) - base.encode_sentences(TEXTS)).max()
    assert moved > 1e-4, "the smoke run did not change the model"

    # the second stage starts where the first ended (its only dev evaluation: step 6), not at the base
    history2 = [json.loads(ln) for ln in (out2 / "history.jsonl").read_text().splitlines()]
    assert [int(h["step"]) for h in history2] == [0, 1, 2]
    assert abs(history[-1]["dev/score"] - history[0]["dev/score"]) > 1e-4
    assert history2[0]["dev/score"] == pytest.approx(history[-1]["dev/score"], abs=1e-6)
    assert (out2 / "best").is_dir()

    # the adapter stage trained on stage 2's model and now ships in its folder
    assert f"{out2 / 'best'} now ships the 'similarity' task adapter" in printed
    assert list_tasks(out2 / "best") == ["similarity"] and list_tasks(out / "best") == []
    history3 = [json.loads(ln) for ln in (out3 / "history.jsonl").read_text().splitlines()]
    assert [int(h["step"]) for h in history3] == [0, 1, 2] and "stsb/loss" in history3[1]
    kept = max((h for h in history2 if "dev/score" in h), key=lambda h: h["dev/score"])
    assert history3[0]["dev/stsb@384"] == pytest.approx(kept["dev/stsb@384"], abs=1e-6)  # a fresh adapter: B = 0
    assert muses.load(str(out2 / "best"), task="similarity").task == "similarity"


def test_adapter_stages_come_last(tmp_path: Path) -> None:
    """A whole-model stage after an adapter stage would leave the adapter serving weights that are gone: refused
    before anything trains, in one line, exit code 2."""
    recipes = []
    for name, recipe in (("a", SMOKE), ("b", SIMILARITY_RECIPE), ("c", SMOKE)):
        recipes += ["-c", str(tmp_path / f"{name}.yaml")]
        (tmp_path / f"{name}.yaml").write_text(f"extends: {recipe}\noutput_dir: {tmp_path / name}\n")
    from typer.testing import CliRunner

    from muses.cli import app

    out = CliRunner().invoke(app, ["train", *recipes])
    assert out.exit_code == 2
    assert "trains the whole model after an adapter stage; put adapter stages last" in " ".join(out.output.split())
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_stages_need_their_own_output_dirs(tmp_path: Path) -> None:
    """Two stages writing one output_dir would make the second resume the first's checkpoint: refused before
    anything trains, in one line, exit code 2."""
    cmd = [sys.executable, "-m", "muses.cli", "train", "-c", str(SMOKE), "-c", str(SMOKE)]
    cmd += ["--set", f"output_dir={tmp_path / 'x'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    line = " ".join(proc.stderr.split())
    assert "give each stage its own output_dir" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_muses_run_without_data_trains_the_whole_model_stages(tmp_path: Path) -> None:
    """`muses run -c LIST` with no data dir: the stage list's whole-model recipe trains on the Wikipedia articles
    alone, its adapter stage is skipped (it needs STS-B), the sample is shown and the evaluation skipped; a list of
    adapter stages alone is refused in one line (exit 2) before anything trains."""
    first, adapter, stages = tmp_path / "first.yaml", tmp_path / "adapter.yaml", tmp_path / "stages.yaml"
    first.write_text(f"extends: {SMOKE}\noutput_dir: {tmp_path / 'smoke'}\n")
    adapter.write_text(f"extends: {SIMILARITY_RECIPE}\nsteps: 2\noutput_dir: {tmp_path / 'similarity'}\n")
    stages.write_text("stages: [first.yaml, adapter.yaml]\n")
    env = {k: v for k, v in os.environ.items() if k != "MUSES_DATA_DIR"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "muses.cli", "run", "--out", str(tmp_path / "report")]
    proc = subprocess.run([*cmd, "-c", str(stages)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = " ".join(proc.stderr.split())
    assert "training on the Wikipedia articles only" in said and "adapter stages skipped" in said
    assert "evaluation skipped" in said
    assert (tmp_path / "smoke" / "best").is_dir() and not (tmp_path / "similarity").exists()
    assert list_tasks(tmp_path / "smoke" / "best") == []
    history = [json.loads(ln) for ln in (tmp_path / "smoke" / "history.jsonl").read_text().splitlines()]
    assert {k.split("/")[0] for h in history for k in h if k.endswith("/loss")} == {"hierarchy"}

    proc = subprocess.run([*cmd, "-c", str(adapter)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{adapter} trains an adapter: muses run needs a whole-model recipe first" in " ".join(proc.stderr.split())

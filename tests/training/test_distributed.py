"""Data-parallel training: 2 CPU ranks (gloo; torchrun, then accelerate launch) equal one process with the same
global batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from muses.training import distributed as dd
from muses.training.config import TrainConfig, load_config
from muses.training.data import load_training_data
from muses.training.trainer import Trainer
from tests.procs import descendants, wait_reaped

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
# Seed 8 draws scifact (MNRL), hierarchy (hierarchical InfoNCE) and stsb (CoSENT) in the first 3 steps; odd global
# batches make the two ranks' slices unequal (3 + 2 documents, 4 + 3 pairs). The heads' learning rate is the base's
# (2e-5, not 1e-3): AdamW divides each gradient entry by its running RMS, so an entry whose exact gradient is 0 or
# below AdamW's eps (1e-8) - attention key biases, whose gradient vanishes because softmax ignores a shift shared by
# all keys, and a few head entries - moves by lr x (rounding noise / (|noise| + eps)), up to ~0.1 lr a step, however
# the sum is ordered. At lr 1e-3 that alone reaches 2e-5 in 3 steps; the gradients themselves agree to ~1e-7.
OVERRIDES: dict[str, object] = {
    "seed": 8,
    "steps": 3,
    "docs_per_batch": 5,
    "pairs_per_batch": 7,
    "eval_every": 3,
    "checkpoint_every": 2,
    "data.dev_stsb_pairs": 8,
    "optim.head_lr": 2.0e-5,
}

# Run by torchrun on every rank. Dropout is switched off: its masks come from each process's RNG, so a 2-rank run
# cannot draw the masks that one process draws for the same global batch.
WORKER = """
import json, os, sys, time
import torch
from muses.training.config import TrainConfig
from muses.training.data import load_training_data
from muses.training.trainer import Trainer
from muses.training import distributed as dd

torch.set_num_threads(1)
cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
hang_at = int(sys.argv[2]) if len(sys.argv) > 2 else None  # rank 0 stops before this step's update, to be killed
trainer = Trainer(cfg, load_training_data(cfg))
for m in trainer.encoder.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
grads_file = cfg.output_dir + "/grads.pt"  # the gradients of every step, across a kill and a resume
state_file = cfg.output_dir + "/checkpoint/trainer_state.json"
done = json.load(open(state_file))["step"] if os.path.exists(state_file) else 0
grads = torch.load(grads_file)[:done] if os.path.exists(grads_file) else []


def record(opt, args, kwargs):
    grads.append({n: p.grad.clone() for n, p in trainer.encoder.named_parameters() if p.grad is not None})
    if dd.is_main():
        torch.save(grads, grads_file + ".tmp")
        os.replace(grads_file + ".tmp", grads_file)
        if len(grads) == hang_at:
            time.sleep(600)


trainer.optimizer.register_step_pre_hook(record)
trainer.train(progress=False)
if dd.is_main():
    torch.save(trainer.encoder.state_dict(), cfg.output_dir + "/final.pt")
"""


def _config(out: Path) -> TrainConfig:
    return load_config(SMOKE, {**OVERRIDES, "output_dir": str(out)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(tmp: Path, cfg: TrainConfig, kill_at: int | None = None, launcher: str = "torchrun") -> None:
    """Run WORKER on 2 ranks with ``launcher`` (``torchrun``, or ``accelerate``: ``accelerate launch --multi_gpu``,
    which on a machine without GPUs starts the same gloo ranks through torchrun's code); with ``kill_at``, SIGKILL
    the launcher and both ranks once rank 0 reaches that step (the checkpoint of the step before is on disk). Linux
    only (it finds the ranks in /proc)."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
        cmd += ["--master_port", port]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", port]
    cmd += [str(script), json.dumps(cfg.model_dump())]
    cmd += [str(kill_at)] if kill_at is not None else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kill_at is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return
    grads = Path(cfg.output_dir) / "grads.pt"
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            if grads.exists() and len(torch.load(grads, weights_only=True)) == kill_at:
                break
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before it could be killed"
    finally:
        ranks = descendants(run.pid)  # torchrun starts each rank in a session of its own
        for pid in [run.pid, *ranks]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
        run.wait()
        for pid in ranks:  # reaped by init once the launcher is gone; wait until they are
            wait_reaped(pid)


def _losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "history.jsonl").read_text().splitlines()]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_shard_covers_the_batch_in_order_in_one_process() -> None:
    assert dd.world_size() == 1 and dd.is_main()
    assert dd.shard([1, 2, 3]) == [1, 2, 3]
    x = torch.randn(3, 4)
    parts, counts = dd.gather_parts([x, x[:1]])
    assert parts[0] is x and counts == [[3, 1]]


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path: Path, data_dir: Path) -> None:
    """Loss per step, gradients and weights after 3 steps (MNRL, hierarchical InfoNCE, CoSENT, with retention and
    the Matryoshka curriculum) of 2 gloo ranks equal one process's with the same global batch; the 2-rank run is
    killed (SIGKILL, torchrun and both ranks) during step 3, after its step-2 checkpoint, and rerun under
    ``accelerate launch``, so the equality covers its resume and both launchers."""
    os.environ.setdefault("MUSES_DATA_DIR", str(data_dir))
    one = _config(tmp_path / "one")
    trainer = Trainer(one, load_training_data(one, data_dir))
    start = {k: v.detach().clone() for k, v in trainer.encoder.state_dict().items()}
    for m in trainer.encoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    grads: list[dict[str, torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append(
            {n: p.grad.clone() for n, p in trainer.encoder.named_parameters() if p.grad is not None}
        )
    )
    trainer.train(progress=False)
    reference = {k: v.detach().clone() for k, v in trainer.encoder.state_dict().items()}

    two = _config(tmp_path / "two")
    _launch(tmp_path, two, kill_at=3)  # SIGKILLed during step 3 (after the step-2 checkpoint), then rerun
    state = json.loads((tmp_path / "two" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["sampler"]["pos"]) == 3
    _launch(tmp_path, two, launcher="accelerate")  # the same recipe resumes under `accelerate launch`
    history = (tmp_path / "two" / "history.jsonl").read_text().splitlines()
    assert [int(json.loads(ln)["step"]) for ln in history] == [1, 2, 3]  # rank 0's lines only, none replayed twice
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-5)
    ddp_grads = torch.load(tmp_path / "two" / "grads.pt", weights_only=True)
    assert len(ddp_grads) == len(grads) == 3
    grad_err = max(_max_diff(g, h) for g, h in zip(ddp_grads, grads, strict=True))
    weights = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    weight_err, moved = _max_diff(weights, reference), _max_diff(reference, start)
    print(f"2 ranks vs 1 process: gradients {grad_err:.2e}, weights {weight_err:.2e} (training moved them {moved:.2e})")
    assert grad_err < 1e-6  # the averaged gradients
    assert weight_err < 1e-5
    assert moved > 20 * weight_err, "training must change the weights by more than the ranks disagree"
    assert (tmp_path / "two" / "best").is_dir()

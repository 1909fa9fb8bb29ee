"""Shared by the tests of one training task: a recipe that trains only it, and a few steps on one batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from muses.training.config import TrainConfig
from muses.training.tasks import Task
from muses.training.trainer import Trainer


def one_task_config(tmp: Path, task: str, data: dict[str, Any], loss: dict[str, Any] | None = None) -> TrainConfig:
    """A 3-step recipe of ``task`` alone at the full dim only (losses of two calls compare), no STS-B or SciFact
    pairs unless ``data`` asks for them."""
    return TrainConfig.model_validate(
        {
            "steps": 3,
            "docs_per_batch": 4,
            "eval_every": 3,
            "checkpoint_every": 3,
            "eval_at_start": False,
            "seed": 1,
            "output_dir": str(tmp / task),
            "task_weights": {"hierarchy": 0.0, "stsb": 0.0, "scifact": 0.0, task: 1.0},
            "loss": {"matryoshka": "full", **(loss or {})},
            "optim": {"lr": 1e-4},
            "data": {"stsb": False, "scifact": False, "dev_stsb_pairs": 0, **data},
        }
    )


def train_on_one_batch(trainer: Trainer, task: Task, batch: list[int], steps: int = 3) -> tuple[dict, dict]:
    """``task``'s loss dict on ``batch`` before and after ``steps`` optimiser steps on it (task loss plus
    retention)."""
    with torch.no_grad():
        before = task(batch, 0.0)
    for _ in range(steps):
        res = task(batch, 1.0)
        (res["loss"] + res["retention"]).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    with torch.no_grad():
        after = task(batch, 1.0)
    return before, after

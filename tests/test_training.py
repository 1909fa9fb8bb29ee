"""Training: config validation, the mixed sampler, and exact resume after an interruption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muses.errors import ConfigError
from muses.training.config import TrainConfig, load_config
from muses.training.data import MixedTaskSampler, load_training_data
from muses.training.trainer import Trainer

TINY = {
    "steps": 4,
    "docs_per_batch": 3,
    "pairs_per_batch": 4,
    "eval_every": 2,
    "checkpoint_every": 2,
    "seed": 3,
    "data": {"wikipedia_articles": 12, "dev_wikipedia_articles": 6, "dev_stsb_pairs": 24, "max_doc_tokens": 64},
    "loss": {"tokens_per_batch": 32},
}


def _config(tmp: Path, name: str) -> TrainConfig:
    return TrainConfig.model_validate({**TINY, "output_dir": str(tmp / name)})


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path, data_dir: Path) -> None:
    cfg = _config(tmp_path, "straight")
    data = load_training_data(cfg, data_dir)
    straight = Trainer(cfg, data)
    summary = straight.train(progress=False)
    assert summary["steps"] == 4

    cfg2 = _config(tmp_path, "interrupted")
    first = Trainer(cfg2, data)
    first.train(stop_after=2, progress=False)  # interrupted after the step-2 checkpoint
    resumed = Trainer(cfg2, data)  # a fresh process would build a fresh trainer
    assert resumed.load_checkpoint() and resumed.step == 2
    resumed.train(progress=False)
    a, b = straight.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = Trainer(_config(tmp_path, "fresh"), data).encoder.state_dict()
    assert any(not torch.equal(a[k], moved[k]) for k in a), "training must change the weights"
    hist = (tmp_path / "interrupted" / "history.jsonl").read_text().splitlines()
    assert len(hist) == 4


def test_sampler_state_round_trips() -> None:
    s = MixedTaskSampler({"a": 10, "b": 7}, {"a": 1.0, "b": 2.0}, {"a": 3, "b": 2}, seed=0)
    for _ in range(5):
        s.next()
    state = s.state_dict()
    expected = [s.next() for _ in range(20)]
    t = MixedTaskSampler({"a": 10, "b": 7}, {"a": 1.0, "b": 2.0}, {"a": 3, "b": 2}, seed=99)
    t.load_state_dict(state)
    assert [t.next() for _ in range(20)] == expected


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: -3\noptim:\n  lr: fast\nloss:\n  alpha: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "steps" in msg and "optim.lr" in msg and "loss.alpha" in msg
    bad.write_text("stpes: 10\n")
    with pytest.raises(ConfigError, match="stpes"):
        load_config(bad)
    bad.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("task_weights: {hierarchy: 0, stsb: 0, scifact: 0}\n")
    with pytest.raises(ConfigError, match="at least one task"):
        load_config(bad)


def test_shipped_recipes_validate() -> None:
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.steps > 0, path

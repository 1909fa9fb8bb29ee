"""The siblings task on real Wikipedia leads: each in-context sentence -> its own standalone base vector, the
other sentences of its document as the hard negatives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from muses.errors import ConfigError
from muses.text import word_window
from muses.training.config import TrainConfig
from muses.training.data import load_training_data
from muses.training.tasks import SiblingsTask
from muses.training.trainer import Trainer
from tests.training.one_task import one_task_config, train_on_one_batch


def _config(tmp: Path, **loss: object) -> TrainConfig:
    data = {"wikipedia_articles": 40, "dev_scifact_distractors": None, "max_doc_tokens": 128}
    return one_task_config(tmp, "siblings", data, {"retention_task_weights": {"siblings": 1.0}, **loss})


def test_siblings_loss_is_below_chance_for_the_base_and_training_lowers_it(tmp_path: Path, data_dir: Path) -> None:
    """The base model's in-context sentence vectors mostly already pick their own standalone vector (loss well
    under chance: log of the batch's sentence count, not 0: context blurs some), and three steps on one batch
    lower the loss while the document retention moves off 0."""
    cfg = _config(tmp_path)
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    task = trainer.tasks["siblings"]
    assert isinstance(task, SiblingsTask)
    batch = [i for i, d in enumerate(trainer.data.documents) if len(d.sentences) >= 3][:4]
    assert len(batch) == 4
    before, after = train_on_one_batch(trainer, task, batch)
    n_sentences = sum(len(trainer.data.documents[i].sentences) for i in batch)  # at least, before the cut
    assert 0.0 < float(before["task"]) < 0.5 * float(torch.log(torch.tensor(float(n_sentences))))
    assert float(before["retention"]) < 1e-5  # the untrained student equals the base model
    assert float(after["task"]) < float(before["task"])
    assert float(after["retention"]) > 0.0


def test_siblings_needs_the_teacher(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="siblings task's targets"):
        _config(tmp_path, retention="none")


@pytest.mark.parametrize("fraction", [0.5, 0.2, 1.0])
def test_word_window_is_a_contiguous_part_of_the_sentence(fraction: float) -> None:
    text = "Root hairs greatly increase the surface area of the root for absorption of water and minerals ."
    words = text.split()
    starts = [i / 20 for i in range(20)] + [0.9999]
    windows = [word_window(text, fraction, u) for u in starts]
    n = min(len(words), max(4, round(fraction * len(words))))
    for w in windows:
        assert len(w.split()) == n and f" {w} " in f" {text} "  # contiguous, whole words
    assert word_window("536\xa0m high, on hilly terrain", 0.5, 0.0) == "536 m high, on"  # any whitespace splits
    assert windows[0].split() == words[:n] and windows[-1].split() == words[-n:]  # every start is reachable
    assert word_window("too short here", 0.5, 0.7) == "too short here"


def test_siblings_direction_and_partial_queries_change_the_ranking(tmp_path: Path, data_dir: Path) -> None:
    """On one batch of real leads: the search direction (each standalone vector ranks the in-context sentences)
    and round 6's (each in-context sentence ranks the standalone vectors) give different losses, both under
    chance; half-sentence queries are harder to place than whole ones (a higher loss), still under chance."""
    losses = {}
    for name, loss in {
        "retrieval": {},
        "identify": {"siblings_direction": "identify"},
        "half": {"siblings_query_words": 0.5},
    }.items():
        cfg = _config(tmp_path / name, **loss)
        trainer = Trainer(cfg, load_training_data(cfg, data_dir))
        batch = [i for i, d in enumerate(trainer.data.documents) if len(d.sentences) >= 3][:4]
        n_sentences = sum(len(trainer.data.documents[i].sentences) for i in batch)
        with torch.no_grad():
            losses[name] = float(trainer.tasks["siblings"](batch, 0.0)["task"])
        assert 0.0 < losses[name] < float(torch.log(torch.tensor(float(n_sentences))))
    assert abs(losses["retrieval"] - losses["identify"]) > 1e-4
    assert losses["half"] > losses["retrieval"]


def _document_drift(trainer: Trainer, batch: list[int], dim: int) -> float:
    """Mean cosine distance between the student's and the base model's document vectors of ``batch`` on their first
    ``dim`` coordinates."""
    docs = [trainer.data.documents[i] for i in batch]
    with torch.no_grad():
        states = trainer.encoder.token_states([d.text for d in docs])
        student = torch.stack(
            [
                trainer.encoder.document_vectors(d, s, ("document",))["document"]
                for d, s in zip(docs, states, strict=True)
            ]
        )
    target = trainer.retention.targets([d.text for d in docs]).to(student.device)
    return float(1 - torch.nn.functional.cosine_similarity(student[:, :dim], target[:, :dim]).mean())


def test_retention_dims_hold_the_small_prefix_of_the_documents(tmp_path: Path, data_dir: Path) -> None:
    """The same three siblings steps move the documents' 64-dim prefix less when retention also applies there
    (``loss.retention_dims``); the untrained student has no retention loss either way; a dim the model does not
    have is refused."""
    drift = {}
    for dims in ([], [64]):
        cfg = _config(tmp_path / str(dims), retention_dims=dims)
        trainer = Trainer(cfg, load_training_data(cfg, data_dir))
        task = trainer.tasks["siblings"]
        batch = [i for i, d in enumerate(trainer.data.documents) if len(d.sentences) >= 3][:4]
        before, _ = train_on_one_batch(trainer, task, batch)
        assert float(before["retention"]) < 1e-5
        drift[len(dims)] = _document_drift(trainer, batch, 64)
    assert 0.0 < drift[1] < drift[0]
    cfg = _config(tmp_path / "bad", retention_dims=[100])
    with pytest.raises(ConfigError, match=r"retention_dims \[100\] are not Matryoshka dims"):
        Trainer(cfg, load_training_data(cfg, data_dir))

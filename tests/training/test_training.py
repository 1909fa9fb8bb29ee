"""Training: config validation, the mixed sampler, and exact resume after an interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from muses.encoder import MultiScaleEncoder
from muses.errors import ConfigError, InputError, ModelError
from muses.text import as_documents
from muses.training.build import build_adapter, build_full
from muses.training.config import TrainConfig, load_config, read_stage_list
from muses.training.data import MixedTaskSampler, load_training_data
from muses.training.stages import load_stages
from muses.training.trainer import Trainer

TINY = {
    "steps": 4,
    "docs_per_batch": 3,
    "pairs_per_batch": 4,
    "eval_every": 2,
    "checkpoint_every": 2,
    "seed": 3,
    "data": {
        "wikipedia_articles": 12,
        "dev_wikipedia_articles": 6,
        "dev_stsb_pairs": 24,
        "dev_scifact_claims": 8,
        "dev_scifact_distractors": 16,
        "max_doc_tokens": 64,
    },
    "loss": {"tokens_per_batch": 32},
}


def _config(tmp: Path, name: str) -> TrainConfig:
    return TrainConfig.model_validate({**TINY, "output_dir": str(tmp / name)})


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(tmp_path: Path, data_dir: Path) -> None:
    """Kill `muses train` with SIGKILL mid-run, rerun it: the final weights equal an uninterrupted run's."""
    cfg = _config(tmp_path, "straight")
    straight = Trainer(cfg, load_training_data(cfg, data_dir))
    assert straight.train(progress=False)["steps"] == TINY["steps"]

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "killed")}))
    cmd = [sys.executable, "-m", "muses.cli", "train", "--config", str(recipe), "--data-dir", str(data_dir)]
    history = tmp_path / "killed" / "history.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not (history.exists() and len(history.read_text().splitlines()) >= 4):
            time.sleep(0.05)  # steps 0 (dev metrics before training) to 3 are logged: the step-2 checkpoint is
            # on disk, step 4 is not
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "killed" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    resumed = MultiScaleEncoder.load(tmp_path / "killed" / "checkpoint" / "model").state_dict()
    final = straight.encoder.state_dict()
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    fresh = Trainer(_config(tmp_path, "fresh"), straight.data).encoder.state_dict()
    assert any(not torch.equal(final[k], fresh[k]) for k in final), "training must change the weights"
    assert [json.loads(ln)["step"] for ln in history.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_in_context_sentence_retention_starts_at_zero_and_per_task_weights_apply(tmp_path: Path) -> None:
    """At init the student's in-context sentences equal the base model's (retention 0); moved ones are pulled back."""
    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "output_dir": str(tmp_path / "r"),
            "task_weights": {"hierarchy": 1.0, "stsb": 0.0, "scifact": 0.0},
            "data": {
                "wikipedia_articles": 3,
                "stsb": False,
                "scifact": False,
                "dev_stsb_pairs": 0,
                "dev_scifact_distractors": None,
            },
            "loss": {"retain_sentences": True, "retention_task_weights": {"stsb": 0.25, "scifact": 0.0}},
        }
    )
    trainer = Trainer(cfg, load_training_data(cfg))
    assert [trainer._retention_weight(t) for t in ("hierarchy", "stsb", "scifact")] == [1.0, 0.25, 0.0]
    docs = trainer.data.documents[:2]
    with torch.no_grad():
        states = trainer.encoder.token_states([d.text for d in docs])
        sent = torch.cat(
            [trainer.encoder.document_vectors(d, s)["sentence"] for d, s in zip(docs, states, strict=True)]
        )
    assert float(trainer._retain_in_context(sent, docs)) < 1e-5
    moved = sent + 0.5 * torch.randn(sent.shape, generator=torch.Generator().manual_seed(0))
    assert float(trainer._retain_in_context(moved, docs)) > 0.05
    assert float(trainer._retain(moved[:2], ["a", "b"], "scifact")) == 0.0


def test_standalone_sentence_retention_pulls_sentences_encoded_alone_back(tmp_path: Path) -> None:
    """``retain_standalone_sentences``: the batch's sentences encoded alone match the base model's at init (0) and
    are pulled back, with gradients, once the weights move."""
    hierarchy_only = {"wikipedia_articles": 3, "stsb": False, "scifact": False, "dev_stsb_pairs": 0}
    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "output_dir": str(tmp_path / "r"),
            "task_weights": {"hierarchy": 1.0, "stsb": 0.0, "scifact": 0.0},
            "data": {**hierarchy_only, "dev_scifact_distractors": None},
            "loss": {"retain_standalone_sentences": True},
        }
    )
    trainer = Trainer(cfg, load_training_data(cfg))
    task = trainer.tasks["hierarchy"]
    docs = trainer.data.documents[:2]
    assert sum(len(d.sentences) for d in docs) > 2
    assert float(task._standalone_sentences(docs, docs)) < 1e-5
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.encoder.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    term = task._standalone_sentences(docs, docs)
    assert float(term) > 1e-3 and term.requires_grad


def test_fresh_heads_train_on_a_saved_models_transformer(tmp_path: Path) -> None:
    """``model.fresh_heads``: a saved MuSES model (identity heads, mean pooling) as ``model.base`` gets the recipe's
    fresh heads and attention pooling on its transformer, starting at the saved model's vectors; without the flag a
    recipe that would change its heads is refused in one line. Retention's teacher is the saved model as it is."""
    saved = tmp_path / "saved"
    MultiScaleEncoder.from_base(head_kind="identity").save(saved)
    model = {"base": str(saved), "head_kind": "residual-mlp", "sentence_pooling": "attention"}
    with pytest.raises(
        ConfigError,
        match=r"head_kind identity -> residual-mlp; sentence_pooling mean -> attention.*"
        r"model\.fresh_heads: true",
    ):
        build_full(TrainConfig.model_validate({**TINY, "model": model}))
    setup = build_full(TrainConfig.model_validate({**TINY, "model": {**model, "fresh_heads": True}}))
    student, teacher = setup.encoder, setup.teacher
    assert teacher is not None and teacher.heads.head_kind == "identity" and teacher.heads.sentence_pooling == "mean"
    heads = student.heads
    assert heads.head_kind == "residual-mlp" and heads.sentence_pooling == "attention" and heads.dims == teacher.dims
    assert {id(p) for p in heads.parameters()} == {id(p) for p in setup.param_groups[1]["params"]}
    assert len(setup.param_groups[1]["params"]) > 6  # three residual MLPs and the attention query
    text = ["Roots anchor a plant in the soil. They absorb water and minerals. Root hairs widen the surface."]
    student.eval()
    a = student.encode_documents(text, scales=("document", "sentence", "token"))[0]
    b = teacher.encode_documents(text, scales=("document", "sentence", "token"))[0]
    assert a.sentences.shape == (3, 384) and a.tokens is not None and b.tokens is not None
    for x, y in ((a.document, b.document), (a.sentences, b.sentences), (a.tokens, b.tokens)):
        assert float(abs(x - y).max()) < 1e-5
    with torch.no_grad():
        for p in heads.heads["sentence"].parameters():
            p.add_(0.1)
    moved = student.encode_documents(text, scales=("sentence",))[0]
    assert float(abs(moved.sentences - a.sentences).max()) > 1e-3  # the new heads are the ones in the pass


def test_a_context_head_moves_sentences_in_context_and_nothing_else(tmp_path: Path) -> None:
    """``model.context_head`` with ``train_heads: [context]``: fresh on a saved model, only the context head and its
    pooling train; moving it moves sentences pooled in context, while documents, tokens, standalone sentences and
    queries stay the saved model's. It saves and loads with the model."""
    saved = tmp_path / "saved"
    MultiScaleEncoder.from_base(head_kind="identity").save(saved)
    model = {"base": str(saved), "head_kind": "identity", "fresh_heads": True, "train_heads": ["context"]}
    model |= {"context_head": "residual-mlp", "context_pooling": "attention"}
    setup = build_full(TrainConfig.model_validate({**TINY, "model": model}))
    student, teacher = setup.encoder, setup.teacher
    assert teacher is not None and teacher.heads.context_head is None
    heads = student.heads
    trainable = {n for n, p in heads.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("heads.context.", "pool_context.")) for n in trainable), trainable
    assert "pool_context.query" in trainable
    text = ["Roots anchor a plant in the soil. They absorb water and minerals. Root hairs widen the surface."]
    scales = ("document", "sentence", "token")
    b = teacher.encode_documents(text, scales=scales)[0]
    with torch.no_grad():
        for p in heads.heads["context"].parameters():
            p.add_(0.1)
    student.eval()
    for model_ in (student, MultiScaleEncoder.load(_saved(student, tmp_path / "trained"))):
        a = model_.encode_documents(text, scales=scales)[0]
        assert a.tokens is not None and b.tokens is not None
        assert float(abs(a.sentences - b.sentences).max()) > 1e-3  # in context: the context head
        for x, y in ((a.document, b.document), (a.tokens, b.tokens)):
            assert float(abs(x - y).max()) < 1e-5
        q = ["how do plants take up water?"]
        assert float(abs(model_.encode_queries(q) - teacher.encode_queries(q)).max()) < 1e-5
        alone = teacher.encode_sentences(["They absorb water and minerals."])
        assert float(abs(model_.encode_sentences(["They absorb water and minerals."]) - alone).max()) < 1e-5
    with pytest.raises(ConfigError, match=r"model\.context_head"):
        load_config_text(tmp_path, "model: {train_heads: [context]}\n")


def test_a_sentence_branch_trains_alone_at_the_base_rate(tmp_path: Path) -> None:
    """``model.sentence_branch`` with ``train_heads: [branch]``: the branch alone requires a gradient, in the
    optimiser's group at ``optim.lr`` (its layers are the base's), and a step moves sentences in context and nothing
    else; recipes that ask for ``branch`` without a branch are refused."""
    model = {"head_kind": "identity", "sentence_branch": 2, "train_heads": ["branch"], "freeze_base": True}
    setup = build_full(TrainConfig.model_validate({**TINY, "model": model, "optim": {"lr": 1e-4, "head_lr": 1e-2}}))
    student, teacher = setup.encoder, setup.teacher
    assert teacher is not None and teacher.heads.branch is None
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.1.branch.") for n in trainable), sorted(trainable)[:3]
    groups = [g for g in setup.param_groups if any(p.requires_grad for p in g["params"])]
    assert [g["lr"] for g in groups] == [1e-4]
    assert {id(p) for g in groups for p in g["params"] if p.requires_grad} == {
        id(p)
        for p in student.heads.branch.parameters()  # type: ignore[union-attr]
    }
    text = ["Roots anchor a plant in the soil. They absorb water and minerals. Root hairs widen the surface."]
    scales = ("document", "sentence", "token")
    b = teacher.encode_documents(text, scales=scales)[0]
    student.train()
    states = student.token_states(text)
    vecs = student.document_vectors(as_documents(text, student.splitter)[0], states[0], ("sentence",))["sentence"]
    optim = torch.optim.SGD(groups[0]["params"], lr=1.0)
    (-(vecs[1] @ vecs[0])).backward()  # pull two sentences apart or together: any gradient will do
    optim.step()
    student.eval()
    a = student.encode_documents(text, scales=scales)[0]
    assert a.tokens is not None and b.tokens is not None
    assert float(abs(a.sentences - b.sentences).max()) > 1e-3
    assert float(abs(a.document - b.document).max()) < 1e-6 and float(abs(a.tokens - b.tokens).max()) < 1e-6
    assert float(abs(student.encode_queries(QUERY) - teacher.encode_queries(QUERY)).max()) < 1e-6
    with pytest.raises(ConfigError, match=r"model\.sentence_branch"):
        load_config_text(tmp_path, "model: {train_heads: [branch]}\n")
    for other in ("upcycle: {n_experts: 2, top_k: 1, layers: [1]}", "adapter: {rank: 4}"):
        with pytest.raises(ConfigError, match="cannot be combined"):
            load_config_text(tmp_path, f"model: {{sentence_branch: 2, {other}}}\n")


def test_a_context_head_trains_over_a_kept_branch(tmp_path: Path) -> None:
    """``model.keep_branch``: a later stage puts a fresh context head over a saved model's trained branch. Only the
    head and its pooling train, and the model starts with the saved model's in-context sentences; keep_branch without
    fresh heads is refused."""
    saved = MultiScaleEncoder.from_base(head_kind="identity", sentence_branch=2)
    with torch.no_grad():
        for p in saved.heads.branch.parameters():  # type: ignore[union-attr]
            p.mul_(1.05)  # "trained": its sentences are no longer the base's
    saved.save(tmp_path / "saved")
    model = {"base": str(tmp_path / "saved"), "head_kind": "identity", "fresh_heads": True, "keep_branch": True}
    model |= {"sentence_branch": 2, "context_head": "residual-mlp", "context_pooling": "attention"}
    model |= {"train_heads": ["context"], "freeze_base": True}
    student = build_full(TrainConfig.model_validate({**TINY, "model": model})).encoder
    trainable = {n for n, p in student.heads.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("heads.context.", "pool_context.")) for n in trainable), trainable
    text = ["Roots anchor a plant in the soil. They absorb water and minerals. Root hairs widen the surface."]
    student.eval()
    got = student.encode_documents(text)[0].sentences
    np.testing.assert_allclose(got, saved.encode_documents(text)[0].sentences, atol=1e-5)
    base = MultiScaleEncoder.from_base(head_kind="identity").encode_documents(text)[0].sentences
    assert float(abs(got - base).max()) > 1e-3
    with pytest.raises(ConfigError, match=r"model\.keep_branch"):
        load_config_text(tmp_path, "model: {sentence_branch: 2, keep_branch: true}\n")
    model["base"] = "default"  # not a saved model: no branch to keep
    with pytest.raises(ConfigError, match="not a saved MuSES model"):
        build_full(TrainConfig.model_validate({**TINY, "model": model}))


def test_a_branch_is_added_under_a_saved_models_heads(tmp_path: Path) -> None:
    """``model.sentence_branch`` on a saved model without a branch (no fresh heads): a fresh branch is added under
    its heads, its context head included, so the model starts with the saved model's vectors and only the branch
    trains."""
    saved = MultiScaleEncoder.from_base(head_kind="identity", context_head="residual-mlp", context_pooling="attention")
    with torch.no_grad():
        for p in saved.heads.heads["context"].parameters():
            p.add_(0.01)  # a "trained" context head
    saved.save(tmp_path / "saved")
    model = {"base": str(tmp_path / "saved"), "sentence_branch": 2, "train_heads": ["branch"], "freeze_base": True}
    student = build_full(TrainConfig.model_validate({**TINY, "model": model})).encoder
    assert student.heads.context_head == "residual-mlp" and student.heads.branch is not None
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.1.branch.") for n in trainable), sorted(trainable)[:3]
    text = ["Roots anchor a plant in the soil. They absorb water and minerals. Root hairs widen the surface."]
    student.eval()
    np.testing.assert_array_equal(
        student.encode_documents(text)[0].sentences, saved.encode_documents(text)[0].sentences
    )
    with pytest.raises(ModelError, match="already"):
        student.add_sentence_branch(1)
    # an adapter trained on a branched model sets the student's branch aside, and the teacher's with it
    _saved(student, tmp_path / "branched")
    adapter = {"base": str(tmp_path / "branched"), "adapter": {"rank": 4}}
    setup = build_adapter(TrainConfig.model_validate({**TINY, "model": adapter}))
    assert setup.teacher is not None and setup.teacher.heads.branch is None  # dropped: it never runs the branch
    assert setup.encoder.active_branch is None and setup.encoder.heads.branch is not None


QUERY = ["how do plants take up water?"]


def _saved(encoder: MultiScaleEncoder, path: Path) -> Path:
    encoder.save(path)
    return path


def load_config_text(tmp: Path, text: str) -> TrainConfig:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return load_config(path)


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
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    for text, words in [
        ("stpes: 10\n", "stpes"),
        ("steps: [1\n", "not valid YAML"),
        ("task_weights: {hierarchy: 0, stsb: 0, scifact: 0}\n", "at least one task"),
        ("model: {upcycle: {n_experts: 1, top_k: 2}}\n", r"model\.upcycle.*top_k 2 is more than n_experts 1"),
        ("model: {scratch: {}}\nloss: {retention: none}\n", "freeze_embeddings: false"),
        (
            "model: {scratch: {}, fresh_heads: true, freeze_embeddings: false}\nloss: {retention: none}\n",
            "fresh_heads is for a saved MuSES base",
        ),
        ("interpolate: [0.5, 1.0]\n", r"interpolate: each alpha must be in \[0, 1\)"),
        ("interpolate: [0.5]\nmodel: {adapter: {}}\n", "not for an adapter"),
        ("interpolate_weights: {stsb: 1}\n", "list some alphas too"),
        ("interpolate: [0.5]\ninterpolate_weights: {stsb: 0}\n", "interpolate_weights: at least one dev metric"),
        ("interpolate: [0.5]\ninterpolate_tolerance: {stsb: 0.01}\n", "list alpha 0.0 in interpolate"),
        ("interpolate: [0.0]\ninterpolate_tolerance: {stsb: -0.01}\n", "tolerances must be finite and >= 0"),
        ("interpolate: [0.0]\ninterpolate_tolerance: {stsb: .nan}\n", "tolerances must be finite and >= 0"),
        ("interpolate: [0.0]\ninterpolate_references: [default]\n", "held to interpolate_tolerance: set it too"),
        ("interpolate: [0.0]\ninterpolate_confidence: 0.9\n", "bounds the differences that interpolate_tolerance"),
        ("interpolate: [0.0]\ninterpolate_tolerance: {stsb: 0}\ninterpolate_confidence: 1.0\n", "less than 1"),
        ("interpolate: [0.0]\ninterpolate_weights: {stsb: 1, scifact-document: .inf}\n", "must be finite"),
        ("task_weights: {siblings: 1}\nloss: {retention: none}\n", "siblings task's targets"),
        ("loss: {rationale_candidates: abstract}\n", "loss.rationale_candidates"),
        ("loss: {retention_dims: [64, 0]}\n", "loss.retention_dims"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_config(bad)


def count_dev_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the trainer's whole dev readings (the WiSE-FT mixes' and references'): ``[n]``, updated in place."""
    import muses.training.trainer as trainer_module

    reads, read_dev = [0], trainer_module.read_dev

    def counted(*args: object, **kwargs: object) -> object:
        reads[0] += 1
        return read_dev(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "read_dev", counted)
    return reads


@pytest.mark.slow
def test_interpolation_keeps_the_mix_with_the_best_dev_score(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WiSE-FT after training: alpha 0 is the starting model (its dev score is step 0's), and ``best/`` scores on
    dev what the record says of the alpha it kept. A rerun reads on dev only the weights it has not read."""
    from muses.training.checkpoint import MIX_READINGS
    from muses.training.dev import evaluate_dev

    reads = count_dev_reads(monkeypatch)
    cfg = TrainConfig.model_validate({**TINY, "output_dir": str(tmp_path / "wise"), "interpolate": [0.0, 0.5]})
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    record = trainer.train(progress=False)["interpolation"]
    assert reads == [2] and len(json.loads((tmp_path / "wise" / MIX_READINGS).read_text())) == 2  # alphas 0, 0.5
    history = [json.loads(line) for line in (tmp_path / "wise" / "history.jsonl").read_text().splitlines()]
    evals = [h["dev/score"] for h in history if "dev/score" in h]
    assert set(record["alphas"]) == {"0.0", "0.5", "1.0"}
    assert record["alphas"]["0.0"] == pytest.approx(evals[0], abs=1e-6)  # step 0: the untrained model
    assert record["alphas"]["1.0"] == pytest.approx(max(evals[1:]), abs=1e-9)  # the best checkpoint
    assert record["dev_score"] == max(record["alphas"].values()) == record["alphas"][str(record["kept"])]
    assert json.loads((tmp_path / "wise" / "interpolation.json").read_text()) == record
    best = MultiScaleEncoder.load(tmp_path / "wise" / "best")
    assert evaluate_dev(best, trainer.data.dev)["dev/score"] == pytest.approx(record["dev_score"], abs=1e-6)
    # rerunning the finished run (what a second `make run` does) mixes from the same checkpoint: the same best/,
    # from the readings it made (a run killed while mixing reads only the rest); an unreadable record is read again
    reads[0] = 0
    again = Trainer(cfg, trainer.data).train(progress=False)["interpolation"]
    assert again == record and reads == [0]
    (tmp_path / "wise" / MIX_READINGS).write_text("{")
    assert Trainer(cfg, trainer.data).train(progress=False)["interpolation"] == record and reads == [2]
    rerun = MultiScaleEncoder.load(tmp_path / "wise" / "best").state_dict()
    assert all(torch.equal(v, rerun[k]) for k, v in best.state_dict().items())
    # another mix list on the finished run: its mixes are read again from the same checkpoint, nothing is trained
    lines = (tmp_path / "wise" / "history.jsonl").read_text()
    ckpt = MultiScaleEncoder.load(tmp_path / "wise" / "best-checkpoint", backend="torch").state_dict()
    more = Trainer(cfg.model_copy(update={"interpolate": [0.0, 0.25, 0.5]}), trainer.data)
    added = more.train(progress=False)["interpolation"]
    assert set(added["alphas"]) == {"0.0", "0.25", "0.5", "1.0"} and reads == [3]  # only 0.25 was read
    assert all(added["alphas"][a] == pytest.approx(s, abs=1e-9) for a, s in record["alphas"].items())
    assert (tmp_path / "wise" / "history.jsonl").read_text() == lines
    kept = MultiScaleEncoder.load(tmp_path / "wise" / "best", backend="torch").state_dict()
    start = more._start
    assert start is not None
    for k, v in MultiScaleEncoder.load(tmp_path / "wise" / "best-checkpoint", backend="torch").state_dict().items():
        assert torch.equal(v, ckpt[k]), k
        if v.is_floating_point():
            assert torch.allclose(kept[k], torch.lerp(start[k], v, added["kept"]), atol=1e-6), k
    with pytest.raises(ConfigError, match=r"\(optim differ\)"):  # a training setting is still refused
        Trainer(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-3})}), trainer.data).train()
    # no mixes any more: best/ is the checkpoint again, and no record of the old mixes is left
    assert (
        Trainer(cfg.model_copy(update={"interpolate": []}), trainer.data).train(progress=False).get("interpolation")
        is None
    )
    plain = MultiScaleEncoder.load(tmp_path / "wise" / "best", backend="torch").state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in ckpt.items())
    left = {"interpolation.json", "best-checkpoint", MIX_READINGS} & {p.name for p in (tmp_path / "wise").iterdir()}
    assert not left


@pytest.mark.slow
def test_a_run_refuses_to_resume_from_other_starting_weights(tmp_path: Path, data_dir: Path) -> None:
    """A later stage whose model.base was trained or mixed again since (same path, other weights) is refused, in one
    line, rather than resumed or mixed against an alpha 0 it did not start from."""
    base = tmp_path / "stage1"
    MultiScaleEncoder.from_base().save(base)
    cfg = TrainConfig.model_validate(
        {**TINY, "steps": 2, "output_dir": str(tmp_path / "stage2"), "model": {"base": str(base)}, "interpolate": [0.0]}
    )
    data = load_training_data(cfg, data_dir)
    Trainer(cfg, data).train(progress=False)
    assert Trainer(cfg, data).train(progress=False)["steps"] == 2  # the same weights: resumed (here: finished)
    moved = MultiScaleEncoder.load(base, backend="torch")
    with torch.no_grad():
        next(moved.parameters()).add_(1e-3)
    moved.save(base)
    with pytest.raises(ConfigError, match="other starting weights") as err:
        Trainer(cfg, data).train(progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_interpolate_weights_choose_the_mix_on_other_dev_metrics(tmp_path: Path, data_dir: Path) -> None:
    """STS-B dev selects the checkpoint; SciFact dev alone chooses among it and its mixes, each scored on every dev
    metric (the checkpoint again, giving its selection score back)."""
    from muses.training.dev import dev_score

    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "output_dir": str(tmp_path / "wise"),
            "dev_weights": {"stsb": 1.0},
            "interpolate": [0.0, 0.5],
            "interpolate_weights": {"scifact-document": 1.0},
        }
    )
    record = Trainer(cfg, load_training_data(cfg, data_dir)).train(progress=False)["interpolation"]
    history = [json.loads(line) for line in (tmp_path / "wise" / "history.jsonl").read_text().splitlines()]
    evals = [h for h in history if "dev/score" in h]
    metrics = record["metrics"]
    assert set(metrics) == set(record["alphas"]) == {"0.0", "0.5", "1.0"}
    assert metrics["1.0"]["dev/score"] == pytest.approx(max(h["dev/score"] for h in evals[1:]), abs=1e-6)
    # training computes only what selects its checkpoints (STS-B); the mixes are scored on every dev metric
    assert all(k.startswith("dev/stsb@") for h in evals for k in h if k.startswith("dev/") and k != "dev/score")
    assert metrics["0.0"]["dev/stsb@384"] == pytest.approx(evals[0]["dev/stsb@384"], abs=1e-6)
    assert {"dev/scifact-document@64", "dev/scifact-sentence@384", "dev/hierarchy@384"} <= set(metrics["0.0"])
    for alpha, m in metrics.items():
        assert record["alphas"][alpha] == pytest.approx(dev_score(m, {"scifact-document": 1.0}))
        assert record["alphas"][alpha] != pytest.approx(m["dev/score"])  # not the STS-B score that selected steps
    assert record["dev_score"] == max(record["alphas"].values()) == record["alphas"][str(record["kept"])]


@pytest.mark.slow
def test_interpolate_tolerance_keeps_only_mixes_that_hold_the_starting_model(tmp_path: Path, data_dir: Path) -> None:
    """With a zero tolerance on SciFact dev, a mix (or the checkpoint) that loses any SciFact dev number to the
    starting model cannot be kept, however well it scores on STS-B; the record says what each one missed."""
    from muses.training.dev import tolerance_misses

    tolerance = {"scifact-document": 0.0, "scifact-sentence": 0.0}
    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "output_dir": str(tmp_path / "wise"),
            "dev_weights": {"stsb": 1.0},
            "interpolate": [0.0, 0.25, 0.5],
            "interpolate_tolerance": tolerance,
        }
    )
    record = Trainer(cfg, load_training_data(cfg, data_dir)).train(progress=False)["interpolation"]
    metrics, misses = record["metrics"], record["misses"]
    assert set(misses) == set(metrics) == set(record["alphas"]) == {"0.0", "0.25", "0.5", "1.0"}
    assert {d for m in metrics.values() for d in m} >= {"dev/scifact-document@64", "dev/scifact-sentence@384"}
    for alpha, m in metrics.items():
        assert misses[alpha] == tolerance_misses(m, metrics["0.0"], tolerance)
    assert misses["0.0"] == [] and misses[str(record["kept"])] == []
    better = [a for a, s in record["alphas"].items() if s > record["dev_score"]]
    assert all(misses[a] for a in better)  # every higher STS-B score was refused for a SciFact loss


@pytest.mark.slow
def test_interpolate_confidence_holds_each_mix_to_a_bound_over_the_dev_queries(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``interpolate_confidence`` every retrieval metric of the tolerance is judged by the paired bootstrap
    bound of its difference to the starting model (0 for the start itself), STS-B by
    the difference itself, and the record lists the bounds and misses that follow from them."""
    from muses.training.checkpoint import INTERPOLATION_READINGS
    from muses.training.dev import interpolation_summary, tolerance_misses, weighted_mean

    tolerance = {"scifact-sentence": 0.01, "scifact-evidence": 0.01, "stsb": 0.01}
    data = {**TINY["data"], "dev_scifact_claims": 16, "dev_scifact_evidence": True, "dev_scifact_kind_weights": True}
    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "data": data,
            "output_dir": str(tmp_path / "wise"),
            "model": {"head_kind": "random-linear"},  # heads that move: mixes differ from the start per claim
            "interpolate": [0.0, 0.5],
            "interpolate_tolerance": tolerance,
            "interpolate_confidence": 0.9,
        }
    )
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    record = trainer.train(progress=False)["interpolation"]
    assert record["confidence"] == 0.9 and set(record["bounds"]) == set(record["metrics"]) == {"0.0", "0.5", "1.0"}
    guarded = {f"dev/{t}@{d}" for t in ("scifact-sentence", "scifact-evidence") for d in (64, 384)}
    assert all(set(b) == guarded for b in record["bounds"].values())
    assert record["bounds"]["0.0"] == dict.fromkeys(sorted(guarded), 0.0)
    start = record["metrics"]["0.0"]
    for alpha, m in record["metrics"].items():
        bounds = record["bounds"][alpha]
        assert record["misses"][alpha] == tolerance_misses(m, start, tolerance, bounds)
    gaps = [record["metrics"][a][k] - start[k] - b for a in ("0.5", "1.0") for k, b in record["bounds"][a].items()]
    assert max(gaps) > 1e-6  # the bound states an uncertainty: below the difference where claims disagree
    assert record["misses"][str(record["kept"])] == []
    weights = trainer.data.dev.scifact_weights
    assert weights is not None and len(set(weights.values())) == 2  # both kinds of claim among the 16
    readings = json.loads((tmp_path / "wise" / INTERPOLATION_READINGS).read_text())  # what the bounds came from
    assert set(readings) == set(record["metrics"])
    for alpha, per_query in readings.items():
        assert set(per_query) >= guarded
        for k, values in per_query.items():
            mean = weighted_mean(values, trainer.data.dev.query_weights(k))
            assert mean == pytest.approx(record["metrics"][alpha][k], abs=1e-9)
    # interpolate_keep: a mix chosen over fold runs is kept whatever this run's dev says, and the record says so
    keep = 0.5 if record["kept"] != 0.5 else 0.0
    trainer.config.interpolate_keep = keep
    trainer.best_score = record["alphas"]["1.0"]  # the checkpoint's, as after training
    reads = count_dev_reads(monkeypatch)
    again = trainer._interpolate()
    assert reads == [0]  # the same three weights: their readings, per query too, come from mix-readings.json
    assert again is not None and again["kept"] == keep and again["dev_would_keep"] == record["kept"]
    assert again["kept_by"] == "interpolate_keep" and again["metrics"] == record["metrics"]
    assert again["alphas"] == record["alphas"] and again["dev_score"] == again["alphas"][str(keep)]
    assert json.loads((tmp_path / "wise" / "interpolation.json").read_text()) == again
    assert f"by interpolate_keep (this run's dev would keep {record['kept']})" in interpolation_summary(again)
    best = MultiScaleEncoder.load(tmp_path / "wise" / "best", backend="torch").state_dict()
    start, ckpt = trainer._start, MultiScaleEncoder.load(tmp_path / "wise" / "best-checkpoint", backend="torch")
    assert start is not None
    for k, v in ckpt.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(best[k], torch.lerp(start[k], v, keep), atol=1e-6), k
    # benchmarks/reread_mixes.py rebuilds the start and mixes it as the trainer did: what it reads is the run's
    from benchmarks.reread_mixes import reread

    reread_values = reread(cfg, ["scifact-evidence"], str(data_dir))
    assert set(reread_values) == set(readings)
    for alpha, per_query in reread_values.items():
        assert per_query == {k: v for k, v in readings[alpha].items() if k.startswith("dev/scifact-evidence@")}
    with pytest.raises(ValidationError, match=r"list 0\.5 there too"):
        TrainConfig.model_validate({**TINY, "interpolate": [0.0, 0.25], "interpolate_keep": 0.5})
    assert TrainConfig.model_validate({**TINY, "interpolate": [0.0], "interpolate_keep": 1.0}).interpolate_keep == 1.0


@pytest.mark.slow
def test_interpolate_references_hold_every_mix_to_other_models_too(tmp_path: Path, data_dir: Path) -> None:
    """`interpolate_references: [default]` scores the untrained base on the run's dev sets, with its own heads, and
    refuses any mix (or the checkpoint) that falls more than the tolerance below it, as well as below the start."""
    from muses.training.dev import evaluate_dev, tolerance_misses

    tolerance = {"scifact-document": 0.0, "scifact-sentence": 0.0, "stsb": 0.0}
    cfg = TrainConfig.model_validate(
        {
            **TINY,
            "output_dir": str(tmp_path / "wise"),
            "model": {"head_kind": "random-linear"},  # heads that start away from the reference (the base)
            "interpolate": [0.0, 0.5],
            "interpolate_tolerance": tolerance,
            "interpolate_references": ["default"],
        }
    )
    data = load_training_data(cfg, data_dir)
    record = Trainer(cfg, data).train(progress=False)["interpolation"]
    reference = record["references"]["default"]
    assert reference == pytest.approx(evaluate_dev(MultiScaleEncoder.from_base(), data.dev, None, None), abs=1e-6)
    assert reference != pytest.approx(record["metrics"]["0.0"], abs=1e-6)
    for alpha, m in record["metrics"].items():
        against = [f"{k} (against default)" for k in tolerance_misses(m, reference, tolerance)]
        assert record["misses"][alpha] == tolerance_misses(m, record["metrics"]["0.0"], tolerance) + against
    kept = str(record["kept"])
    assert kept == "0.0" or record["misses"][kept] == []


def test_shipped_recipes_validate() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    bench = configs / "bench"  # benchmark settings, not training recipes
    files = [p for p in sorted(configs.rglob("*.yaml")) if bench not in p.parents]
    lists = {p.stem: read_stage_list(p) for p in files}
    recipes = {p.stem: load_config(p) for p in files if lists[p.stem] is None}
    multitask, budget = recipes["multitask"], recipes["ablation-budget"]
    names = {"default", "multitask", "multitask-full", "a-original-alpha1", "b-no-retention", "c-no-curriculum"}
    assert names | {"d-ours"} <= set(recipes)
    # the published model: the context head on the base (round 23's, on every claim), then the similarity adapter
    assert [p.stem for p in lists["full"] or []] == ["context-head-all-claims", "similarity"]
    published = recipes["context-head-all-claims"]
    assert published.data.scifact_claims_without_evidence and published.interpolate_keep in published.interpolate
    assert {k for k, v in lists.items() if v is not None} == {"full", "full-branch", "f-v3", "g-v3-all-claims"}
    # the published model with the sentence branch under its head (round 31), the adapter on the branch's model
    assert [p.stem for p in lists["full-branch"] or []] == [
        "context-head-all-claims",
        "branch-under-context-head",
        "similarity",
    ]
    head, branch, adapter = load_stages([configs / "full-branch.yaml"])
    assert head.model_dump() == published.model_dump() and branch.model.base == str(Path(head.output_dir) / "best")
    assert adapter.model.base == str(Path(branch.output_dir) / "best")
    # the ablation's arm (g) is the published first stage unchanged, in its own folder
    arm = recipes["g-context-head"].model_dump(exclude={"output_dir"})
    assert arm == published.model_dump(exclude={"output_dir"})
    # the ablation budget is the multi-task recipe with fewer steps, and no interpolation (the arms compare training)
    same = {"name", "output_dir", "steps", "eval_every", "interpolate"}
    assert budget.model_dump(exclude=same) == multitask.model_dump(exclude=same)
    assert multitask.interpolate and not budget.interpolate
    # make run's recipe: STS-B dev selects; its WiSE-FT mix must hold SciFact dev to the base's (alpha 0 listed)
    default = recipes["default"]
    assert default.dev_weights == default.interpolate_weights == {"stsb": 1.0}
    assert default.interpolate_tolerance and 0.0 in default.interpolate
    # the sentence-heads recipe trains heads and pooling only, and its mix answers to the same SciFact tolerance
    heads = recipes["sentence-heads"]
    assert heads.model.freeze_base and heads.model.head_kind == "residual-mlp" and 0.0 in heads.interpolate
    assert heads.interpolate_tolerance == default.interpolate_tolerance
    assert heads.interpolate_weights == heads.dev_weights == {"scifact-evidence": 1.0}  # replaced, not merged
    # the context head on the base model: only it trains; two dev collections guard the mix
    ctx = recipes["context-head"]
    assert ctx.model.base == "default" and ctx.model.fresh_heads and ctx.model.train_heads == ["context"]
    assert ctx.model.head_kind == default.model.head_kind and ctx.model.context_head and ctx.data.dev_wikipedia_ict
    assert ctx.loss.rationale_maxsim_weight > 0  # its abstracts stay first by their best sentence (round 12)
    assert ctx.data.dev_wikipedia_sentences and ctx.interpolate_tolerance is not None
    assert {"ict-document", "scifact-document", "wikipedia-sentence"} <= set(ctx.interpolate_tolerance)
    # its guard states an uncertainty, over the grown SciFact pool weighed by kind of claim (round 21); the grown
    # pool is sound because the context head is the first stage and starts from the base (checked above)
    assert ctx.interpolate_confidence == 0.9
    assert ctx.data.dev_scifact_unused_claims
    assert ctx.data.dev_scifact_kind_weights
    # siblings on make run's model: the whole model trains, with the documents' 64-dim prefix retained and the same
    # guards as the context head plus STS-B; picking a held-out sentence from half of it selects
    # the sentence branch on the base: only the branch trains, under the context head's dev sets and guard
    branch = recipes["sentence-branch"]
    assert branch.model.sentence_branch == 2 and branch.model.train_heads == ["branch"] and branch.model.freeze_base
    assert branch.model.context_head is None and branch.model.base == "default" and branch.model.fresh_heads
    assert {t for t, w in branch.task_weights.items() if w} == {"rationale", "siblings", "hierarchy"}
    # under the published head (rounds 29, 30): the head stays, the branch trains on the claims the head trained on,
    # without siblings, and keeps the mix the 5-fold over both stages chose, as its dev has too few claims to choose
    under = recipes["branch-under-context-head"]
    assert not under.model.fresh_heads and under.model.train_heads == ["branch"]
    assert not under.data.dev_scifact_unused_claims and published.data.scifact_claims_without_evidence
    assert under.data.scifact_claims_without_evidence and not under.task_weights["siblings"]
    assert under.interpolate_keep in [*under.interpolate, 1.0] and under.loss.retention_task_weights["rationale"] > 0
    # its guard also holds the SciFact dev pool's hierarchy consistency beside the head's metrics (round 32)
    assert under.data.dev_scifact_hierarchy and under.interpolate_tolerance is not None
    assert under.interpolate_tolerance == {**(ctx.interpolate_tolerance or {}), "scifact-hierarchy": 0.005}
    assert len(load_stages([configs / "context-head-all-claims.yaml", configs / "branch-under-context-head.yaml"])) == 2
    over = recipes["branch-context-head"]
    assert over.model.keep_branch and over.model.fresh_heads and over.model.train_heads == ["context"]
    assert branch.interpolate_tolerance == ctx.interpolate_tolerance and 0.0 in branch.interpolate
    assert branch.data.dev_scifact_unused_claims and branch.interpolate_confidence == ctx.interpolate_confidence
    sib = recipes["siblings"]
    assert sib.model.base == "runs/default/best" and sib.task_weights["siblings"] > 0 and sib.data.ict
    assert sib.loss.retention_dims == [64] and sib.loss.matryoshka == "full" and 0.0 in sib.interpolate
    assert sib.dev_weights == sib.interpolate_weights == {"wikipedia-sentence": 1.0}  # replaced, not merged
    assert sib.interpolate_tolerance is not None and sib.loss.retention_task_weights == {"stsb": 0.0, "siblings": 1.0}
    assert {"stsb", "ict-document", "ict-sentence", "scifact-document"} <= set(sib.interpolate_tolerance)
    # make run's second stage: a similarity adapter on STS-B alone, chosen on STS-B dev, the shared weights untouched
    sim = recipes["similarity"]
    assert sim.model.adapter is not None and sim.model.adapter.key == "similarity" and not sim.interpolate
    assert {t: w for t, w in sim.task_weights.items() if w} == {"stsb": 1.0} and sim.dev_weights == {"stsb": 1.0}
    assert sim.loss.matryoshka == "all" and sim.loss.retention_weight == 0.0 and not sim.data.scifact
    # an ablation arm changes only what it names; everything else is the budget recipe's
    ablation = recipes["b-no-retention"]
    assert ablation.loss.retention == "none" and default.loss.retention != "none"
    assert ablation.model_dump(exclude={"name", "output_dir", "loss"}) == budget.model_dump(
        exclude={"name", "output_dir", "loss"}
    )
    original = recipes["a-original-alpha05"]  # extends a-original-alpha1, which extends the budget
    assert (original.loss.alpha, original.model.head_kind, original.steps) == (0.5, "random-linear", budget.steps)
    assert recipes["d-ours"].model_dump(exclude={"name", "output_dir"}) == budget.model_dump(
        exclude={"name", "output_dir"}
    )
    # arm (e): make run's recipe at the budget's steps, its WiSE-FT step kept
    v5 = recipes["e-v5"]
    assert (v5.steps, v5.interpolate) == (budget.steps, default.interpolate)
    assert v5.model_dump(exclude={"name", "output_dir", "steps", "eval_every"}) == default.model_dump(
        exclude={"name", "output_dir", "steps", "eval_every"}
    )
    # arm (f): round 21's published stages (context-head.yaml, then the adapter at the budget's steps)
    assert [p.stem for p in lists["f-v3"] or []] == ["f-context-head", "f-similarity"]
    head, adapter = load_stages([configs / "ablation" / "f-v3.yaml"])  # the adapter trains on the arm's own head
    assert adapter.model.base == str(Path(head.output_dir) / "best") and head.output_dir != ctx.output_dir
    assert recipes["f-context-head"].model_dump(exclude={"output_dir"}) == ctx.model_dump(exclude={"output_dir"})
    assert ctx.steps <= budget.steps and recipes["f-similarity"].steps == budget.steps
    loop = {"output_dir", "steps", "eval_every", "checkpoint_every"}
    assert recipes["f-similarity"].model_dump(exclude=loop) == sim.model_dump(exclude=loop)
    # arm (g): the stages published since round 24, the first unchanged, the adapter as in (f)
    head, adapter = load_stages([configs / "ablation" / "g-v3-all-claims.yaml"])
    assert head.model_dump(exclude={"output_dir"}) == published.model_dump(exclude={"output_dir"})
    assert head.steps > budget.steps  # the published head's own steps (a frozen transformer), past the budget
    assert head.output_dir != published.output_dir and adapter.model.base == str(Path(head.output_dir) / "best")
    unrun = {"output_dir": True, "model": {"base"}}  # the adapter trains on the arm's own head
    assert adapter.model_dump(exclude=unrun) == recipes["f-similarity"].model_dump(exclude=unrun)


def test_extends_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "n.yaml").write_text("extends: '\n\n  '\n")  # a path with a line break: found by the fuzz test
    with pytest.raises(ConfigError, match="'extends' must be a path"):
        load_config(tmp_path / "n.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml does not exist"):
        load_config(tmp_path / "c.yaml")
    # mappings merge with the parent's, unless the recipe lists them in 'replace'
    parent = "dev_weights: {stsb: 1.0}\nloss: {retention_task_weights: {stsb: 0.0, scifact: 0.5}}\n"
    (tmp_path / "p.yaml").write_text(parent)
    child = "extends: p.yaml\ndev_weights: {scifact-evidence: 1.0}\nloss: {retention_task_weights: {scifact: 1.0}}\n"
    (tmp_path / "merged.yaml").write_text(child)
    merged = load_config(tmp_path / "merged.yaml")
    assert merged.dev_weights == {"stsb": 1.0, "scifact-evidence": 1.0}
    assert merged.loss.retention_task_weights == {"stsb": 0.0, "scifact": 1.0}
    (tmp_path / "replaced.yaml").write_text(f"{child}replace: [dev_weights, loss.retention_task_weights]\n")
    replaced = load_config(tmp_path / "replaced.yaml")
    assert replaced.dev_weights == {"scifact-evidence": 1.0} and replaced.loss.retention_task_weights == {
        "scifact": 1.0
    }
    assert replaced.model_dump(exclude={"dev_weights", "loss"}) == merged.model_dump(exclude={"dev_weights", "loss"})
    for text, words in (
        (f"{child}replace: dev_weights\n", "must be a list of setting names"),
        (f"{child}replace: [interpolate_weights]\n", "names interpolate_weights, which this recipe does not set"),
        (f"{child}replace: [loss.alpha]\n", "names loss.alpha"),
        ("replace: [steps]\nsteps: 3\n", "for a recipe that extends another"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_config(tmp_path / "bad.yaml")


def test_ablation_results_stay_valid_when_a_profile_setting_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved ablation results are kept when the profile only gained a setting since (new settings default to the
    old behaviour), and started afresh when a setting they were made with changed or went away."""
    from dataclasses import asdict, replace

    from muses.evaluation.report import PROFILES
    from muses.training.ablation import _load_results

    settings = json.loads(json.dumps(asdict(PROFILES["ablation"])))
    models = {"d-ours": {"tasks": {"sts": {"metrics": {"spearman@384": 0.85}}}}}
    path = tmp_path / "results.json"
    logged: list[str] = []
    older = {k: v for k, v in settings.items() if k != "routing_articles"}  # saved before that setting existed
    for saved, kept in ((older, True), ({**settings, "squad_docs": -1}, False), ({**older, "gone": 1}, False)):
        path.write_text(json.dumps({"profile": "ablation", "profile_settings": saved, "models": models}))
        data = _load_results(path, "ablation", logged.append)
        assert (data["models"] == models) is kept and data["profile_settings"] == settings
    assert data.get("settings_added") is None and len(logged) == 2 and "evaluating every model again" in logged[0]
    path.write_text(json.dumps({"profile": "ablation", "profile_settings": older, "models": models}))
    assert _load_results(path, "ablation", logged.append)["settings_added"] == ["routing_articles"]
    # a setting added since, but not at its default in this profile, changes what the results would be
    path.write_text(json.dumps({"profile": "ablation", "profile_settings": older, "models": models}))
    monkeypatch.setitem(PROFILES, "ablation", replace(PROFILES["ablation"], routing_articles=5))
    assert _load_results(path, "ablation", logged.append)["models"] == {}


def test_ablation_table_has_a_row_per_model_and_384_64_columns() -> None:
    from muses.training.ablation import render_table

    results = {
        "models": {
            "base (default)": {
                "tasks": {
                    "sts": {"metrics": {"spearman@384": 0.8203, "spearman@64": 0.7921}},
                    "squad": {"metrics": {"unambiguous/flat/recall@1@384": 0.5511}},
                }
            },
            "d-ours": {"tasks": {"sts": {"metrics": {"spearman@384": 0.85}}}},
        }
    }
    lines = render_table(results).splitlines()
    # only columns some model has a number for: STS-B at 384 and 64, SQuAD R@1 at 384
    assert lines[0] == "| model | STS-B test @384 | STS-B test @64 | SQuAD answer sentence R@1 @384 |"
    assert len(lines) == 4 and lines[1].count("|") == lines[0].count("|") == 5
    assert lines[2] == "| base (default) | 0.8203 | 0.7921 | 0.5511 |"
    assert lines[3] == "| d-ours | 0.8500 |  |  |"  # a missing number is left blank, not invented


@pytest.mark.slow
def test_an_ablation_arm_can_be_a_stage_list(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`muses ablation` takes a stage list as one arm (the published recipe is two stages): its stages train in turn,
    the adapter stage becomes the arm's task adapter, and the row, named for the file, is the model the chain ends
    with, its STS-B read on that adapter (so it differs from the base's), noted under the table. A rerun evaluates
    nothing again. An arm of adapter stages alone is refused in one line before anything trains."""
    from muses.adapters.tasks import list_tasks
    from muses.evaluation.corpus import EmbeddingCache
    from muses.evaluation.report import PROFILES, Profile
    from muses.training.ablation import run_ablation

    configs = Path(__file__).resolve().parents[2] / "configs"
    monkeypatch.setitem(PROFILES, "sts-only", Profile("sts-only", tasks=("sts",), dims=(384, 64)))
    first, adapter, arm = tmp_path / "first.yaml", tmp_path / "adapter.yaml", tmp_path / "f-chain.yaml"
    first.write_text(f"extends: {configs / 'smoke.yaml'}\nsteps: 2\neval_every: 2\noutput_dir: {tmp_path / 'first'}\n")
    adapter.write_text(
        f"extends: {configs / 'similarity.yaml'}\nsteps: 2\neval_every: 2\ncheckpoint_every: 2\n"
        f"output_dir: {tmp_path / 'adapter'}\ndata: {{dev_stsb_pairs: 32, max_pair_tokens: 48}}\n"
    )
    arm.write_text("stages: [first.yaml, adapter.yaml]\n")
    out, logged = tmp_path / "report", []
    cache = EmbeddingCache(tmp_path / "cache")
    run_ablation([arm], out, data_dir, cache, profile="sts-only", log=logged.append)

    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base (default)", "f-chain"]
    assert set(results["training"]) == {"f-chain/smoke", "f-chain/similarity"}
    assert list_tasks(tmp_path / "first" / "best") == ["similarity"]
    assert f"stage 2/2 similarity: starts from {tmp_path / 'first' / 'best'}" in logged
    chain, base = (results["models"][m]["tasks"]["sts"] for m in ("f-chain", "base (default)"))
    assert chain["task_adapter"] == "similarity" and "task_adapter" not in base
    assert chain["metrics"]["spearman@384"] != pytest.approx(base["metrics"]["spearman@384"], abs=1e-4)
    table = (out / "ablation.md").read_text()
    assert "| f-chain |" in table and "f-chain: sts on its `similarity` task adapter." in table

    logged.clear()
    run_ablation([arm], out, data_dir, cache, profile="sts-only", log=logged.append)
    assert not [line for line in logged if line.endswith(" s")], logged  # no task evaluated again
    assert json.loads((out / "results.json").read_text())["models"] == results["models"]

    alone, twin = tmp_path / "alone.yaml", tmp_path / "twin.yaml"
    alone.write_text("stages: [adapter.yaml]\n")
    twin.write_text(f"extends: {first}\nname: twin\n")  # first.yaml's output_dir: it would resume that run
    for arms, problem in (([arm, alone], "trains adapters only"), ([arm, twin], "both write to")):
        with pytest.raises(InputError, match=problem) as e:
            run_ablation(arms, tmp_path / "other", data_dir, cache, profile="sts-only", log=logged.append)
        assert "\n" not in str(e.value) and not (tmp_path / "other" / "results.json").exists()


def test_loss_curves_name_the_runs_of_every_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that log the same losses are named once, in the first panel; runs that log different ones (the stages of a
    chain: the rationale loss, then STS-B's) are named in every panel, else a stage's curve would go unlabelled."""
    from matplotlib.figure import Figure

    from muses.plots import plot_training

    legends: list[list[str]] = []
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: legends.append(
            [",".join(t.get_text() for t in ax.get_legend().get_texts()) if ax.get_legend() else "" for ax in fig.axes]
        ),
    )

    def history(name: str, losses: list[str]) -> Path:
        rows = [{"step": s, **{k: 1.0 / (s + 1) for k in losses}} for s in range(1, 6)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    plot_training(
        {"a": history("a", ["x/loss", "y/loss"]), "b": history("b", ["x/loss", "y/loss"])}, tmp_path / "1.png"
    )
    plot_training(
        {"head": history("head", ["rationale/loss"]), "sim": history("sim", ["stsb/loss"])}, tmp_path / "2.png"
    )
    assert legends[0] == ["a,b", ""]
    assert legends[1] == ["head", "sim"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.25, 0.5, 1.0])))
def test_fuzzed_interpolate_keep_validates_or_is_refused(keep: float) -> None:
    """``interpolate_keep``: one of the mixes of ``interpolate`` or 1.0 (the checkpoint) validates; any other value
    (outside [0, 1], NaN, a mix not listed) is refused with a ValidationError naming the option."""
    base = {**TINY, "interpolate": [0.0, 0.25]}
    if keep in (0.0, 0.25, 1.0):
        assert TrainConfig.model_validate({**base, "interpolate_keep": keep}).interpolate_keep == keep
    else:
        with pytest.raises(ValidationError, match="interpolate_keep"):
            TrainConfig.model_validate({**base, "interpolate_keep": keep})


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_READING = st.fixed_dictionaries(
    {
        "metrics": st.dictionaries(st.text(max_size=6), st.floats(allow_nan=False), max_size=3),
        "per_query": st.dictionaries(
            st.text(max_size=6),
            st.dictionaries(st.text(max_size=6), st.floats(allow_nan=False), max_size=3),
            max_size=2,
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_JSON, st.dictionaries(st.text(max_size=8), _READING | _JSON, max_size=3), st.text(max_size=20)))
def test_fuzzed_mix_readings_load_whole_or_not_at_all(content: object) -> None:
    """``mix-readings.json`` holding anything: it loads as readings of float values, every key kept, or as nothing
    (every mix is then read again); it never raises."""
    import tempfile

    from muses.training.checkpoint import MIX_READINGS, read_mix_readings

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MIX_READINGS).write_text(content if isinstance(content, str) else json.dumps(content))
        read = read_mix_readings(Path(tmp))
    if read:
        assert isinstance(content, dict) and set(read) == set(content)
        for r in read.values():
            assert all(type(v) is float for v in r.metrics.values())
            assert all(type(v) is float for q in r.per_query.values() for v in q.values())

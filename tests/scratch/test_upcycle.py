"""MoE upcycling of all-MiniLM-L6-v2, MoE training in the trainer, and the routing report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from muses.data.wikipedia import WikiArticle
from muses.encoder import MultiScaleEncoder
from muses.evaluation.corpus import MusesCorpusEncoder
from muses.evaluation.routing import evaluate_routing, specialisation
from muses.scratch.model import pop_aux_loss
from muses.scratch.moe import MoEConfig, moe_layers
from muses.scratch.upcycle import MoEBertModel, upcycle_encoder
from muses.training.config import TrainConfig
from muses.training.data import load_training_data
from muses.training.trainer import Trainer

TEXTS = [
    "Upcycling turns each feed-forward block into experts.",
    "The mitochondria is the powerhouse of the cell. It makes ATP.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def upcycled() -> MultiScaleEncoder:
    enc = MultiScaleEncoder.from_base()
    upcycle_encoder(enc, MoEConfig(n_experts=4, top_k=2))
    return enc.eval()


def test_upcycled_equals_dense_at_init(upcycled: MultiScaleEncoder, encoder: MultiScaleEncoder) -> None:
    """Every FFN becomes 4 copies with top-2 gates summing to 1: sentence, document and token vectors are unchanged."""
    assert isinstance(upcycled.transformer.auto_model, MoEBertModel)
    assert len(moe_layers(upcycled)) == 6
    np.testing.assert_allclose(upcycled.encode_sentences(TEXTS), encoder.encode_sentences(TEXTS), atol=1e-5)
    scales = ("document", "sentence", "token")
    [ours], [theirs] = (e.encode_documents(TEXTS[1:2], scales=scales) for e in (upcycled, encoder))
    for got, want in (
        (ours.document, theirs.document),
        (ours.sentences, theirs.sentences),
        (ours.tokens, theirs.tokens),
    ):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the experts are copies, and the upcycled model has the dense one's parameters plus 3 experts and a router
    n_dense = sum(p.numel() for p in encoder.transformer.auto_model.parameters())
    n_moe = sum(p.numel() for p in upcycled.transformer.auto_model.parameters())
    ffn = 2 * 384 * 1536 + 1536 + 384
    assert n_moe - n_dense == 6 * (3 * ffn + 384 * 4)


def test_upcycled_saves_and_loads(upcycled: MultiScaleEncoder, tmp_path: Path) -> None:
    upcycled.save(tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == "muses-moe-bert"
    again = MultiScaleEncoder.load(tmp_path / "m")
    assert isinstance(again.transformer.auto_model, MoEBertModel)
    np.testing.assert_array_equal(again.encode_sentences(TEXTS), upcycled.encode_sentences(TEXTS))


def test_training_forward_leaves_an_aux_loss_and_eval_forward_none(upcycled: MultiScaleEncoder) -> None:
    upcycled.train()
    try:
        upcycled.standalone_vectors(upcycled.token_states(TEXTS))
        aux = pop_aux_loss(upcycled)
        assert aux is not None and aux.ndim == 0
        # balance loss >= 1 (its minimum, uniform routing) times 1e-2 per layer, plus a z-loss
        assert float(aux.detach()) >= 6 * 1e-2 * 0.99
        assert pop_aux_loss(upcycled) is None
    finally:
        upcycled.eval()
    with torch.no_grad():
        upcycled.encode_sentences(TEXTS)
    assert pop_aux_loss(upcycled) is None


def test_specialisation_is_zero_for_alike_topics_and_one_for_topic_experts() -> None:
    assert specialisation(np.array([[5.0, 5.0], [10.0, 10.0]])) == pytest.approx(0.0, abs=1e-12)
    assert specialisation(np.array([[7.0, 0.0], [0.0, 7.0]])) == pytest.approx(1.0)
    assert 0 < specialisation(np.array([[6.0, 2.0], [2.0, 6.0]])) < 1


def test_routing_report_counts_every_token_per_topic(upcycled: MultiScaleEncoder) -> None:
    articles = [
        WikiArticle("a", "Cells divide by mitosis. DNA is copied first.", "", "Biology"),
        WikiArticle("b", "Enzymes speed up reactions in the cell.", "", "Biology"),
        WikiArticle("c", "The Alps are a mountain range in Europe.", "", "Geography"),
    ]
    m = evaluate_routing(MusesCorpusEncoder(upcycled), articles)
    n_tokens = sum(len(upcycled.tokenizer(a.text, add_special_tokens=False)["input_ids"]) for a in articles)
    assert m["tokens"] == n_tokens and m["tokens_per_s"] > 0
    assert m["moe/layers"] == 6
    for layer in range(6):
        assert sum(m[f"layer{layer}/load/e{e}"] for e in range(4)) == pytest.approx(1.0)
        assert sum(m[f"layer{layer}/topic/Biology/e{e}"] for e in range(4)) == pytest.approx(1.0)
        assert m[f"layer{layer}/balance"] >= 1.0
    assert m["moe/drop_rate"] == 0.0  # top-2 of 4 at eval capacity 2.0 cannot drop


@pytest.mark.slow
def test_trainer_upcycles_trains_the_experts_apart_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    """A recipe with model.upcycle: step 0 is the dense model; training logs the MoE aux loss and the experts of a
    layer stop being copies; a resumed trainer loads the upcycled checkpoint."""
    raw = {
        "steps": 2,
        "docs_per_batch": 3,
        "pairs_per_batch": 4,
        "eval_every": 2,
        "checkpoint_every": 2,
        "eval_at_start": False,
        "output_dir": str(tmp_path / "up"),
        "task_weights": {"hierarchy": 1.0, "stsb": 1.0, "scifact": 0.0},
        "data": {
            "wikipedia_articles": 8,
            "scifact": False,
            "dev_stsb_pairs": 16,
            "dev_scifact_distractors": None,
            "max_doc_tokens": 48,
        },
        "loss": {"tokens_per_batch": 16, "retention": "none"},
        "model": {"upcycle": {"n_experts": 4, "top_k": 2, "layers": [0, 5]}},
    }
    cfg = TrainConfig.model_validate(raw)
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    assert [name for name, _ in moe_layers(trainer.encoder)] and len(moe_layers(trainer.encoder)) == 2
    trainer.train(progress=False)
    history = (tmp_path / "up" / "history.jsonl").read_text().splitlines()
    assert all('"moe/aux"' in line for line in history)
    _, layer = moe_layers(trainer.encoder)[0]
    w0, w1 = (e.w_in.weight for e in list(layer.experts)[:2])
    assert float((w0 - w1).detach().abs().max()) > 1e-6, "training must move the copies apart"
    again = Trainer(cfg, trainer.data)
    assert again.load_checkpoint()
    state = trainer.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.encoder.state_dict().items())


def test_model_throughput_counts_active_parameters(upcycled: MultiScaleEncoder, encoder: MultiScaleEncoder) -> None:
    """Top-2 of 4 experts: a token uses two FFN copies and the router, so active = dense + 1 FFN + router a layer."""
    from muses.evaluation.efficiency import model_throughput

    result = model_throughput({"dense": encoder, "upcycled": upcycled}, n_articles=3, repeats=1)
    dense, moe = result["models"]["dense"], result["models"]["upcycled"]
    ffn = 2 * 384 * 1536 + 1536 + 384
    assert dense["params_total"] == dense["params_active"]
    assert moe["params_active"] - dense["params_active"] == 6 * (ffn + 384 * 4)
    assert moe["params_total"] - dense["params_total"] == 6 * (3 * ffn + 384 * 4)
    assert dense["speed_vs_baseline"] == 1.0 and moe["tokens_per_s"] > 0 and result["tokens"] > 0
    assert moe["tokens"] == dense["tokens"] == result["tokens"]  # one tokenizer: the same texts, the same tokens


def test_routing_articles_cover_every_topic_of_the_held_out_side() -> None:
    from muses.data.wikipedia import load_wikipedia, stratified_split
    from muses.evaluation.routing import routing_articles

    articles = routing_articles(120)
    _, held_out = stratified_split(load_wikipedia(), 0.2, seed=0)
    assert 115 <= len(articles) <= 125
    assert {a.topic for a in articles} == {a.topic for a in held_out}
    assert {a.title for a in articles} <= {a.title for a in held_out}

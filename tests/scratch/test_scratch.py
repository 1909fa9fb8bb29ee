"""From-scratch encoders: WordPiece tokenizer training, the ScratchEncoder (dense and MoE), saving and loading through
transformers / sentence-transformers / MuSES, and a tiny contrastive training run on real WikiText-2 text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast

from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.scratch.model import (
    ScratchConfig,
    ScratchEncoder,
    ScratchEncoderOutput,
    build_scratch_base,
    count_parameters,
    pop_aux_loss,
)
from muses.scratch.moe import MoEConfig, MoEFeedForward
from muses.scratch.tokenizer import train_tokenizer
from muses.text import get_splitter

MOE = {"n_experts": 4, "top_k": 2, "capacity_factor_eval": None}  # no capacity drops in eval: batch-independent


@pytest.fixture(scope="module")
def paragraphs(data_dir: Path) -> list[str]:
    """The first 400 paragraphs (lines without `` = Title = `` headings) of WikiText-2 test."""
    path = data_dir / "wikitext-2-raw" / "wiki.test.raw"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("=")][:400]


@pytest.fixture(scope="module")
def tokenizer(paragraphs: list[str]) -> PreTrainedTokenizerFast:
    """A 2,000-entry WordPiece vocabulary trained on 300 WikiText-2 paragraphs."""
    return train_tokenizer(paragraphs[:300], vocab_size=2000, max_length=128)


def tiny_config(tokenizer: PreTrainedTokenizerFast, **overrides: object) -> ScratchConfig:
    settings: dict[str, object] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "ffn_size": 128,
        "max_position": 128,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(overrides)
    return ScratchConfig(**settings)  # type: ignore[arg-type]


def batch(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_and_offsets_slice_back(
    tokenizer: PreTrainedTokenizerFast, paragraphs: list[str], tmp_path: Path
) -> None:
    assert tokenizer.is_fast
    assert 1000 < len(tokenizer) <= 2000  # learned merges, within the asked size
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tokenizer.model_max_length == 128

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    held_out = paragraphs[300:340]  # not seen in training
    assert loaded(held_out)["input_ids"] == tokenizer(held_out)["input_ids"]
    assert loaded.model_max_length == 128 and loaded.pad_token_id == 0

    checked = 0
    for text in held_out:
        enc = tokenizer(text, return_offsets_mapping=True, truncation=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert offsets[0] == (0, 0) and offsets[-1] == (0, 0)
        covered = np.zeros(len(text), dtype=np.int64)
        for token, (start, end) in zip(tokenizer.convert_ids_to_tokens(ids[1:-1]), offsets[1:-1], strict=True):
            assert end > start
            covered[start:end] += 1
            piece = text[start:end]
            if token != "[UNK]" and piece.isascii():
                assert piece.lower() == token.removeprefix("##")
                checked += 1
        # every non-space character lies in exactly one token, every space in none
        assert all(covered[i] == (0 if ch.isspace() else 1) for i, ch in enumerate(text))
    assert checked > 2000
    assert tokenizer.decode(tokenizer("The Bill in 2000 .")["input_ids"], skip_special_tokens=True) == (
        "the bill in 2000."
    )


def test_tokenizer_truncates_and_pairs(tokenizer: PreTrainedTokenizerFast, paragraphs: list[str]) -> None:
    long = " ".join(paragraphs[:5])
    assert len(tokenizer(long, truncation=True)["input_ids"]) == 128
    pair = tokenizer("a cat", "a dog")
    assert pair["input_ids"][0] == tokenizer.cls_token_id
    assert pair["input_ids"].count(tokenizer.sep_token_id) == 2
    n_a, n_b = (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("a cat", "a dog"))
    assert pair["token_type_ids"] == [0] * (n_a + 2) + [1] * (n_b + 1)


@pytest.mark.parametrize(
    ("texts", "kwargs", "match"),
    [
        ([], {}, "no texts"),
        (iter([]), {}, "no texts"),
        ("one string", {}, "wrap it in a list"),
        (["fine", 3], {}, "text 1 is a int"),
        (["fine"], {"vocab_size": 3}, "vocab_size"),
        (["fine"], {"max_length": 1}, "max_length"),
    ],
)
def test_tokenizer_input_errors(texts: object, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(InputError, match=match):
        train_tokenizer(texts, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("moe_layers", [[], [1]], ids=["dense", "moe"])
def test_encoder_shape_and_padding_invariance(
    tokenizer: PreTrainedTokenizerFast, paragraphs: list[str], moe_layers: list[int]
) -> None:
    torch.manual_seed(0)
    model = ScratchEncoder(tiny_config(tokenizer, moe_layers=moe_layers, moe=MOE if moe_layers else None)).eval()
    short, long = paragraphs[10][:80], paragraphs[11][:300]
    with torch.no_grad():
        alone = model(**batch(tokenizer, [short]))
        both = model(**batch(tokenizer, [long, short]))
    assert isinstance(alone, ScratchEncoderOutput)
    n = int(batch(tokenizer, [short])["attention_mask"].sum())
    length = batch(tokenizer, [long, short])["input_ids"].shape[1]
    assert alone.last_hidden_state.shape == (1, n, 64)
    assert both.last_hidden_state.shape == (2, length, 64) and length > n
    torch.testing.assert_close(both.last_hidden_state[1, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert (alone.aux_loss is None) == (not moe_layers)
    assert model.pending_aux_losses == []  # eval mode queues nothing


def test_encoder_is_pre_layernorm(tokenizer: PreTrainedTokenizerFast, paragraphs: list[str]) -> None:
    """With the blocks' output projections zeroed, every residual branch adds 0: the output is LN_final(embeddings)."""
    torch.manual_seed(0)
    model = ScratchEncoder(tiny_config(tokenizer, dropout=0.0)).eval()
    assert isinstance(model.ln_final, torch.nn.LayerNorm)
    assert all(
        isinstance(b.ln_attn, torch.nn.LayerNorm) and isinstance(b.ln_ffn, torch.nn.LayerNorm) for b in model.blocks
    )
    inputs = batch(tokenizer, paragraphs[20:22])
    with torch.no_grad():
        states = model(**inputs).last_hidden_state
        real = inputs["attention_mask"].bool()
        # a fresh final LayerNorm (weight 1, bias 0) gives every real token mean 0, std 1 over the hidden dims
        torch.testing.assert_close(states[real].mean(-1), torch.zeros(int(real.sum())), atol=1e-5, rtol=0)
        torch.testing.assert_close(states[real].var(-1, unbiased=False), torch.ones(int(real.sum())), atol=1e-3, rtol=0)
        for block in model.blocks:
            for linear in (block.attn.proj, block.ffn.down):
                linear.weight.zero_()
                linear.bias.zero_()
        ids = inputs["input_ids"]
        emb = model.token_embeddings(ids) + model.position_embeddings(torch.arange(ids.shape[1]))[None]
        expected = F.layer_norm(emb, (64,), eps=model.config.layer_norm_eps)
        torch.testing.assert_close(model(**inputs).last_hidden_state, expected)


def test_encoder_init_and_edge_inputs(tokenizer: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(0)
    model = ScratchEncoder(tiny_config(tokenizer, moe_layers=[0], moe={**MOE, "router_init_std": 0.5})).eval()
    weights = {name: p.detach() for name, p in model.named_parameters()}
    assert float(weights["token_embeddings.weight"][tokenizer.pad_token_id].abs().sum()) == 0.0
    for name in ("position_embeddings.weight", "blocks.1.ffn.up.weight", "blocks.0.ffn.experts.0.w_in.weight"):
        assert abs(float(weights[name].std()) - 0.02) < 0.002, name
    assert float(weights["blocks.1.ffn.up.bias"].abs().sum()) == 0.0
    assert bool((weights["blocks.1.ln_ffn.weight"] == 1).all()) and bool((weights["ln_final.bias"] == 0).all())
    assert isinstance(model.blocks[0].ffn, MoEFeedForward)
    assert abs(float(weights["blocks.0.ffn.router.weight"].std()) - 0.5) < 0.1  # the router keeps its own std
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        out = model(ids, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]), token_type_ids=torch.zeros_like(ids))
    assert torch.isfinite(out.last_hidden_state).all()  # an all-padding row does not turn into NaN
    with pytest.raises(InputError, match="max_position"):
        model(torch.ones(1, 129, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"moe_layers": [4], "moe": MOE}, r"out of range for num_layers=4; use indices in \[0, 3\]"),
        ({"moe_layers": [1, 1], "moe": MOE}, "lists a layer twice"),
        ({"moe_layers": [1]}, "needs MoE settings"),
        ({"moe_layers": [1], "moe": {"n_experts": 2, "top_k": 3}}, "top_k"),
        ({"moe_layers": [1], "moe": {"experts": 2}}, "unknown MoEConfig key"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
        ({"pad_token_id": 9000}, "pad_token_id"),
    ],
)
def test_config_validation(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        ScratchConfig(**overrides)  # type: ignore[arg-type]


def test_config_json_round_trip() -> None:
    config = ScratchConfig(num_layers=4, moe_layers=[1, 3], moe=MoEConfig(n_experts=8, top_k=1))
    assert config.moe == MoEConfig(n_experts=8, top_k=1).to_dict()  # stored complete, as a plain dict
    again = ScratchConfig.from_dict(config.to_dict())
    assert again.moe_layers == [1, 3] and again.moe == config.moe
    assert (again.num_hidden_layers, again.max_position_embeddings, again.num_attention_heads) == (4, 256, 4)
    assert isinstance(AutoConfig.for_model("muses-scratch"), ScratchConfig)
    defaults = ScratchConfig()
    assert (defaults.vocab_size, defaults.hidden_size, defaults.ffn_size, defaults.moe_layers) == (8000, 256, 1024, [])


def test_count_parameters_dense_vs_moe(tokenizer: PreTrainedTokenizerFast) -> None:
    dense = ScratchEncoder(tiny_config(tokenizer))
    moe = ScratchEncoder(tiny_config(tokenizer, moe_layers=[1], moe={"n_experts": 4, "top_k": 1}))
    d, m = count_parameters(dense), count_parameters(moe)
    ffn = 64 * 128 + 128 + 128 * 64 + 64  # one dense FFN = one expert
    router = 64 * 4
    assert d["total"] == d["active"] == sum(p.numel() for p in dense.parameters())
    assert m["total"] == sum(p.numel() for p in moe.parameters()) == d["total"] + 3 * ffn + router
    assert m["active"] == d["active"] + router  # top-1 of 4 experts: one expert's worth per token
    assert (m["moe_experts"], m["moe_router"]) == (4 * ffn, router)
    assert d["embedding"] == len(tokenizer) * 64 + 128 * 64
    assert d["active_non_embedding"] == d["active"] - d["embedding"]


# ---------------------------------------------------------------------------------------------------- save / load
def test_build_scratch_base_loads_everywhere(
    tokenizer: PreTrainedTokenizerFast, paragraphs: list[str], tmp_path: Path
) -> None:
    config = tiny_config(tokenizer, moe_layers=[1], moe=MOE)
    path = build_scratch_base(config, tokenizer, tmp_path / "base", seed=3)
    assert path == tmp_path / "base"
    assert (path / "model.safetensors").is_file() and (path / "1_Pooling" / "config.json").is_file()
    assert not (path / "pytorch_model.bin").exists()

    texts = [paragraphs[30][:200], paragraphs[31][:120]]
    inputs = batch(tokenizer, texts, max_length=128)
    auto = AutoModel.from_pretrained(path).eval()
    assert isinstance(auto, ScratchEncoder) and auto.config.moe_layers == [1]
    torch.manual_seed(3)
    fresh = ScratchEncoder(config).eval()
    with torch.no_grad():
        states = auto(**inputs).last_hidden_state
        torch.testing.assert_close(states, fresh(**inputs).last_hidden_state)  # the seed fixes the init

    # sentence-transformers: [Transformer, Pooling(mean)] over the same states
    st = SentenceTransformer(str(path), device="cpu")
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    mean = ((states * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(st.encode(texts), mean, atol=1e-5)

    enc = MultiScaleEncoder.from_base(str(path), window_overlap=16)
    [emb] = enc.encode_documents([paragraphs[32]], scales=("document", "sentence", "token"))
    assert emb.document.shape == (64,) and emb.sentences.shape[1] == 64 and emb.tokens is not None
    assert np.isfinite(emb.sentences).all()
    np.testing.assert_allclose(np.linalg.norm(emb.sentences, axis=1), 1.0, atol=1e-5)
    vectors = enc.encode_sentences(texts)
    np.testing.assert_allclose(vectors, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)

    enc.save(tmp_path / "muses")
    again = MultiScaleEncoder.load(tmp_path / "muses")
    np.testing.assert_allclose(again.encode_sentences(texts), vectors, atol=1e-6)


def test_build_scratch_base_errors(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"set vocab_size={len(tokenizer)}"):
        build_scratch_base(tiny_config(tokenizer, vocab_size=100), tokenizer, tmp_path / "a")
    with pytest.raises(InputError, match="set pad_token_id=0"):
        build_scratch_base(tiny_config(tokenizer, pad_token_id=1), tokenizer, tmp_path / "b")
    with pytest.raises(InputError, match="pooling"):
        build_scratch_base(tiny_config(tokenizer), tokenizer, tmp_path / "c", pooling="weightedmean")


# ---------------------------------------------------------------------------------------------------- training
def test_pop_aux_loss(tokenizer: PreTrainedTokenizerFast, paragraphs: list[str], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ScratchEncoder(tiny_config(tokenizer, num_layers=3, moe_layers=[0, 2], moe=MOE))
    inputs = batch(tokenizer, paragraphs[40:44])
    model.train()
    out = model(**inputs)
    model(**inputs)
    assert len(model.pending_aux_losses) == 2
    aux = pop_aux_loss(model)
    assert aux is not None and aux.ndim == 0 and aux.requires_grad and aux.item() > 0
    torch.testing.assert_close(aux, out.aux_loss, rtol=0.2, atol=0)  # the mean of two forwards of one batch
    assert pop_aux_loss(model) is None and model.pending_aux_losses == []
    with torch.no_grad():
        model(**inputs)
    model.eval()
    model(**inputs)
    assert pop_aux_loss(model) is None  # neither no-grad nor eval forwards queue a loss

    dense = ScratchEncoder(tiny_config(tokenizer)).train()
    dense(**inputs)
    assert pop_aux_loss(dense) is None

    # through sentence-transformers and MuSES, which keep only last_hidden_state
    path = build_scratch_base(tiny_config(tokenizer, moe_layers=[1], moe=MOE), tokenizer, tmp_path / "base")
    enc = MultiScaleEncoder.from_base(str(path), window_overlap=16).train()
    enc.token_states(paragraphs[45:47])
    aux = pop_aux_loss(enc)
    assert aux is not None and aux.item() > 0 and pop_aux_loss(enc) is None


def icl_pairs(paragraphs: list[str], n: int) -> list[tuple[str, str]]:
    """(first sentence, rest of the paragraph) pairs from paragraphs of at least three sentences."""
    split = get_splitter("blingfire")
    pairs = []
    for text in paragraphs:
        spans = split(text)
        if len(spans) >= 3:
            pairs.append((text[spans[0][0] : spans[0][1]], text[spans[1][0] :]))
        if len(pairs) == n:
            break
    return pairs


@pytest.mark.parametrize("moe_layers", [[], [1]], ids=["dense", "moe"])
def test_tiny_model_contrastive_loss_falls(
    tokenizer: PreTrainedTokenizerFast, paragraphs: list[str], moe_layers: list[int]
) -> None:
    """In-batch InfoNCE of a paragraph's first sentence against the rest of it, 40 steps on 64 WikiText pairs."""
    torch.manual_seed(0)
    config = tiny_config(
        tokenizer, dropout=0.0, moe_layers=moe_layers, moe={"n_experts": 4, "top_k": 2} if moe_layers else None
    )
    model = ScratchEncoder(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pairs = icl_pairs(paragraphs, 64)
    assert len(pairs) == 64

    def embed(texts: list[str]) -> torch.Tensor:
        inputs = batch(tokenizer, texts)
        states = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)

    losses, auxes = [], []
    for step in range(40):
        chunk = pairs[(step * 16) % 64 :][:16]
        anchors, positives = embed([a for a, _ in chunk]), embed([p for _, p in chunk])
        loss = F.cross_entropy(anchors @ positives.T / 0.05, torch.arange(len(chunk)))
        aux = pop_aux_loss(model)
        if moe_layers:
            assert aux is not None
            auxes.append(aux.item())
            loss_total = loss + aux
        else:
            assert aux is None
            loss_total = loss
        opt.zero_grad()
        loss_total.backward()
        opt.step()
        losses.append(loss.item())
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert first > 2.0  # about log(16) = 2.77 at the start
    assert last < 0.5 * first, (first, last, losses)
    assert all(a > 0 for a in auxes)

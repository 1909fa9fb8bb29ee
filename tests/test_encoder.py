"""MultiScaleEncoder against sentence-transformers, and its multi-scale invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from muses.data.stsb import load_stsb
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError
from muses.heads import ProjectionHead
from muses.pooling import Pooling
from muses.text import document_from_sentences
from muses.windows import plan_windows


def test_untrained_sentence_vectors_equal_sentence_transformers(
    encoder: MultiScaleEncoder, base_model: SentenceTransformer, data_dir: Path
) -> None:
    sentences = load_stsb("test", data_dir).sentences1[:200]
    ours = encoder.encode_sentences(sentences)
    ref = base_model.encode(sentences, normalize_embeddings=True)
    assert ours.shape == (200, 384)
    assert np.abs(ours - ref).max() < 1e-5


def test_one_sentence_document_vector_equals_sentence_transformers(
    encoder: MultiScaleEncoder, base_model: SentenceTransformer
) -> None:
    text = "A man is playing a guitar on the street."
    emb = encoder.encode_documents([text], scales=("document",))[0]
    ref = base_model.encode([text], normalize_embeddings=True)[0]
    assert np.abs(emb.document - ref).max() < 1e-5


def test_prefix_of_full_embedding_is_the_small_embedding(encoder: MultiScaleEncoder) -> None:
    texts = ["Matryoshka dolls nest inside each other.", "So do embedding prefixes."]
    full = encoder.encode_documents(texts, scales=("document", "sentence", "token"))
    for d in encoder.dims:
        small = encoder.encode_documents(texts, scales=("document", "sentence", "token"), dim=d)
        for f, s in zip(full, small, strict=True):
            for a, b in ((f.document, s.document), (f.sentences, s.sentences), (f.tokens, s.tokens)):
                assert a is not None and b is not None
                prefix = a[..., :d] / np.linalg.norm(a[..., :d], axis=-1, keepdims=True)
                assert b.shape[-1] == d
                np.testing.assert_allclose(b, prefix, atol=1e-6)


def test_scales_are_linked(encoder: MultiScaleEncoder) -> None:
    doc = document_from_sentences(["The first sentence.", "A second, longer sentence follows it.", "Third."], id="x")
    emb = encoder.encode_documents([doc], scales=("document", "sentence", "token"))[0]
    assert emb.doc.id == "x"
    assert emb.sentences.shape == (3, 384)
    assert emb.tokens is not None and emb.tokens.shape[0] == len(emb.token_offsets)
    for s, (lo, hi) in enumerate(emb.sentence_token_ranges):
        assert hi > lo
        assert (emb.token_sentence_ids[lo:hi] == s).all()
        span = doc.sentences[s]
        for start, end in emb.token_offsets[lo:hi]:
            assert span.start <= start < end <= span.end
    # the in-context sentence vector is the normalised mean of its tokens' contextual states
    states = encoder.token_states([doc.text])[0].content.detach()
    lo, hi = emb.sentence_token_ranges[1]
    mean = states[lo:hi].mean(0)
    np.testing.assert_allclose(emb.sentences[1], (mean / mean.norm()).numpy(), atol=1e-5)


def test_in_context_differs_from_standalone_and_standalone_matches_encode_sentences(
    encoder: MultiScaleEncoder,
) -> None:
    doc = document_from_sentences(["The bank raised its rates.", "It was a cold day by the river."])
    ctx = encoder.encode_documents([doc], context="document")[0].sentences
    alone = encoder.encode_documents([doc], context="sentence")[0].sentences
    np.testing.assert_allclose(alone, encoder.encode_sentences(doc.sentence_texts()), atol=1e-6)
    assert np.abs(ctx - alone).max() > 1e-2


def test_long_document_gets_a_vector_for_every_sentence(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    sentences = load_stsb("dev", data_dir).sentences1[:150]
    doc = document_from_sentences(sentences)
    emb = encoder.encode_documents([doc], scales=("document", "sentence", "token"))[0]
    assert emb.n_windows > 3
    assert emb.sentences.shape == (150, 384)
    np.testing.assert_allclose(np.linalg.norm(emb.sentences, axis=1), 1.0, atol=1e-5)
    assert emb.tokens is not None
    n_tokens = len(encoder.tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"])
    assert emb.tokens.shape == (n_tokens, 384)
    # stitched states are exactly the states of the window each token is taken from
    ids = encoder.tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
    plan = plan_windows(len(ids), encoder.window, encoder.window_overlap)
    stitched = encoder.token_states([doc.text])[0].content
    with torch.inference_mode():
        for w in (0, 1):
            s, e = plan[w]
            direct = encoder._forward_ids([encoder._prefix_ids + ids[s:e] + encoder._suffix_ids])[0][0, 1:-1]
            lo = s if w == 0 else (s + plan[w - 1][1]) // 2
            hi = (plan[w + 1][0] + e) // 2
            torch.testing.assert_close(stitched[lo:hi], direct[lo - s : hi - s], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_100k_token_document_is_windowed_not_truncated(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")[:500_000]
    n_tokens = len(encoder.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    assert n_tokens > 100_000
    emb = encoder.encode_documents([text], scales=("document", "sentence"), batch_size=64)[0]
    assert emb.n_windows >= n_tokens // encoder.window
    assert len(emb.token_offsets) == n_tokens
    last = emb.sentence_token_ranges[-1]
    assert last[1] == n_tokens, "the last sentence must reach the last token"
    assert np.isfinite(emb.sentences).all() and np.isfinite(emb.document).all()


def test_long_standalone_sentence_is_windowed(encoder: MultiScaleEncoder) -> None:
    text = "word " * 1000
    emb = encoder.encode_sentences([text, "short one"])
    assert emb.shape == (2, 384) and np.isfinite(emb).all()


@pytest.mark.parametrize("mode", ["mean", "max", "cls", "mean-max", "attention"])
def test_pooling_modes_give_unit_vectors(mode: str) -> None:
    enc = MultiScaleEncoder.from_base(sentence_pooling=mode, document_pooling=mode)  # type: ignore[arg-type]
    out = enc.encode_documents(["One sentence here. And another one."], scales=("document", "sentence"))[0]
    assert out.sentences.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(out.sentences, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out.document), 1.0, atol=1e-5)


def test_fresh_attention_pooling_is_mean_pooling() -> None:
    x = torch.randn(3, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    torch.testing.assert_close(Pooling("attention", 16)(x, mask), Pooling("mean", 16)(x, mask))


@pytest.mark.parametrize("kind", ["residual-mlp", "linear", "identity"])
def test_fresh_heads_are_the_identity(kind: str) -> None:
    x = torch.randn(5, 32)
    torch.testing.assert_close(ProjectionHead(32, 32, kind)(x), x)  # type: ignore[arg-type]
    # mean-max input: the fresh head keeps the mean half
    torch.testing.assert_close(ProjectionHead(64, 32, kind)(torch.cat([x, -x], 1)), x)  # type: ignore[arg-type]


def test_random_linear_heads_are_seeded_and_not_the_identity() -> None:
    x = torch.randn(5, 32)
    a, b = ProjectionHead(32, 32, "random-linear", init_seed=1), ProjectionHead(32, 32, "random-linear", init_seed=1)
    torch.testing.assert_close(a(x), b(x))
    cos = torch.nn.functional.cosine_similarity(a(x), x, dim=-1)
    assert cos.abs().max() < 0.6  # a random map: the base model's geometry is lost at step 0


def test_query_prompt_is_prepended(encoder: MultiScaleEncoder) -> None:
    enc = MultiScaleEncoder.from_base(query_prompt="query: ")
    np.testing.assert_allclose(enc.encode_queries(["cats"]), encoder.encode_sentences(["query: cats"]), atol=1e-6)


@pytest.mark.parametrize("dim", [0, 385, 512, -1, 3.5, True])
def test_dim_the_model_does_not_have(encoder: MultiScaleEncoder, dim: object) -> None:
    with pytest.raises(InputError, match="is not available"):
        encoder.encode_sentences(["text"], dim=dim)  # type: ignore[arg-type]


def test_bad_inputs(encoder: MultiScaleEncoder) -> None:
    with pytest.raises(InputError, match="item 1 is empty"):
        encoder.encode_documents(["fine", ""])
    with pytest.raises(InputError, match="sentence 0 is a bytes"):
        encoder.encode_sentences([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="one string"):
        encoder.encode_sentences("not a list")
    with pytest.raises(InputError, match="unknown scale"):
        encoder.encode_documents(["x y"], scales=("paragraph",))
    with pytest.raises(InputError, match="query 0 is empty"):
        encoder.encode_queries(["   "])


def test_unknown_model_name_or_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="could not load model 'no-such-org/no-such-model'"):
        MultiScaleEncoder.from_base("no-such-org/no-such-model")
    with pytest.raises(ModelError, match="could not load model"):
        MultiScaleEncoder.from_base(tmp_path)
    with pytest.raises(InputError, match="last Matryoshka dim"):
        MultiScaleEncoder.from_base(dims=[32, 64])


def test_fresh_models_are_identical(encoder: MultiScaleEncoder) -> None:
    again = MultiScaleEncoder.from_base()
    a, b = encoder.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "a fresh MuSES must be deterministic (seeded head init)"

"""Sentences in local context (``context="local:K"``): the document pass's top layers run again per sentence."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muses.cli import app
from muses.data.stsb import load_stsb
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError
from muses.evaluation.corpus import MusesCorpusEncoder
from muses.local_context import (
    LOCAL_LAYERS,
    SentenceContext,
    encoder_layers,
    layer_inputs,
    parse_context,
    run_top_layers,
)
from muses.text import document_from_sentences
from muses.windows import plan_windows
from tests.cli_checks import one_line_error

ROOTS = "Roots anchor a plant in the soil. They absorb water and minerals. Root hairs increase the surface area."
SCALES = ("document", "sentence", "token")


def test_the_issue_example_picks_the_sentence_that_answers(encoder: MultiScaleEncoder) -> None:
    """The search page's example (issue 19): in context the first sentence wins, locally the one that answers."""
    query = encoder.encode_queries(["how do plants take up water?"])[0]
    in_context = encoder.encode_documents([ROOTS], context="document")[0].sentences @ query
    local = encoder.encode_documents([ROOTS], context="local")[0].sentences @ query
    assert int(np.argmax(in_context)) == 0
    assert int(np.argmax(local)) == 1


def test_local_moves_only_the_sentences(encoder: MultiScaleEncoder) -> None:
    ref = encoder.encode_documents([ROOTS], scales=SCALES)[0]
    for context in ("local:1", "local", "local:6"):
        got = encoder.encode_documents([ROOTS], scales=SCALES, context=context)[0]
        np.testing.assert_array_equal(got.document, ref.document)
        assert got.tokens is not None and ref.tokens is not None
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        assert got.sentences.shape == ref.sentences.shape
        assert np.abs(got.sentences - ref.sentences).max() > 1e-2
    # a sentence with no siblings reads the same sequence either way: nothing changes
    alone = ["They absorb water and minerals."]
    np.testing.assert_allclose(
        encoder.encode_documents(alone, context="local:3")[0].sentences,
        encoder.encode_documents(alone)[0].sentences,
        atol=1e-6,
    )


def test_local_sentences_sit_between_in_context_and_standalone(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    """On real prose of several windows: every sentence gets a unit vector, and the more top layers run locally,
    the closer the sentences come to their standalone vectors (``local:6`` still differs from standalone in the
    positions, which come from the document, and in the special tokens, which standalone pooling includes)."""
    doc = document_from_sentences(load_stsb("dev", data_dir).sentences1[:80])
    alone = encoder.encode_documents([doc], context="sentence")[0].sentences
    closeness = {}
    for context in ("document", "local:1", "local:3", "local:6"):
        emb = encoder.encode_documents([doc], context=context)[0]
        assert emb.n_windows > 1 and emb.sentences.shape == (80, 384)
        np.testing.assert_allclose(np.linalg.norm(emb.sentences, axis=1), 1.0, atol=1e-5)
        closeness[context] = float(np.mean(np.sum(emb.sentences * alone, axis=1)))
    assert list(closeness.values()) == sorted(closeness.values()), closeness
    assert closeness["local:1"] > closeness["document"] + 0.1  # one local layer already moves them most of the way


def test_fingerprints_name_the_context(encoder: MultiScaleEncoder) -> None:
    prints = {c: encoder.fingerprint(c) for c in ("document", "sentence", "local", "local:2", "local:3")}
    assert prints["local"] == prints["local:2"]
    assert len(set(prints.values())) == 4


def test_the_inner_states_are_the_layer_below_the_top_ones_and_padding_does_not_leak(
    encoder: MultiScaleEncoder,
) -> None:
    """``TextStates.inner`` of a text of several windows holds, token for token, the hidden states that enter the top 2
    layers of the window each token is stitched from; the top layers run over sentences of unequal lengths give the
    same states batched (padded) as one by one."""
    text = " ".join(f"Sentence number {i} talks about roots, water and the minerals of the soil." for i in range(30))
    ids = encoder.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    with torch.inference_mode():
        [states] = encoder.token_states([text], inner_layers=2)
        assert states.n_windows > 1 and states.inner is not None and states.inner_layers == 2
        start, end = plan_windows(len(ids), encoder.window, encoder.window_overlap)[0]
        first = torch.tensor([encoder._prefix_ids + ids[start:end] + encoder._suffix_ids])
        hf = encoder.transformer.auto_model
        direct = hf(input_ids=first, attention_mask=torch.ones_like(first), output_hidden_states=True).hidden_states[4]
        torch.testing.assert_close(states.inner.content[:100], direct[0, 1:101], atol=1e-5, rtol=0)
        seqs = [states.inner.content[a : a + n] for a, n in ((0, 5), (10, 17), (40, 9))]
        batched = run_top_layers(hf, 2, seqs)
        for seq, got in zip(seqs, batched, strict=True):
            torch.testing.assert_close(got, run_top_layers(hf, 2, [seq])[0], atol=1e-5, rtol=0)


def test_bad_contexts_are_refused(encoder: MultiScaleEncoder) -> None:
    with pytest.raises(InputError, match="has 6"):
        encoder.encode_documents([ROOTS], context="local:7")
    with pytest.raises(InputError, match="has 6"):  # checked even where no sentence is asked for
        encoder.encode_documents([ROOTS], scales=("document",), context="local:99")
    with pytest.raises(InputError, match="context must be"):  # before anything is encoded
        MusesCorpusEncoder(encoder, context="local:x")
    for bad in ("local:0", "paragraph", "local:", "local:-1", "LOCAL"):
        with pytest.raises(InputError, match="context must be"):
            encoder.encode_documents([ROOTS], context=bad)
    with pytest.raises(ModelError, match="BERT-style"):
        encoder_layers(SimpleNamespace(config=SimpleNamespace(model_type="mpnet")), 1)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=12), st.from_regex(r"local:-?\d{0,4}", fullmatch=True), st.integers()))
def test_parse_context_fuzzed(value: object) -> None:
    """Any value parses to a context that prints as itself (``local`` as ``local:2``), or is one InputError."""
    try:
        parsed = parse_context(value)
    except InputError:
        return
    assert parse_context(str(parsed)) == parsed
    assert parsed in (SentenceContext("document"), SentenceContext("sentence")) or parsed.layers >= 1
    if value == "local":
        assert parsed.layers == LOCAL_LAYERS


def test_encode_cli_takes_local_and_refuses_a_bad_context_first(
    tmp_path: Path, encoder: MultiScaleEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    src = tmp_path / "docs.txt"
    src.write_text(ROOTS + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["encode", str(src), "-o", str(out), "--context", "local"])
    assert result.exit_code == 0, result.output
    want = encoder.encode_documents([ROOTS], context="local")[0].sentences
    np.testing.assert_allclose(np.load(out / "sentence.npy"), want, atol=1e-6)
    monkeypatch.setattr("muses.adapters.tasks.load_for_task", lambda *a, **k: pytest.fail("loaded the model first"))
    for engine in ("local", "ray"):
        args = ["encode", str(src), "-o", str(tmp_path / "o2"), "--context", "x", "--engine", engine]
        one_line_error(runner.invoke(app, args), "context")
        assert not (tmp_path / "o2").exists()


def test_squad_local_reports_the_local_sentences_of_muses_models_only(
    encoder: MultiScaleEncoder, data_dir: Path
) -> None:
    """``muses eval --tasks squad-local`` scores SQuAD with ``context="local"``: the same questions and sentences as
    ``squad``, other rankings; a flat baseline has no such vectors and gets nothing."""
    from muses.evaluation.baselines import load_corpus_encoder
    from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
    from muses.evaluation.report import TASKS, Profile, TaskContext

    ctx = TaskContext(
        data_dir, EmbeddingCache(None), Profile("tiny", ("squad", "squad-local"), squad_docs=30, dims=(64,))
    )
    model = MusesCorpusEncoder(encoder)
    in_context, local = TASKS["squad"](model, ctx), TASKS["squad-local"](model, ctx)
    assert in_context.keys() == local.keys()
    assert local["unambiguous/n_queries"] == in_context["unambiguous/n_queries"] > 100
    assert local["unambiguous/flat/mrr@100@64"] != in_context["unambiguous/flat/mrr@100@64"]
    assert 0 < local["unambiguous/flat/mrr@100@64"] <= 1
    assert TASKS["squad-local"](load_corpus_encoder("flat:default"), ctx) == {}


def test_layer_inputs_keeps_only_the_asked_depths(encoder: MultiScaleEncoder) -> None:
    """The states kept going into layers 0, 4 and 5 are the pass's hidden states at those depths, exactly, and the
    hooks are gone after the block (a later pass keeps nothing); another thread's pass keeps nothing either."""
    model = encoder.transformer.auto_model
    batch = encoder.tokenizer(
        ["Roots anchor a plant. They absorb water.", "Cats purr."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        every = model(**batch, output_hidden_states=True).hidden_states
        with layer_inputs(model.encoder.layer, [0, 4, 5, 4]) as kept:
            model(**batch)
        assert sorted(kept) == [0, 4, 5]
        for i, states in kept.items():
            assert torch.equal(states, every[i])
        kept.clear()
        model(**batch)
        assert not kept
        with layer_inputs(model.encoder.layer, [5]) as kept:  # another thread's pass through the same layers
            other = threading.Thread(target=lambda: model(**batch))
            other.start()
            other.join()
            assert not kept
            model(**batch)
            assert torch.equal(kept[5], every[5])

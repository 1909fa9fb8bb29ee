"""The sentence branch (``sentence_branch=K``): a copy of the top ``K`` layers that only in-context sentences run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

from muses.adapters import AdapterCache, AdapterConfig, activate, attach_adapter, remove_adapter, save_adapter
from muses.adapters.tasks import SIMILARITY, add_task_adapter, load_for_task
from muses.cli import app
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError
from muses.local_context import encoder_layers
from muses.text import as_documents
from tests.cli_checks import one_line_error

ROOTS = "Roots anchor a plant in the soil. They absorb water and minerals. Root hairs increase the surface area."
LONG = " ".join(f"Sentence number {i} talks about roots, water and the minerals of the soil." for i in range(60))
SCALES = ("document", "sentence", "token")
QUERY = ["how do plants take up water?"]


@pytest.fixture(scope="module")
def branched() -> MultiScaleEncoder:
    return MultiScaleEncoder.from_base(sentence_branch=2)


def _nudged(model: MultiScaleEncoder, seed: int = 0) -> MultiScaleEncoder:
    gen = torch.Generator().manual_seed(seed)
    assert model.heads.branch is not None
    with torch.no_grad():
        for p in model.heads.branch.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def test_a_fresh_branch_is_the_base_bit_for_bit(encoder: MultiScaleEncoder, branched: MultiScaleEncoder) -> None:
    """A fresh branch copies the top layers, so every scale equals the base's, over several windows too."""
    assert branched.heads.branch is not None and len(branched.heads.branch) == 2
    ref = encoder.encode_documents([ROOTS, LONG], scales=SCALES)
    got = branched.encode_documents([ROOTS, LONG], scales=SCALES)
    assert got[1].n_windows > 1
    for a, b in zip(ref, got, strict=True):
        assert a.tokens is not None and b.tokens is not None
        for x, y in ((a.document, b.document), (a.sentences, b.sentences), (a.tokens, b.tokens)):
            np.testing.assert_array_equal(x, y)


def test_the_branch_moves_in_context_sentences_and_nothing_else(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    """Changing the branch changes sentences in context only; the change survives a save and load, and the model's
    fingerprint (what stores record) follows it."""
    model = _nudged(MultiScaleEncoder.from_base(sentence_branch=2))
    model.save(tmp_path / "m")
    loaded = MultiScaleEncoder.load(tmp_path / "m")
    ref = encoder.encode_documents([ROOTS, LONG], scales=SCALES)
    for m in (model, loaded):
        got = m.encode_documents([ROOTS, LONG], scales=SCALES)
        for a, b in zip(ref, got, strict=True):
            assert a.tokens is not None and b.tokens is not None
            assert float(abs(a.sentences - b.sentences).max()) > 1e-3
            np.testing.assert_array_equal(a.document, b.document)
            np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(m.encode_queries(QUERY), encoder.encode_queries(QUERY))
        np.testing.assert_array_equal(m.encode_sentences([ROOTS]), encoder.encode_sentences([ROOTS]))
        standalone = m.encode_documents([ROOTS], context="sentence")[0].sentences
        np.testing.assert_array_equal(standalone, encoder.encode_documents([ROOTS], context="sentence")[0].sentences)
    np.testing.assert_array_equal(
        model.encode_documents([ROOTS])[0].sentences, loaded.encode_documents([ROOTS])[0].sentences
    )
    assert loaded.fingerprint() == model.fingerprint() != encoder.fingerprint()
    assert json.loads((tmp_path / "m" / "1_MultiScaleHeads" / "config.json").read_text())["sentence_branch"] == 2


def test_plain_sentence_transformers_keeps_the_branch(tmp_path: Path) -> None:
    """Loaded by sentence-transformers alone (no transformer to copy from), the heads keep the branch's weights as
    read, and write them back when saved, so the model survives a round trip outside MuSES."""
    model = _nudged(MultiScaleEncoder.from_base(sentence_branch=1))
    model.save(tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), trust_remote_code=True, device="cpu")
    assert st[1].branch is None
    st.save(str(tmp_path / "again"))
    for name in ("model.safetensors",):
        a = load_file(tmp_path / "m" / "1_MultiScaleHeads" / name)
        b = load_file(tmp_path / "again" / "1_MultiScaleHeads" / name)
        assert a.keys() == b.keys() and any(k.startswith("branch.") for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a)
    shutil.copyfile(tmp_path / "m" / "muses.json", tmp_path / "again" / "muses.json")  # MuSES's own settings
    again = MultiScaleEncoder.load(tmp_path / "again")
    np.testing.assert_array_equal(
        again.encode_documents([ROOTS])[0].sentences, model.encode_documents([ROOTS])[0].sentences
    )


def test_fresh_heads_with_a_branch_on_a_saved_model_start_as_it(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    """``with_fresh_heads(sentence_branch=K)`` (what ``model.fresh_heads`` does) copies the saved transformer's top
    layers, so identity heads give the saved model's vectors; states without the branch cannot pool its sentences."""
    encoder.save(tmp_path / "base")
    model = MultiScaleEncoder.load(tmp_path / "base").with_fresh_heads(head_kind="identity", sentence_branch=2)
    assert model.heads.branch is not None
    ref = encoder.encode_documents([ROOTS, LONG])
    for a, b in zip(ref, model.encode_documents([ROOTS, LONG]), strict=True):
        np.testing.assert_allclose(b.sentences, a.sentences, atol=1e-6)
    states = model.token_states([ROOTS], branch=False)
    doc = as_documents([ROOTS], model.splitter)[0]
    with pytest.raises(InputError, match=r"token_states\(branch=True\)"):
        model.document_vectors(doc, states[0], ("sentence",))
    assert model.token_states([ROOTS])[0].branch is not None


def test_fresh_heads_can_keep_a_trained_branch(tmp_path: Path) -> None:
    """``keep_branch`` (``model.keep_branch``, a later stage over a trained branch): fresh identity heads with a fresh
    context head keep the saved branch's in-context sentences; without it the branch is a fresh copy again, and a
    ``K`` that is not the saved one is refused."""
    _nudged(MultiScaleEncoder.from_base(sentence_branch=2, head_kind="identity")).save(tmp_path / "trained")
    trained = MultiScaleEncoder.load(tmp_path / "trained")
    ref = trained.encode_documents([ROOTS])[0].sentences
    fresh = dict(head_kind="identity", context_head="residual-mlp", context_pooling="attention", sentence_branch=2)
    kept = MultiScaleEncoder.load(tmp_path / "trained").with_fresh_heads(**fresh, keep_branch=True)  # type: ignore[arg-type]
    assert kept.heads.context_head == "residual-mlp"
    np.testing.assert_allclose(kept.encode_documents([ROOTS])[0].sentences, ref, atol=1e-6)
    again = MultiScaleEncoder.load(tmp_path / "trained").with_fresh_heads(**fresh)  # type: ignore[arg-type]
    assert np.abs(again.encode_documents([ROOTS])[0].sentences - ref).max() > 1e-3
    with pytest.raises(ModelError, match="set it to 2 or drop keep_branch"):
        MultiScaleEncoder.load(tmp_path / "trained").with_fresh_heads(sentence_branch=1, keep_branch=True)
    with pytest.raises(ModelError, match="no sentence branch to keep"):
        MultiScaleEncoder.from_base().with_fresh_heads(sentence_branch=2, keep_branch=True)
    kept.save(tmp_path / "kept")  # the kept branch is saved with the new heads
    np.testing.assert_allclose(
        MultiScaleEncoder.load(tmp_path / "kept").encode_documents([ROOTS])[0].sentences, ref, atol=1e-6
    )


def test_the_cli_refuses_to_export_a_branch_in_one_line(tmp_path: Path) -> None:
    MultiScaleEncoder.from_base(sentence_branch=1).save(tmp_path / "m")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "m"), str(tmp_path / "out")])
    one_line_error(result, "sentence branch", "backend 'torch'", "--drop-branch")
    assert not (tmp_path / "out").exists()


def test_the_cli_exports_a_branched_model_without_its_branch(tmp_path: Path) -> None:
    """``muses export --drop-branch``: the exported model is the branched model without its branch, so its documents
    are the branched model's and its sentences in context are those of the same model without a branch."""
    pytest.importorskip("onnxruntime", reason="the onnx backend needs muses[onnx]")
    branched = _nudged(MultiScaleEncoder.from_base(sentence_branch=2))
    branched.save(tmp_path / "m")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "m"), str(tmp_path / "out"), "--drop-branch"])
    assert result.exit_code == 0, result.output
    [exported] = MultiScaleEncoder.load(tmp_path / "out").encode_documents([ROOTS])
    [with_branch] = branched.encode_documents([ROOTS])
    [without] = MultiScaleEncoder.load(tmp_path / "m").drop_sentence_branch().encode_documents([ROOTS])
    np.testing.assert_allclose(exported.document, with_branch.document, atol=1e-4)
    np.testing.assert_allclose(exported.sentences, without.sentences, atol=1e-4)
    assert np.abs(without.sentences - with_branch.sentences).max() > 1e-3  # the branch did move them
    result = CliRunner().invoke(app, ["export", "default", str(tmp_path / "plain"), "--drop-branch"])
    one_line_error(result, "no sentence branch to drop", "leave out --drop-branch")


def test_broken_branch_files_are_refused(tmp_path: Path) -> None:
    model = MultiScaleEncoder.from_base(sentence_branch=1)
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "1_MultiScaleHeads" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("branch.")}, weights)
    with pytest.raises(ModelError, match="sentence branch"):
        MultiScaleEncoder.load(tmp_path / "m")
    save_file({**state, "branch.0.extra": torch.zeros(2)}, weights)
    with pytest.raises(ModelError, match="does not fit"):
        MultiScaleEncoder.load(tmp_path / "m")


def test_what_a_branch_cannot_do_is_refused_in_one_line(tmp_path: Path, branched: MultiScaleEncoder) -> None:
    with pytest.raises(InputError, match="context 'document'"):
        branched.encode_documents([ROOTS], context="local")
    with pytest.raises(InputError, match="backend 'torch'"):
        branched.use_backend("onnx")
    with pytest.raises(InputError, match="backend 'torch'"):
        branched.export(tmp_path / "exported", "onnx")
    assert not (tmp_path / "exported").exists()
    with pytest.raises(InputError, match="7 top layers; this model has 6"):
        MultiScaleEncoder.from_base(sentence_branch=7)
    with pytest.raises(ModelError, match="a sentence branch runs the top layers of BERT-style encoders"):
        encoder_layers(SimpleNamespace(config=SimpleNamespace(model_type="t5")), 2, "a sentence branch")
    with pytest.raises(ModelError, match="number of layers"):
        MultiScaleEncoder.from_base(sentence_branch=-1)


def test_an_adapter_sets_the_branch_aside(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    """An adapter changes the transformer's layers but cannot reach the branch's copies of them, so while one is
    active (or merged, as a task adapter is) sentences in context come from the adapted transformer, as in a model
    without a branch; with no adapter active they come from the branch again."""
    model = _nudged(MultiScaleEncoder.from_base(sentence_branch=2))
    trained = model.encode_documents([ROOTS])[0].sentences
    base = encoder.encode_documents([ROOTS])[0].sentences
    assert np.abs(trained - base).max() > 1e-3
    attach_adapter(model, "domain", AdapterConfig())  # fresh: B = 0, the transformer's outputs are unchanged
    assert model.active_branch is None
    np.testing.assert_allclose(model.encode_documents([ROOTS])[0].sentences, base, atol=1e-5)
    activate(model, None)
    np.testing.assert_array_equal(model.encode_documents([ROOTS])[0].sentences, trained)
    activate(model, "domain")
    assert model.active_branch is None
    remove_adapter(model, "domain")  # the active one: the base model, and its branch, are back
    np.testing.assert_array_equal(model.encode_documents([ROOTS])[0].sentences, trained)
    save_adapter(_with_adapter(model, "domain"), "domain", tmp_path / "adapters" / "domain")
    remove_adapter(model, "domain")
    cache = AdapterCache(model, tmp_path / "adapters", capacity=1)  # switches adapters through PEFT itself
    for key, want in (("domain", base), (None, trained), ("domain", base), ("base", trained)):
        with cache.use(key):
            np.testing.assert_allclose(model.encode_documents([ROOTS])[0].sentences, want, atol=1e-5)
    _nudged(MultiScaleEncoder.from_base(sentence_branch=2)).save(tmp_path / "m")
    enc = MultiScaleEncoder.from_base(head_kind="identity")
    add_task_adapter(tmp_path / "m", _zero_adapter(enc, tmp_path / "adapter"), SIMILARITY)
    merged = load_for_task(tmp_path / "m", SIMILARITY)
    assert merged.active_branch is None and merged.heads.sentence_branch == 0
    np.testing.assert_allclose(merged.encode_documents([ROOTS])[0].sentences, base, atol=1e-5)
    merged.save(tmp_path / "merged")  # what the merged model computes: no branch
    again = MultiScaleEncoder.load(tmp_path / "merged")
    assert again.heads.sentence_branch == 0 and not any(k.startswith("branch.") for k in again.heads.state_dict())
    np.testing.assert_array_equal(
        again.encode_documents([ROOTS])[0].sentences, merged.encode_documents([ROOTS])[0].sentences
    )
    np.testing.assert_array_equal(
        MultiScaleEncoder.load(tmp_path / "m").encode_documents([ROOTS])[0].sentences, trained
    )


def _with_adapter(encoder: MultiScaleEncoder, key: str) -> MultiScaleEncoder:
    attach_adapter(encoder, key, AdapterConfig())
    return encoder


def _zero_adapter(encoder: MultiScaleEncoder, folder: Path) -> Path:
    """A saved adapter whose update is zero (``B = 0``), trained on ``encoder``'s transformer."""
    attach_adapter(encoder, SIMILARITY, AdapterConfig())
    save_adapter(encoder, SIMILARITY, folder)
    remove_adapter(encoder, SIMILARITY)
    return folder

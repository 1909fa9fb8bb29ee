"""The transformer pass on ONNX Runtime and OpenVINO: fp32 gives the PyTorch token states, int8 keeps STS-B, an
exported folder loads on its backend, and a store refuses vectors from other (int8) weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import muses

pytest.importorskip("onnxruntime", reason="muses[onnx] is not installed (make test installs it)")
pytest.importorskip("openvino", reason="muses[openvino] is not installed (make test installs it)")

from muses.backends import BACKENDS, check_backend
from muses.backends.export import export_backend
from muses.backends.onnx import export_onnx
from muses.data.stsb import load_stsb
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError
from muses.evaluation.sts import evaluate_sts
from muses.samples import SAMPLE_DOCUMENTS
from muses.store import MemoryStore

EXPORTED = [b for b in BACKENDS if b != "torch"]
# texts of 1, 2 and 3 windows of the bundled model (254 content tokens per window, 64 overlap)
TEXTS = [
    "Roots absorb water and minerals.",
    " ".join(f"Sentence number {i} talks about leaves." for i in range(45)),
    " ".join(f"Line {i}: the volcano erupted again." for i in range(70)),
]
STSB_TEST_BASE = {384: 0.8203, 64: 0.7921}  # the base model on PyTorch (tests/evaluation/test_sts.py checks it)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> Path:
    """A folder holding every backend's file for the bundled model (one ONNX export for all four)."""
    folder = tmp_path_factory.mktemp("backends")
    export_backend(encoder, folder, EXPORTED)
    return folder


@pytest.fixture(scope="module")
def on_backend(exported: Path) -> dict[str, MultiScaleEncoder]:
    return {b: MultiScaleEncoder.from_base().use_backend(b, folder=exported) for b in EXPORTED}  # type: ignore[arg-type]


def _states(enc: MultiScaleEncoder) -> list[torch.Tensor]:
    with torch.inference_mode():
        states = enc.token_states(TEXTS)
    assert [s.n_windows for s in states] == [1, 2, 3]
    return [s.full() for s in states]


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_backends_give_the_pytorch_token_states_and_fingerprint(
    encoder: MultiScaleEncoder, on_backend: dict[str, MultiScaleEncoder], backend: str
) -> None:
    enc = on_backend[backend]
    assert enc.backend == backend
    for want, got in zip(_states(encoder), _states(enc), strict=True):
        assert want.shape == got.shape
        assert float((want - got).abs().max()) <= 1e-4
    assert enc.fingerprint() == encoder.fingerprint()  # fp32: the same model, the same stores


def test_local_context_needs_the_pytorch_layers(on_backend: dict[str, MultiScaleEncoder]) -> None:
    """``context="local"`` reruns the top layers per sentence, which an exported graph does not expose."""
    enc = on_backend["onnx"]
    with pytest.raises(InputError, match="backend 'torch'"):
        enc.encode_documents(TEXTS[:1], context="local")
    assert enc.encode_documents(TEXTS[:1], context="document")[0].sentences.shape == (1, 384)


@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_int8_backends_run_close_to_pytorch_under_another_fingerprint(
    encoder: MultiScaleEncoder, on_backend: dict[str, MultiScaleEncoder], backend: str
) -> None:
    enc = on_backend[backend]
    text = " ".join(d["text"] for d in SAMPLE_DOCUMENTS)  # real prose, full windows
    [want] = encoder.encode_documents([text], scales=("document", "sentence", "token"))
    [got] = enc.encode_documents([text], scales=("document", "sentence", "token"))
    assert got.tokens.shape == want.tokens.shape and got.sentences.shape == want.sentences.shape
    assert float(got.document @ want.document) > 0.97
    assert float(np.mean(np.sum(got.sentences * want.sentences, axis=1))) > 0.95
    assert not np.allclose(got.tokens, want.tokens, atol=1e-4)  # int8 weights really run
    assert enc.fingerprint() != encoder.fingerprint()


def test_an_exported_folder_loads_on_its_backend(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    out = encoder.export(tmp_path / "minilm-onnx", "onnx")
    meta = json.loads((out / "muses.json").read_text())
    assert meta["backend"] == "onnx" and meta["exported_from"] == encoder.fingerprint()
    assert (out / "onnx" / "model.onnx").is_file()
    loaded = muses.load(str(out))
    assert loaded.backend == "onnx"
    [a] = loaded.encode_documents([TEXTS[1]], scales=("document", "sentence"))
    [b] = encoder.encode_documents([TEXTS[1]], scales=("document", "sentence"))
    np.testing.assert_allclose(a.sentences, b.sentences, atol=1e-5)
    assert muses.load(str(out), backend="torch").backend == "torch"
    with pytest.raises(InputError, match="already exists"):
        encoder.export(out, "onnx")
    with pytest.raises(InputError, match="needs no export"):
        encoder.export(tmp_path / "t", "torch")


def test_a_model_saved_on_an_int8_backend_loads_on_it(tmp_path: Path, on_backend: dict[str, MultiScaleEncoder]) -> None:
    enc = on_backend["onnx-int8"]
    enc.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "onnx" / "model_qint8.onnx").is_file()
    loaded = muses.load(str(tmp_path / "saved"))
    assert loaded.backend == "onnx-int8" and loaded.fingerprint() == enc.fingerprint()


def test_a_store_takes_fp32_backends_and_refuses_int8_weights(
    tmp_path: Path, encoder: MultiScaleEncoder, on_backend: dict[str, MultiScaleEncoder]
) -> None:
    store = MemoryStore.create(tmp_path / "store", encoder, model="default")
    store.add([muses.make_document(t, f"d{i}") for i, t in enumerate(TEXTS)])
    want = [h.id for h in store.search("where do roots take water from?", scale="sentence", k=3)]
    store.close()
    reopened = MemoryStore.open(tmp_path / "store", encoder=on_backend["onnx"])
    assert [h.id for h in reopened.search("where do roots take water from?", scale="sentence", k=3)] == want
    reopened.close()
    with pytest.raises(ModelError, match=r"built with the torch backend.*--backend torch"):
        MemoryStore.open(tmp_path / "store", encoder=on_backend["onnx-int8"])


def test_exporting_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """The export switches the transformer to eval mode and back, module by module: the base model's own mix
    (wrapper in train mode, Hugging Face model in eval mode) is kept, so the encoder's vectors do not change."""
    enc = MultiScaleEncoder.from_base()
    modes = [m.training for m in enc.transformer.modules()]
    before = _states(enc)
    export_onnx(enc.transformer, list(enc.tokenizer.model_input_names), tmp_path / "model.onnx")
    assert [m.training for m in enc.transformer.modules()] == modes
    for want, got in zip(before, _states(enc), strict=True):
        assert torch.equal(want, got)


def test_an_unknown_backend_is_one_line() -> None:
    with pytest.raises(InputError, match="backend 'tflite' is unknown; use one of torch, onnx"):
        MultiScaleEncoder.from_base(backend="tflite")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_int8_keeps_stsb_within_half_a_point(
    on_backend: dict[str, MultiScaleEncoder], data_dir: Path, backend: str
) -> None:
    metrics = evaluate_sts(on_backend[backend], load_stsb("test", data_dir), [384, 64])
    for dim, base in STSB_TEST_BASE.items():
        assert metrics[f"spearman@{dim}"] >= base - 0.005, (dim, metrics)


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None, database=None)
def test_any_backend_name_is_a_backend_or_one_line(name: str) -> None:
    """The ``--backend`` parser (every command and ``from_base`` go through it), fuzzed."""
    try:
        assert check_backend(name) in BACKENDS and name in BACKENDS
    except InputError as e:
        assert name not in BACKENDS
        assert "\n" not in str(e).replace(name, "") and "use one of torch, onnx" in str(e)

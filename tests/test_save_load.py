"""Saving and loading: plain folders of safetensors + JSON, bit-identical round trips, sentence-transformers compat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from muses.encoder import MultiScaleEncoder
from muses.errors import ModelError

DOCS = ["Saving must not change a single bit. Loading neither.", "A second document, one sentence."]


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiScaleEncoder, Path]:
    """A MuSES model whose heads and attention pooling are moved off their identity start, then saved."""
    enc = MultiScaleEncoder.from_base(sentence_pooling="attention", dims=[16, 64, 384])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.heads.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("model") / "muses-model"
    enc.save(path)
    return enc, path


def test_round_trip_is_bit_identical(trained_like: tuple[MultiScaleEncoder, Path]) -> None:
    enc, path = trained_like
    loaded = MultiScaleEncoder.load(path)
    a, b = enc.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.dims == [16, 64, 384]
    assert loaded.heads.sentence_pooling == "attention"
    for x, y in zip(
        enc.encode_documents(DOCS, scales=("document", "sentence", "token")),
        loaded.encode_documents(DOCS, scales=("document", "sentence", "token")),
        strict=True,
    ):
        assert np.array_equal(x.document, y.document)
        assert np.array_equal(x.sentences, y.sentences)
        assert x.tokens is not None and y.tokens is not None and np.array_equal(x.tokens, y.tokens)


def test_folder_is_plain_json_and_safetensors(trained_like: tuple[MultiScaleEncoder, Path]) -> None:
    _, path = trained_like
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert "muses.json" in files and "modules.json" in files
    assert "1_MultiScaleHeads/model.safetensors" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    modules = json.loads((path / "modules.json").read_text())
    assert modules[1]["type"] == "muses.st_module.MultiScaleHeads"


def test_sentence_transformers_loads_the_sentence_scale(trained_like: tuple[MultiScaleEncoder, Path]) -> None:
    enc, path = trained_like
    st = SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode(DOCS), enc.encode_sentences(DOCS), atol=1e-6)
    small = st.encode(DOCS, truncate_dim=64, normalize_embeddings=True)
    np.testing.assert_allclose(small, enc.encode_sentences(DOCS, dim=64), atol=1e-6)


def test_from_base_on_a_muses_folder_loads_it(trained_like: tuple[MultiScaleEncoder, Path]) -> None:
    enc, path = trained_like
    again = MultiScaleEncoder.from_base(path)
    assert np.array_equal(again.encode_sentences(DOCS), enc.encode_sentences(DOCS))


def test_refuses_pickles_and_foreign_folders(trained_like: tuple[MultiScaleEncoder, Path], tmp_path: Path) -> None:
    _, path = trained_like
    with pytest.raises(ModelError, match="not a saved MuSES model"):
        MultiScaleEncoder.load(tmp_path)
    bad = tmp_path / "pickled"
    bad.mkdir()
    for f in path.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match="pickled weights"):
        MultiScaleEncoder.load(bad)
    meta = json.loads((path / "muses.json").read_text())
    (bad / "muses.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelError, match="newer MuSES"):
        MultiScaleEncoder.load(bad)

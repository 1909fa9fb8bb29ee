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


def _tiny_base_folder(folder: Path, transformer_path: str = "") -> Path:
    """A tiny sentence-transformers folder (BERT, hidden 16, one layer; the bundled model's tokenizer) whose
    transformer weights are only a pickle, ``pytorch_model.bin``, as older sentence-transformers folders are."""
    import shutil

    from transformers import BertConfig, BertModel

    from muses.encoder import default_base_path

    src = default_base_path()
    weights = folder / transformer_path
    weights.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, weights / name)
    (weights / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config.save_pretrained(weights)
    torch.manual_seed(0)
    torch.save(BertModel(config).state_dict(), weights / "pytorch_model.bin")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True})
    )
    modules = [
        {"idx": 0, "name": "0", "path": transformer_path, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.mark.parametrize("transformer_path", ["", "0_Transformer"])
def test_base_folder_with_pickled_weights_is_refused_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transformer_path: str
) -> None:
    folder = _tiny_base_folder(tmp_path / "pickled-base", transformer_path)

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called: MuSES must never open a pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelError, match=r"pickled weights \(pytorch_model\.bin\).*safe_serialization=True"):
        MultiScaleEncoder.from_base(folder)
    from muses.encoder import load_sentence_transformer

    with pytest.raises(ModelError, match="never unpickles"):
        load_sentence_transformer(str(folder), "cpu")


def test_base_folder_converted_to_safetensors_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _tiny_base_folder(tmp_path / "base")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)  # the test's own trusted file
    save_file(state, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").unlink()
    enc = MultiScaleEncoder.from_base(folder, dims=[8, 16])
    assert enc.encode_sentences(["converted once, loaded safely"]).shape == (1, 16)


def test_muses_folder_without_model_safetensors(trained_like: tuple[MultiScaleEncoder, Path], tmp_path: Path) -> None:
    import shutil

    _, path = trained_like
    broken = Path(shutil.copytree(path, tmp_path / "broken"))
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model\.safetensors.*save the model again"):
        MultiScaleEncoder.load(broken)
    (broken / "modules.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"modules\.json is not readable JSON"):
        MultiScaleEncoder.load(broken)

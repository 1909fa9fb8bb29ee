"""``muses export`` and ``--backend`` on the command line: an exported folder encodes, builds and serves a store on
its backend; fp32 backends and PyTorch open each other's stores; bad choices are one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from muses.cli import app
from muses.encoder import MultiScaleEncoder
from tests.cli_checks import one_line_error

pytest.importorskip("onnxruntime", reason="muses[onnx] is not installed (make test installs it)")
runner = CliRunner()
DOCS = (
    '{"id": "roots", "text": "Roots anchor a plant in the soil. They absorb water and minerals."}\n'
    '{"id": "tax", "text": "Income tax is due in April. Late payers owe interest."}\n'
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "minilm-onnx"
    result = runner.invoke(app, ["export", "default", str(out), "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    return out


def test_encode_with_an_exported_model_matches_pytorch(
    tmp_path: Path, exported: Path, encoder: MultiScaleEncoder
) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(DOCS, encoding="utf-8")
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "out"), "--model", str(exported)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["backend"] == "onnx"
    want = encoder.encode_documents([json.loads(line)["text"] for line in DOCS.splitlines()])
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "sentence.npy"), np.vstack([e.sentences for e in want]), atol=1e-5
    )


def test_a_store_built_on_onnx_searches_on_its_backend_and_on_torch(tmp_path: Path, exported: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(DOCS, encoding="utf-8")
    store = tmp_path / "store"
    added = runner.invoke(app, ["index", "add", str(src), "--store", str(store), "--model", str(exported)])
    assert added.exit_code == 0, added.output
    hits = {}
    for backend in (None, "torch"):
        args = ["index", "search", "how do plants take up water?", "--store", str(store), "--scale", "sentence"]
        result = runner.invoke(app, [*args, "--json", *(["--backend", backend] if backend else [])])
        assert result.exit_code == 0, result.output
        hits[backend] = [(h["id"], round(h["score"], 4)) for h in json.loads(result.stdout)]
    assert hits[None] == hits["torch"] and hits[None][0][0] == "roots"
    one_line_error(runner.invoke(app, ["index", "search", "q", "--store", str(store), "--backend", "tpu"]), "tpu")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--backend", "tflite"], ["'tflite' is not exportable", "onnx or openvino"]),
        (["--quantize", "int4"], ["--quantize 'int4' is unknown"]),
        (["--calibration", "x.txt"], ["calibrates an int8 export only"]),
    ],
)
def test_export_refuses_bad_choices_in_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    one_line_error(runner.invoke(app, ["export", "default", str(tmp_path / "m"), *args]), *words)


def test_export_refuses_an_existing_folder_and_encode_an_unknown_backend(
    tmp_path: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # refused before the model is loaded
        m.setattr(MultiScaleEncoder, "from_base", lambda *a, **k: pytest.fail("loaded the model first"))
        one_line_error(runner.invoke(app, ["export", "default", str(exported)]), "already exists")
    src = tmp_path / "docs.jsonl"
    src.write_text(DOCS, encoding="utf-8")
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "o"), "--backend", "cuda"])
    one_line_error(result, "backend 'cuda' is unknown", "onnx-int8")

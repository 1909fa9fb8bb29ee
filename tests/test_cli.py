"""The `muses` command line: encode outputs, and user errors as one clear line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from muses.cli import app
from muses.encoder import MultiScaleEncoder

runner = CliRunner()


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_encode_jsonl_writes_linked_arrays_and_index(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    src = _write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "a", "text": "Cats purr when content. They also knead."},
            {"id": "b", "sentences": ["Pre-split one.", "Pre-split two.", "Three."], "metadata": {"k": 1}},
        ],
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["encode", str(src), "-o", str(out), "--scales", "document,sentence,token", "--dim", "64"]
    )
    assert result.exit_code == 0, result.output
    doc, sent, tok = (np.load(out / f"{s}.npy") for s in ("document", "sentence", "token"))
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["id"] for r in index] == ["a", "b"]
    assert doc.shape == (2, 64) and sent.shape == (5, 64)
    assert index[1]["metadata"] == {"k": 1}
    assert index[1]["sentence_rows"] == [2, 5]
    assert tok.shape[0] == index[1]["token_rows"][1]
    ref = encoder.encode_documents(["Cats purr when content. They also knead."], dim=64)[0]
    np.testing.assert_allclose(sent[0:2], ref.sentences, atol=1e-6)
    text = index[0]["text"]
    assert [text[s:e] for s, e in index[0]["sentences"]] == ["Cats purr when content.", "They also knead."]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"document": 2, "sentence": 5, "token": tok.shape[0]}


def test_encode_text_file_to_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    src = tmp_path / "docs.txt"
    src.write_text("First document line.\n\nSecond document. Two sentences.\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["encode", str(src), "-o", str(out), "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    arrays = load_file(str(out / "embeddings.safetensors"))
    assert arrays["document"].shape == (2, 384) and arrays["sentence"].shape == (3, 384)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"text": "ok"}\n{not json}\n', "docs.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n\n{"body": "x"}\n', "docs.jsonl:3: needs a string field 'text'"),
        ('{"text": "   "}\n', "docs.jsonl:1: document"),
        ("[1, 2]\n", "docs.jsonl:1: expected a JSON object"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path: Path, lines: str, message: str) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(lines, encoding="utf-8")
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists(), "a failed run must not leave a partial output"


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text."}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["encode", str(src), "-o", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "precious"


def test_user_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSES_DATA_DIR", raising=False)
    result = runner.invoke(app, ["eval", "sts"])
    assert result.exit_code == 2 and "--data-dir" in result.output and "MUSES_DATA_DIR" in result.output
    result = runner.invoke(app, ["eval", "sts", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "stsb-en-test.csv").write_text("a,b,1.0\nonly two,fields\n")
    result = runner.invoke(app, ["eval", "sts", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "stsb-en-test.csv:2: expected 3 fields" in " ".join(result.output.split())
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "o"), "--model", "no/such-model"])
    assert result.exit_code == 2 and "could not load model 'no/such-model'" in result.output
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "o"), "--dim", "999"])
    assert result.exit_code == 2 and "dim 999 is not available" in result.output
    assert "Traceback" not in result.output

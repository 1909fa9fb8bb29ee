"""The `muses` command line: encode outputs, and user errors as one clear line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from muses.cli import app
from muses.encoder import MultiScaleEncoder
from tests.cli_checks import one_line_error

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


def _no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any encoding fail the test: the error must come before the slow part."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded before the input, output and options were checked")

    monkeypatch.setattr(MultiScaleEncoder, "encode_documents", fail)


def test_overwrite_never_deletes_a_folder_muses_did_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_jsonl(tmp_path / "docs.jsonl", [{"text": "Precious input."}])
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    _no_encoding(monkeypatch)
    result = runner.invoke(app, ["encode", "docs.jsonl", "-o", ".", "--overwrite"])
    one_line_error(result, "was not written by muses encode (it has no meta.json), so --overwrite will not replace it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "notes.txt"]


def test_overwrite_swaps_in_a_new_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for text in ("First run.", "Second run."):
        src = _write_jsonl(tmp_path / "d.jsonl", [{"id": text, "text": text}])
        result = runner.invoke(app, ["encode", str(src), "-o", str(out), "--overwrite", "--dim", "32"])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "index.jsonl").read_text())["id"] == "Second run."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"], "no staging or old folder is left"


def test_overwrite_onto_a_file_and_output_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text."}])
    _no_encoding(monkeypatch)
    result = runner.invoke(app, ["encode", str(src), "-o", str(src), "--overwrite"])
    one_line_error(result, "is a file, not a folder; --overwrite replaces only a folder written by muses encode")
    result = runner.invoke(app, ["encode", str(src), "-o", str(src / "out")])
    one_line_error(result, "d.jsonl is a file, not a folder; choose an output path inside a folder")
    assert json.loads(src.read_text()) == {"text": "Some text."}


def test_unwritable_output_is_refused_before_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text."}])
    real_mkdir = Path.mkdir

    def deny(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent.name == "ro":
            raise PermissionError(13, "Permission denied")
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", deny)
    _no_encoding(monkeypatch)
    (tmp_path / "ro").mkdir()
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "ro" / "out")])
    one_line_error(result, "(Permission denied); choose a writable output folder")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "caf\xe9"}\n', "d.jsonl:1: not UTF-8"),
        (b'{"text": "x", "metadata": "bio"}\n', "d.jsonl:1: metadata must be a JSON object"),
        (b'{"text": "x", "metadata": [1]}\n', "d.jsonl:1: metadata must be a JSON object"),
        (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "d.jsonl:1: JSON nested too deeply"),
        (b'{"text": "lone \\ud800 surrogate"}\n', "lone surrogate"),
        (b'{"id": "", "text": "x"}\n', "d.jsonl:1: id is empty"),
        (b'{"id": "big", "text": "' + b"long " * 20 + b'"}\n', "document 'big' has 100 characters, over the limit"),
    ],
)
def test_bad_input_is_one_line_before_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(content)
    _no_encoding(monkeypatch)
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "out"), "--max-chars", "99"])
    one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"], "nothing is left behind"


def test_input_directory_says_it_is_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["encode", str(tmp_path), "-o", str(tmp_path / "out")])
    one_line_error(result, "is a directory; pass one .jsonl or text file inside it")


def test_dim_must_be_one_of_the_models_dims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text."}])
    _no_encoding(monkeypatch)
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "out"), "--dim", "100"])
    one_line_error(result, "dim 100 is not available: this model's Matryoshka dims are [32, 64, 128, 256, 384]")
    assert not (tmp_path / "out").exists()


def test_model_without_safetensors_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text."}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "pytorch_model.bin").write_bytes(b"never opened")
    result = runner.invoke(app, ["encode", str(src), "-o", str(tmp_path / "out"), "--model", str(model)])
    one_line_error(result, "holds pickled weights (pytorch_model.bin), and MuSES never unpickles")

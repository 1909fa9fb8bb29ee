"""Reading documents (every bad line is a one-line DataError, fuzzed) and writing output folders atomically."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muses.errors import DataError, InputError, MusesError
from muses.io import read_documents, write_embeddings
from muses.output_folder import OutputFolder, recover_output

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _jsonl(tmp_path: Path, content: str | bytes, name: str = "docs.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"docs\.jsonl:2: not UTF-8 .*save the file as UTF-8"),
        ('{"text": "x", "metadata": "topic=bio"}\n', r"docs\.jsonl:1: metadata must be a JSON object"),
        ('{"text": "x", "metadata": ["bio"]}\n', r"docs\.jsonl:1: metadata must be a JSON object"),
        ('{"text": "x", "extra": ' + "[" * 5000 + "]" * 5000 + "}\n", r"docs\.jsonl:1: JSON nested too deeply"),
        ('{"text": "x", "metadata": {"a": ' + "[" * 40 + "]" * 40 + "}}\n", "nested deeper than 32"),
        ('{"text": "bad \\ud800 text"}\n', r"docs\.jsonl:1: .*lone surrogate"),
        ('{"sentences": ["ok.", "bad \\udfff."]}\n', r"docs\.jsonl:1: .*lone surrogate"),
        ('{"id": "", "text": "x"}\n', r"docs\.jsonl:1: id is empty"),
        ('{"id": null, "text": "x"}\n', r"docs\.jsonl:1: id None is a NoneType"),
        ('{"id": "a\\u0000b", "text": "x"}\n', "control character"),
        ('{"text": "x", "n": ' + "9" * 5000 + "}\n", r"docs\.jsonl:1: not usable JSON"),
    ],
)
def test_bad_lines_are_data_errors_naming_the_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        list(read_documents(_jsonl(tmp_path, content)))


def test_ids_numbers_become_strings_and_a_bom_is_skipped(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '\ufeff{"id": 7, "text": "Seven."}\n{"text": "No id."}\n')
    assert [d.id for d in read_documents(path)] == ["7", "docs:2"]


def test_a_directory_input_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is a directory; pass one \.jsonl or text file inside it"):
        list(read_documents(tmp_path))


def test_documents_over_max_chars_are_refused_while_reading(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"id": "small", "text": "Short."}\n{"id": "big", "text": "' + "word " * 30 + '"}\n')
    docs = read_documents(path, max_chars=100)
    assert next(docs).id == "small"
    with pytest.raises(DataError, match=r"docs\.jsonl:2: document 'big' has 150 characters, over the limit of 100;"):
        next(docs)
    with pytest.raises(DataError, match="--max-chars"):
        list(read_documents(_jsonl(tmp_path, '{"sentences": ["' + "a" * 60 + '", "b"]}\n'), max_chars=50))
    text = tmp_path / "one.txt"
    text.write_text("x" * 101, encoding="utf-8")
    with pytest.raises(DataError, match="over the limit of 100"):
        list(read_documents(text, one_document=True, max_chars=100))
    with pytest.raises(DataError, match=r"the line is over 1,048,656 bytes"):
        list(read_documents(_jsonl(tmp_path, '{"text": "' + "y" * (2**20 + 100) + '"}\n'), max_chars=5))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=80) | _JSON,
        "sentences": st.lists(st.text(max_size=20), max_size=4) | _JSON,
        "id": st.text(max_size=10) | _JSON,
        "metadata": st.dictionaries(st.text(max_size=8), _JSON, max_size=3) | _JSON,
    },
)


def _read_all(path: Path, max_chars: int = 1_000_000) -> None:
    try:
        for doc in read_documents(path, max_chars=max_chars):
            assert doc.sentences and isinstance(doc.id, str)
            json.dumps(doc.metadata, allow_nan=False).encode("utf-8")
    except MusesError as e:
        assert isinstance(e, (DataError, InputError)) and "\n" not in str(e)


@FUZZ
@given(content=st.binary(max_size=300))
def test_fuzz_any_bytes_read_or_refused(tmp_path: Path, content: bytes) -> None:
    _read_all(_jsonl(tmp_path, content))


@FUZZ
@given(lines=st.lists(_RECORDS | _JSON, min_size=1, max_size=4), max_chars=st.sampled_from([10, 1_000_000]))
def test_fuzz_any_json_lines_read_or_refused(tmp_path: Path, lines: list[Any], max_chars: int) -> None:
    _read_all(_jsonl(tmp_path, "".join(json.dumps(x) + "\n" for x in lines)), max_chars)


# ---------------------------------------------------------------------------------------------------- writing
def _write(out: Path, overwrite: bool = False, dim: int = 4) -> Path:
    """A (document-less) output folder, written as `muses encode` writes it."""
    return write_embeddings(out, [], ["document"], {"dim": dim}, overwrite=overwrite)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_overwrite_replaces_only_a_folder_muses_wrote(tmp_path: Path) -> None:
    out = _write(tmp_path / "out")
    assert json.loads((out / "meta.json").read_text())["written_by"] == "muses encode"
    _write(out, overwrite=True, dim=8)
    assert np.load(out / "document.npy").shape == (0, 8) and _siblings(out) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"not written by muses encode \(it holds 'notes.txt'.*choose a new output"):
        _write(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "input.jsonl").write_text("precious")
    with pytest.raises(InputError, match=r"not written by muses encode \(it has no meta.json\)"):
        _write(mine, overwrite=True)
    assert (mine / "input.jsonl").read_text() == "precious" and _siblings(mine) == []


def test_overwrite_onto_a_file_or_under_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("keep")
    with pytest.raises(InputError, match="is a file, not a folder"):
        _write(f, overwrite=True)
    with pytest.raises(InputError, match=r"f\.txt is a file, not a folder; choose an output path inside a folder"):
        _write(f / "sub" / "out")
    assert f.read_text() == "keep"


def test_output_folder_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = _write(tmp_path / "a" / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "meta.json").stat().st_mode) == 0o644


class _Killed(BaseException):
    """Stands for a SIGKILL between two steps of the swap."""


def test_a_kill_between_the_renames_loses_neither_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _write(tmp_path / "out", dim=4)
    real_rename = os.rename
    calls: list[str] = []

    def rename_then_die(src: Any, dst: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in
            raise _Killed
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(_Killed):
        _write(out, overwrite=True, dim=8)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists() and _siblings(out) == [".out.muses-old"]
    recover_output(out)  # what the next run does first
    assert np.load(out / "document.npy").shape == (0, 4) and _siblings(out) == []


def test_a_rerun_cleans_what_a_killed_run_left(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", dim=4)
    (tmp_path / ".out.muses-old").mkdir()  # killed after the new folder went in, before the old one was deleted
    stale = tmp_path / ".out.muses-new-999999999-abcd"  # a killed run's (no such process)
    stale.mkdir()
    live = tmp_path / f".out.muses-new-{os.getpid()}-abcd"  # a run still writing: left alone
    live.mkdir()
    _write(out, overwrite=True, dim=8)
    assert np.load(out / "document.npy").shape == (0, 8)
    assert _siblings(out) == [live.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match=r"cannot write in .*ro \(Permission denied\)"), OutputFolder(ro / "out"):
            pass
    finally:
        ro.chmod(0o755)


def test_an_unwritable_parent_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = Path.mkdir

    def deny(self: Path, *args: Any, **kwargs: Any) -> None:
        if ".muses-new-" in self.name:
            raise PermissionError(13, "Permission denied")
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", deny)
    message = r"cannot write in .*\(Permission denied\); choose a writable output folder"
    with pytest.raises(InputError, match=message), OutputFolder(tmp_path / "new" / "out"):
        raise AssertionError("entered despite an unwritable folder")
    assert not (tmp_path / "new").exists(), "the parent it created is removed again"

"""Reading documents from JSONL / plain-text files and writing per-scale embedding arrays.

Output folder of :func:`write_embeddings` (see :class:`OutputFolder`: written into a staging folder beside it,
fsynced, and swapped into place, so an interrupted run never leaves a half-written result):

- ``document.npy`` ``[N, D]``, ``sentence.npy`` ``[sum S, D]``, ``token.npy`` ``[sum T, D]`` (scales asked for),
  or the same arrays in one ``embeddings.safetensors``;
- ``index.jsonl``: one record per document with its id, sentence spans and token offsets, and the row ranges of
  its sentences and tokens in the arrays;
- ``meta.json``: model, dim, scales and counts, and ``"written_by": "muses encode"``, the marker that lets
  ``--overwrite`` replace this folder (and no other).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from muses.errors import DataError, InputError
from muses.output_folder import OUTPUT_MARKER, OutputFolder
from muses.text import document_from_sentences, make_document
from muses.types import Document, MultiScaleEmbedding
from muses.validation import MAX_METADATA_DEPTH, check_id, check_metadata

ArrayFormat = Literal["npy", "safetensors"]
ARRAY_FORMATS: tuple[str, ...] = ("npy", "safetensors")

DEFAULT_MAX_CHARS = 1_000_000
"""Longest document :func:`read_documents` accepts, in characters (the store's default ``max_chars`` too).
Encoding cost grows linearly with length (time and memory per length: ``docs/benchmarks.md``)."""


# ---------------------------------------------------------------------------------------------------- reading
def read_documents(
    path: str | os.PathLike[str],
    text_field: str = "text",
    id_field: str = "id",
    one_document: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Iterator[Document]:
    """Yield Documents from a ``.jsonl`` file (one JSON object per line) or a plain-text file.

    JSONL records need ``text_field`` (a string) or ``"sentences"`` (a list of strings, kept as given); ``id_field``
    (a string, or a number turned into one) and ``"metadata"`` (a JSON object) are optional. A plain-text file is one
    document per non-empty line, or one document for the whole file with ``one_document=True``. Documents longer
    than ``max_chars`` characters are refused as they are read; so is a JSONL line over ``16 * max_chars + 1 MiB``
    bytes, before it is parsed.

    Raises:
        DataError: for a missing file, a directory, a malformed line (not UTF-8, not JSON, nested too deeply, bad
            id, metadata or text) or a document over ``max_chars``, naming the file and line number.
    """
    p = Path(path)
    _check_input(p)
    if p.suffix == ".jsonl":
        yield from _read_jsonl(p, text_field, id_field, max_chars)
    else:
        yield from _read_text(p, one_document, max_chars)


def _check_input(p: Path) -> None:
    """Refuse an input that is not a readable regular file, saying what to pass instead."""
    if p.is_dir():
        raise DataError(f"input {p} is a directory; pass one .jsonl or text file inside it (e.g. {p / 'docs.jsonl'}).")
    if not p.exists():
        raise DataError(f"input file {p} does not exist; pass an existing .jsonl or text file.")
    if not p.is_file():
        raise DataError(f"input {p} is not a regular file; pass a .jsonl or text file.")


def _open(p: Path) -> BinaryIO:
    try:
        return p.open("rb")
    except OSError as e:
        raise DataError(f"cannot read {p} ({e.strerror}); check its permissions.") from None


def _read_text(p: Path, one_document: bool, max_chars: int) -> Iterator[Document]:
    with _open(p) as f:
        raw = f.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); pass a .jsonl or .txt file.") from e
    if one_document:
        if content.strip():
            yield _text_document(content, p.stem, str(p), max_chars)
        return
    for lineno, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            yield _text_document(line, f"{p.stem}:{lineno}", f"{p}:{lineno}", max_chars)


def _text_document(text: str, doc_id: str, where: str, max_chars: int) -> Document:
    _check_length(len(text), doc_id, where, max_chars)
    try:
        return make_document(text, id=check_id(doc_id, "id"))
    except InputError as e:
        raise DataError(f"{where}: {e}") from None


def _read_jsonl(p: Path, text_field: str, id_field: str, max_chars: int) -> Iterator[Document]:
    limit = 16 * max_chars + 2**20
    with _open(p) as f:
        lineno = 0
        while raw := f.readline(limit + 1):
            lineno += 1
            where = f"{p}:{lineno}"
            if len(raw) > limit:
                raise DataError(
                    f"{where}: the line is over {limit:,} bytes, too long for a document of at most "
                    f"{max_chars:,} characters; split the document, or raise max_chars (--max-chars)."
                )
            line = _decode_line(raw, where, first=lineno == 1)
            if line.strip():
                rec = _parse_json(line, where)
                yield _record_document(rec, where, text_field, id_field, f"{p.stem}:{lineno}", max_chars)


def _decode_line(raw: bytes, where: str, first: bool) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not UTF-8 ({e.reason} at byte {e.start} of the line); save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)."
        ) from None
    return line.removeprefix("\ufeff") if first else line


def _parse_json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
    except RecursionError:
        raise DataError(
            f"{where}: JSON nested too deeply to read; flatten the record (metadata may be at most "
            f"{MAX_METADATA_DEPTH} levels deep)."
        ) from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise DataError(f"{where}: not usable JSON ({e}); fix the line.") from None


def _record_document(rec: Any, where: str, text_field: str, id_field: str, default_id: str, max_chars: int) -> Document:
    """The Document of one JSONL record, or a DataError naming ``where``."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}.")
    try:
        doc_id = _record_id(rec, id_field, default_id)
        meta = check_metadata(rec.get("metadata"), "metadata")
        sentences, text = rec.get("sentences"), rec.get(text_field)
        if isinstance(sentences, list):
            n = sum(len(s) + 1 for s in sentences if isinstance(s, str))
            _check_length(n, doc_id, where, max_chars)
            return document_from_sentences(sentences, id=doc_id, metadata=meta)
        if isinstance(text, str):
            _check_length(len(text), doc_id, where, max_chars)
            return make_document(text, id=doc_id, metadata=meta)
    except InputError as e:
        raise DataError(f"{where}: {e}") from None
    raise DataError(f"{where}: needs a string field {text_field!r} or a list field 'sentences'.")


def _record_id(rec: dict[str, Any], id_field: str, default_id: str) -> str:
    """The record's id (a number becomes its string), checked; ``default_id`` when it has none."""
    if id_field not in rec:
        return check_id(default_id, "id")
    value = rec[id_field]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return check_id(value, "id")


def _check_length(n: int, doc_id: str, where: str, max_chars: int) -> None:
    if n > max_chars:
        raise DataError(
            f"{where}: document {doc_id!r} has {n:,} characters, over the limit of {max_chars:,}; split it into "
            "smaller documents, or raise the limit with --max-chars (max_chars): encoding time and memory grow "
            "with length."
        )


# ---------------------------------------------------------------------------------------------------- writing
def check_format(fmt: str) -> ArrayFormat:
    """``fmt`` if it is an array format this module writes, else an InputError."""
    if fmt not in ARRAY_FORMATS:
        raise InputError(f"unknown array format {fmt!r}; use npy or safetensors.")
    return fmt  # type: ignore[return-value]


def write_embeddings(
    out_dir: str | os.PathLike[str],
    embeddings: Sequence[MultiScaleEmbedding],
    scales: Sequence[str],
    meta: dict[str, Any],
    fmt: ArrayFormat = "npy",
    overwrite: bool = False,
) -> Path:
    """Write arrays, ``index.jsonl`` and ``meta.json`` atomically into ``out_dir`` (see the module doc).

    ``overwrite`` replaces only a folder written by this function (see :class:`OutputFolder`).
    """
    check_format(fmt)
    with OutputFolder(out_dir, overwrite) as output:
        write_embedding_files(output.staging, embeddings, scales, meta, fmt)
        return output.commit()


def write_embedding_files(
    folder: Path,
    embeddings: Sequence[MultiScaleEmbedding],
    scales: Sequence[str],
    meta: dict[str, Any],
    fmt: ArrayFormat = "npy",
) -> None:
    """Write the arrays, ``index.jsonl`` and ``meta.json`` into an existing (staging) ``folder``."""
    check_format(fmt)
    dim = embeddings[0].dim if embeddings else int(meta.get("dim", 0))
    arrays = _stack(embeddings, scales, dim)
    if fmt == "npy":
        for name, arr in arrays.items():
            np.save(folder / f"{name}.npy", arr.astype(np.float32), allow_pickle=False)
    else:
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
            str(folder / "embeddings.safetensors"),
        )
    s_row = t_row = 0
    with (folder / "index.jsonl").open("w", encoding="utf-8") as f:
        for i, e in enumerate(embeddings):
            rec = e.index_record()
            n_s, n_t = len(e.doc.sentences), len(e.token_offsets)
            rec["row"] = i
            rec["sentence_rows"] = [s_row, s_row + n_s]
            rec["token_rows"] = [t_row, t_row + n_t]
            s_row, t_row = s_row + n_s, t_row + n_t
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    counts = {k: int(v.shape[0]) for k, v in arrays.items()}
    info = {**meta, "scales": list(scales), "format": fmt, "counts": counts, "dim": dim, "written_by": OUTPUT_MARKER}
    (folder / "meta.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _stack(embeddings: Sequence[MultiScaleEmbedding], scales: Sequence[str], dim: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if "document" in scales:
        arrays["document"] = np.stack([e.document for e in embeddings]) if embeddings else np.zeros((0, dim))
    if "sentence" in scales:
        arrays["sentence"] = np.concatenate([e.sentences for e in embeddings]) if embeddings else np.zeros((0, dim))
    if "token" in scales:
        toks = [e.tokens for e in embeddings if e.tokens is not None]
        arrays["token"] = np.concatenate(toks) if toks else np.zeros((0, dim))
    return arrays


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file beside it, fsynced, then renamed over it: a kill
    at any point leaves the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

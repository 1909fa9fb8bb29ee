"""Reading documents from JSONL / plain-text files and writing per-scale embedding arrays.

Output folder of :func:`write_embeddings` (written to a temporary folder first and renamed into place, so an
interrupted run never leaves a half-written result):

- ``document.npy`` ``[N, D]``, ``sentence.npy`` ``[sum S, D]``, ``token.npy`` ``[sum T, D]`` (scales asked for),
  or the same arrays in one ``embeddings.safetensors``;
- ``index.jsonl``: one record per document with its id, sentence spans and token offsets, and the row ranges of
  its sentences and tokens in the arrays;
- ``meta.json``: model, dim, scales and counts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from muses.errors import DataError, InputError
from muses.text import document_from_sentences, make_document
from muses.types import Document, MultiScaleEmbedding

ArrayFormat = Literal["npy", "safetensors"]


def read_documents(
    path: str | os.PathLike[str], text_field: str = "text", id_field: str = "id", one_document: bool = False
) -> Iterator[Document]:
    """Yield Documents from a ``.jsonl`` file (one JSON object per line) or a plain-text file.

    JSONL records need ``text_field`` (a string) or ``"sentences"`` (a list of strings, kept as given); ``id_field``
    and ``"metadata"`` are optional. A plain-text file is one document per non-empty line, or one document for the
    whole file with ``one_document=True``.

    Raises:
        DataError: for a missing file or a malformed line, naming the file and line number.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file {p} does not exist.")
    if p.suffix == ".jsonl":
        yield from _read_jsonl(p, text_field, id_field)
        return
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); pass a .jsonl or .txt file.") from e
    if one_document:
        if content.strip():
            yield make_document(content, id=p.stem)
        return
    for lineno, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            yield make_document(line, id=f"{p.stem}:{lineno}")


def _read_jsonl(p: Path, text_field: str, id_field: str) -> Iterator[Document]:
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}.")
            doc_id = str(rec[id_field]) if id_field in rec else f"{p.stem}:{lineno}"
            meta = rec.get("metadata") or {}
            try:
                if isinstance(rec.get("sentences"), list):
                    yield document_from_sentences(rec["sentences"], id=doc_id, metadata=meta)
                elif isinstance(rec.get(text_field), str):
                    yield make_document(rec[text_field], id=doc_id, metadata=meta)
                else:
                    raise DataError(f"{where}: needs a string field {text_field!r} or a list field 'sentences'.")
            except InputError as e:
                raise DataError(f"{where}: {e}") from None


def write_embeddings(
    out_dir: str | os.PathLike[str],
    embeddings: Sequence[MultiScaleEmbedding],
    scales: Sequence[str],
    meta: dict[str, Any],
    fmt: ArrayFormat = "npy",
    overwrite: bool = False,
) -> Path:
    """Write arrays, ``index.jsonl`` and ``meta.json`` atomically into ``out_dir`` (see the module doc)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists; choose another path or pass --overwrite.")
    arrays: dict[str, np.ndarray] = {}
    dim = embeddings[0].dim if embeddings else int(meta.get("dim", 0))
    if "document" in scales:
        arrays["document"] = np.stack([e.document for e in embeddings]) if embeddings else np.zeros((0, dim))
    if "sentence" in scales:
        arrays["sentence"] = np.concatenate([e.sentences for e in embeddings]) if embeddings else np.zeros((0, dim))
    if "token" in scales:
        toks = [e.tokens for e in embeddings if e.tokens is not None]
        arrays["token"] = np.concatenate(toks) if toks else np.zeros((0, dim))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "npy":
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", arr.astype(np.float32), allow_pickle=False)
        elif fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(
                {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
                str(tmp / "embeddings.safetensors"),
            )
        else:
            raise InputError(f"unknown array format {fmt!r}; use npy or safetensors.")
        s_row = t_row = 0
        with (tmp / "index.jsonl").open("w", encoding="utf-8") as f:
            for i, e in enumerate(embeddings):
                rec = e.index_record()
                n_s, n_t = len(e.doc.sentences), len(e.token_offsets)
                rec["row"] = i
                rec["sentence_rows"] = [s_row, s_row + n_s]
                rec["token_rows"] = [t_row, t_row + n_t]
                s_row, t_row = s_row + n_s, t_row + n_t
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        counts = {k: int(v.shape[0]) for k, v in arrays.items()}
        (tmp / "meta.json").write_text(
            json.dumps({**meta, "scales": list(scales), "format": fmt, "counts": counts, "dim": dim}, indent=2) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

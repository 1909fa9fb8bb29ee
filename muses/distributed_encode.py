"""Distributed corpus encoding on Ray Data: ``muses encode INPUT -o OUT --engine ray``.

Pipeline: Ray Data reads the input (a ``.jsonl`` or text file, read line by line so that ids and metadata are
exactly those of ``muses encode --engine local``; or ``.parquet``), from a local path or any URI pyarrow's
filesystems read. Rows are cut into shards of ``shard_rows`` consecutive rows (deterministic: the same input gives the
same shards): one small Ray task per unfinished shard slices its rows out of the input's blocks (in the object
store) and numbers them. The shards then go through ``map_batches`` with :class:`EncodeActor`, one shard a batch:
the actor loads the model once (one GPU per actor when the cluster has GPUs), encodes the shard and writes it to
the output folder itself, so vectors never pass through the driver. The driver only records finished shards in the
manifest. On a cluster the output folder must be one that every node writes to (shared storage or an object-store
URI), as the input must be one that every node reads.

Output folder (``OUT``):

- ``shard-00000.parquet`` ... one row per document, in input order: ``row`` (int64, the input line, 0-based), ``id``,
  ``record`` (JSON: :meth:`MultiScaleEmbedding.index_record`, i.e. text, metadata, sentence and paragraph spans,
  token offsets, sentence-token links, windows), and the vectors ``document`` ``[D]``, ``sentence`` ``[S * D]``,
  ``token`` ``[T * D]`` (float32 lists, row-major; a scale not asked for is null);
- ``manifest.json``: model, fingerprint, backend, dim, scales, context, input, row count, shard size and the
  finished shards, with ``"written_by": "muses encode --engine ray"``.

Each shard is written under a temporary name, fsynced and renamed; the manifest is rewritten the same way after each
shard, so it is always last. Rerunning the same command skips the shards already finished (listed in the manifest,
or present under their final name) and encodes the rest. :func:`read_encoded` loads a folder back into
:class:`MultiScaleEmbedding` objects (``muses index add --from-encoded``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from muses.errors import DataError, InputError, MusesError
from muses.extras import require

if TYPE_CHECKING:
    import pyarrow as pa

    from muses.store import MemoryStore
    from muses.types import MultiScaleEmbedding

MANIFEST = "manifest.json"
MANIFEST_FIELDS: dict[str, type] = {"model": str, "fingerprint": str, "context": str, "dim": int, "n_shards": int}
"""What ``index add --from-encoded`` reads from a finished manifest, with its type (``dim`` >= 1, ``n_shards`` >= 0)."""
WRITTEN_BY = "muses encode --engine ray"
DEFAULT_SHARD_ROWS = 1000
_ROW = "_muses_row"


@dataclass(frozen=True)
class EncodeSettings:
    """What shapes the output; a rerun into the same folder must give the same settings (else it is refused)."""

    model: str = "default"
    backend: str | None = None
    scales: tuple[str, ...] = ("document", "sentence")
    dim: int | None = None
    context: str = "document"
    text_field: str = "text"
    id_field: str = "id"
    max_chars: int = 1_000_000
    batch_size: int = 32


def shard_name(k: int) -> str:
    """The file name of shard ``k``."""
    return f"shard-{k:05d}.parquet"


def _schema() -> pa.Schema:
    pa = require("pyarrow", "ray")
    vec = pa.list_(pa.float32())
    return pa.schema(
        [
            ("row", pa.int64()),
            ("id", pa.string()),
            ("record", pa.string()),
            ("document", vec),
            ("sentence", vec),
            ("token", vec),
        ]
    )


# ---------------------------------------------------------------------------------------------------- the actor
class EncodeActor:
    """A Ray Data actor: loads the model once, then encodes whole shards and writes them.

    Input batch (numpy format): the rows of one shard, ``_muses_row`` ``[B]`` int64 (consecutive) and either ``text``
    (one input line each: JSONL or plain text) or the Parquet columns. It writes the shard file (module doc; a blank
    line gives no document) to ``out`` on ``fs`` and returns a one-row table ``shard``, ``n_documents``.
    """

    def __init__(
        self, settings: EncodeSettings, kind: str, stem: str, where: str, fs: Any, out: str, shard_rows: int, n: int
    ) -> None:
        from muses.backends import check_backend
        from muses.encoder import MultiScaleEncoder

        self.s = settings
        self.kind, self.stem, self.where = kind, stem, where
        self.fs, self.out, self.shard_rows, self.n = fs, out, shard_rows, n
        self.enc = MultiScaleEncoder.from_base(
            settings.model, backend=None if settings.backend is None else check_backend(settings.backend)
        )

    def _document(self, row: int, batch: dict[str, Any], i: int) -> Any:
        from muses.io import _parse_json, _record_document, _text_document

        where = f"{self.where}:{row + 1}"
        default_id = f"{self.stem}:{row + 1}"
        if self.kind == "parquet":
            rec = {k: _plain(v[i]) for k, v in batch.items() if k != _ROW}
            return _record_document(rec, where, self.s.text_field, self.s.id_field, default_id, self.s.max_chars)
        line = str(batch["text"][i])
        if not line.strip():
            return None
        if self.kind == "jsonl":
            rec = _parse_json(line.removeprefix("\ufeff") if row == 0 else line, where)
            return _record_document(rec, where, self.s.text_field, self.s.id_field, default_id, self.s.max_chars)
        return _text_document(line, default_id, where, self.s.max_chars)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        """Encode shard ``k`` (the whole batch), write it, and return ``{"shard": [k], "n_documents": [m]}``."""
        pa = require("pyarrow", "ray")
        rows = [int(r) for r in batch[_ROW]]
        k = rows[0] // self.shard_rows
        if rows != list(range(k * self.shard_rows, min(self.n, (k + 1) * self.shard_rows))):
            raise RuntimeError(f"a batch of {len(rows)} rows is not exactly shard {k}")  # Ray split or merged a block
        m = _write_shard(self.fs, self.out, k, [self.encode(rows, batch)])
        return pa.table({"shard": [k], "n_documents": [m]})

    def encode(self, rows: list[int], batch: dict[str, Any]) -> pa.Table:
        """Encode the ``B`` input rows ``rows`` of ``batch`` -> a table of ``B`` rows with the shard schema; a blank
        line gives a row with a null ``id``."""
        pa = require("pyarrow", "ray")
        docs = [self._document(r, batch, i) for i, r in enumerate(rows)]
        present = [d for d in docs if d is not None]
        embs = iter(
            self.enc.encode_documents(
                present,
                scales=list(self.s.scales),
                dim=self.s.dim,
                context=self.s.context,
                batch_size=self.s.batch_size,
                show_progress_bar=False,
            )
            if present
            else []
        )
        out: dict[str, list[Any]] = {k: [] for k in ("row", "id", "record", "document", "sentence", "token")}
        for r, d in zip(rows, docs, strict=True):
            e = next(embs) if d is not None else None
            out["row"].append(r)
            out["id"].append(None if e is None else e.doc.id)
            out["record"].append(None if e is None else json.dumps(e.index_record(), ensure_ascii=False))
            for key, scale in (("document", "document"), ("sentence", "sentence"), ("token", "token")):
                arr = None if e is None or scale not in self.s.scales else _vectors(e, scale)
                out[key].append(None if arr is None else arr.ravel())
        return pa.Table.from_pydict(out, schema=_schema())


def _plain(v: Any) -> Any:
    """A numpy / pyarrow value from a Parquet batch as a plain JSON-like Python value."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.dtype == object else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _vectors(e: MultiScaleEmbedding, scale: str) -> np.ndarray | None:
    if scale == "document":
        return np.asarray(e.document, dtype=np.float32)
    if scale == "sentence":
        return np.asarray(e.sentences, dtype=np.float32)
    return None if e.tokens is None else np.asarray(e.tokens, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- the driver
@dataclass
class EncodeResult:
    """What :func:`encode_with_ray` did: documents and shards written now, shards skipped, seconds."""

    out: str
    n_documents: int
    shards_written: list[int]
    shards_skipped: list[int]
    seconds: float


def _input_kind(input: str) -> str:
    name = input.rstrip("/").lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    return "jsonl" if name.endswith(".jsonl") else "text"


def _fs(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem of ``path`` (a local path or a URI) and the path inside it."""
    fs = require("pyarrow.fs", "ray")
    if "://" in path:
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), str(Path(path).resolve())


def _check_input(input: str) -> None:
    fs, inner = _fs(input)
    try:
        info = fs.get_file_info(inner)
    except OSError as e:
        raise DataError(f"cannot read {input} ({e}).") from None
    if info.type.name == "NotFound":
        raise DataError(f"input {input} does not exist; pass an existing .jsonl, .parquet or text file (or folder).")


def _write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name, then rename it into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if type(fs).__name__ == "LocalFileSystem":
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fs.move(tmp, path)


def _read_manifest(fs: Any, out: str) -> dict[str, Any] | None:
    path = f"{out}/{MANIFEST}"
    if fs.get_file_info(path).type.name == "NotFound":
        return None
    with fs.open_input_stream(path) as f:
        try:
            data = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not a readable manifest ({e}); remove the folder and encode again.") from None
    if not isinstance(data, dict) or data.get("written_by") != WRITTEN_BY:
        raise InputError(f"{path} was not written by `{WRITTEN_BY}`; give another output folder.")
    return data


def _cause(e: BaseException) -> MusesError | None:
    """The MuSES error (bad input line, bad model) under Ray's wrappers, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, MusesError):
            return type(x)(*x.args) if x.args else x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def encode_with_ray(
    input: str,
    out: str,
    settings: EncodeSettings,
    workers: int = 1,
    address: str | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    max_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> EncodeResult:
    """Encode ``input`` into Parquet shards plus a manifest in ``out`` on Ray (module doc); resumable.

    Args:
        workers: actors (model copies); each takes 1 CPU, or 1 GPU when the cluster has GPUs.
        address: a running cluster (``ray start --head`` prints it; ``auto`` finds a local one). Default: a local
            Ray started here (and stopped after), unless one is already initialised in this process.
        shard_rows: input lines per shard (recorded; a rerun must use the same value).
        max_shards: stop after writing this many shards (tests, and splitting a run into parts).
        overwrite: start again in a folder this function wrote before (its shards are deleted).
    """
    ray = require("ray", "ray")
    require("ray.data", "ray")
    from muses.encoder import MultiScaleEncoder

    if workers < 1 or shard_rows < 1:
        raise InputError("--workers and the shard size must be at least 1.")
    t0 = time.perf_counter()
    _check_input(input)
    fs, out_inner = _fs(out)
    found = _read_manifest(fs, out_inner)
    if found is None and fs.get_file_info(out_inner).type.name == "File":
        raise InputError(f"{out} is a file; give a folder for the output.")
    if found is None and fs.get_file_info(out_inner).type.name == "Directory":
        others = fs.get_file_info(fs_selector(out_inner))
        if any(not Path(i.path).name.startswith("shard-") for i in others):
            raise InputError(f"{out} is not empty and holds no `{WRITTEN_BY}` manifest; give a new folder.")
    from muses.backends import check_backend

    if settings.backend is not None:
        check_backend(settings.backend)
    if settings.model != "default" and Path(settings.model).exists():  # actors may run in another folder
        settings = replace(settings, model=str(Path(settings.model).resolve()))
    # the driver loads the model once on CPU, for its fingerprint and dims (the actors load their own copies)
    enc = MultiScaleEncoder.from_base(settings.model, backend=settings.backend, device="cpu")  # type: ignore[arg-type]
    dim = settings.dim or enc.embed_dim
    if dim not in enc.dims:
        raise InputError(f"--dim {dim} is not one of the model's Matryoshka dims {enc.dims}.")
    settings = replace(settings, context=str(enc.check_context(settings.context)))  # "local" is "local:2"
    if found is not None and overwrite:  # only once every setting has been checked
        for i in fs.get_file_info(fs_selector(out_inner)):
            fs.delete_file(i.path)
        found = None
    meta = {
        "written_by": WRITTEN_BY,
        "model": settings.model,
        "fingerprint": enc.fingerprint(settings.context),
        "backend": enc.backend,
        "dim": dim,
        "scales": list(settings.scales),
        "context": settings.context,
        "input": input,
        "text_field": settings.text_field,
        "id_field": settings.id_field,
        "shard_rows": shard_rows,
    }
    del enc
    if found is not None:
        diff = [k for k, v in meta.items() if k != "input" and found.get(k) != v]
        if diff:
            _refuse(out, diff)

    started_here = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            **({} if address else {"num_cpus": max(workers, os.cpu_count() or 1)}),
        )
        started_here = True
    try:
        return _run(ray, input, out, fs, out_inner, settings, meta, found, workers, max_shards, progress, t0)
    except MusesError:
        raise
    except Exception as e:
        cause = _cause(e)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if started_here:
            ray.shutdown()


def _refuse(out: str, diff: list[str]) -> None:
    raise InputError(
        f"{out} holds an encoding made with other settings ({', '.join(diff)} differ); rerun with the same "
        "options to resume, or pass --overwrite to start again, or give another folder."
    )


def fs_selector(path: str) -> Any:
    """A non-recursive pyarrow FileSelector of the folder ``path``."""
    return require("pyarrow.fs", "ray").FileSelector(path, allow_not_found=True)


def _run(
    ray: Any,
    input: str,
    out: str,
    fs: Any,
    out_inner: str,
    settings: EncodeSettings,
    meta: dict[str, Any],
    found: dict[str, Any] | None,
    workers: int,
    max_shards: int | None,
    progress: bool,
    t0: float,
) -> EncodeResult:
    pq = require("pyarrow.parquet", "ray")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    kind = _input_kind(input)
    ds = ray.data.read_parquet(input) if kind == "parquet" else ray.data.read_text(input, drop_empty_lines=False)
    blocks = ds.materialize().to_arrow_refs()  # in input order (preserve_order)
    sizes = ray.get([ray.remote(_num_rows).remote(b) for b in blocks])
    n = int(sum(sizes))
    meta = {**meta, "n_rows": n}
    shard_rows = int(meta["shard_rows"])
    n_shards = max(1, -(-n // shard_rows))
    if found is not None and found.get("n_rows") != n:
        _refuse(out, ["n_rows (the input changed)"])
    fs.create_dir(out_inner, recursive=True)
    done: dict[str, Any] = dict((found or {}).get("shards", {}))
    present = {Path(i.path).name for i in fs.get_file_info(fs_selector(out_inner))}
    for k in range(n_shards):
        name = shard_name(k)
        if str(k) in done and name not in present:
            del done[str(k)]  # listed but gone: encode it again
        elif str(k) not in done and name in present:  # renamed into place, then killed before the manifest
            rows = pq.read_metadata(fs.open_input_file(f"{out_inner}/{name}")).num_rows
            done[str(k)] = {"file": name, "n_documents": rows}
    pending = [k for k in range(n_shards) if str(k) not in done]
    if max_shards is not None:
        pending = pending[:max_shards]
    skipped = [k for k in range(n_shards) if str(k) in done]

    def save_manifest() -> None:
        body = {**meta, "n_shards": n_shards, "shards": dict(sorted(done.items(), key=lambda kv: int(kv[0])))}
        body["complete"] = len(done) == n_shards
        _write_atomic(fs, f"{out_inner}/{MANIFEST}", (json.dumps(body, indent=2) + "\n").encode())

    written: list[int] = []
    n_docs = 0
    if pending and n:
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        slicer = ray.remote(_shard_rows)
        parts = []
        for k in pending:
            lo, hi = k * shard_rows, min(n, (k + 1) * shard_rows)
            first, last = np.searchsorted(starts, lo, "right") - 1, np.searchsorted(starts, hi, "left")
            parts.append(slicer.remote(lo, hi, [int(x) for x in starts[first:last]], *blocks[first:last]))
        ray.wait(parts, num_returns=len(parts), fetch_local=False)  # before the actors take the CPUs
        gpus = float(ray.cluster_resources().get("GPU", 0))
        encoded = ray.data.from_arrow_refs(parts).map_batches(
            EncodeActor,
            fn_constructor_kwargs={
                **{"settings": settings, "kind": kind, "stem": Path(input.rstrip("/")).stem, "where": input},
                **{"fs": fs, "out": out_inner, "shard_rows": shard_rows, "n": n},
            },
            batch_size=None,  # one block, i.e. one whole shard, a call
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if gpus >= 1 else None,
            num_cpus=None if gpus >= 1 else 1,
        )
        for table in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
            for k, m in zip(table.column("shard").to_pylist(), table.column("n_documents").to_pylist(), strict=True):
                n_docs += m
                done[str(k)] = {"file": shard_name(k), "n_documents": m}
                written.append(k)
                save_manifest()
    if not pending or not n:
        save_manifest()
    return EncodeResult(out, n_docs, sorted(written), skipped, time.perf_counter() - t0)


def _num_rows(block: pa.Table) -> int:
    return int(block.num_rows)


def _shard_rows(lo: int, hi: int, starts: list[int], *blocks: pa.Table) -> pa.Table:
    """Rows ``lo`` to ``hi`` (exclusive) of the input, numbered in ``_muses_row``, from the input blocks that hold
    them (block ``i`` starting at input row ``starts[i]``): one shard, one table."""
    pa = require("pyarrow", "ray")
    cut = []
    for block, start in zip(blocks, starts, strict=True):
        a, b = max(0, lo - start), min(block.num_rows, hi - start)
        cut.append(block.slice(a, max(0, b - a)))
    table = pa.concat_tables(cut, promote_options="default")
    return table.append_column(_ROW, pa.array(np.arange(lo, hi, dtype=np.int64)))


def _write_shard(fs: Any, out_inner: str, k: int, parts: Sequence[pa.Table]) -> int:
    """Write shard ``k`` (its rows sorted, blank lines dropped) atomically; returns its documents."""
    pa = require("pyarrow", "ray")
    pq = require("pyarrow.parquet", "ray")
    table = pa.concat_tables(parts)
    table = table.take(np.argsort(table.column("row").to_numpy(), kind="stable"))
    table = table.filter(pa.compute.is_valid(table.column("id")))
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(_schema()), sink, compression="zstd")
    _write_atomic(fs, f"{out_inner}/{shard_name(k)}", sink.getvalue().to_pybytes())
    return int(table.num_rows)


def encode_cli(
    input: str,
    out: str,
    settings: EncodeSettings,
    engine: str,
    fmt: str,
    one_document: bool,
    overwrite: bool,
    address: str | None,
    workers: int,
    shard_rows: int,
) -> None:
    """``muses encode --engine ray``: options checked, the run, one summary line."""
    from muses.cli_common import console

    if engine != "ray":
        raise InputError(f"unknown --engine {engine!r}; use local or ray.")
    if fmt != "npy" or one_document:
        raise InputError(
            "--engine ray writes Parquet shards of one document per line; leave out --format and "
            "--one-document (or use --engine local)."
        )
    r = encode_with_ray(
        input,
        out,
        settings,
        workers=workers,
        address=address,
        shard_rows=shard_rows,
        overwrite=overwrite,
        progress=True,
    )
    console.print(
        f"wrote {r.n_documents} documents in {len(r.shards_written)} shards to {out} "
        f"({len(r.shards_skipped)} shards already done, skipped) in {r.seconds:.1f}s"
    )


# ---------------------------------------------------------------------------------------------------- reading back
def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an encoded folder, checked: complete, every shard present.

    Raises:
        InputError: a missing folder or manifest, an unfinished run, a missing shard.
    """
    path = str(folder)
    fs, inner = _fs(path)
    if fs.get_file_info(inner).type.name != "Directory":
        raise InputError(f"{path} is not a folder; pass the output folder of `muses encode --engine ray`.")
    meta = _read_manifest(fs, inner)
    if meta is None:
        raise InputError(f"{path} holds no {MANIFEST}; pass the output folder of `muses encode --engine ray`.")
    if not meta.get("complete"):
        raise InputError(f"{path} holds an unfinished encoding; rerun the same `muses encode` command to finish it.")
    for key, kind in MANIFEST_FIELDS.items():
        value = meta.get(key)
        small = isinstance(value, int) and value < (1 if key == "dim" else 0)
        if not isinstance(value, kind) or isinstance(value, bool) or small:
            raise InputError(
                f"{path}/{MANIFEST}: {key!r} is missing or not a valid {kind.__name__}; encode the folder again."
            )
    for k in range(int(meta["n_shards"])):
        if fs.get_file_info(f"{inner}/{shard_name(k)}").type.name != "File":
            raise InputError(f"{path} is missing {shard_name(k)}; rerun the same `muses encode` command.")
    return meta


def read_encoded(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[MultiScaleEmbedding]]:
    """The manifest and every document's :class:`MultiScaleEmbedding` (with its :class:`Document`), in input order."""
    pq = require("pyarrow.parquet", "ray")
    from muses.types import Document, MultiScaleEmbedding, Span

    meta = read_manifest(folder)
    fs, inner = _fs(str(folder))
    dim = int(meta["dim"])
    embs: list[MultiScaleEmbedding] = []
    for k in range(int(meta["n_shards"])):
        table = pq.read_table(fs.open_input_file(f"{inner}/{shard_name(k)}"))
        for row in table.to_pylist():
            rec = json.loads(row["record"])
            doc = Document(
                text=rec["text"],
                sentences=[Span(a, b) for a, b in rec["sentences"]],
                paragraphs=[Span(a, b) for a, b in rec["paragraphs"]],
                sentence_paragraph=list(rec["sentence_paragraph"]),
                id=rec["id"],
                metadata=rec["metadata"],
            )

            def arr(v: list[float] | None, empty: tuple[int, ...]) -> np.ndarray:
                a = np.asarray(v if v is not None else [], dtype=np.float32)
                return a.reshape(-1, dim) if len(empty) == 2 else (a if a.size else np.zeros(empty, np.float32))

            tokens = None if row["token"] is None else arr(row["token"], (0, dim))
            embs.append(
                MultiScaleEmbedding(
                    document=arr(row["document"], (0,)),
                    sentences=arr(row["sentence"], (0, dim)),
                    sentence_token_ranges=np.asarray(rec["sentence_token_ranges"], dtype=np.int64).reshape(-1, 2),
                    token_offsets=np.asarray(rec["token_offsets"], dtype=np.int64).reshape(-1, 2),
                    token_sentence_ids=np.asarray(rec["token_sentence_ids"], dtype=np.int64),
                    doc=doc,
                    dim=dim,
                    n_windows=int(rec["n_windows"]),
                    tokens=tokens,
                )
            )
    return meta, embs


def add_encoded_folder(
    folder: str | os.PathLike[str],
    store_path: Path,
    model: str | None,
    settings: dict[str, Any],
    backend: str | None,
    upsert: bool,
    open_or_create: Callable[..., MemoryStore],
) -> list[str]:
    """``muses index add --from-encoded``: the folder's documents into the store (created with the manifest's model
    and dim when there is none), refused unless the store's model fingerprint and dim are the manifest's.

    The fingerprint, not the model's name, says whether the vectors fit an existing store: a store built with a task
    adapter (``index add --task``) takes the vectors of that model merged and saved under another name.
    """
    from muses.store import MemoryStore

    meta = read_manifest(folder)
    given = {k: v for k, v in settings.items() if v is not None}
    if not MemoryStore.exists(store_path):
        given.setdefault("dim", int(meta["dim"]))
    store = open_or_create(store_path, model, given, backend, default_model=meta["model"])
    if store.fingerprint != meta["fingerprint"]:
        raise InputError(
            f"{folder} was encoded by another model (fingerprint {meta['fingerprint']}, model {meta['model']!r}, "
            f"context {meta['context']!r}) than the store's ({store.fingerprint}, {store.model_name!r}); encode with "
            "the store's model, or add to another store."
        )
    if int(meta["dim"]) != store.dim:
        raise InputError(
            f"{folder} holds dim {meta['dim']} vectors; the store keeps dim {store.dim}: encode with "
            f"--dim {store.dim}, or add to another store."
        )
    _, embs = read_encoded(folder)
    return store.add_encoded(embs, upsert=upsert)

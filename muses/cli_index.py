"""``muses index``: build, search and inspect a multi-scale memory store from the command line."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from muses.cli_common import BackendOpt, backend_option, console, user_errors
from muses.errors import InputError

if TYPE_CHECKING:
    from muses.store import Hit, MemoryStore, StoreBackend, StoreConfig

index_app = typer.Typer(
    help="A persistent multi-scale memory store: add, search, zoom, stats, rm.", no_args_is_help=True
)

STORE_ENV = "MUSES_STORE"
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", "-s", help=f"Store folder (default: ${STORE_ENV}, else ./muses-store)."),
]


QDRANT_URL_ENV = "MUSES_QDRANT_URL"
QdrantUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--qdrant-url",
        envvar=QDRANT_URL_ENV,
        help="Use a Qdrant store instead of a local folder: http(s)://host:port of a server or cluster (API key in "
        "$QDRANT_API_KEY), a local folder (qdrant-client's local mode), or :memory:. Needs the qdrant extra.",
    ),
]
QdrantNameOpt = Annotated[
    str,
    typer.Option(
        "--qdrant-collection", help="Name of the Qdrant store (collections NAME_documents and NAME_sentences)."
    ),
]


def _store_path(store: Path | None) -> Path:
    return store or Path(os.environ.get(STORE_ENV) or "muses-store")


def _check_target(store: Path | None, qdrant_url: str | None) -> None:
    if store is not None and qdrant_url is not None:
        raise InputError("give --store (a local store folder) or --qdrant-url (a Qdrant store), not both.")


def _open(
    store: Path | None, backend: str | None = None, qdrant_url: str | None = None, collection: str = "muses"
) -> StoreBackend:
    """The store in ``store`` (a folder), or the Qdrant store ``collection`` at ``qdrant_url``."""
    _check_target(store, qdrant_url)
    if qdrant_url is not None:
        from muses.store.qdrant import QdrantStore

        return QdrantStore.open(qdrant_url, backend=backend_option(backend), collection=collection)
    from muses.store import MemoryStore

    return MemoryStore.open(_store_path(store), backend=backend_option(backend))


@contextmanager
def _closing(store: StoreBackend) -> Iterator[StoreBackend]:
    """Close the store when the command ends (a local Qdrant folder is locked while open)."""
    try:
        yield store
    finally:
        store.close()


def _read_inputs(paths: list[Path], one_document: bool) -> list[Any]:
    """Documents from JSONL or text files, or every .jsonl/.txt file of a folder (sorted)."""
    from muses.io import read_documents

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".jsonl", ".txt") and f.is_file())
            if not found:
                raise InputError(f"{p} holds no .jsonl or .txt files.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p} does not exist.")
    docs = []
    for f in files:
        for i, doc in enumerate(read_documents(f, one_document=one_document)):
            if doc.id is None:  # stable ids for files without them: re-adding the file updates, not duplicates
                doc.id = f"{f.stem}:{i}"
            docs.append(doc)
    return docs


NewModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="MuSES folder, sentence-transformers folder or hub name (new stores; default: 'default' = bundled "
        "all-MiniLM-L6-v2). An existing store loads the model it records.",
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        help="Build the store with the model folder's adapter for this task (e.g. similarity; new stores). Searches "
        "then load the model with it: an existing store loads the task it records.",
    ),
]


@index_app.command("add")
def add(
    paths: Annotated[list[Path] | None, typer.Argument(help="JSONL / text files, or folders of them.")] = None,
    store: StoreOpt = None,
    model: NewModelOpt = None,
    task: TaskOpt = None,
    dim: Annotated[int | None, typer.Option(help="Stored Matryoshka dim (new stores; default: full).")] = None,
    index: Annotated[str | None, typer.Option(help="flat (exact), hnsw or ivfpq (new stores; default: flat).")] = None,
    token_pool: Annotated[
        int | None, typer.Option(help="Tokens pooled per stored token vector; 0: none (new stores; default: 4).")
    ] = None,
    durable: Annotated[
        bool, typer.Option("--durable", help="Fsync every commit, so commits survive a power loss (new stores).")
    ] = False,
    funnel_dim: Annotated[
        int | None,
        typer.Option(help="Matryoshka dim the document/sentence indexes hold, rescored at full dim (new stores)."),
    ] = None,
    token_dtype: Annotated[
        str | None, typer.Option(help="Stored token vectors: float32 or int8 (4x smaller) (new stores).")
    ] = None,
    upsert: Annotated[bool, typer.Option(help="Replace documents whose id is already stored.")] = False,
    one_document: Annotated[bool, typer.Option(help="A text file is one document (not one per line).")] = False,
    backend: BackendOpt = None,
    from_encoded: Annotated[
        str | None,
        typer.Option(help="Add the output folder (path or URI) of `muses encode --engine ray` (no encoding again)."),
    ] = None,
    qdrant_url: QdrantUrlOpt = None,
    qdrant_collection: QdrantNameOpt = "muses",
    shards: Annotated[
        int | None, typer.Option(help="Qdrant: shards per collection (new stores; default: the server's).")
    ] = None,
    replication_factor: Annotated[
        int | None, typer.Option(help="Qdrant: copies of each shard on a cluster (new stores; default 1).")
    ] = None,
) -> None:
    """Add documents to a store (created on first use with --model, --task, --dim, --index, --token-pool, --durable,
    --funnel-dim, --token-dtype; on Qdrant, --dim, --token-pool, --shards, --replication-factor).

    On an existing store, leave those options out: one that differs from the store's is refused.
    """
    with user_errors():
        _check_target(store, qdrant_url)
        path = _store_path(store)
        if (from_encoded is None) == (not paths):
            raise InputError("give files or folders to add, or --from-encoded DIR (not both).")
        given = {
            "dim": dim,
            "index": index,
            "token_pool": token_pool,
            "durable": durable or None,
            "funnel_dim": funnel_dim,
            "token_dtype": token_dtype,
        }
        opener: Any = _open_or_create
        if qdrant_url is not None:
            given |= _qdrant_settings(given, shards, replication_factor)
            opener = functools.partial(_open_or_create_qdrant, qdrant_url, qdrant_collection)
        elif shards is not None or replication_factor is not None:
            raise InputError("--shards and --replication-factor are Qdrant settings; give --qdrant-url too.")
        if from_encoded is not None:
            from muses.distributed_encode import add_encoded_folder

            if task is not None:
                raise InputError(
                    "--from-encoded adds vectors made already: leave --task out (a store keeps the task it was built "
                    "with)."
                )
            ids = add_encoded_folder(from_encoded, path, model, given, backend, upsert, opener)
            console.print(f"added {len(ids)} documents to {qdrant_url or path} from {from_encoded}")
            return
        docs = _read_inputs(paths or [], one_document)
        with _closing(opener(path, model, {k: v for k, v in given.items() if v is not None}, backend, task)) as s:
            ids = s.add(docs, upsert=upsert)
            console.print(f"added {len(ids)} documents to {s.path} ({len(s)} in all)")


def _qdrant_settings(given: dict[str, Any], shards: int | None, replication_factor: int | None) -> dict[str, Any]:
    """``index add`` settings for a Qdrant store: the FAISS / SQLite ones refused, shards and replicas added."""
    faiss_only = ("index", "durable", "funnel_dim", "token_dtype")
    local = [f"--{k.replace('_', '-')}" for k in faiss_only if given.get(k) is not None]
    if local:
        raise InputError(
            f"{' and '.join(local)} {'is a setting' if len(local) == 1 else 'are settings'} of the local FAISS + "
            "SQLite store; leave it out with --qdrant-url (Qdrant indexes and persists on the server)."
        )
    for name, value in (("shards", shards), ("replication-factor", replication_factor)):
        if value is not None and value < 1:
            raise InputError(f"--{name} must be at least 1, got {value}.")
    return {"shards": shards, "replication_factor": replication_factor}


def _open_or_create_qdrant(
    url: str,
    collection: str,
    _path: Path,
    model: str | None,
    settings: dict[str, Any],
    backend: str | None = None,
    task: str | None = None,
    default_model: str | None = None,
) -> StoreBackend:
    """The Qdrant store ``collection`` at ``url``, created with ``model`` (else ``default_model``, else the default
    base; with its ``task`` adapter) and ``settings`` (StoreConfig and QdrantConfig fields) when there is none yet; an
    existing one is used if the settings given agree with its own."""
    from muses.adapters.tasks import load_for_task
    from muses.encoder import DEFAULT_BASE
    from muses.store import StoreExistsError
    from muses.store.qdrant import QdrantConfig, QdrantStore

    settings = {k: v for k, v in settings.items() if v is not None}
    qdrant_keys = {k: settings[k] for k in ("shards", "replication_factor") if k in settings}
    config = _store_config({k: v for k, v in settings.items() if k not in qdrant_keys})
    chosen = backend_option(backend)
    if not QdrantStore.exists(url, collection):
        name = model or default_model or DEFAULT_BASE
        encoder = load_for_task(name, task, backend=chosen)
        try:
            return QdrantStore.create(
                url, encoder, config, model=name, collection=collection, qdrant=QdrantConfig(**qdrant_keys)
            )
        except StoreExistsError:
            pass  # another process created it while the model loaded: use theirs, if the settings agree
    s = QdrantStore.open(url, backend=chosen, collection=collection)
    try:
        s.check_settings(model=model, **settings, **_given_task(task))
    except BaseException:
        s.close()
        raise
    return s


def _store_config(settings: dict[str, Any]) -> StoreConfig:
    """``settings`` (StoreConfig fields) validated, the others at their defaults."""
    from pydantic import ValidationError

    from muses.store import StoreConfig

    try:
        return StoreConfig.model_validate(settings)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"bad store setting --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}.") from None


def _given_task(task: str | None) -> dict[str, Any]:
    """``--task`` as a store setting to compare: only when given (an existing store otherwise loads its own)."""
    return {} if task is None else {"task": task}


def _open_or_create(
    path: Path,
    model: str | None,
    settings: dict[str, Any],
    backend: str | None = None,
    task: str | None = None,
    default_model: str | None = None,
) -> MemoryStore:
    """The store in ``path``, created with ``model`` (else ``default_model``, else the default base; with its ``task``
    adapter) and ``settings`` when there is none yet (or only an unfinished one). An existing store, even one that a
    concurrent ``index add`` created a moment ago, is used if the model, task and settings given (only those given)
    agree with its own, and refused with the differences otherwise."""
    from muses.adapters.tasks import load_for_task
    from muses.encoder import DEFAULT_BASE
    from muses.store import MemoryStore, StoreExistsError

    config = _store_config(settings)  # a bad value is an error for an existing store too
    chosen = backend_option(backend)
    if not MemoryStore.exists(path):
        name = model or default_model or DEFAULT_BASE
        try:
            return MemoryStore.create(path, load_for_task(name, task, backend=chosen), config, model=name)
        except StoreExistsError:
            pass  # another process created it while the model loaded: use theirs, if the settings agree
    s = MemoryStore.open(path, backend=chosen)
    s.check_settings(model=model, **settings, **_given_task(task))
    return s


def _highlighted(hit: Hit) -> Text:
    """The hit's sentence, with its highlighted character spans in bold yellow."""
    if hit.span is None:
        return Text(hit.text[:300] + ("..." if len(hit.text) > 300 else ""))
    a, _ = hit.span
    out = Text(hit.text)
    for start, end in hit.highlights:
        out.stylize("bold yellow", start - a, end - a)
    return out


@index_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    store: StoreOpt = None,
    scale: Annotated[str, typer.Option(help="document, sentence, token or fusion.")] = "fusion",
    k: Annotated[int, typer.Option("-k", help="Results.")] = 5,
    dim: Annotated[int | None, typer.Option(help="Matryoshka prefix (at most the stored dim).")] = None,
    zoom: Annotated[bool, typer.Option(help="Documents, then their best sentences, highlighted words.")] = False,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="Metadata filter key=value (JSON value), repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    backend: BackendOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    qdrant_collection: QdrantNameOpt = "muses",
) -> None:
    """Search a store at one scale, or zoom from documents into sentences and words."""
    with user_errors():
        _check_target(store, qdrant_url)
        filters = {}
        for item in filter_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"--filter {item!r} must look like key=value.")
            try:
                filters[key] = json.loads(value)
            except json.JSONDecodeError:
                filters[key] = value
        with _closing(_open(store, backend, qdrant_url, qdrant_collection)) as s:
            _search(s, query, scale, k, dim, zoom, filters, as_json)


def _search(
    s: StoreBackend, query: str, scale: str, k: int, dim: int | None, zoom: bool, filters: dict[str, Any], as_json: bool
) -> None:
    """Print a search or a zoom, as JSON or a table."""
    if zoom:
        results = s.zoom(query, k_docs=k, dim=dim, filters=filters or None)
        if as_json:
            console.print_json(json.dumps([r.to_dict() for r in results]))
            return
        table = Table(title=f"zoom: {query}")
        for col in ("doc", "score", "sentence (matched words highlighted)", "cos"):
            table.add_column(col)
        for r in results:
            for i, sent in enumerate(r.sentences):
                table.add_row(
                    r.id if i == 0 else "",
                    f"{r.score:.3f}" if i == 0 else "",
                    _highlighted(sent),
                    f"{sent.score:.3f}",
                )
        console.print(table)
        return
    hits = s.search(query, scale=scale, k=k, dim=dim, filters=filters or None)  # type: ignore[arg-type]
    if as_json:
        console.print_json(json.dumps([h.to_dict() for h in hits]))
        return
    table = Table(title=f"{scale}: {query}")
    for col in ("doc", "score", "text"):
        table.add_column(col)
    for h in hits:
        table.add_row(h.id, f"{h.score:.3f}", _highlighted(h))
    console.print(table)


@index_app.command("stats")
def stats(store: StoreOpt = None, qdrant_url: QdrantUrlOpt = None, qdrant_collection: QdrantNameOpt = "muses") -> None:
    """What a store holds: counts, model, dim, indexes, sizes."""
    with user_errors(), _closing(_open(store, None, qdrant_url, qdrant_collection)) as s:
        console.print_json(json.dumps(s.stats()))


@index_app.command("rebuild")
def rebuild(store: StoreOpt = None) -> None:
    """Rebuild the store's FAISS indexes from its database and save them (after a crash they are repaired on open
    anyway; use this after changing FAISS versions, or to retrain IVF-PQ and drop HNSW tombstones)."""
    with user_errors(), _closing(_open(store)) as s:
        from muses.store import MemoryStore

        if not isinstance(s, MemoryStore):
            raise InputError("only a local store has FAISS indexes to rebuild; Qdrant indexes on the server.")
        console.print_json(json.dumps(s.rebuild()))


@index_app.command("rm")
def rm(
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
    store: StoreOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    qdrant_collection: QdrantNameOpt = "muses",
) -> None:
    """Delete documents by id (all or nothing)."""
    with user_errors(), _closing(_open(store, None, qdrant_url, qdrant_collection)) as s:
        n = s.delete(ids)
        console.print(f"deleted {n} document{'' if n == 1 else 's'} ({len(s)} left)")


def serve(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the key required for writes (read once, stripped). Default: $MUSES_API_KEY; "
            "neither: read-only. The key is never taken on the command line, where the process list shows it."
        ),
    ] = None,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 8.0,
    backend: BackendOpt = None,
    qdrant_url: QdrantUrlOpt = None,
    qdrant_collection: QdrantNameOpt = "muses",
) -> None:
    """Serve a store over HTTP: search, zoom, add, delete, stats; a search page at / and API docs at /docs."""
    with user_errors():
        from muses.extras import require
        from muses.service import ServiceLimits, create_app, load_api_key

        uvicorn = require("uvicorn", "serve")

        key = load_api_key(api_key_file)  # before opening the store: a bad key file fails fast
        s = _open(store, backend, qdrant_url, qdrant_collection)  # open until the process ends
        app = create_app(s, key, ServiceLimits(max_request_bytes=int(max_request_mb * 1_000_000)))
        console.print(
            f"serving {s.path} ({len(s)} documents) on http://{host}:{port} (writes {'on' if key else 'off'})"
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")

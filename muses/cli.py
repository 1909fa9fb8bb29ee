"""The ``muses`` command line: encode, evaluate, benchmark, and the default end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from muses.cli_adapters import adapters_app, bench_adapters_cmd
from muses.cli_common import (
    BackendOpt,
    DataDirOpt,
    DeviceOpt,
    FreshOpt,
    ModelOpt,
    backend_option,
    console,
    err_console,
    load_stages,
    run_training,
    user_errors,
)
from muses.cli_index import index_app, serve
from muses.cli_moe import moe_app
from muses.errors import InputError
from muses.io import DEFAULT_MAX_CHARS

if TYPE_CHECKING:
    from muses.evaluation.corpus import EmbeddingCache
    from muses.training.config import TrainConfig

app = typer.Typer(
    help="MuSES: multi-scale (token / sentence / document, Matryoshka) embeddings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Evaluate a model on benchmark tasks.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Speed and memory benchmarks (ratios against a baseline measured in the same run).",
    no_args_is_help=True,
)
plot_app = typer.Typer(help="Figures: training curves, the embedding map.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(plot_app, name="plot")
app.add_typer(index_app, name="index")
app.add_typer(adapters_app, name="adapters")
app.add_typer(moe_app, name="moe")
app.command()(serve)


def _parse_scales(scales: str) -> list[str]:
    out = [s.strip() for s in scales.split(",") if s.strip()]
    if not out:
        raise InputError("--scales is empty; use e.g. document,sentence,token.")
    return out


@app.command()
def encode(
    input: Annotated[
        str,
        typer.Argument(
            help="A .jsonl file (fields: text or sentences, id, metadata) or a text file (one document per line); "
            "with --engine ray also .parquet, folders and URIs pyarrow reads (s3://, gs://, hdfs://)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")],
    model: ModelOpt = "default",
    scales: Annotated[str, typer.Option(help="Comma-separated: document,sentence,token.")] = "document,sentence",
    dim: Annotated[int | None, typer.Option(help="One of the model's Matryoshka dims (default: full).")] = None,
    context: Annotated[
        str,
        typer.Option(
            help="Sentence vectors: 'document' (in context), 'sentence' (each alone), or 'local' / 'local:K' (the "
            "document pass's top K layers run again over each sentence alone; 'local' is K=2)."
        ),
    ] = "document",
    fmt: Annotated[str, typer.Option("--format", help="npy or safetensors.")] = "npy",
    text_field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    one_document: Annotated[bool, typer.Option(help="Treat a whole text file as one document.")] = False,
    batch_size: Annotated[int, typer.Option(help="Windows per transformer batch.")] = 32,
    max_chars: Annotated[
        int, typer.Option(min=1, help="Refuse documents longer than this many characters (checked while reading).")
    ] = DEFAULT_MAX_CHARS,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output folder, if `muses encode` wrote it (nothing else).")
    ] = False,
    backend: BackendOpt = None,
    engine: Annotated[str, typer.Option(help="local (one process) or ray (Parquet shards + manifest, resumable).")] = (
        "local"
    ),
    address: Annotated[str | None, typer.Option(help="--engine ray: a running Ray cluster (default: local).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="--engine ray: model copies (actors; 1 GPU each if any).")] = 1,
    shard_rows: Annotated[int, typer.Option(min=1, help="--engine ray: input lines per Parquet shard.")] = 1000,
    task: Annotated[
        str | None, typer.Option(help="Encode with the model folder's adapter for this task (e.g. similarity).")
    ] = None,
) -> None:
    """Embed documents at several scales; write arrays plus a JSONL index of documents, spans and tokens."""
    with user_errors():
        from muses.local_context import parse_context

        context = str(parse_context(context))  # before anything is read or written; "local" is "local:2"
        if engine != "local":
            if task is not None:
                raise InputError(
                    "--task runs with --engine local; for Ray, save the merged model first "
                    "(muses.load(MODEL, task=TASK).save(DIR)) and pass --model DIR."
                )
            from muses.distributed_encode import EncodeSettings, encode_cli

            settings = EncodeSettings(
                model, backend, tuple(_parse_scales(scales)), dim, context, text_field, "id", max_chars, batch_size
            )
            encode_cli(input, str(out), settings, engine, fmt, one_document, overwrite, address, workers, shard_rows)
            return
        input_path = Path(input)
        from muses.adapters.tasks import load_for_task
        from muses.io import check_format, read_documents, write_embedding_files
        from muses.output_folder import OutputFolder

        scale_list = _parse_scales(scales)
        array_format = check_format(fmt)
        chosen = backend_option(backend)
        with OutputFolder(out, overwrite=overwrite) as output:  # checked before the (slow) encoding
            docs = list(
                read_documents(input_path, text_field=text_field, one_document=one_document, max_chars=max_chars)
            )
            if not docs:
                raise InputError(f"{input_path} holds no documents (every line is empty).")
            enc = load_for_task(model, task, backend=chosen)  # task None: the model as it is
            _check_dim(dim, enc.dims)
            embs = enc.encode_documents(
                docs,
                scales=scale_list,
                dim=dim,
                context=context,
                batch_size=batch_size,
                show_progress_bar=True,
            )
            meta = {
                "model": model,
                "backend": enc.backend,
                "task": task,
                "input": str(input_path),
                "context": context,
                "n_documents": len(docs),
            }
            write_embedding_files(output.staging, embs, scale_list, meta, fmt=array_format)
            path = output.commit()
        console.print(f"wrote {len(embs)} documents, {sum(len(e.doc.sentences) for e in embs)} sentences to {path}")


@app.command()
def export(
    model: Annotated[
        str,
        typer.Argument(
            help="MuSES folder, sentence-transformers folder or hub name; 'default' = bundled all-MiniLM-L6-v2."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="New folder for the exported model.")],
    backend: Annotated[str, typer.Option(help="onnx (ONNX Runtime) or openvino.")] = "onnx",
    quantize: Annotated[
        str | None,
        typer.Option(help="int8: int8 weights (ONNX Runtime dynamic, or NNCF static for OpenVINO)."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="int8: a .jsonl or text file of your domain's texts that calibrate it (OpenVINO: activation ranges, "
            "default bundled samples; ONNX: SmoothQuant, default none)."
        ),
    ] = None,
    drop_branch: Annotated[
        bool,
        typer.Option(
            "--drop-branch",
            help="Export a model with a sentence branch without it (the backends cannot run it): its sentences in "
            "context then come from the transformer's own top layers through the heads as trained (the model before "
            "the branch, where the heads were trained first), so they and the fingerprint change; documents, "
            "tokens, queries and standalone sentences are unchanged.",
        ),
    ] = False,
) -> None:
    """Export a model's transformer to ONNX or OpenVINO (int8 with --quantize int8): a folder `muses.load` opens."""
    with user_errors():
        from muses.backends.export import check_new_folder
        from muses.encoder import MultiScaleEncoder
        from muses.io import read_documents

        check_new_folder(out)  # before loading the model
        if backend not in ("onnx", "openvino"):
            raise InputError(f"--backend {backend!r} is not exportable; use onnx or openvino.")
        if quantize not in (None, "int8"):
            raise InputError(f"--quantize {quantize!r} is unknown; use int8 (or leave it out for fp32).")
        target = backend_option(f"{backend}-int8" if quantize else backend)
        if calibration and not quantize:
            raise InputError("--calibration calibrates an int8 export only; add --quantize int8.")
        texts = [d.text for d in read_documents(calibration)] if calibration else None
        enc = MultiScaleEncoder.from_base(model)
        if drop_branch:
            if enc.heads.sentence_branch == 0:
                raise InputError(f"{model} has no sentence branch to drop: leave out --drop-branch.")
            enc.drop_sentence_branch()
        enc.export(out, target, texts)  # type: ignore[arg-type]
        console.print(f"exported {model} to {out} (backend {target}); load it with muses.load({str(out)!r})")


def _check_dim(dim: int | None, dims: list[int]) -> None:
    """Refuse a ``--dim`` that is not one of the model's Matryoshka dims (as ``muses index add`` does)."""
    if dim is not None and dim not in dims:
        raise InputError(f"dim {dim} is not available: this model's Matryoshka dims are {dims}; pass one with --dim.")


TaskAdaptersOpt = Annotated[
    bool,
    typer.Option(
        "--task-adapters/--no-task-adapters",
        help="Run a task on the model's adapter for it where the model ships one (STS: 'similarity').",
    ),
]


@eval_app.command("sts")
def eval_sts(
    model: ModelOpt = "default",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="train, dev or test (test is for reporting only).")] = "test",
    hub: Annotated[bool, typer.Option(help="Load STS-B from the Hugging Face hub instead of --data-dir.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON here.")] = None,
    backend: BackendOpt = None,
    task_adapters: TaskAdaptersOpt = True,
) -> None:
    """STS-B Spearman of cosine similarity at every Matryoshka dim (with the model's similarity adapter, if any)."""
    with user_errors():
        from muses.adapters.tasks import SIMILARITY, list_tasks, load_for_task
        from muses.data.stsb import load_stsb
        from muses.evaluation.sts import evaluate_sts

        chosen = backend_option(backend)
        pairs = load_stsb(split, data_dir, hub=hub)
        use = task_adapters and chosen in (None, "torch") and SIMILARITY in list_tasks(model)
        enc = load_for_task(model, SIMILARITY if use else None, backend=chosen)
        metrics = evaluate_sts(enc, pairs, enc.dims)
        via = f" + its {enc.task} adapter" if enc.task else ""
        _print_sts(metrics, enc.dims, f"STS-B {split} ({len(pairs)} pairs), model {model}{via} on {enc.backend}")
        result = {
            "task": "sts-b",
            "split": split,
            "model": model,
            "task_adapter": enc.task,
            "backend": enc.backend,
            "n_pairs": len(pairs),
            "metrics": metrics,
        }
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print_json(json.dumps(result))


def _print_sts(metrics: dict[str, float], dims: list[int], title: str) -> None:
    table = Table(title=title)
    table.add_column("dim", justify="right")
    table.add_column("Spearman", justify="right")
    table.add_column("Pearson", justify="right")
    for d in dims:
        table.add_row(str(d), f"{metrics[f'spearman@{d}']:.4f}", f"{metrics[f'pearson@{d}']:.4f}")
    console.print(table)


CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Embedding cache (default $MUSES_CACHE_DIR or ~/.cache/muses/embeddings)."),
]


def _cache(cache_dir: Path | None, no_cache: bool) -> EmbeddingCache:
    from muses.evaluation.corpus import EmbeddingCache

    if no_cache:
        return EmbeddingCache(None)
    default = os.environ.get("MUSES_CACHE_DIR") or Path.home() / ".cache" / "muses" / "embeddings"
    return EmbeddingCache(cache_dir or default)


@eval_app.command("all")
def eval_all(
    model: ModelOpt = "default",
    baseline: Annotated[
        list[str] | None,
        typer.Option("--baseline", "-b", help="Baseline spec(s), e.g. flat:default, flat:all-mpnet-base-v2."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/default"),
    profile: Annotated[str, typer.Option(help="full (docs/results.md numbers) or quick (a few minutes).")] = "full",
    tasks: Annotated[str | None, typer.Option(help="Comma-separated subset of tasks (default: the profile's).")] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: Annotated[bool, typer.Option(help="Encode everything afresh.")] = False,
    backend: BackendOpt = None,
    task_adapters: TaskAdaptersOpt = True,
    resume: Annotated[
        bool,
        typer.Option(
            help="Keep each model's finished tasks from OUT/results.json and run only the rest; a model that is "
            "loaded (tasks left, or the efficiency task's) must have the fingerprint recorded there, and a model with "
            "none left is not loaded."
        ),
    ] = False,
) -> None:
    """Run every evaluation task for a model (and baselines); write results.json, report.md and plots."""
    with user_errors():
        from muses.evaluation.baselines import load_corpus_encoder
        from muses.evaluation.report import (
            TaskContext,
            efficiency_models,
            environment,
            finished_blocks,
            get_profile,
            parse_tasks,
            profile_settings,
            resumed_in,
            run_report,
            stale_task_adapters,
            tasks_left,
        )
        from muses.evaluation.report import write_report as write
        from muses.extras import require

        require("matplotlib", "plots")  # the report's figures: fail before the evaluation, not after it
        prof = get_profile(profile)
        task_list = parse_tasks(tasks, prof)
        cache = _cache(cache_dir, no_cache)
        chosen = backend_option(backend)
        specs = [model, *(baseline or [])]
        if resume and len(set(specs)) < len(specs):
            raise InputError("--resume tells models apart by name: give each --model/--baseline once.")
        earlier = {b["model"]: b for b in finished_blocks(out, prof)} if resume else {}
        wanted = [task_list if i == 0 else [t for t in task_list if t != "efficiency"] for i in range(len(specs))]
        left = [tasks_left(earlier.get(spec), w, task_adapters, specs) for spec, w in zip(specs, wanted, strict=True)]
        load_all = "efficiency" in left[0]  # the efficiency task measures every model side by side
        measured = earlier.get(model, {}).get("tasks", {}).get("efficiency")
        dropped = [m for m in efficiency_models(measured) if m not in specs] if load_all and measured else []
        if dropped:  # timings of two runs do not compare, so the rerun replaces the earlier run's numbers
            console.print(f"efficiency runs again for this command's models; the numbers of {', '.join(dropped)} go")
        models = {
            i: load_corpus_encoder(spec, backend=chosen if i == 0 else None)
            for i, spec in enumerate(specs)
            if left[i] or load_all or spec not in earlier
        }
        for i, m in models.items():  # before anything is written: a changed model must not mix with its old numbers
            recorded = earlier.get(specs[i], {}).get("fingerprint")
            if recorded is not None and recorded != m.fingerprint():
                raise InputError(
                    f"{specs[i]} has changed since {out}/results.json was written (fingerprint {m.fingerprint()}, "
                    f"recorded {recorded}): drop --resume to start over, or pass another --out."
                )
        for spec in specs:  # a retrained task adapter leaves the shared weights' fingerprint as it was
            stale = stale_task_adapters(earlier.get(spec), spec)
            if stale:
                raise InputError(
                    f"{spec}: the task adapter that {', '.join(stale)} ran on has changed since {out}/results.json was "
                    "written: drop --resume to start over, or pass another --out."
                )
        command = " ".join(
            [
                "muses eval all --model",
                model,
                *(f"--baseline {b}" for b in baseline or []),
                *(["--backend", backend] if backend else []),
                "--profile",
                prof.name,
                *(["--tasks", ",".join(task_list)] if tasks else []),
                *([] if task_adapters else ["--no-task-adapters"]),
                "--out",
                str(out),
                *(["--resume"] if resume else []),
            ]
        )
        results: dict[str, object] = {
            "command": command,
            "profile": prof.name,
            "profile_settings": profile_settings(prof),
            "environment": environment(),
            "models": [],
        }
        # one block per model, in the command's order, then an earlier run's models this command does not name (kept,
        # so nothing is lost); a model that has not started has none yet (None), so every block written is whole
        blocks: list[dict[str, Any] | None] = [dict(earlier[s]) if s in earlier else None for s in specs]
        blocks += [b for name, b in earlier.items() if name not in specs]
        results["models"] = [b for b in blocks if b is not None]
        others = [models[i] for i in range(1, len(specs)) if i in models]
        for i, spec in enumerate(specs):
            if i not in models:
                console.print(f"kept {spec}: every task finished in {out}/results.json")
                continue
            m = models[i]
            ctx = TaskContext(data_dir, cache, prof, extra_models=others if i == 0 else [], task_adapters=task_adapters)

            def done(name: str, metrics: dict[str, float], seconds: float, who: str = m.name) -> None:
                console.print(f"[green]done[/] {who} {name}: {len(metrics)} metrics in {seconds:.0f} s")
                write(results, out)  # after every task: an interrupted run keeps what it finished (see --resume)

            block = blocks[i]
            if block is None:
                block = blocks[i] = {}
                results["models"] = [b for b in blocks if b is not None]  # run_report fills it before the first write
            else:  # an earlier run's block, topped up here: every run that wrote it is on record
                block["resumed_in"] = [*resumed_in(block), results["environment"]]
            run_report(m, left[i], ctx, on_task=done, into=block)
        path = write(results, out)
        console.print(
            f"wrote {path}/results.json, report.md and plots (cache hits {cache.hits}, misses {cache.misses})"
        )


@eval_app.command("compare")
def eval_compare(
    reports: Annotated[
        list[Path],
        typer.Argument(
            help="results.json files or report folders: each of their models (and baselines) is a column, the first "
            "the reference; a model's reports merge into one column."
        ),
    ],
    as_: Annotated[
        list[str] | None,
        typer.Option("--as", help="Name a model's column: --as /work/exp/v5=v5 (models named alike merge)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the table as markdown here.")] = None,
) -> None:
    """Headline metrics of several reports side by side, each against the first model."""
    with user_errors():
        from muses.evaluation.compare import cell, compare_rows, load_columns, parse_rename, render_markdown

        columns = load_columns(reports, dict(parse_rename(a) for a in as_ or []))
        rows = compare_rows(columns)
        table = Table(title=f"against {columns[0].label}")
        for col in ("task", "metric", *(c.label for c in columns)):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, metric, values in rows:
            cells = [cell(values[0], None)]
            for v in values[1:]:
                delta = None if v is None or values[0] is None else round(v - values[0], 4)
                style = "" if not delta else "green" if delta > 0 else "red"
                cells.append(f"[{style}]{cell(v, values[0])}[/]" if style else cell(v, values[0]))
            table.add_row(task, metric, *cells)
        console.print(table)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_markdown(columns, rows), encoding="utf-8")
            console.print(f"wrote {out}")


@bench_app.command("encode")
def bench_encode_cmd(
    model: ModelOpt = "default",
    data_dir: DataDirOpt = None,
    n_docs: Annotated[int, typer.Option(help="SciFact abstracts to encode.")] = 300,
    repeats: Annotated[int, typer.Option(help="Timed repeats per side (best is kept).")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
    backends: Annotated[
        str | None,
        typer.Option(help="Compare transformer backends instead, e.g. torch,onnx,onnx-int8,openvino-int8."),
    ] = None,
) -> None:
    """MuSES one-pass documents+sentences(+tokens) vs sentence-transformers encoding them separately; with
    --backends, the same model on several transformer backends (corpus at three scales, queries one by one)."""
    with user_errors():
        from muses.encoder import MultiScaleEncoder
        from muses.evaluation.efficiency import backend_speedup, one_pass_speedup

        if backends is None:
            result = one_pass_speedup(MultiScaleEncoder.from_base(model), data_dir, n_docs=n_docs, repeats=repeats)
        else:
            chosen = list(dict.fromkeys(["torch", *(b.strip() for b in backends.split(",") if b.strip())]))
            encoders = {b: MultiScaleEncoder.from_base(model, backend=backend_option(b)) for b in chosen}
            result = backend_speedup(encoders, data_dir, n_docs=n_docs, repeats=repeats)
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print_json(json.dumps(result))


@bench_app.command("search")
def bench_search_cmd(
    model: ModelOpt = "default",
    data_dir: DataDirOpt = None,
    cache_dir: CacheOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
) -> None:
    """Store index latency, memory and recall per dim (64, 384) and kind (flat, HNSW, IVF-PQ) on SciFact."""
    with user_errors():
        from muses.evaluation.baselines import load_corpus_encoder
        from muses.evaluation.efficiency import index_tradeoffs

        result = index_tradeoffs(load_corpus_encoder(model), data_dir, cache=_cache(cache_dir, False))
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        table = Table(title=f"store search, {result['setup']['vectors']} SciFact sentences")
        for col in result["rows"][0]:
            table.add_column(col)
        for row in result["rows"]:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)


bench_app.command("adapters", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    bench_adapters_cmd
)


@bench_app.command("store", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_store_cmd(ctx: typer.Context) -> None:
    """The store at scale: `muses bench store [scale] --sizes 10000,100000 --json FILE` (build, open, memory,
    latency per scale, recall@10, commit time) or `muses bench store quality` (SciFact nDCG@10 per store
    configuration). Runs benchmarks/store_scale.py from the root of a source checkout; --help lists its options."""
    import subprocess
    import sys

    if not (Path.cwd() / "benchmarks" / "store_scale.py").is_file():
        typer.echo(
            "error: muses bench store runs benchmarks/store_scale.py: run it from the root of a source checkout.",
            err=True,
        )
        raise typer.Exit(2)
    args = list(ctx.args)
    if not args or args[0] not in ("scale", "quality"):
        args = ["scale", *args]
    raise typer.Exit(subprocess.run([sys.executable, "-m", "benchmarks.store_scale", *args]).returncode)


@bench_app.command("moe")
def bench_moe_cmd(
    models: Annotated[list[str], typer.Argument(help="Models to compare; the first is the baseline.")],
    articles: Annotated[int, typer.Option(help="Held-out Wikipedia articles to encode.")] = 200,
    repeats: Annotated[int, typer.Option(help="Timed repeats per model, taking turns (best is kept).")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
) -> None:
    """Dense vs MoE encoders: tokens/s (as a ratio to the first model) and total and active parameters."""
    with user_errors():
        from muses.encoder import MultiScaleEncoder
        from muses.evaluation.efficiency import model_throughput

        result = model_throughput({m: MultiScaleEncoder.from_base(m) for m in models}, articles, repeats)
        table = Table("model", "tokens/s", "speed vs first", "params total", "params active")
        for name, r in result["models"].items():
            table.add_row(
                name,
                f"{r['tokens_per_s']:.0f}",
                f"{r['speed_vs_baseline']:.2f}x",
                f"{r['params_total']:,}",
                f"{r['params_active']:,}",
            )
        console.print(table)
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


@bench_app.command("efficiency")
def bench_efficiency(
    model: ModelOpt = "default",
    baseline: Annotated[str, typer.Option(help="Baseline measured in the same run.")] = "flat:default",
    data_dir: DataDirOpt = None,
    n_docs: Annotated[int, typer.Option(help="SciFact abstracts to encode and index.")] = 300,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
) -> None:
    """Encode throughput per scale, FAISS query latency per dim, memory, checkpoint size, peak RSS."""
    with user_errors():
        from muses.evaluation.baselines import load_corpus_encoder
        from muses.evaluation.efficiency import measure_efficiency
        from muses.evaluation.hierarchy import scifact_documents

        models = [load_corpus_encoder(model), load_corpus_encoder(baseline)]
        result = measure_efficiency(models, scifact_documents(data_dir, n_docs))
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print_json(json.dumps(result))


@app.command()
def train(
    config: Annotated[
        list[Path],
        typer.Option(
            "--config",
            "-c",
            help="YAML recipe, e.g. configs/default.yaml. Repeat it to train stages in turn, each from the model "
            "the one before it keeps: -c configs/default.yaml -c configs/siblings.yaml.",
        ),
    ],
    data_dir: DataDirOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting of every stage: --set optim.lr=1e-5 (YAML value)."),
    ] = None,
    fresh: FreshOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Train a MuSES model from a recipe; resumes from output_dir/checkpoint unless --fresh.

    With several recipes, each stage after the first starts from the previous stage's output_dir/best (its own
    model.base is replaced); all are validated before the first trains, and a rerun resumes each in turn.

    Data-parallel under `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPU): same command, same results as one
    process with the same global batch; rank 0 alone prints, logs and writes."""
    with user_errors():
        _train_stages(load_stages(config, set_), data_dir, fresh, device)


def _train_stages(stages: list[TrainConfig], data_dir: Path | None, fresh: bool, device: str | None) -> None:
    """Train ``stages`` (from :func:`load_stages`) in turn; each adapter stage becomes a task adapter of the model."""
    from muses.training import distributed
    from muses.training.stages import train_stages

    if distributed.init_from_env() and not distributed.is_main():
        console.quiet = True
    train_stages(
        stages,
        lambda cfg: run_training(cfg, data_dir, fresh, device, cfg.name),
        log=lambda line: console.print(line, highlight=False, soft_wrap=True),  # a path stays on one line
        main_process=distributed.is_main(),
    )


@app.command()
def ablation(
    configs: Annotated[
        list[Path],
        typer.Argument(help="Recipes, e.g. configs/ablation/*.yaml; a stage list is one arm (its stages in turn)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, ablation.md, plots.")] = Path(
        "reports/ablation"
    ),
    base: Annotated[str, typer.Option(help="The base model evaluated beside the recipes.")] = "default",
    profile: Annotated[
        str, typer.Option(help="Report profile: ablation (subsets, for many recipes) or training (full size).")
    ] = "ablation",
    data_dir: DataDirOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Train each recipe (resuming), evaluate each and the base model, and tabulate them (at 64 and 384 dims)."""
    with user_errors():
        from muses.extras import require
        from muses.training.ablation import run_ablation

        require("matplotlib", "plots")  # the ablation's figures: fail before training, not after it

        folder = run_ablation(
            configs, out, data_dir, _cache(cache_dir, False), base=base, profile=profile, log=console.print
        )
        console.print((folder / "ablation.md").read_text(encoding="utf-8"))


@app.command("plot-runs")
def plot_runs(
    runs: Annotated[list[Path], typer.Argument(help="Training output folders (each with a history.jsonl).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file.")] = Path("loss_curves.png"),
) -> None:
    """Loss curves and dev metrics of several training runs, on shared axes."""
    with user_errors():
        from muses.plots import plot_training

        histories = {}
        for folder in runs:
            if not (folder / "history.jsonl").is_file():
                raise InputError(f"{folder} has no history.jsonl: is it a `muses train` output_dir?")
            histories[folder.name] = folder / "history.jsonl"
        console.print(f"wrote {plot_training(histories, out)}")


plot_app.command("runs")(plot_runs)  # `muses plot runs`: the same command as `muses plot-runs`


@plot_app.command("map")
def plot_map(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for map.png, map.html and map.json.")] = Path(
        "reports/map"
    ),
    model: ModelOpt = "default",
    articles: Annotated[
        int | None,
        typer.Option(
            "--articles", "-n", help="Held-out Wikipedia articles, spread evenly over the topics (default 300)."
        ),
    ] = None,
    per_topic: Annotated[
        int | None, typer.Option(help="Instead of --articles: this many articles of each topic.")
    ] = None,
    dim: Annotated[int | None, typer.Option(help="One of the model's Matryoshka dims (default: full).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sample of articles and t-SNE.")] = 0,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity (capped for small maps).")] = 30.0,
    uncategorized: Annotated[
        bool, typer.Option(help="Keep the catch-all topic Uncategorized (the k-NN evaluation leaves it out).")
    ] = False,
    backend: BackendOpt = None,
) -> None:
    """A 2-D map (t-SNE) of document and sentence vectors of held-out Wikipedia leads, coloured by topic, each
    sentence joined to its document: map.png, an interactive map.html (hover: title, topic, text) and map.json."""
    with user_errors():
        from muses.extras import require

        for module in ("matplotlib", "sklearn", "plotly"):
            require(module, "plots")  # fail before the encoding, not after it
        from muses.embedding_map import build_map, check_out_folder, held_out_articles, write_map
        from muses.encoder import MultiScaleEncoder

        if articles is not None and articles < 2:
            raise InputError(f"--articles {articles}: a map needs at least 2 articles.")
        if per_topic is not None and per_topic < 1:
            raise InputError(f"--per-topic {per_topic}: must be at least 1.")
        if articles is not None and per_topic is not None:
            raise InputError("pass --articles or --per-topic, not both.")
        if not perplexity > 0:
            raise InputError(f"--perplexity {perplexity}: must be positive.")
        check_out_folder(out)
        chosen = backend_option(backend)
        picked = held_out_articles(articles, per_topic, seed=seed, uncategorized=uncategorized)
        enc = MultiScaleEncoder.from_base(model, backend=chosen)
        _check_dim(dim, enc.dims)
        m = build_map(enc, picked, dim=dim, seed=seed, perplexity=perplexity)
        m.summary["model"] = model
        paths = write_map(m, out)
        s = m.summary
        console.print(
            f"wrote {', '.join(str(p) for p in paths.values())}: {s['n_documents']} documents, "
            f"{s['n_sentences']} sentences, {s['n_topics']} topics at {s['dim']}d; "
            f"{s['k']}-NN topic agreement (other documents) map {s['topic_agreement_2d']:.3f} vs original "
            f"{s['topic_agreement_original']:.3f}; sentence nearest its own document: map "
            f"{s['parent_nearest_2d']:.3f} vs original {s['parent_nearest_original']:.3f}"
        )


@app.command()
def run(
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            help="Training recipe(s), trained as stages as in `muses train` (default: configs/default.yaml, then its "
            "similarity adapter configs/similarity.yaml).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/run"),
    train_model: Annotated[bool, typer.Option("--train/--no-train", help="Train first (else: the base).")] = True,
) -> None:
    """The main job: train the recipe, show it on a built-in sample, and report it against the base model.

    Training resumes from each stage's output_dir if a checkpoint is there (a rerun finishes an interrupted run).
    Without a data dir, it trains the first recipe on the Wikipedia articles alone, skips adapter stages (they need
    their task's data) and skips the data-dir tasks of the report.
    """
    with user_errors():
        from muses.data.paths import ENV_VAR

        have_data = data_dir is not None or bool(os.environ.get(ENV_VAR))
        configs = config or [Path("configs/default.yaml"), Path("configs/similarity.yaml")]
        model = "default"
        if train_model:
            overrides = (
                []
                if have_data
                else [
                    "data.stsb=false",
                    "data.scifact=false",
                    "data.dev_stsb_pairs=0",
                    "data.dev_scifact_distractors=null",
                    "data.dev_wikipedia_articles=100",
                    "task_weights={hierarchy: 1.0, stsb: 0.0, scifact: 0.0}",
                ]
            )
            stages = load_stages(configs, overrides)
            if not have_data:
                err_console.print(f"no --data-dir and no ${ENV_VAR}: training on the Wikipedia articles only.")
                kept = [s for s in stages if s.model.adapter is None]
                if len(kept) < len(stages):
                    err_console.print("adapter stages skipped: they train on their task's data.")
                stages = kept
            from muses.training.stages import expand_stage_lists, task_adapter_target

            target = task_adapter_target(stages)
            if target is None:
                first = expand_stage_lists(configs)[0]
                raise InputError(f"{first} trains an adapter: muses run needs a whole-model recipe first.")
            model = str(target)
            _train_stages(stages, data_dir, fresh=False, device=None)
        _show_sample(model)
        if not have_data:
            err_console.print(f"evaluation skipped: no --data-dir and no ${ENV_VAR}.")
            return
        eval_all(
            model=model,
            baseline=["default"] if train_model else None,
            out=out,
            profile="quick",
            tasks=None,
            data_dir=data_dir,
            cache_dir=None,
            no_cache=False,
        )
        _print_summary(out)


def _show_sample(model: str) -> None:
    """Encode the built-in sample at every scale in one pass per document, and zoom a few queries into it."""
    import numpy as np

    from muses.encoder import MultiScaleEncoder
    from muses.samples import SAMPLE_DOCUMENTS, SAMPLE_QUERIES
    from muses.text import make_document

    enc = MultiScaleEncoder.from_base(model)
    docs = [make_document(d["text"], id=d["id"]) for d in SAMPLE_DOCUMENTS]
    embs = enc.encode_documents(docs, scales=("document", "sentence", "token"))
    table = Table(title=f"Built-in sample, one pass per document ({model})")
    for col in ("document", "sentences", "tokens", "windows"):
        table.add_column(col)
    for e in embs:
        table.add_row(str(e.doc.id), str(len(e.sentences)), str(len(e.token_offsets)), str(e.n_windows))
    console.print(table)
    q = enc.encode_queries(SAMPLE_QUERIES)
    zoom = Table(title="Queries: best document, then best sentence inside it")
    for col in ("query", "document", "sentence", "cos"):
        zoom.add_column(col)
    doc_mat = np.stack([e.document for e in embs])
    for query, qv in zip(SAMPLE_QUERIES, q, strict=True):
        best = embs[int(np.argmax(doc_mat @ qv))]
        s = int(np.argmax(best.sentences @ qv))
        zoom.add_row(query, str(best.doc.id), best.doc.sentence_texts()[s], f"{float(best.sentences[s] @ qv):.3f}")
    console.print(zoom)


def _print_summary(out: Path) -> None:
    """Headline metrics: the trained model against each baseline side by side with the difference (384 and 64
    dims), or, for a lone model, its own numbers."""
    from muses.evaluation.report import compare_models, load_results
    from muses.evaluation.tables import HEADLINES, dim_table

    results = load_results(out)
    title = f"Short evaluation report (quick profile; {out}/report.md; full numbers: muses eval all)"
    model, *baselines = results["models"]
    comparisons = [c for b in baselines if (c := compare_models(model, b)) is not None]
    for c in comparisons:
        table = Table(title=f"{title}\n{c.model} (model) against {c.baseline} (baseline); Δ = model - baseline")
        table.add_column("task: metric", overflow="fold")
        for col in (f"{w}\n@{d}" for d in c.dims for w in ("base", "model", "Δ")):
            table.add_column(col, justify="right", no_wrap=True, min_width=7)  # numbers are never cut
        for row in c.rows:
            table.add_row(f"{row[0]}: {row[1]}", *c.cells(row))
        console.print(table)
    if comparisons:
        return
    summary = Table(title=title)
    for col in ("task", "metric", "model", "384d", "64d"):
        summary.add_column(col)
    for block in results["models"]:
        for task, entry in block["tasks"].items():
            _, rows = dim_table(entry["metrics"], HEADLINES.get(task, ()))
            for name, by_dim in rows.items():
                cells = (f"{by_dim[d]:.4f}" if d in by_dim else "" for d in (384, 64))
                summary.add_row(task, name, block["model"], *cells)
    console.print(summary)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()

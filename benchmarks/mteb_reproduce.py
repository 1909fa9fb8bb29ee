"""Reproduce the evaluation harness through MTEB 2.x (issue 18): STS-B and the full SciFact test split, read from
the local data folder (nothing comes from the Hugging Face hub).

Run from the repository root::

    python -m benchmarks.mteb_reproduce --json runs/mteb_reproduce.json
    python -m benchmarks.mteb_reproduce --model runs/context-head-all-claims/best --cache-dir ~/.cache/muses/embeddings

What it compares, per Matryoshka dim (``--dims``, default 384 and 64), harness against MTEB:

- **STS-B test** (1,379 pairs): Spearman of cosine from :func:`muses.evaluation.sts.evaluate_sts` (what
  ``muses eval sts`` prints) against MTEB's ``STSBenchmark`` main score (``cosine_spearman``) with
  :class:`~muses.integrations.mteb.MusesEncoder` at the sentence scale. Tolerance 1e-4.
- **SciFact test** (5,183 abstracts, 300 claims), nDCG@10: the harness is
  :func:`muses.evaluation.retrieval.evaluate_beir_retrieval` with its defaults (what ``muses eval`` reports:
  title and text joined with ``". "``, token rerank depth 100, weighted-sum fusion fitted on the SciFact dev
  split); MTEB runs its ``SciFact`` task with :class:`~muses.integrations.mteb.MusesSearch` (``document``,
  ``sentence``, ``token``, ``fusion`` with the dev-fitted weights and with the store's default weights, ``zoom``)
  and with :class:`~muses.integrations.mteb.MusesEncoder` at the document scale (MTEB's own cosine search).
  Tolerance 0.001. ``zoom`` has no harness counterpart; the store-default fusion row compares with the harness's
  fusion at those weights (the dev-fitted ones where they are equal, else a second harness pass).

The corpus is encoded once (all scales, tokens included: about 1.2 GB of float16 token vectors) into an
:class:`~muses.evaluation.corpus.EmbeddingCache` shared by the harness and MTEB: ``--cache-dir``, or a temporary
folder removed at the end. Prints a table, writes ``--json`` (every number, the timings, the MTEB task versions);
exits 1 when a row is outside its tolerance, 2 on a user error (bad model, data folder...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from muses.data.beir import load_beir
from muses.data.stsb import load_stsb
from muses.encoder import MultiScaleEncoder
from muses.errors import MusesError
from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.retrieval import DOCUMENT, SENTENCE, TOKEN, FusionWeights, evaluate_beir_retrieval, subset_beir
from muses.evaluation.sts import evaluate_sts

STS_TOLERANCE = 1e-4
RETRIEVAL_TOLERANCE = 1e-3


@dataclass
class Row:
    """One comparison: the harness's number (None where it has none) and MTEB's."""

    task: str
    metric: str
    dim: int
    harness: float | None
    mteb: float
    tolerance: float
    seconds: float

    @property
    def diff(self) -> float | None:
        return None if self.harness is None else abs(self.mteb - self.harness)

    @property
    def ok(self) -> bool:
        return self.diff is None or self.diff <= self.tolerance


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_stsb(enc: MultiScaleEncoder, dims: list[int], data_dir: Path | None) -> tuple[list[Row], dict[str, float]]:
    """STS-B test: the harness at every dim (one encoding), then MTEB's STSBenchmark once per dim."""
    from muses.integrations.mteb import MusesEncoder, evaluate_task, stsb_task

    pairs = load_stsb("test", data_dir)
    harness, seconds = _timed(evaluate_sts, enc, pairs, dims)
    print(f"harness STS-B: {seconds:.0f} s", flush=True)
    task = stsb_task(pairs)
    rows = []
    for d in dims:
        scores, seconds = _timed(evaluate_task, MusesEncoder(enc, "sentence", d), task)
        ref = harness[f"spearman@{d}"]
        rows.append(Row("STS-B test", "Spearman (cosine)", d, ref, scores["main_score"], STS_TOLERANCE, seconds))
        print(f"MTEB STSBenchmark @{d}: {scores['main_score']:.4f} ({seconds:.0f} s)", flush=True)
    return rows, harness


def run_scifact(
    enc: MultiScaleEncoder, dims: list[int], data_dir: Path | None, cache: EmbeddingCache, max_docs: int | None = None
) -> tuple[list[Row], dict[str, float]]:
    """SciFact test: ``evaluate_beir_retrieval`` (= ``muses eval``), then MTEB's SciFact with every MuSES search."""
    from muses.integrations.mteb import DEFAULT_FUSION_WEIGHTS, MusesEncoder, MusesSearch, evaluate_task, scifact_task

    model = MusesCorpusEncoder(enc)
    harness, seconds = _timed(
        evaluate_beir_retrieval, model, "scifact", "test", cache=cache, dims=dims, max_docs=max_docs, data_dir=data_dir
    )
    print(f"harness SciFact (encoding included): {seconds:.0f} s", flush=True)
    names = {"document": DOCUMENT, "sentence": SENTENCE, "token": TOKEN}
    default = {names[s]: w for s, w in DEFAULT_FUSION_WEIGHTS.items()}
    fitted = {d: {n: harness[f"fusion-wsum/weight-{n}@{d}"] for n in names.values()} for d in dims}
    default_key = "fusion-wsum"
    if any(fitted[d] != default for d in dims):  # the harness at the store's weights: a second (cached) pass
        fixed = FusionWeights("wsum", {d: default for d in dims}, fitted_on="store default")
        again = evaluate_beir_retrieval(
            model, "scifact", "test", cache=cache, dims=dims, fusion=[fixed], max_docs=max_docs, data_dir=data_dir
        )
        harness |= {k.replace("fusion-wsum/", "fusion-default/"): v for k, v in again.items() if "fusion" in k}
        default_key = "fusion-default"
    data = load_beir("scifact", "test", data_dir)
    task = scifact_task(subset_beir(data, max_docs) if max_docs else data)
    rows = []
    for d in dims:
        # (label, harness key, scoring or None for MusesEncoder, MusesSearch options). The models are made one at a
        # time, so that a run's corpus vectors (with tokens: about 1.2 GB) are freed before the next run's are read
        runs: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
            ("document (MusesSearch)", DOCUMENT, "document", {}),
            ("document (MusesEncoder, MTEB's search)", DOCUMENT, None, {}),
            ("sentence max-sim", SENTENCE, "sentence", {}),
            ("token MaxSim rerank", TOKEN, "token", {}),
            ("fusion, dev-fitted weights", "fusion-wsum", "fusion", {"fusion_weights": fitted[d]}),
            ("fusion, store default weights", default_key, "fusion", {}),
            ("zoom", None, "zoom", {}),
        ]
        for label, key, scoring, options in runs:
            mteb_model: Any = (
                MusesEncoder(enc, "document", d, cache=cache)
                if scoring is None
                else MusesSearch(enc, scoring, d, cache=cache, **options)  # type: ignore[arg-type]
            )
            scores, seconds = _timed(evaluate_task, mteb_model, task)
            del mteb_model
            ref = harness[f"{key}/ndcg@10@{d}"] if key else None
            ndcg = scores["ndcg_at_10"]
            rows.append(Row("SciFact test", f"nDCG@10 {label}", d, ref, ndcg, RETRIEVAL_TOLERANCE, seconds))
            print(f"MTEB SciFact @{d} {label}: {ndcg:.4f} ({seconds:.0f} s)", flush=True)
    return rows, harness


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (e.g. the harness's ``fit-ndcg`` of fixed weights) as None: strict
    JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def table(rows: list[Row]) -> str:
    """The comparison as a fixed-width text table."""
    head = f"{'task':<13} {'metric':<50} {'dim':>4} {'harness':>8} {'MTEB':>8} {'|diff|':>9}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        harness = "-" if r.harness is None else f"{r.harness:.4f}"
        diff = "-" if r.diff is None else f"{r.diff:.2e}"
        lines.append(
            f"{r.task:<13} {r.metric:<50} {r.dim:>4} {harness:>8} {r.mteb:>8.4f} {diff:>9}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run both comparisons, print the table and write the JSON; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mteb_reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="MuSES model folder, base model, or 'default'")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root (default $MUSES_DATA_DIR)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: a temporary one)")
    parser.add_argument("--dims", default="384,64", help="comma-separated Matryoshka dims")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the results here")
    parser.add_argument("--skip-sts", action="store_true", help="SciFact only")
    parser.add_argument(
        "--max-docs", type=int, default=None, help="SciFact on its first N abstracts only (subset_beir; a quick check)"
    )
    args = parser.parse_args(argv)
    try:
        import mteb

        from muses.integrations.mteb import TASK_REVISIONS

        dims = [int(d) for d in args.dims.split(",") if d.strip()]
        enc = MultiScaleEncoder.from_base(args.model)
        rows: list[Row] = []
        harness: dict[str, dict[str, float]] = {}
        start = time.perf_counter()
        if not args.skip_sts:
            sts_rows, harness["sts"] = run_stsb(enc, dims, args.data_dir)
            rows += sts_rows
        with tempfile.TemporaryDirectory(prefix="mteb-reproduce-") as tmp:
            cache = EmbeddingCache(args.cache_dir or tmp)
            scifact_rows, harness["scifact"] = run_scifact(enc, dims, args.data_dir, cache, args.max_docs)
            rows += scifact_rows
        total = time.perf_counter() - start
    except MusesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    print(f"total {total:.0f} s")
    tasks = list(TASK_REVISIONS)
    result = {
        "command": " ".join(["python -m benchmarks.mteb_reproduce", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "fingerprint": enc.fingerprint(),
        "dims": dims,
        "mteb_version": mteb.__version__,
        "mteb_tasks": {n: {"dataset": mteb.get_task(n).metadata.dataset, "pinned": TASK_REVISIONS[n]} for n in tasks},
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": [asdict(r) | {"diff": r.diff, "ok": r.ok} for r in rows],
        "harness": harness,
        "seconds": total,
    }
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(_finite(result), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

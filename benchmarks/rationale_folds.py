"""The WiSE-FT guard of a recipe pooled over k runs, each holding out one fold of the rationale claims.

One run of a recipe is judged on 398 SciFact dev claims, 151 of them with rationale evidence: too few to bound a
difference of a few thousandths (docs/results.md, round 21). Run the recipe k times with
``--set data.dev_scifact_rationale_fold=[i,k]``, ``i = 0 .. k-1``: run ``i`` does not train on the claims of fold
``i`` and reads them on dev beside the usual pool, and its trainer keeps every claim's value of every mix
(``interpolation-readings.json``). This script pools the runs: for each mix and guarded metric, each query's
difference to alpha 0 is averaged over the runs that read it (a fold's claims: one run; the shared dev claims and
the Wikipedia queries: every run), and the mean and its bootstrap bound (``interpolate_confidence``) are taken over
every query, the SciFact claims weighed by kind as the recipe weighs them. A mix is kept as the trainer keeps one:
no guarded metric's bound below ``-tolerance``, then the best pooled score (``interpolate_weights``). Each SciFact
claim metric's difference is also given for the claims with rationale evidence and those without, apart.

Usage::

    python benchmarks/rationale_folds.py --config configs/context-head.yaml --folds 5 \\
        --run 0=runs/fold0 --run 1=runs/fold1 ... --out docs/reports/dev-pool/rationale-folds.json

Fewer runs than ``--folds`` are pooled too (the verdict says how many). Prints the verdict table; writes it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from muses.data.scifact import load_scifact_claims
from muses.training.checkpoint import INTERPOLATION_READINGS
from muses.training.config import load_config
from muses.training.data import fold_claim_ids, scifact_kind_weights
from muses.training.dev import dev_score, metric_task, paired_bootstrap_bound, weighted_mean

Readings = dict[str, dict[str, dict[str, float]]]  # alpha -> "dev/<task>@<dim>" -> query id -> value
SCIFACT_CLAIMS = ("scifact-document", "scifact-sentence")  # the metrics the kind weights apply to


def load_run(path: Path, fold: int, folds: int, data_dir: str | None) -> Readings:
    """A run's per-query readings, checked to be those of fold ``fold``: its SciFact dev claims hold that fold's
    rationale claims and no other fold's."""
    file = path / INTERPOLATION_READINGS
    if not file.is_file():
        raise ValueError(f"{file} not found: train the recipe with interpolate_confidence set, to the end")
    readings: Readings = json.loads(file.read_text(encoding="utf-8"))
    claims = set(readings["0.0"]["dev/scifact-document@64"])
    if not set(fold_claim_ids((fold, folds), data_dir)) <= claims:
        raise ValueError(f"{path} is not fold {fold} of {folds}: it does not read that fold's claims on dev")
    for other in set(range(folds)) - {fold}:
        if set(fold_claim_ids((other, folds), data_dir)) & claims:
            raise ValueError(f"{path} reads fold {other}'s claims on dev, not only fold {fold}'s")
    return readings


def pooled_differences(runs: list[Readings], alpha: str, metric: str) -> dict[str, float]:
    """Query id -> its ``alpha`` minus alpha 0 difference of ``metric``, averaged over the runs that read it."""
    sums: dict[str, list[float]] = {}
    for r in runs:
        mix, start = r[alpha][metric], r["0.0"][metric]
        for q, v in mix.items():
            sums.setdefault(q, []).append(v - start[q])
    return {q: float(np.mean(d)) for q, d in sums.items()}


def pooled_values(runs: list[Readings], alpha: str, metric: str) -> dict[str, float]:
    """Query id -> ``metric``'s value at ``alpha``, averaged over the runs that read it."""
    sums: dict[str, list[float]] = {}
    for r in runs:
        for q, v in r[alpha][metric].items():
            sums.setdefault(q, []).append(v)
    return {q: float(np.mean(v)) for q, v in sums.items()}


def verdict(
    runs: list[Readings],
    tolerance: Mapping[str, float],
    confidence: float,
    score_weights: Mapping[str, float] | None,
    kind_weights: Mapping[str, float] | None,
    groups: Mapping[str, set[str]] | None = None,
) -> dict[str, Any]:
    """Every alpha's pooled differences and bounds on the ``tolerance`` metrics (with each of ``groups``' mean
    difference, unweighted, on the SciFact claim metrics), the pooled differences of the metrics that score it, its
    misses and pooled score, and the alpha kept (alpha 0 unless a mix without misses scores higher)."""
    alphas = sorted(set.intersection(*(set(r) for r in runs)), key=float)
    out: dict[str, Any] = {"alphas": {}}
    for alpha in alphas:
        metrics = sorted(set.intersection(*(set(r[alpha]) for r in runs)))
        rows: dict[str, dict[str, Any]] = {}
        gains: dict[str, float] = {}
        for m in metrics:
            if alpha == "0.0":
                continue
            diff = pooled_differences(runs, alpha, m)
            weights = kind_weights if metric_task(m) in SCIFACT_CLAIMS else None
            if score_weights and score_weights.get(metric_task(m), 0) > 0:
                gains[m] = weighted_mean(diff, weights)
            if metric_task(m) not in tolerance:
                continue
            bound = paired_bootstrap_bound(diff, dict.fromkeys(diff, 0.0), confidence, weights)
            rows[m] = {"difference": weighted_mean(diff, weights), "bound": bound, "queries": len(diff)}
            if groups and metric_task(m) in SCIFACT_CLAIMS:
                rows[m]["by_group"] = {
                    name: {
                        "difference": weighted_mean({q: diff[q] for q in ids & set(diff)}),
                        "queries": len(ids & set(diff)),
                    }
                    for name, ids in groups.items()
                }
        means = {
            m: weighted_mean(pooled_values(runs, alpha, m), kind_weights if metric_task(m) in SCIFACT_CLAIMS else None)
            for m in metrics
        }
        misses = sorted(m for m, row in rows.items() if row["bound"] < -tolerance[metric_task(m)])
        out["alphas"][alpha] = {"score": dev_score(means, score_weights), "guarded": rows, "misses": misses}
        out["alphas"][alpha]["scored"] = gains
    kept = "0.0"
    for alpha, row in out["alphas"].items():
        if not row["misses"] and row["score"] > out["alphas"][kept]["score"]:
            kept = alpha
    out["kept"] = float(kept)
    return out


def _run_arg(item: str) -> tuple[int, Path]:
    """``I=PATH`` -> ``(I, PATH)``."""
    fold, sep, path = item.partition("=")
    if not sep or not fold.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"{item!r}: give I=PATH, fold I's output_dir")
    return int(fold), Path(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the recipe the runs trained (tolerance, weights)")
    ap.add_argument("--folds", type=int, required=True, help="k of data.dev_scifact_rationale_fold=[i,k]")
    ap.add_argument(
        "--run", action="append", required=True, type=_run_arg, help="I=PATH: the output_dir of fold I's run"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    folds_read = [fold for fold, _ in args.run]
    if args.folds < 2 or not all(0 <= f < args.folds for f in folds_read) or len(set(folds_read)) < len(folds_read):
        ap.error(f"--run: one run per fold, each I with 0 <= I < --folds {args.folds} (k >= 2); got {folds_read}")
    cfg = load_config(args.config)
    if cfg.interpolate_tolerance is None or cfg.interpolate_confidence is None:
        ap.error(f"{args.config} sets no interpolate_tolerance with interpolate_confidence: nothing to pool")
    try:
        runs = [load_run(path, fold, args.folds, args.data_dir) for fold, path in args.run]
    except ValueError as e:
        ap.error(str(e))
    claims = set().union(*(set(r["0.0"]["dev/scifact-document@64"]) for r in runs))
    kinds = scifact_kind_weights(claims, args.data_dir) if cfg.data.dev_scifact_kind_weights else None
    with_evidence = {c.id for c in load_scifact_claims("train", args.data_dir) if c.has_evidence}
    groups = {"with evidence": claims & with_evidence, "without evidence": claims - with_evidence}
    tolerance = {str(k): v for k, v in cfg.interpolate_tolerance.items()}
    weights = {str(k): v for k, v in cfg.interpolate_weights.items()} if cfg.interpolate_weights else None
    result = verdict(runs, tolerance, cfg.interpolate_confidence, weights, kinds, groups)
    result |= {"config": str(args.config), "folds": args.folds, "runs": sorted(folds_read), "claims": len(claims)}
    result["confidence"] = cfg.interpolate_confidence
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{len(runs)} of {args.folds} folds, {len(claims)} SciFact claims; kept alpha {result['kept']}")
    for alpha, row in result["alphas"].items():
        for m, g in row["guarded"].items():
            kinds_line = "; ".join(
                f"{k} {v['difference']:+.4f} ({v['queries']})" for k, v in g.get("by_group", {}).items()
            )
            head = f"{alpha:>5} {m:32} {g['difference']:+.4f} (bound {g['bound']:+.4f}, {g['queries']} queries)"
            print(head, kinds_line)
        for m, d in row["scored"].items():
            print(f"{alpha:>5} {m:32} {d:+.4f} (scored)")
        print(f"{alpha:>5} score {row['score']:.4f} misses {row['misses'] or 'none'}")


if __name__ == "__main__":
    main()

"""The WiSE-FT guard of a recipe pooled over k runs, each holding out one fold of the rationale claims.

One run of a recipe is judged on 398 SciFact dev claims, 94 of them with rationale evidence: too few to bound a
difference of a few thousandths (docs/results.md, round 21). Run the recipe k times with ``--set
data.dev_scifact_rationale_fold=[i,k]``, ``i = 0 .. k-1``: run ``i`` does not train on the claims of fold ``i`` (of
the claims with evidence, and of those without when the recipe trains on them too,
``data.scifact_claims_without_evidence``) and reads them on dev beside the usual pool, and its trainer keeps every
claim's value of every mix (``interpolation-readings.json``). This script pools the runs: for each mix and guarded
metric, each query's difference to alpha 0 is averaged over the runs that read it (a fold's claims: one run; the
shared dev claims and the Wikipedia queries: every run), and the mean and its bootstrap bound
(``interpolate_confidence``) are taken over every query, the SciFact claims weighed by kind as the recipe weighs
them. A mix is kept as the trainer keeps one: no guarded metric's bound below ``-tolerance``, then the best pooled
score (``interpolate_weights``). Each SciFact claim metric's difference is also given for the claims with rationale
evidence and those without, apart.

The bound resamples queries, not runs: a shared query's difference is already a mean over k models, so it varies
less than a fold's claim, read by one; the spread between the k trainings shows only through the queries. Only
recipes the per-query readings can judge are pooled: their tolerance and ``interpolate_weights`` name retrieval
metrics only, and they have no ``interpolate_references`` (each refused in one line otherwise).

Usage::

    python benchmarks/rationale_folds.py --config configs/context-head.yaml --folds 5 \\
        --run 0=runs/fold0 --run 1=runs/fold1 ... --out docs/reports/dev-pool/rationale-folds/pooled.json

Fewer runs than ``--folds`` are pooled too (the verdict says how many). Prints the verdict table; writes it.

``--against I=PATH`` (once per fold of ``--run``) names the runs of another recipe over the same folds, e.g. the
same recipe at other steps. Each alpha both sets read is then compared paired: a query's value pooled over this
set's runs minus its value pooled over the other set's, on every metric with per-query values, with the same
bootstrap bound (``"against"`` in the output)::

    python benchmarks/rationale_folds.py --config configs/context-head-all-claims.yaml --folds 5 \
        --run 0=runs/300-fold0 ... --against 0=runs/190-fold0 ... --out paired.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from muses.data.scifact import load_scifact_claims
from muses.errors import MusesError
from muses.training.checkpoint import INTERPOLATION_READINGS
from muses.training.config import TrainConfig, load_config
from muses.training.data import fold_claim_ids, scifact_kind_weights
from muses.training.dev import dev_score, metric_task, paired_bootstrap_bound, weighted_mean

Readings = dict[str, dict[str, dict[str, float]]]  # alpha -> "dev/<task>@<dim>" -> query id -> value
SCIFACT_CLAIMS = ("scifact-document", "scifact-sentence")  # the metrics the kind weights apply to
CLAIMS = "dev/scifact-document@64"  # a metric every SciFact dev claim of a run has a value of


def load_run(path: Path, fold: int, folds: int, data_dir: str | None, without_evidence: bool = False) -> Readings:
    """A run's per-query readings, checked to be those of fold ``fold``: its SciFact dev claims hold that fold's
    rationale claims and no other fold's (and, for a recipe that trains on them too,
    ``data.scifact_claims_without_evidence``, the same of the claims without evidence).

    Raises:
        ValueError: the readings are missing, are not a finished run's, or are another fold's.
    """
    file = path / INTERPOLATION_READINGS
    if not file.is_file():
        raise ValueError(f"{file} not found: train the recipe with interpolate_confidence set, to the end")
    readings: Readings = json.loads(file.read_text(encoding="utf-8"))
    if CLAIMS not in readings.get("0.0", {}):
        raise ValueError(f"{file} holds no SciFact dev claims of alpha 0 ({CLAIMS}): not a run of this recipe")
    claims = set(readings["0.0"][CLAIMS])
    for evidence in (True, False) if without_evidence else (True,):
        kind = "claims" if evidence else "claims without evidence"
        if not set(fold_claim_ids((fold, folds), data_dir, evidence)) <= claims:
            raise ValueError(f"{path} is not fold {fold} of {folds}: it does not read that fold's {kind} on dev")
        for other in sorted(set(range(folds)) - {fold}):
            if set(fold_claim_ids((other, folds), data_dir, evidence)) & claims:
                raise ValueError(f"{path} reads fold {other}'s {kind} on dev, not only fold {fold}'s")
    return readings


def _pooled(runs: list[Readings], alpha: str, metric: str, against_start: bool) -> dict[str, float]:
    """Query id -> ``metric`` at ``alpha`` (minus alpha 0's with ``against_start``), averaged over the runs that read
    the query."""
    values: dict[str, list[float]] = {}
    for r in runs:
        start = r["0.0"][metric] if against_start else {}
        for q, v in r[alpha][metric].items():
            values.setdefault(q, []).append(v - start[q] if against_start else v)
    return {q: float(np.mean(v)) for q, v in values.items()}


def pooled_differences(runs: list[Readings], alpha: str, metric: str) -> dict[str, float]:
    """Query id -> its ``alpha`` minus alpha 0 difference of ``metric``, averaged over the runs that read it."""
    return _pooled(runs, alpha, metric, against_start=True)


def _guarded(
    diff: Mapping[str, float],
    weights: Mapping[str, float] | None,
    confidence: float,
    groups: Mapping[str, set[str]] | None,
    seed: int,
) -> dict[str, Any]:
    """A guarded metric's pooled difference, its bound, its query count and (``groups``) each group's plain mean."""
    row: dict[str, Any] = {
        "difference": weighted_mean(diff, weights),
        "bound": paired_bootstrap_bound(diff, dict.fromkeys(diff, 0.0), confidence, weights, seed),
        "queries": len(diff),
    }
    if groups:
        row["by_group"] = {
            name: {"difference": weighted_mean({q: diff[q] for q in ids & set(diff)}), "queries": len(ids & set(diff))}
            for name, ids in groups.items()
        }
    return row


def verdict(
    runs: list[Readings],
    tolerance: Mapping[str, float],
    confidence: float,
    score_weights: Mapping[str, float],
    kind_weights: Mapping[str, float] | None,
    groups: Mapping[str, set[str]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every alpha's pooled differences and bounds on the ``tolerance`` metrics (with each of ``groups``' mean
    difference, unweighted, on the SciFact claim metrics), the pooled differences of the metrics that score it, its
    misses and pooled score, and the alpha kept (alpha 0 unless a mix without misses scores higher)."""
    alphas = sorted(set.intersection(*(set(r) for r in runs)), key=float)
    out: dict[str, Any] = {"alphas": {}}
    for alpha in alphas:
        metrics = sorted(set.intersection(*(set(r[alpha]) for r in runs)))
        weights = {m: kind_weights if metric_task(m) in SCIFACT_CLAIMS else None for m in metrics}
        means = {m: weighted_mean(_pooled(runs, alpha, m, against_start=False), weights[m]) for m in metrics}
        diffs = {m: pooled_differences(runs, alpha, m) for m in metrics if alpha != "0.0"}
        rows = {
            m: _guarded(d, weights[m], confidence, groups if metric_task(m) in SCIFACT_CLAIMS else None, seed)
            for m, d in diffs.items()
            if metric_task(m) in tolerance
        }
        out["alphas"][alpha] = {
            "score": dev_score(means, score_weights),
            "guarded": rows,
            "scored": {m: weighted_mean(d, weights[m]) for m, d in diffs.items() if score_weights.get(metric_task(m))},
            "misses": sorted(m for m, row in rows.items() if row["bound"] < -tolerance[metric_task(m)]),
        }
    kept = "0.0"
    for alpha, row in out["alphas"].items():
        if not row["misses"] and row["score"] > out["alphas"][kept]["score"]:
            kept = alpha
    out["kept"] = float(kept)
    return out


def paired(
    runs: list[Readings],
    others: list[Readings],
    confidence: float,
    kind_weights: Mapping[str, float] | None,
    groups: Mapping[str, set[str]] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Alpha -> metric -> ``runs`` minus ``others`` at that alpha: each query's value pooled over each set's runs,
    the difference's (kind-weighted) mean, its bootstrap bound and query count (each of ``groups``' mean on the
    SciFact claim metrics), for every alpha and metric that both sets read.

    Raises:
        ValueError: a metric's queries differ between the two sets (not the same folds of the same dev sets).
    """
    both = [*runs, *others]
    out: dict[str, dict[str, Any]] = {}
    for alpha in sorted(set.intersection(*(set(r) for r in both)), key=float):
        out[alpha] = {}
        for m in sorted(set.intersection(*(set(r[alpha]) for r in both))):
            mine, theirs = _pooled(runs, alpha, m, against_start=False), _pooled(others, alpha, m, against_start=False)
            if set(mine) != set(theirs):
                raise ValueError(f"{m} at alpha {alpha}: --run and --against read other queries; give the same folds")
            scifact = metric_task(m) in SCIFACT_CLAIMS
            diff = {q: v - theirs[q] for q, v in mine.items()}
            out[alpha][m] = _guarded(
                diff, kind_weights if scifact else None, confidence, groups if scifact else None, seed
            )
    return out


def _run_arg(item: str) -> tuple[int, Path]:
    """``I=PATH`` -> ``(I, PATH)``."""
    fold, sep, path = item.partition("=")
    if not sep or not (fold.isascii() and fold.isdigit()) or not path:
        raise argparse.ArgumentTypeError(f"{item!r}: give I=PATH, fold I's output_dir")
    return int(fold), Path(path)


def _check_recipe(cfg: TrainConfig, tasks_read: set[str]) -> str | None:
    """Why the per-query readings cannot judge recipe ``cfg`` as its trainer does, or None when they can."""
    if cfg.interpolate_tolerance is None or cfg.interpolate_confidence is None:
        return "it sets no interpolate_tolerance with interpolate_confidence: nothing to pool"
    if not cfg.interpolate_weights:
        return "it sets no interpolate_weights: the trainer would score the mixes on dev/score, which is not pooled"
    if cfg.interpolate_references:
        return "its interpolate_references are judged on their own readings, which the runs do not keep"
    unread = sorted({str(t) for t in [*cfg.interpolate_tolerance, *cfg.interpolate_weights]} - tasks_read)
    if unread:
        return (
            f"the runs keep no per-query values of {unread} (retrieval metrics and scifact-hierarchy have them; "
            "benchmarks/reread_mixes.py adds one to a finished run's)"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="the recipe the runs trained (tolerance, weights)")
    ap.add_argument("--folds", type=int, required=True, help="k of data.dev_scifact_rationale_fold=[i,k]")
    ap.add_argument(
        "--run", action="append", required=True, type=_run_arg, help="I=PATH: the output_dir of fold I's run"
    )
    ap.add_argument(
        "--against", action="append", default=[], type=_run_arg, help="I=PATH: fold I's run of the set to compare with"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    folds_read = [fold for fold, _ in args.run]
    if args.folds < 2 or not all(0 <= f < args.folds for f in folds_read) or len(set(folds_read)) < len(folds_read):
        ap.error(f"--run: one run per fold, each I with 0 <= I < --folds {args.folds} (k >= 2); got {folds_read}")
    against = sorted(fold for fold, _ in args.against)
    if args.against and against != sorted(folds_read):
        ap.error(f"--against: one run per fold of --run ({sorted(folds_read)}); got {against}")
    try:
        cfg = load_config(args.config)
        unevidenced = cfg.data.scifact_claims_without_evidence
        runs = [load_run(path, fold, args.folds, args.data_dir, unevidenced) for fold, path in args.run]
        others = [load_run(path, fold, args.folds, args.data_dir, unevidenced) for fold, path in args.against]
        with_evidence = {c.id for c in load_scifact_claims("train", args.data_dir) if c.has_evidence}
    except (MusesError, ValueError) as e:
        ap.error(str(e))
    problem = _check_recipe(cfg, {metric_task(m) for m in set.intersection(*(set(r["0.0"]) for r in runs))})
    if problem is not None:
        ap.error(f"{args.config}: {problem}")
    assert cfg.interpolate_tolerance is not None and cfg.interpolate_weights and cfg.interpolate_confidence
    claims = set().union(*(set(r["0.0"][CLAIMS]) for r in runs))
    kinds = scifact_kind_weights(claims, args.data_dir) if cfg.data.dev_scifact_kind_weights else None
    groups = {"with evidence": claims & with_evidence, "without evidence": claims - with_evidence}
    tolerance = {str(k): v for k, v in cfg.interpolate_tolerance.items()}
    weights = {str(k): v for k, v in cfg.interpolate_weights.items()}
    result = verdict(runs, tolerance, cfg.interpolate_confidence, weights, kinds, groups, cfg.seed)
    result |= {"config": str(args.config), "folds": args.folds, "runs": sorted(folds_read), "claims": len(claims)}
    result["confidence"] = cfg.interpolate_confidence
    if others:
        try:
            compared = paired(runs, others, cfg.interpolate_confidence, kinds, groups, cfg.seed)
        except ValueError as e:
            ap.error(str(e))
        result["against"] = {"runs": {str(f): str(p) for f, p in sorted(args.against)}, "alphas": compared}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print(result, len(runs), args.folds, len(claims))


def _head(alpha: str, metric: str, g: Mapping[str, Any]) -> str:
    """One row of :func:`_guarded`: alpha, metric, difference, bound and query count."""
    return f"{alpha:>5} {metric:32} {g['difference']:+.4f} (bound {g['bound']:+.4f}, {g['queries']} queries)"


def _print(result: Mapping[str, Any], runs: int, folds: int, claims: int) -> None:
    print(f"{runs} of {folds} folds, {claims} SciFact claims; kept alpha {result['kept']}")
    for alpha, row in result["alphas"].items():
        for m, g in row["guarded"].items():
            kinds_line = "; ".join(
                f"{k} {v['difference']:+.4f} ({v['queries']})" for k, v in g.get("by_group", {}).items()
            )
            print(_head(alpha, m, g), kinds_line)
        for m, d in row["scored"].items():
            print(f"{alpha:>5} {m:32} {d:+.4f} (scored)")
        print(f"{alpha:>5} score {row['score']:.4f} misses {row['misses'] or 'none'}")
    for alpha, rows in result.get("against", {}).get("alphas", {}).items():
        for m, g in rows.items():
            print(_head(alpha, m, g), "against")


if __name__ == "__main__":
    main()

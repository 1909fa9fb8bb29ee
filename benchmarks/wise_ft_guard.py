"""The WiSE-FT tolerance guard with a stated uncertainty, on the mixes of one checkpoint and several SciFact dev pools.

Model selection keeps a mix only if its SciFact dev retrieval stays within a tolerance of the starting model's
(``interpolate_tolerance``; docs/results.md, rounds 16 to 20). This script reads each mix once per pool, keeps every
claim's value (:func:`muses.training.dev.read_dev`), and then judges each mix four ways, without encoding again:
the difference of the means or its bootstrap bound (``interpolate_confidence``), each with the claims as they come
or weighed by kind (``data.dev_scifact_kind_weights``). The pools:

- ``own``: the 151 held-out dev claims over their own pool (cited abstracts and ``--distractors`` drawn with seed
  0, the recipe's), with the dev evidence set (claims -> rationale sentences over that pool);
- ``grown-seed<S>``: those claims and the 247 ``train-fit`` claims without rationale evidence
  (``data.dev_scifact_unused_claims``) over the pool drawn with seed ``S`` and the cited abstracts, for each
  ``--seeds`` value: the same claims over two distractor draws show what the draw alone moves.

Usage::

    python benchmarks/wise_ft_guard.py --checkpoint RUN/best-checkpoint --config configs/context-head.yaml \\
        --alphas 0,0.25,0.5,1 --out docs/reports/dev-pool/guard.json

``--out`` is resumable: readings already in it are kept (it refuses readings of another checkpoint, recipe or
pool). Prints the verdict table; writes readings and verdicts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from muses.data.beir import load_beir
from muses.encoder import MultiScaleEncoder
from muses.errors import MusesError
from muses.training.config import load_config
from muses.training.data import load_training_data, scifact_dev_evidence, scifact_kind_weights, with_unused_claims
from muses.training.dev import DevSet, paired_bootstrap_bound, read_dev, scifact_dev_subset, weighted_mean
from muses.training.trainer import Trainer

GUARDED = [f"dev/scifact-{s}@{d}" for s in ("document", "sentence") for d in (64, 384)]
EVIDENCE = [
    "dev/scifact-evidence@64",
    "dev/scifact-evidence@384",
]  # what the recipe selects on; every claim has evidence


def pools(distractors: int, seeds: list[int], data_dir: str | None) -> dict[str, DevSet]:
    """The dev sets of the module docstring, their SciFact claims weighed by kind (``scifact_weights``)."""
    held = load_beir("scifact", split="dev", data_dir=data_dir)
    out: dict[str, DevSet] = {}
    for seed in sorted({0, *seeds}):
        own = scifact_dev_subset(held, distractors, seed=seed)
        if seed == 0:
            out["own"] = DevSet(scifact=own, evidence=scifact_dev_evidence(own, data_dir))
        if seed in seeds:
            out[f"grown-seed{seed}"] = DevSet(scifact=with_unused_claims(own, data_dir))
    for dev in out.values():
        assert dev.scifact is not None
        dev.scifact_weights = scifact_kind_weights(dev.scifact, data_dir)
    return out


def read_mixes(
    checkpoint: Path,
    config: Path,
    alphas: list[float],
    devs: dict[str, DevSet],
    record: dict[str, Any],
    out: Path,
    data_dir: str | None,
) -> None:
    """Every ``alpha * checkpoint + (1 - alpha) * start`` mix read on every pool (the start: the recipe's model
    with its fresh heads, as the trainer mixes); each reading is written to ``out`` as it finishes."""
    overrides = {"output_dir": str(out.parent / ".wise-ft-guard-run"), "data.dev_stsb_pairs": 0}
    overrides |= {"data.dev_wikipedia_articles": 0, "data.dev_wikipedia_ict": False}
    cfg = load_config(config, {**overrides, "data.dev_wikipedia_sentences": False})
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    start, best = trainer._start, MultiScaleEncoder.load(checkpoint, backend="torch").state_dict()
    assert start is not None
    for alpha in alphas:
        mixed = {k: torch.lerp(start[k], v, alpha) if v.is_floating_point() else v for k, v in best.items()}
        trainer.encoder.load_state_dict(mixed)
        for name, dev in devs.items():
            key = f"{alpha}/{name}"
            if key in record["readings"]:
                continue
            t0 = time.perf_counter()
            r = read_dev(trainer.encoder, dev)
            record["readings"][key] = {"metrics": r.metrics, "per_query": r.per_query}
            out.write_text(json.dumps(record) + "\n", encoding="utf-8")
            print(key, f"read in {time.perf_counter() - t0:.0f} s", flush=True)


def verdicts(
    record: dict[str, Any], devs: dict[str, DevSet], tolerance: float, confidence: float
) -> list[dict[str, Any]]:
    """One row per pool, weighting, alpha and guarded metric: the mean difference to alpha 0, its bound, and
    whether each guard keeps it."""
    rows = []
    for key, reading in record["readings"].items():
        alpha, name = key.split("/", 1)
        start = record["readings"].get(f"0.0/{name}")
        if start is None or float(alpha) == 0.0:
            continue
        mix, base = reading["per_query"], start["per_query"]
        for weighting, kinds in (("as they come", None), ("by kind", devs[name].scifact_weights)):
            for metric in [*GUARDED, *(m for m in EVIDENCE if m in mix and kinds is None)]:
                values, ref = mix[metric], base[metric]
                weights = kinds if metric in GUARDED else None
                diff = weighted_mean({q: v - ref[q] for q, v in values.items()}, weights)
                bound = paired_bootstrap_bound(values, ref, confidence, weights)
                rows.append(
                    {
                        "pool": name,
                        "weighting": weighting,
                        "alpha": float(alpha),
                        "metric": metric,
                        "difference": diff,
                        "bound": bound,
                        "kept_by_difference": diff >= -tolerance,
                        "kept_by_bound": bound >= -tolerance,
                    }
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a run's best-checkpoint/ (a MuSES model folder)")
    ap.add_argument("--config", type=Path, required=True, help="the recipe that trained it (its start and seed)")
    ap.add_argument("--alphas", default="0,0.25,0.5,1")
    ap.add_argument("--seeds", default="0,1", help="distractor draws of the grown pool")
    ap.add_argument("--distractors", type=int, default=500)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    alphas = sorted({0.0, *(float(a) for a in args.alphas.split(","))})
    try:
        cfg = load_config(args.config)
    except MusesError as e:
        ap.error(str(e))
    if cfg.data.scifact_claims_without_evidence or cfg.task_weights.get("scifact", 0) > 0:
        ap.error(
            f"{args.config} trains on the train-fit claims without evidence that the grown pools read: judge it by "
            "its own guard or by benchmarks/rationale_folds.py"
        )
    devs = pools(args.distractors, [int(s) for s in args.seeds.split(",")], args.data_dir)
    record = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"readings": {}}
    same = {k: str(getattr(args, k)) for k in ("checkpoint", "config", "distractors", "seeds", "data_dir")}
    before = {k: v for k, v in record.get("settings", {}).items() if k in same}
    if before and before != same:
        ap.error(f"{args.out} holds readings made with {before}, not {same}: pass another --out")
    record["settings"] = {k: str(v) for k, v in vars(args).items()}
    read_mixes(args.checkpoint, args.config, alphas, devs, record, args.out, args.data_dir)
    record["verdicts"] = verdicts(record, devs, args.tolerance, args.confidence)
    args.out.write_text(json.dumps(record) + "\n", encoding="utf-8")
    print("| pool | weighting | alpha | metric | difference | bound | kept by difference / by bound |")
    print("|---|---|---|---|---|---|---|")
    for r in record["verdicts"]:
        kept = f"{'yes' if r['kept_by_difference'] else 'no'} / {'yes' if r['kept_by_bound'] else 'no'}"
        print(
            f"| {r['pool']} | {r['weighting']} | {r['alpha']} | {r['metric'].removeprefix('dev/')} | "
            f"{r['difference']:+.4f} | {r['bound']:+.4f} | {kept} |"
        )


if __name__ == "__main__":
    main()

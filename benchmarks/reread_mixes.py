"""A finished run's WiSE-FT mixes read again on dev metrics its readings lack, without training again.

A dev metric added after a run (e.g. ``data.dev_scifact_hierarchy``) can judge the mixes the run made: this script
rebuilds the run's starting model from its recipe, as its trainer built it (checked against the fingerprint its
checkpoint keeps), mixes it with the run's ``best-checkpoint/`` at alpha 0, every alpha of ``interpolate`` and 1.0, as
its trainer mixed them, and reads only ``--tasks`` on the recipe's dev sets. Those per-query values join the run's own
``interpolation-readings.json`` in a copy written to ``--out`` (a folder), which benchmarks/rationale_folds.py pools
like a run's.

Usage (fold 0 of round 30, stage 2 after its stage 1; ``--set`` as ``muses train``'s, applied to every stage)::

    python benchmarks/reread_mixes.py -c runs/head0.yaml -c runs/e0.yaml --set data.dev_scifact_hierarchy=true \\
        --tasks scifact-hierarchy --out runs/e0-hierarchy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from muses.cli_common import load_stages
from muses.encoder import MultiScaleEncoder
from muses.errors import MusesError
from muses.fingerprint import weights_fingerprint
from muses.training.build import build_model
from muses.training.checkpoint import (
    BEST_CHECKPOINT,
    CKPT,
    INTERPOLATION_READINGS,
    find_checkpoint,
    mix_weights,
    read_checkpoint,
)
from muses.training.config import TrainConfig
from muses.training.data import load_training_data
from muses.training.dev import read_dev
from muses.training.trainer import set_seed

Readings = dict[str, dict[str, dict[str, float]]]  # alpha -> "dev/<task>@<dim>" -> query id -> value


def reread(cfg: TrainConfig, tasks: list[str], data_dir: str | None = None) -> Readings:
    """Each alpha's per-query readings of ``tasks`` (alpha 0, ``cfg.interpolate``, 1.0) of the finished run in
    ``cfg.output_dir``.

    Raises:
        ValueError: the run is not finished, kept no checkpoint before mixing, or started from other weights than
            ``cfg`` builds now.
    """
    out = Path(cfg.output_dir)
    ckpt, best_dir = find_checkpoint(out), out / BEST_CHECKPOINT
    if ckpt is None or not best_dir.is_dir():
        raise ValueError(f"{out}: no {CKPT}/ and {BEST_CHECKPOINT}/: train the recipe with interpolate, to the end")
    state, _ = read_checkpoint(ckpt)
    if state["step"] < cfg.steps:
        raise ValueError(f"{out} stopped at step {state['step']} of {cfg.steps}: finish the run first")
    data = load_training_data(cfg, data_dir)
    set_seed(cfg.seed)  # as the trainer seeds before it builds (a fresh head's initial weights)
    encoder = build_model(cfg, data, out, "cpu").encoder
    if "start_weights" in state and weights_fingerprint(encoder, {}) != state["start_weights"]:
        raise ValueError(f"{out} was trained from other weights than {cfg.model.base} holds now")
    start = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    best = MultiScaleEncoder.load(best_dir, device="cpu", backend="torch").state_dict()
    readings: Readings = {}
    for alpha in sorted({0.0, *cfg.interpolate, 1.0}):
        encoder.load_state_dict(mix_weights(start, best, alpha))
        readings[str(alpha)] = read_dev(encoder, data.dev, tasks).per_query
        print(f"alpha {alpha}: read {sorted(readings[str(alpha)])}", flush=True)
    return readings


def merged(own: Readings, new: Readings) -> Readings:
    """``own`` with ``new``'s metrics added at each alpha both have (a metric in both: ``new``'s)."""
    return {alpha: {**metrics, **new.get(alpha, {})} for alpha, metrics in own.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, action="append", required=True, help="the run's stages, in order")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="as muses train --set")
    ap.add_argument("--tasks", required=True, help="comma-separated dev tasks to read, e.g. scifact-hierarchy")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, required=True, help="folder for the merged interpolation-readings.json")
    args = ap.parse_args(argv)
    try:
        cfg = load_stages(args.config, args.set_)[-1]
        file = Path(cfg.output_dir) / INTERPOLATION_READINGS
        if not file.is_file():
            raise ValueError(f"{file} not found: train the recipe with interpolate_confidence set, to the end")
        own: Readings = json.loads(file.read_text(encoding="utf-8"))
        new = reread(cfg, [t.strip() for t in args.tasks.split(",") if t.strip()], args.data_dir)
    except (MusesError, ValueError, OSError) as e:
        ap.error(str(e))
    if not any(new.values()):
        ap.error(f"--tasks {args.tasks}: the recipe's dev sets read none of them (does it set their data option?)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / INTERPOLATION_READINGS).write_text(json.dumps(merged(own, new)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Sentence contexts on dev: one model's dev metrics with its sentences pooled in each ``--contexts`` value.

``context="local:K"`` (:mod:`muses.local_context`) moves only the sentences, so the dev sets that read sentences say
what it buys: picking a held-out Wikipedia lead's sentence from half of its words (``wikipedia-sentence``), SciFact
dev claims -> their rationale sentences (``scifact-evidence``), and the sentence max-sim rankings of SciFact and
inverse-cloze documents (``scifact-sentence``, ``ict-sentence``); documents (``*-document``) do not move. The dev
sets are those of ``--config`` (default ``configs/context-head.yaml``: 1,000 held-out leads, the SciFact dev claims
and the train-fit claims without evidence over 500 distractors); no test split is read.

Usage::

    python benchmarks/local_context_dev.py --model default --contexts document,local:1,local:2,local:3 \\
        --out docs/reports/local-context/dev.json

``--out`` is resumable: a context already read for the same model, config and data dir is kept (other settings are
refused). Prints a row per context.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from muses.errors import InputError
from muses.local_context import parse_context

TASKS = ("wikipedia-sentence", "scifact-evidence", "scifact-sentence", "ict-sentence", "scifact-document")


def _contexts(text: str) -> list[str]:
    """``document,local:2,...`` -> canonical context names (``local`` -> ``local:2``); argparse's type."""
    try:
        contexts = [str(parse_context(c.strip())) for c in text.split(",") if c.strip()]
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if not contexts:
        raise argparse.ArgumentTypeError("--contexts names no context; e.g. document,local:2")
    return contexts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a base model or a saved MuSES folder")
    ap.add_argument("--contexts", type=_contexts, default=["document", "local:2"], help="comma-separated contexts")
    ap.add_argument("--config", default="configs/context-head.yaml", help="the recipe whose dev sets are read")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    record = json.loads(args.out.read_text()) if args.out is not None and args.out.is_file() else {}
    source = {"model": args.model, "config": args.config, "data_dir": args.data_dir}
    if any(record.get(k, v) != v for k, v in source.items()):  # before anything is loaded
        ap.error(f"{args.out} holds readings of other settings ({record}); give another --out.")

    from muses.encoder import MultiScaleEncoder
    from muses.training.config import load_config
    from muses.training.data import load_training_data
    from muses.training.dev import read_dev

    cfg = load_config(args.config, {"data.dev_stsb_pairs": 0})
    dev = load_training_data(cfg, args.data_dir).dev
    encoder = MultiScaleEncoder.from_base(args.model)
    record |= source
    readings = record.setdefault("contexts", {})
    for context in args.contexts:
        if context not in readings:
            start = time.time()
            readings[context] = read_dev(encoder, dev, TASKS, context=context).metrics
            readings[context]["seconds"] = round(time.time() - start, 1)
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(record, indent=1) + "\n")
        row = readings[context]
        dims = sorted({int(k.rsplit("@", 1)[1]) for k in row if k.startswith("dev/")}, reverse=True)
        cells = [" / ".join(f"{row[f'dev/{t}@{d}']:.4f}" for d in dims) for t in TASKS]
        print(context, *cells, sep=" | ", flush=True)


if __name__ == "__main__":
    main()

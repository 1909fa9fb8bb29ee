"""What a transformer backend costs in quality: STS-B and SciFact fusion against a reference model, in one run.

Each ``--models`` entry is ``LABEL=SPEC``: SPEC is a backend name (``torch``, ``onnx-int8``, ``openvino-int8``, ...,
run on the bundled base model) or a folder written by ``muses export`` (e.g. an int8 file calibrated on in-domain
text). The first entry is the reference (normally ``torch``).

For every model the script measures, with the evaluation suite's own functions:

- STS-B dev and test Spearman at ``--dims`` (:func:`~muses.evaluation.sts.evaluate_sts`);
- SciFact test nDCG@10 of every scoring at ``--dims`` (the steps of
  :func:`~muses.evaluation.retrieval.evaluate_beir_retrieval`, the queries scored once), fused twice: with the
  **reference's** fusion weights (fitted once, on SciFact dev, with the reference model) and with weights refitted
  on dev with the model itself.

Why both fusions. A store fuses with the weights in its config, whatever backend encodes the vectors, so the first
number is what a user who switches backend gets: it isolates what the backend changes in the vectors. The second
is what ``muses eval all`` reports for the model alone; it adds the noise of a grid fit on 151 dev queries, which can
flip a weight to 0 on a few queries and move test by more than the backend does.

Usage::

    python benchmarks/backend_quality.py --models torch=torch,int8=openvino-int8,int8-cal=/path/export
        [--dims 384,64] [--data-dir DIR] [--cache DIR] [--json PATH]

Prints one markdown table per dataset (differences to the reference) and writes every metric to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from muses.backends import Backend

SCORINGS = ("document", "sentence", "token-rerank")


def load_model(spec: str) -> Any:
    """``spec``: a backend name on the bundled base model, or an exported / saved model folder."""
    import muses
    from muses.backends import BACKENDS
    from muses.encoder import MultiScaleEncoder

    if os.path.isdir(spec):
        return muses.load(spec)
    if spec not in BACKENDS:
        raise SystemExit(f"{spec!r} is neither a folder nor a backend; use one of {', '.join(BACKENDS)} or a path.")
    return MultiScaleEncoder.from_base(backend=cast(Backend, spec))


def measure(spec: str, dims: list[int], data_dir: str | None, cache_dir: str, ref_fusion: Any) -> dict[str, Any]:
    """Every metric of one model; ``ref_fusion`` None makes this model the reference (its fit is returned)."""
    from muses.data.beir import load_beir
    from muses.data.stsb import load_stsb
    from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
    from muses.evaluation.retrieval import beir_documents, evaluate_scored, fit_fusion, score_queries
    from muses.evaluation.sts import evaluate_sts

    start = time.perf_counter()
    encoder = load_model(spec)
    out: dict[str, Any] = {"spec": spec, "backend": encoder.backend}
    for split in ("dev", "test"):
        sts = evaluate_sts(encoder, load_stsb(split, data_dir), dims)
        out.update({f"stsb-{split}/{k}": v for k, v in sts.items() if k.startswith("spearman")})
    corpus = MusesCorpusEncoder(encoder)
    cache = EmbeddingCache(cache_dir)
    own = fit_fusion(corpus, "scifact", "dev", cache=cache, dims=dims, data_dir=data_dir)
    out["fusion"] = own
    # the steps of evaluate_beir_retrieval, with the test queries scored once for both fusions
    test = load_beir("scifact", "test", data_dir)
    vecs = cache.corpus(corpus, beir_documents(test.corpus), with_tokens=True)
    scored = score_queries(corpus, vecs, test.queries, dims, cache)
    for tag, weights in (("own", own), ("ref", ref_fusion if ref_fusion is not None else own)):
        metrics = evaluate_scored(scored, test.qrels, (10,), weights)
        for d in dims:
            for s in SCORINGS:
                out[f"scifact/{s}@{d}"] = metrics[f"{s}/ndcg@10@{d}"]
            out[f"scifact/fusion-{tag}-weights@{d}"] = metrics[f"fusion-wsum/ndcg@10@{d}"]
            out[f"scifact/weights-{tag}@{d}"] = {s: metrics[f"fusion-wsum/weight-{s}@{d}"] for s in SCORINGS}
    out["seconds"] = time.perf_counter() - start
    return out


def table(results: dict[str, dict[str, Any]], dims: list[int], prefix: str) -> str:
    """A markdown table of the ``prefix`` metrics: the reference's value, then each model's difference to it."""
    labels = list(results)
    ref = results[labels[0]]
    keys = [k for k in ref if k.startswith(prefix) and isinstance(ref[k], float)]
    head = f"| {prefix.rstrip('/')} | {labels[0]} | " + " | ".join(f"{lab} - {labels[0]}" for lab in labels[1:]) + " |"
    rows = [head, "|---|" + "---:|" * len(labels)]
    for k in keys:
        diffs = " | ".join(f"{results[lab][k] - ref[k]:+.4f}" for lab in labels[1:])
        rows.append(f"| {k[len(prefix) :]} | {ref[k]:.4f} | {diffs} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="LABEL=SPEC,...; the first is the reference")
    ap.add_argument("--dims", default="384,64")
    ap.add_argument("--data-dir", default=os.environ.get("MUSES_DATA_DIR"))
    ap.add_argument(
        "--cache", default=None, help="embedding cache folder (default: a temporary one; reruns skip encoding)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    pairs = [item.split("=", 1) for item in args.models.split(",")]
    if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        ap.error("--models takes LABEL=SPEC entries separated by commas, e.g. torch=torch,int8=openvino-int8")
    results: dict[str, dict[str, Any]] = {}
    ref_fusion = None
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp  # each corpus is encoded once, then read back by the fit and both evaluations
        for label, spec in pairs:
            results[label] = measure(spec, dims, args.data_dir, cache, ref_fusion)
            if ref_fusion is None:
                ref_fusion = results[label]["fusion"]
            print(f"{label}: {results[label]['seconds']:.0f} s", flush=True)
    for r in results.values():
        r.pop("fusion")
    print(table(results, dims, "stsb-"))
    print()
    print(table(results, dims, "scifact/"))
    if args.json:
        args.json.write_text(json.dumps({"dims": dims, "models": results}, indent=2))


if __name__ == "__main__":
    main()

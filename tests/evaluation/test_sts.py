"""STS-B evaluation reproduces the base model's published-here numbers, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from typer.testing import CliRunner

from muses.cli import app
from muses.data.stsb import STSPairs, load_stsb
from muses.encoder import MultiScaleEncoder
from muses.evaluation.sts import evaluate_sts

# all-MiniLM-L6-v2 on STS-B test, Spearman of cosine, naive truncation (measured independently, see DESIGN.md)
REFERENCE = {384: 0.8203, 256: 0.8189, 128: 0.8068, 64: 0.7921, 32: 0.7667}


@pytest.fixture(scope="module")
def sts_metrics(encoder: MultiScaleEncoder, data_dir: Path) -> dict[str, float]:
    return evaluate_sts(encoder, load_stsb("test", data_dir), encoder.dims)


@pytest.mark.parametrize("dim", sorted(REFERENCE))
def test_stsb_test_matches_reference(sts_metrics: dict[str, float], dim: int) -> None:
    assert sts_metrics[f"spearman@{dim}"] == pytest.approx(REFERENCE[dim], abs=5e-4)


def test_agrees_with_sentence_transformers_evaluator(
    encoder: MultiScaleEncoder, base_model: SentenceTransformer, data_dir: Path
) -> None:
    """On the first 400 test pairs (the whole split is checked against the reference numbers above)."""
    full = load_stsb("test", data_dir)
    pairs = STSPairs(full.sentences1[:400], full.sentences2[:400], full.scores[:400], full.source)
    evaluator = EmbeddingSimilarityEvaluator(
        pairs.sentences1,
        pairs.sentences2,
        [s / 5 for s in pairs.scores],
        truncate_dim=64,
        similarity_fn_names=["cosine"],
    )
    ref = evaluator(base_model)
    key = next(k for k in ref if k.endswith("spearman_cosine"))
    assert evaluate_sts(encoder, pairs, [64])["spearman@64"] == pytest.approx(ref[key], abs=1e-5)  # float ties


@pytest.mark.slow
def test_cli_eval_sts_writes_table_and_json(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sts.json"
    result = CliRunner().invoke(app, ["eval", "sts", "--data-dir", str(data_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Spearman" in result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["spearman@384"] == pytest.approx(REFERENCE[384], abs=5e-4)

"""The tolerance guard with a stated uncertainty: each dev query's value, SciFact claims weighted by kind, and a
paired bootstrap bound on the difference between two models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muses.data.scifact import load_scifact_claims
from muses.encoder import MultiScaleEncoder
from muses.training.config import TrainConfig
from muses.training.data import load_training_data
from muses.training.dev import DevReading, DevSet, difference_bounds, paired_bootstrap_bound, read_dev, tolerance_misses

_VALUES = st.lists(st.floats(0, 1), min_size=10, max_size=60)


@settings(max_examples=40, deadline=None)
@given(_VALUES, st.floats(-0.2, 0.2), st.integers(0, 2**16))
def test_the_bound_is_below_the_mean_moves_with_it_and_widens_with_confidence(
    values: list[float], shift: float, seed: int
) -> None:
    """A model ``shift`` better on every query has the bound ``shift``, shifting every difference shifts the bound,
    and more confidence never raises it."""
    rng = np.random.default_rng(seed)
    ref = {str(i): v for i, v in enumerate(values)}
    noisy = {q: v + float(rng.normal(0, 0.05)) for q, v in ref.items()}
    weights = {q: float(w) for q, w in zip(ref, rng.uniform(0.5, 2, len(ref)), strict=True)}
    for ws in (None, weights):
        bounds = [paired_bootstrap_bound(noisy, ref, c, ws, seed) for c in (0.6, 0.8, 0.95)]
        assert bounds[2] <= bounds[1] + 1e-9 <= bounds[0] + 2e-9
        moved = paired_bootstrap_bound({q: v + shift for q, v in noisy.items()}, ref, 0.8, ws, seed)
        assert moved == pytest.approx(bounds[1] + shift, abs=1e-4)  # rounding may move BCa's percentile a step
    assert paired_bootstrap_bound({q: v + shift for q, v in ref.items()}, ref, 0.9) == pytest.approx(shift, abs=1e-9)


def test_the_bound_refuses_a_drop_that_the_mean_hides_and_keeps_a_clear_gain() -> None:
    """400 queries: a mean drop of 0.004 with noise passes a 0.005 tolerance on the mean and misses it on the 90%
    bound; a mean gain of 0.01 with the same noise passes both; the bound sits the normal-theory margin below the
    mean (the bootstrap and the central limit agree at this size)."""
    rng = np.random.default_rng(0)
    ref = {str(i): float(v) for i, v in enumerate(rng.uniform(0.3, 0.9, 400))}
    noise = rng.normal(0, 0.05, 400)
    for delta, misses in ((-0.004, ["dev/scifact-sentence@384"]), (0.01, [])):
        values = {q: v + delta + float(e) for (q, v), e in zip(ref.items(), noise, strict=True)}
        key = "dev/scifact-sentence@384"
        point = {key: float(np.mean(list(values.values())))}, {key: float(np.mean(list(ref.values())))}
        assert tolerance_misses(*point, {"scifact-sentence": 0.005}) == []
        bound = {key: paired_bootstrap_bound(values, ref, 0.9)}
        assert tolerance_misses(*point, {"scifact-sentence": 0.005}, bound) == misses
        diff = np.array([values[q] - ref[q] for q in ref])
        normal = 1.2816 * diff.std(ddof=1) / np.sqrt(len(diff))  # the 90% one-sided normal-theory margin
        assert point[0][key] - point[1][key] - bound[key] == pytest.approx(normal, rel=0.2)


def test_kind_weights_give_the_grown_pool_the_train_splits_mix(tmp_path: Path, data_dir: Path) -> None:
    """``data.dev_scifact_kind_weights``: claims with rationale evidence together weigh their share of SciFact's
    train claims (505 of 809), each claim of a kind alike, also in the pool grown by the unused claims (which are
    all claims without evidence); the option needs the SciFact dev pool."""
    data = {"wikipedia_articles": 4, "dev_stsb_pairs": 0, "dev_scifact_distractors": 5}
    cfg = TrainConfig.model_validate(
        {
            "task_weights": {"hierarchy": 1.0, "scifact": 0.0},
            "output_dir": str(tmp_path),
            "data": {**data, "dev_scifact_unused_claims": True, "dev_scifact_kind_weights": True},
        }
    )
    dev = load_training_data(cfg, data_dir).dev
    assert dev.scifact is not None and dev.scifact_weights is not None
    with_evidence = {c.id for c in load_scifact_claims("train", data_dir) if c.has_evidence}
    weights = dev.scifact_weights
    assert set(weights) == set(dev.scifact.qrels) and len(weights) == 398
    kinds = {has: [w for q, w in weights.items() if (q in with_evidence) == has] for has in (True, False)}
    assert sum(kinds[True]) == pytest.approx(505 / 809) and sum(kinds[False]) == pytest.approx(304 / 809)
    assert len(kinds[False]) > 2 * len(kinds[True])  # the grown pool is mostly claims without evidence
    assert all(np.ptp(ws) < 1e-12 for ws in kinds.values())
    assert dev.query_weights("dev/scifact-sentence@64") is weights and dev.query_weights("dev/stsb@64") is None
    with pytest.raises(ValueError, match="dev_scifact_distractors"):
        TrainConfig.model_validate({"data": {"dev_scifact_kind_weights": True, "dev_scifact_distractors": None}})


def test_read_dev_keeps_each_querys_value_and_the_means_are_the_metrics(
    tmp_path: Path, data_dir: Path, encoder: MultiScaleEncoder
) -> None:
    """Every retrieval dev metric is the (kind-weighted, for SciFact claims) mean of the per-query values that
    :func:`read_dev` keeps, and matches the evaluation's own numbers on the same corpus; a model against itself has
    bound 0 on every metric, and no tolerance miss."""
    from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
    from muses.evaluation.evidence import evaluate_sentence_retrieval
    from muses.evaluation.retrieval import beir_documents, evaluate_scored, score_queries

    data = {"wikipedia_articles": 4, "dev_stsb_pairs": 0, "dev_scifact_claims": 12, "dev_scifact_distractors": 12}
    data |= {"dev_scifact_evidence": True, "dev_scifact_kind_weights": True}
    cfg = TrainConfig.model_validate({"output_dir": str(tmp_path), "data": data})
    dev = load_training_data(cfg, data_dir).dev
    assert dev.scifact is not None and dev.evidence is not None and dev.scifact_weights is not None
    reading = read_dev(encoder, dev)
    retrieval = {
        f"dev/{t}@{d}" for t in ("scifact-document", "scifact-sentence", "scifact-evidence") for d in (64, 384)
    }
    assert set(reading.per_query) == retrieval
    assert set(reading.per_query["dev/scifact-sentence@384"]) == set(dev.scifact.qrels)
    assert set(reading.per_query["dev/scifact-evidence@64"]) == set(dev.evidence.qrels)
    for key, values in reading.per_query.items():
        w = dev.query_weights(key) or dict.fromkeys(values, 1.0)
        mean = sum(w[q] * v for q, v in values.items()) / sum(w[q] for q in values)
        assert reading.metrics[key] == pytest.approx(mean, abs=1e-12)

    model, cache = MusesCorpusEncoder(encoder, name="t"), EmbeddingCache(None)
    vecs = cache.corpus(model, beir_documents(dev.scifact.corpus))
    scored = evaluate_scored(
        score_queries(model, vecs, dev.scifact.queries, [64, 384], cache, with_tokens=False),
        dev.scifact.qrels,
        ks=(10,),
    )
    evidence = evaluate_sentence_retrieval(
        model, dev.evidence.documents, dev.evidence.queries, {"": dev.evidence.qrels}, [64, 384], cache
    )
    for d in (64, 384):
        for s in ("document", "sentence"):
            plain = np.mean(list(reading.per_query[f"dev/scifact-{s}@{d}"].values()))
            assert plain == pytest.approx(scored[f"{s}/ndcg@10@{d}"], abs=1e-9)
        assert reading.metrics[f"dev/scifact-evidence@{d}"] == pytest.approx(evidence[f"flat/mrr@100@{d}"], abs=1e-9)
    tasks = {"scifact-document", "scifact-sentence", "scifact-evidence"}
    bounds = difference_bounds(reading, reading, tasks, 0.9, dev)
    assert bounds == dict.fromkeys(sorted(retrieval), 0.0)
    assert tolerance_misses(reading.metrics, reading.metrics, dict.fromkeys(tasks, 0.0), bounds) == []
    other = DevReading(reading.metrics, {k: {q: v - 0.1 for q, v in vs.items()} for k, vs in reading.per_query.items()})
    assert difference_bounds(other, reading, {"scifact-evidence"}, 0.9, dev) == {
        "dev/scifact-evidence@64": pytest.approx(-0.1),
        "dev/scifact-evidence@384": pytest.approx(-0.1),
    }


def test_a_loaded_encoder_encodes_without_dropout_and_a_dev_reading_leaves_every_module_as_it_was(
    data_dir: Path,
) -> None:
    """A fresh encoder is in eval mode (its vectors do not depend on dropout), and reading dev restores each
    submodule's own mode: before, a reading of a fresh encoder left its transformer in training mode, so the next
    query vectors carried dropout."""
    from muses.data.stsb import load_stsb

    encoder = MultiScaleEncoder.from_base()
    assert not any(m.training for m in encoder.modules())
    queries = ["how do plants take up water?", "0-dimensional biomaterials show inductive properties."]
    before = encoder.encode_queries(queries)
    sd = load_stsb("dev", data_dir)
    dev = DevSet(stsb=list(zip(sd.sentences1[:16], sd.sentences2[:16], sd.scores[:16], strict=True)))
    assert set(read_dev(encoder, dev).metrics) == {"dev/stsb@64", "dev/stsb@384"}
    assert not any(m.training for m in encoder.modules())
    np.testing.assert_array_equal(encoder.encode_queries(queries), before)
    encoder.train()  # training mode stays training mode across a reading, for the trainer
    read_dev(encoder, dev)
    assert all(m.training for m in encoder.modules())

"""Model selection: the dev score is the mean of the dev metrics, or their weighted mean by task (``dev_weights``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muses.encoder import MultiScaleEncoder
from muses.errors import ConfigError, InputError
from muses.training.config import TrainConfig, load_config, read_stage_list
from muses.training.dev import dev_score

METRICS = {
    "dev/stsb@64": 0.84,
    "dev/stsb@384": 0.87,
    "dev/scifact-document@384": 0.88,
    "dev/scifact-sentence@384": 0.90,
}


def test_dev_score_is_the_mean_or_the_weighted_mean_by_task() -> None:
    assert dev_score(METRICS) == pytest.approx((0.84 + 0.87 + 0.88 + 0.90) / 4)
    assert dev_score({**METRICS, "dev/score": 123.0}) == pytest.approx(dev_score(METRICS))  # never itself
    assert dev_score(METRICS, {"stsb": 1.0}) == pytest.approx((0.84 + 0.87) / 2)
    both = dev_score(METRICS, {"stsb": 3.0, "scifact-document": 1.0})
    assert both == pytest.approx((3 * 0.84 + 3 * 0.87 + 0.88) / 7)
    assert dev_score({}, {"stsb": 1.0}) == 0.0
    assert dev_score(METRICS, {"hierarchy": 1.0}) == 0.0  # no metric of a weighted task: nothing to select on


def test_dev_weights_are_checked() -> None:
    assert TrainConfig.model_validate({"dev_weights": {"stsb": 1.0}}).dev_weights == {"stsb": 1.0}
    for bad, match in (
        ({"stsb": 0.0}, "positive weight"),
        ({"stsb": 1.0, "hierarchy": -1.0}, ">= 0"),
        ({"stsb": 1.0, "hierarchy": float("nan")}, "finite"),
        ({"sts": 1.0}, "dev_weights"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig.model_validate({"dev_weights": bad})


def test_shipped_default_recipe_loads() -> None:
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert cfg.optim.head_lr <= cfg.optim.lr * 10, "a random-init head at a high lr drifts STS-B (docs/results.md)"
    with pytest.raises(ConfigError):
        load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml", {"dev_weights": {"x": 1}})


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2000) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "steps",
        "dev_weights",
        "interpolate",
        "interpolate_weights",
        "interpolate_tolerance",
        "task_weights",
        "loss",
        "model",
        "data",
        "extends",
        "stages",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(_KEYS | st.text(max_size=10), _VALUES, max_size=5).map(lambda d: yaml.safe_dump(d).encode())
    | st.binary(max_size=200)
)
def test_fuzzed_recipes_load_or_fail_in_one_line(body: bytes, tmp_path: Path) -> None:
    """Any recipe file gives a validated config or one ConfigError line, never another exception."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(body)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert isinstance(cfg, TrainConfig)
        assert not cfg.interpolate_weights or cfg.interpolate  # weights only with alphas to choose among
        assert not cfg.interpolate_tolerance or 0.0 in cfg.interpolate  # measured from the starting model


def test_wikipedia_ict_dev_is_a_second_retrieval_collection(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    """``data.dev_wikipedia_ict``: each held-out training-side article's held-out sentence finds the article without
    it among all of them (document vectors and sentence max-sim, full dim and 64); it is scored only when asked."""
    from muses.training.data import load_training_data
    from muses.training.dev import evaluate_dev

    data = {"wikipedia_articles": 5, "dev_wikipedia_articles": 60, "dev_wikipedia_ict": True, "stsb": False}
    data["dev_scifact_distractors"] = None
    weights = {"hierarchy": 1.0, "stsb": 0.0, "scifact": 0.0}
    cfg = TrainConfig.model_validate({"task_weights": weights, "data": {**data, "scifact": False, "dev_stsb_pairs": 0}})
    dev = load_training_data(cfg, data_dir).dev
    assert dev.ict is not None and dev.scifact is None and len(dev.documents) == 60
    ict = dev.ict
    assert 40 <= len(ict.queries) <= 60 and set(ict.qrels) == set(ict.queries)
    articles = {d.text for d in dev.documents}
    for q, sentence in ict.queries.items():
        (doc_id,) = ict.qrels[q]
        rest = ict.corpus[doc_id]["text"]
        assert sentence not in rest and any(sentence in a and len(a) > len(rest) for a in articles)
    m = evaluate_dev(encoder, dev, tasks=["ict-document"])
    keys = {f"dev/ict-{s}@{d}" for s in ("document", "sentence") for d in (64, 384)}
    assert set(m) == keys | {"dev/score"}
    assert all(0.6 < m[k] <= 1.0 for k in keys), m  # 60 leads: the base model finds most articles
    assert m["dev/ict-document@384"] > m["dev/ict-document@64"] - 0.05
    assert "dev/ict-document@384" not in evaluate_dev(encoder, dev, tasks=["hierarchy"])
    with pytest.raises(ValueError, match="dev_wikipedia_articles"):
        TrainConfig.model_validate({"data": {"dev_wikipedia_ict": True}})


def test_wikipedia_sentence_dev_picks_a_sentence_from_half_of_it(encoder: MultiScaleEncoder, data_dir: Path) -> None:
    """``data.dev_wikipedia_sentences``: half of a held-out article's sentence (a run of its words, not the first
    sentence) finds that sentence, pooled in context, among every sentence of the held-out articles; in context
    the sentence's neighbours compete, so it is harder at 64 than at 384, and it is scored only when asked."""
    from muses.training.data import load_training_data
    from muses.training.dev import evaluate_dev

    data = {"wikipedia_articles": 5, "dev_wikipedia_articles": 60, "dev_wikipedia_sentences": True}
    data |= {"dev_scifact_distractors": None, "stsb": False, "scifact": False, "dev_stsb_pairs": 0}
    cfg = TrainConfig.model_validate({"task_weights": {"hierarchy": 1.0, "stsb": 0.0, "scifact": 0.0}, "data": data})
    dev = load_training_data(cfg, data_dir).dev
    assert dev.sentences is not None and dev.ict is None
    ws = dev.sentences
    assert 40 <= len(ws.queries) <= 60 and set(ws.qrels) == set(ws.queries) and ws.documents == dev.documents
    by_id = {d.id: d for d in dev.documents}
    for q, part in ws.queries.items():
        ((gold, rel),) = ws.qrels[q].items()
        doc_id, index = gold.rsplit(":", 1)
        sentence = by_id[doc_id].sentence_texts()[int(index)]
        words, n = sentence.split(), len(part.split())
        assert rel == 1 and int(index) >= 1 and 4 <= n <= len(words) // 2 + 1
        assert any(words[i : i + n] == part.split() for i in range(len(words) - n + 1))  # a run of its words
    m = evaluate_dev(encoder, dev, tasks=["wikipedia-sentence"])
    assert set(m) == {"dev/wikipedia-sentence@64", "dev/wikipedia-sentence@384", "dev/score"}
    assert 0.3 < m["dev/wikipedia-sentence@64"] < m["dev/wikipedia-sentence@384"] <= 1.0, m
    assert "dev/wikipedia-sentence@384" not in evaluate_dev(encoder, dev, tasks=["hierarchy"])
    with pytest.raises(ValueError, match="dev_wikipedia_articles"):
        TrainConfig.model_validate({"data": {"dev_wikipedia_sentences": True}})


_NAMES = st.sampled_from(["dev_weights", "loss", "loss.alpha", "model.base", "steps", "data.stsb", "x.y", ""])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    replace=st.lists(_NAMES, max_size=3) | _VALUES,
    own=st.dictionaries(_KEYS.filter(lambda k: k != "extends"), _VALUES, max_size=3),
)
def test_fuzzed_replace_lists_load_or_fail_in_one_line(replace: object, own: dict[str, object], tmp_path: Path) -> None:
    """A child recipe's ``replace`` (any value, naming any key) gives a config or one ConfigError line; what it
    names is the child's own setting, whole."""
    (tmp_path / "parent.yaml").write_text("dev_weights: {stsb: 1.0}\nloss: {alpha: 0.5, retention: cosine}\n")
    path = tmp_path / "child.yaml"
    path.write_text(yaml.safe_dump({"extends": "parent.yaml", "replace": replace, **own}))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
    else:
        if isinstance(replace, list) and "dev_weights" in replace:
            assert cfg.dev_weights == own["dev_weights"]


_STAGE_ENTRIES = st.sampled_from(
    ["a.yaml", "b.yaml", "list.yaml", "inner.yaml", "missing.yaml", "", "../a.yaml", "x" * 300 + ".yaml", "a\0.yaml"]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stages=st.lists(_STAGE_ENTRIES | _VALUES, max_size=4) | _VALUES,
    other=st.dictionaries(_KEYS.filter(lambda k: k != "stages"), _VALUES, max_size=1),
)
def test_fuzzed_stage_lists_expand_or_fail_in_one_line(
    stages: object, other: dict[str, object], tmp_path: Path
) -> None:
    """A stage list (``stages: [...]``, any value, beside any other key) names existing recipes, in order, relative
    to its own folder, or is refused in one ConfigError line: a stage list inside another, a missing recipe, other
    settings beside it. It is never read as one recipe."""
    from muses.cli_common import load_stages

    (tmp_path / "a.yaml").write_text("name: a\noutput_dir: runs/a\n")
    (tmp_path / "b.yaml").write_text("name: b\noutput_dir: runs/b\n")
    (tmp_path / "inner.yaml").write_text("stages: [a.yaml]\n")
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"stages": stages, **other}))
    with pytest.raises(ConfigError, match="is a list of stages, not one recipe"):
        load_config(path)
    try:
        found = read_stage_list(path)
        configs = load_stages([path], None)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    except InputError as e:  # two stages writing to one output_dir
        assert "both write to" in str(e) and isinstance(stages, list) and len(stages) != len(set(stages))
        return
    assert isinstance(stages, list) and stages and not other
    assert found == [tmp_path / s for s in stages] and {s for s in stages} <= {"a.yaml", "b.yaml"}
    assert [c.name for c in configs] == [Path(str(s)).stem for s in stages]

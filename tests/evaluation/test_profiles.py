"""Evaluation profiles are YAML files shipped in the package; each loads to the values it had as Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from muses.errors import ConfigError, InputError
from muses.evaluation.report import PROFILE_DIR, PROFILES, Profile, get_profile, load_profile

_ALL = ("sts", "scifact", "evidence", "squad", "squad-standalone", "hierarchy", "knn", "efficiency", "routing")
# The profiles as they were defined in Python (muses/evaluation/report.py) before they moved to YAML.
OLD_PROFILES = {
    "full": Profile("full", _ALL),
    "quick": Profile(
        "quick",
        ("sts", "squad", "hierarchy", "knn"),
        squad_docs=400,
        hierarchy_wiki_docs=300,
        hierarchy_scifact_docs=300,
        knn_articles=2000,
        knn_folds=5,  # added since: cross-validated k-NN
        knn_scales=("document",),
    ),
    "training": Profile(
        "training", ("sts", "squad", "scifact", "hierarchy", "evidence"), hierarchy_wiki_docs=200, dims=(64, 384)
    ),
    "ablation": Profile(
        "ablation",
        ("sts", "squad", "scifact", "hierarchy"),
        hierarchy_wiki_docs=100,
        hierarchy_scifact_docs=1500,
        scifact_docs=1500,
        dims=(64, 384),
    ),
    "moe": Profile("moe", ("sts", "knn", "routing"), knn_articles=2000, knn_scales=("document",), dims=(64, 256)),
    "upcycle": Profile(
        "upcycle",
        ("sts", "squad", "scifact", "hierarchy", "knn", "routing"),
        hierarchy_wiki_docs=100,
        hierarchy_scifact_docs=1500,
        scifact_docs=1500,
        knn_articles=2000,
        knn_scales=("document",),
        dims=(64, 384),
    ),
}


def test_every_profile_keeps_its_values() -> None:
    assert PROFILES == OLD_PROFILES
    for name, profile in OLD_PROFILES.items():
        assert get_profile(name) == profile
        assert (PROFILE_DIR / f"{name}.yaml").is_file()


def test_a_profile_of_ones_own_is_a_yaml_path(tmp_path: Path) -> None:
    own = tmp_path / "tiny.yaml"
    own.write_text("tasks: [sts]\ndims: [64]\n", encoding="utf-8")
    assert get_profile(str(own)) == Profile("tiny", ("sts",), dims=(64,))


def test_bad_profiles_get_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown profile 'nope'; use one of ablation, full, moe, quick"):
        get_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [sts]\nknn_artcles: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['knn_artcles'\]"):
        load_profile(bad)
    bad.write_text("tasks: [sts, nope]\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown task"):
        load_profile(bad)
    for folds in ("1", "two", "true", "2.5"):
        bad.write_text(f"tasks: [knn]\nknn_folds: {folds}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="knn_folds must be an integer >= 2"):
            load_profile(bad)
    for value in (".nan", "!!set {64: null}", "2026-12-06"):  # results.json records the settings as JSON
        bad.write_text(f"tasks: [sts]\nefficiency_docs: {value}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="settings must be plain numbers, strings or lists"):
            load_profile(bad)
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_profile(tmp_path / "missing.yaml")

"""The adapter bench (``benchmarks/adapters/``, run as ``python -m benchmarks.adapters``): its YAML inputs and its
errors; ``muses bench adapters`` only points at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from muses.errors import InputError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "adapters"
BENCH = REPO / "configs" / "bench" / "adapters"


def test_adapter_bench_reads_its_recipes_and_profiles_from_yaml(tmp_path: Path) -> None:
    """The bench trains configs/adapters/<domain>.yaml as they are (output_dir moved under the work folder); a
    profile's train_overrides apply by recipe-name pattern; --set applies to every recipe."""
    from benchmarks.adapters.settings import domain_topic, load_bench_settings, load_recipes
    from muses.training.config import load_config

    full = load_bench_settings(BENCH / "full.yaml")
    recipes = load_recipes(CONFIGS, full, tmp_path / "work")
    assert list(recipes) == ["wiki-people", "wiki-biology", "wiki-geography", "wiki-technology", "scifact"]
    assert set(full.sequence) == set(recipes)
    assert {k: domain_topic(c) for k, c in recipes.items()} == {
        "wiki-people": "People",
        "wiki-biology": "Biology and health sciences",
        "wiki-geography": "Geography",
        "wiki-technology": "Technology",
        "scifact": None,
    }
    for key, cfg in recipes.items():
        shipped = load_config(CONFIGS / f"{key}.yaml")
        assert cfg.output_dir == str(tmp_path / "work" / key)
        assert cfg.model_dump() == shipped.model_copy(update={"output_dir": cfg.output_dir}).model_dump(), key
    quick = load_recipes(CONFIGS, load_bench_settings(BENCH / "quick.yaml"), overrides={"seed": 3})
    assert {c.steps for c in quick.values()} == {3} and {c.seed for c in quick.values()} == {3}
    assert quick["wiki-geography"].data.wikipedia_articles == 6 and quick["scifact"].data.wikipedia_articles == 0
    assert quick["scifact"].output_dir == "runs/adapters/scifact"  # no work folder: the recipe's own


def test_adapter_bench_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from benchmarks.adapters.__main__ import main
    from benchmarks.adapters.run import run_adapter_bench
    from benchmarks.adapters.settings import BenchSettings, load_bench_settings, load_recipes
    from muses.cli import app
    from muses.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("sequence: [a]\ncapacities: [1]\nrequest_size: 2\ntest_articls: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="test_articls"):
        load_bench_settings(bad)
    sizes = {"capacities": [1], "request_size": 2, "test_articles": 2, "dev_articles": 2, "knn_index_articles": 2}
    s = BenchSettings(
        domains=["wiki-people", "nope"], sequence=["wiki-people"], scifact_distractors=0, dims=[64], **sizes
    )
    with pytest.raises(InputError, match=r"no recipe nope\.yaml"):
        load_recipes(CONFIGS, s)
    s.domains = ["wiki-people", "scifact"]
    with pytest.raises(InputError, match=r"never visits \['scifact'\]"):  # checked before anything trains
        run_adapter_bench(s, load_recipes(CONFIGS, s), tmp_path)
    (tmp_path / "full.yaml").write_text("name: x\n", encoding="utf-8")
    s.domains = ["full"]
    with pytest.raises(InputError, match=r"sets model\.adapter"):
        load_recipes(tmp_path, s)
    with pytest.raises(SystemExit) as exit_info:  # the driver: one line, exit code 2
        main(["--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    # the old command points at the driver, whatever options it is given
    out = CliRunner().invoke(app, ["bench", "adapters", "--config", str(tmp_path / "none.yaml")])
    assert out.exit_code == 2 and "python -m benchmarks.adapters" in out.output

"""Reports: `muses eval all` writes results.json, markdown and plots; `muses eval compare` lines them up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muses.cli import _print_summary, app
from muses.cli_common import console
from muses.errors import InputError
from muses.evaluation.compare import compare_rows, load_columns, parse_rename
from muses.evaluation.report import dim_table, load_results

runner = CliRunner()


@pytest.mark.slow
def test_eval_all_and_compare(tmp_path: Path, data_dir: Path) -> None:
    out_a = tmp_path / "a"
    args = ["eval", "all", "--tasks", "sts", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, [*args, "--out", str(out_a), "--baseline", "flat:default"])
    assert result.exit_code == 0, result.output
    results = load_results(out_a)
    assert [m["model"] for m in results["models"]] == ["default", "flat:default"]
    muses_sts = results["models"][0]["tasks"]["sts"]["metrics"]
    flat_sts = results["models"][1]["tasks"]["sts"]["metrics"]
    assert abs(muses_sts["spearman@384"] - 0.8203) < 5e-4
    assert abs(muses_sts["spearman@384"] - flat_sts["spearman@384"]) < 1e-6  # untrained MuSES = its base
    report = (out_a / "report.md").read_text()
    assert "| spearman |" in report and "muses eval all" in report
    assert (out_a / "dim_sweep.png").read_bytes()[:4] == b"\x89PNG"
    dims, rows = dim_table(muses_sts, ("spearman",))
    assert dims == [32, 64, 128, 256, 384] and rows["spearman"][64] == muses_sts["spearman@64"]
    width, console.width = console.width, 80  # a log's width: the numbers must not be cut
    try:
        with console.capture() as captured:  # what `muses run` prints: the model against its baseline, per metric
            _print_summary(out_a)
    finally:
        console.width = width
    shown = captured.get()
    assert "default (model) against flat:default (baseline)" in shown and "@384" in shown and "@64" in shown
    sts_row = next(line for line in shown.splitlines() if "spearman" in line)
    assert f"{muses_sts['spearman@384']:.4f}" in sts_row and "+0.0000" in sts_row  # untrained MuSES = its base

    out_b = tmp_path / "b"
    result = runner.invoke(app, [*args, "--out", str(out_b), "--model", "flat:default"])
    assert result.exit_code == 0, result.output
    rows_ab = compare_rows(load_columns([str(out_a), str(out_b / "results.json")]))
    assert ("sts", "spearman@384", [muses_sts["spearman@384"], flat_sts["spearman@384"]]) in rows_ab
    result = runner.invoke(app, ["eval", "compare", str(out_a), str(out_b / "results.json")])
    assert result.exit_code == 0 and "spearman@384" in result.output

    # a model's reports merge into one column, task by task, a later report's task replacing an earlier one's: the
    # flat baseline of run A, an edited copy (another STS-B value, and a k-NN task), then run B's
    edited = json.loads((out_b / "results.json").read_text())
    edited["models"][0]["tasks"] = {
        "sts": {"metrics": {"spearman@384": 0.5}},
        "knn": {"metrics": {"knn/document/accuracy@64": 0.7}},
    }
    (tmp_path / "c.json").write_text(json.dumps(edited))
    rename = {"default": "base", "flat:default": "flat"}
    columns = load_columns([out_a, tmp_path / "c.json"], rename)
    assert [c.label for c in columns] == ["base", "flat"] and len(columns[1].sources) == 2
    rows = {(task, metric): values for task, metric, values in compare_rows(columns)}
    a384 = muses_sts["spearman@384"]
    assert rows["sts", "spearman@384"] == [a384, 0.5]
    assert rows["knn", "knn/document/accuracy@64"] == [None, 0.7]
    rows = {(t, m): v for t, m, v in compare_rows(load_columns([out_a, tmp_path / "c.json", out_b], rename))}
    assert rows["sts", "spearman@384"] == [a384, flat_sts["spearman@384"]]
    assert rows["knn", "knn/document/accuracy@64"] == [None, 0.7]

    page = tmp_path / "side" / "compare.md"
    cmd = ["eval", "compare", str(out_a), str(tmp_path / "c.json"), "--as", "default=base", "--as", "flat:default=flat"]
    result = runner.invoke(app, [*cmd, "-o", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "| task | metric | base | flat |" in text
    assert f"| sts | spearman@384 | {a384:.4f} | 0.5000 ({0.5 - a384:+.4f}) |" in text
    assert "muses eval all" in text  # where each column's numbers come from


@given(st.text(min_size=1), st.text(alphabet=st.characters(blacklist_characters="="), min_size=1))
def test_compare_names_split_at_the_last_equals_sign(model: str, name: str) -> None:
    """`--as MODEL=NAME` gives the model (which may hold '=') and its column's name; text without '=', or with
    nothing on one side of it, is refused in one line."""
    assert parse_rename(f"{model}={name}") == (model, name)
    for bad in (name, f"{model}=", f"={name}"):
        with pytest.raises(InputError, match="must look like MODEL=NAME"):
            parse_rename(bad)


def test_report_input_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "all", "--tasks", "sts,nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown task(s) ['nope']" in result.output
    result = runner.invoke(app, ["eval", "all", "--profile", "huge", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown profile 'huge'" in result.output
    (tmp_path / "x.json").write_text(json.dumps({"no": "models"}))
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "x.json"), str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "not a MuSES results.json" in result.output
    (tmp_path / "one.json").write_text(json.dumps({"models": [{"model": "m", "tasks": {}}]}))
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "one.json"), str(tmp_path / "one.json")])
    assert result.exit_code == 2 and "compare needs two or more" in result.output
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "one.json"), "--as", "m"])
    assert result.exit_code == 2 and "must look like MODEL=NAME" in result.output
    for bad in ({"models": {"m": 1}}, {"models": ["m"]}, {"models": [{"model": "m", "tasks": 3}]}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        result = runner.invoke(app, ["eval", "compare", str(tmp_path / "bad.json"), str(tmp_path / "one.json")])
        assert result.exit_code == 2 and "'models' must be a list" in result.output, bad


def test_eval_all_resumes_a_report(tmp_path: Path, data_dir: Path) -> None:
    """`--resume` keeps each model's finished tasks, runs only the rest (a baseline new to the report included), does
    not load a model that has none left, keeps the models the command does not name, and refuses (exit 2, the file
    untouched) a model whose weights changed, a report of another profile, or a file it cannot read."""
    from muses.evaluation.baselines import load_corpus_encoder

    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "name: tiny\ntasks: [sts, hierarchy, squad-standalone]\nhierarchy_wiki_docs: 12\nhierarchy_scifact_docs: 12\n"
        "squad_docs: 4\n"
    )
    out = tmp_path / "report"
    out.mkdir()
    fingerprint = load_corpus_encoder("default").fingerprint()
    finished = {"sts": {"metrics": {"spearman@384": 0.5}, "seconds": 1.0}}  # a sentinel: it must survive the rerun
    hierarchy_done = {"hierarchy": {"metrics": {"wikipedia/hierarchy/all@384": 0.25}, "seconds": 1.0}}
    earlier = {
        "command": "muses eval all (an earlier run)",
        "profile": "tiny",
        "environment": {"date": "2026-01-01", "machine": "elsewhere", "gpu": "none", "torch": "x"},
        "models": [
            {"model": "default", "fingerprint": fingerprint, "dims": [384], "profile": "tiny", "tasks": finished},
            # every task finished (squad-standalone does not apply to a flat model): never loaded, so a path that no
            # longer exists is fine
            {
                "model": "flat:/nowhere",
                "fingerprint": "0",
                "dims": [384],
                "profile": "tiny",
                "tasks": {**finished, **hierarchy_done},
                "skipped": ["squad-standalone"],
            },
            {"model": "gone", "fingerprint": "1", "dims": [384], "profile": "tiny", "tasks": finished},
        ],
    }
    (out / "results.json").write_text(json.dumps(earlier))
    args = ["eval", "all", "--profile", str(profile), "--data-dir", str(data_dir), "--out", str(out), "--resume"]
    args += ["--tasks", "hierarchy,squad-standalone", "--cache-dir", str(tmp_path / "cache")]
    baselines = ["--baseline", "flat:/nowhere", "--baseline", "flat:default"]
    result = runner.invoke(app, [*args, *baselines])
    assert result.exit_code == 0, result.output
    assert "kept flat:/nowhere: every task finished" in result.output
    results = load_results(out)
    names = [m["model"] for m in results["models"]]
    assert names == ["default", "flat:/nowhere", "flat:default", "gone"]  # nothing is lost
    model, flat, new, gone = results["models"]
    assert model["tasks"]["sts"]["metrics"] == {"spearman@384": 0.5}  # kept, not rerun
    hierarchy = model["tasks"]["hierarchy"]["metrics"]  # run now, on the real model
    assert 0.5 < hierarchy["wikipedia/hierarchy/all@384"] <= 1.0 and hierarchy["scifact/hierarchy/n_docs"] == 12
    assert model["tasks"]["squad-standalone"]["metrics"]
    assert model["environment"]["machine"] == "elsewhere" and model["resumed_in"] == [results["environment"]]
    report = (out / "report.md").read_text()  # the header names the earlier run as well as this one
    assert "- Earlier runs that wrote into this report" in report and "2026-01-01; machine elsewhere" in report
    assert flat == earlier["models"][1] | {"environment": earlier["environment"]} and gone["tasks"] == finished
    assert list(new["tasks"]) == ["hierarchy"] and new["skipped"] == ["squad-standalone"] and "environment" not in new
    assert results["command"].endswith("--resume")

    again = runner.invoke(app, [*args, *baselines])  # all finished now: nothing is loaded, nothing changes
    assert again.exit_code == 0, again.output
    assert all(f"kept {n}: every task finished" in again.output for n in names[:3])
    assert load_results(out)["models"][2]["tasks"] == new["tasks"]

    before = (out / "results.json").read_text()
    edited = json.loads(before)
    edited["models"][0]["fingerprint"] = "changed"
    del edited["models"][0]["tasks"]["hierarchy"]
    for bad, words in [
        (edited, "default has changed since"),
        ({**edited, "models": [{"model": "default", "tasks": None}]}, "has a model block --resume cannot read"),
        ({**edited, "models": [{"model": "x", "tasks": {}}] * 2}, "holds 'x' twice"),
    ]:
        (out / "results.json").write_text(json.dumps(bad))
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
        assert json.loads((out / "results.json").read_text()) == bad  # refused before anything was written
    (out / "results.json").write_text(before)
    result = runner.invoke(app, [*args[:2], "--profile", "quick", *args[4:]])
    assert result.exit_code == 2 and "holds a report of profile 'tiny'" in result.output
    result = runner.invoke(app, [*args, "--baseline", "default"])
    assert result.exit_code == 2 and "give each --model/--baseline once" in result.output
    profile.write_text(profile.read_text().replace("hierarchy_wiki_docs: 12", "hierarchy_wiki_docs: 13"))
    result = runner.invoke(app, args)  # the same name, other numbers: an edited profile does not resume
    assert result.exit_code == 2, result.output
    assert "other settings of profile 'tiny' (hierarchy_wiki_docs)" in " ".join(result.output.split())
    assert (out / "results.json").read_text() == before


def test_efficiency_reruns_when_a_model_is_new_to_it() -> None:
    """The efficiency task measures the run's models side by side: a resume that adds a baseline reruns it, so
    every model of the report has its numbers there; other tasks stay finished. A model is measured when the task
    records it (reports from before that: when it has a document count), not when a name merely starts alike."""
    from muses.evaluation.report import tasks_left

    sts = {"metrics": {"spearman@384": 0.5}, "seconds": 1.0}
    for measured in (
        {"metrics": {"runs/v5/best/n_document": 3.0, "flat:default/n_document": 3.0, "speedup/x": 1.5}},
        {"metrics": {"speedup/x": 1.5}, "models": ["runs/v5/best", "flat:default"]},
    ):
        block = {"tasks": {"efficiency": measured, "sts": sts}}
        assert tasks_left(block, ["sts", "efficiency"], measured=["runs/v5/best", "flat:default"]) == []
        assert tasks_left(block, ["sts", "efficiency"], measured=["runs/v5/best"]) == []  # a baseline dropped
        for new in ("flat:mpnet", "runs/v5", "speedup"):
            assert tasks_left(block, ["sts", "efficiency"], measured=["runs/v5/best", new]) == ["efficiency"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    models=st.one_of(
        _JSON,
        st.lists(
            st.fixed_dictionaries(
                {"model": st.sampled_from(["a", "b"]) | _JSON},
                optional={
                    "tasks": st.dictionaries(
                        st.sampled_from(["sts", "knn"]),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "metrics": _JSON | st.dictionaries(st.sampled_from(["spearman@384", "x"]), _JSON),
                                "seconds": _JSON | st.floats(0, 9),
                                "task_adapter": _JSON,
                                "task_adapters": _JSON,
                            },
                        )
                        | _JSON,
                    ),
                    "skipped": st.lists(st.sampled_from(["sts", "knn"])) | _JSON,
                    "resumed_in": _JSON,
                },
            ),
            max_size=3,
        ),
    ),
    profile=st.sampled_from(["tiny", None, 3]),
    settings=st.none() | st.just("same") | _JSON | st.fixed_dictionaries({}, optional={"knn_folds": _JSON}),
    adapters=st.booleans(),
)
def test_fuzzed_results_resume_or_fail_in_one_line(
    models: object, profile: object, settings: object, adapters: bool, tmp_path: Path
) -> None:
    """Any results.json `--resume` meets gives blocks whose unfinished tasks it can list, or one InputError line."""
    from muses.evaluation.report import Profile, finished_blocks, profile_settings, tasks_left

    tiny = Profile(name="tiny", tasks=("sts", "knn"))
    written = {"profile": profile, "models": models}
    if settings is not None:
        written["profile_settings"] = settings if settings != "same" else profile_settings(tiny)
    (tmp_path / "results.json").write_text(json.dumps(written))
    try:
        blocks = finished_blocks(tmp_path, tiny)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert profile == "tiny" and len({b["model"] for b in blocks}) == len(blocks)
    from muses.evaluation.report import environment, render_markdown

    assert render_markdown({"command": "c", "profile": "tiny", "environment": environment(), "models": blocks})
    now = profile_settings(tiny)  # resumed: no settings on record, or none that differ from the profile's
    assert settings in (None, "same") or all(v == now[k] for k, v in settings.items() if k in now)  # type: ignore[union-attr]
    for block in blocks:
        left = tasks_left(block, ["sts", "knn"], adapters)
        assert set(left) <= {"sts", "knn"}
        assert all(t in left for t in ("sts", "knn") if t not in block["tasks"] and t not in block.get("skipped", []))

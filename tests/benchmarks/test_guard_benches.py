"""The benches that judge the WiSE-FT guard from saved per-claim values, without encoding: a mean difference, its
bootstrap bound, with the claims as they come or weighed by kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muses.data.beir import BeirDataset
from muses.training.dev import DevSet


def test_verdicts_judge_each_mix_against_alpha_zero_by_difference_and_by_bound() -> None:
    from benchmarks.wise_ft_guard import GUARDED, verdicts

    rng = np.random.default_rng(0)
    claims = [f"c{i}" for i in range(200)]
    start = {m: {q: float(v) for q, v in zip(claims, rng.uniform(0.3, 0.9, 200), strict=True)} for m in GUARDED}
    # the mix: 0.004 worse on average, noisy per claim, and 0.03 worse on the first 50 claims (one kind)
    noise = rng.normal(0, 0.05, 200)
    mix = {
        m: {
            q: v - 0.004 + float(e) - (0.026 if i < 50 else 0.0)
            for i, ((q, v), e) in enumerate(zip(vs.items(), noise, strict=True))
        }
        for m, vs in start.items()
    }
    weights = {q: (0.5 / 50 if i < 50 else 0.5 / 150) for i, q in enumerate(claims)}  # the first 50 weigh half
    dev = DevSet(scifact=BeirDataset({}, {}, {}, "scifact", "dev"), scifact_weights=weights)
    record = {
        "readings": {
            "0.0/own": {"metrics": {}, "per_query": start},
            "0.5/own": {"metrics": {}, "per_query": mix},
        }
    }
    rows = verdicts(record, {"own": dev}, tolerance=0.005, confidence=0.9)
    assert {(r["weighting"], r["metric"]) for r in rows} == {
        (w, m) for w in ("as they come", "by kind") for m in GUARDED
    }
    for r in rows:
        values, ref = mix[r["metric"]], start[r["metric"]]
        w = weights if r["weighting"] == "by kind" else dict.fromkeys(claims, 1.0)
        assert r["difference"] == pytest.approx(sum(w[q] * (values[q] - ref[q]) for q in claims) / sum(w.values()))
        assert r["alpha"] == 0.5 and r["bound"] < r["difference"]
        assert r["kept_by_difference"] == (r["difference"] >= -0.005) and r["kept_by_bound"] == (r["bound"] >= -0.005)
    plain = next(r for r in rows if r["weighting"] == "as they come")
    kinds = next(r for r in rows if r["weighting"] == "by kind" and r["metric"] == plain["metric"])
    assert kinds["difference"] < plain["difference"] - 0.005  # weighing the worse kind up shows more of its drop
    assert not any(r["kept_by_bound"] for r in rows)


def test_claim_pools_compare_every_model_with_the_first_claim_by_claim() -> None:
    """``scifact_claim_pools.compare_claims``: per claim set, the (weighted) mean difference to the first model and a
    bound below it; a model equal to the first plus a constant has that constant as difference and bound."""
    from benchmarks.scifact_claim_pools import compare_claims

    rng = np.random.default_rng(1)
    claims = [str(i) for i in range(120)]
    base = {"sentence@64": {q: float(v) for q, v in zip(claims, rng.uniform(0, 1, 120), strict=True)}}
    noisy = {"sentence@64": {q: v + float(rng.normal(0, 0.05)) for q, v in base["sentence@64"].items()}}
    shifted = {"sentence@64": {q: v + 0.01 for q, v in base["sentence@64"].items()}}
    weights = {q: (2.0 if int(q) % 2 else 1.0) for q in claims}
    sets = {"odd": ({q for q in claims if int(q) % 2}, None), "all, weighted": (set(claims), weights)}
    out = compare_claims({"base": base, "noisy": noisy, "shifted": shifted}, sets)
    assert set(out) == {"noisy", "shifted"} and set(out["noisy"]) == set(sets)
    for name in sets:
        assert out["shifted"][name]["sentence@64"] == pytest.approx({"difference": 0.01, "bound": 0.01})
    odd = [noisy["sentence@64"][q] - base["sentence@64"][q] for q in claims if int(q) % 2]
    assert out["noisy"]["odd"]["sentence@64"]["difference"] == pytest.approx(np.mean(odd))
    w = np.array([weights[q] for q in claims])
    d = np.array([noisy["sentence@64"][q] - base["sentence@64"][q] for q in claims])
    weighted = out["noisy"]["all, weighted"]["sentence@64"]
    assert (
        weighted["difference"] == pytest.approx(np.dot(w, d) / w.sum()) and weighted["bound"] < weighted["difference"]
    )


def test_claim_sets_weigh_each_set_to_the_train_mix_on_its_own(data_dir: Path) -> None:
    """Weighed by kind, the dev claims alone and the dev and unused claims together each weigh claims with evidence
    505/809 (SciFact's train split), not the grown pool's weights carried over to the dev claims."""
    from benchmarks.scifact_claim_pools import whole_corpus_claim_sets
    from muses.data.beir import load_beir
    from muses.data.scifact import load_scifact_claims
    from muses.training.data import with_unused_claims
    from muses.training.dev import scifact_dev_subset

    plain = scifact_dev_subset(load_beir("scifact", split="dev", data_dir=data_dir), 5, 0)
    grown = with_unused_claims(plain, data_dir)
    test = load_beir("scifact", split="test", data_dir=data_dir)
    sets = whole_corpus_claim_sets(grown, set(plain.qrels), test, str(data_dir))
    with_evidence = {c.id for c in load_scifact_claims("train", data_dir) if c.has_evidence}
    assert [len(claims) for claims, _ in sets.values()] == [151, 151, 398, 398, 300]
    for claims, weights in sets.values():
        if weights is not None:
            assert set(weights) == claims
            assert sum(w for q, w in weights.items() if q in with_evidence) == pytest.approx(505 / 809)
            assert sum(weights.values()) == pytest.approx(1.0)


def test_rationale_folds_pool_each_querys_difference_over_the_runs_that_read_it(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rationale_folds``: a query read by two runs (a shared dev claim) counts once, at its mean difference; a
    fold's claim counts in its own run's; a mix is refused when a pooled bound falls below the tolerance, and the
    best-scoring mix that is not is kept. A run is checked to read its own fold's claims and no other fold's; bad
    arguments stop with exit 2 and one line."""
    import json

    from benchmarks.rationale_folds import load_run, main, pooled_differences, verdict
    from muses.training.checkpoint import INTERPOLATION_READINGS
    from muses.training.data import fold_claim_ids

    rng = np.random.default_rng(2)
    shared = [f"s{i}" for i in range(60)]
    own = [[f"a{i}" for i in range(40)], [f"b{i}" for i in range(40)]]
    doc, evidence = "dev/scifact-document@64", "dev/scifact-evidence@64"

    def run(fold: int, drop: float, gain: float) -> dict:
        claims = shared + own[fold]
        start = {q: float(v) for q, v in zip(claims, rng.uniform(0.3, 0.9, len(claims)), strict=True)}
        out = {"0.0": {doc: start, evidence: dict(start)}}
        for alpha, scale in (("0.5", 1.0), ("1.0", 3.0)):
            noise = rng.normal(0, 0.01, len(claims))
            out[alpha] = {
                doc: {q: v - scale * drop + float(e) for (q, v), e in zip(start.items(), noise, strict=True)},
                evidence: {q: v + scale * gain for q, v in start.items()},
            }
        return out

    runs = [run(0, 0.001, 0.01), run(1, 0.003, 0.02)]
    pooled = pooled_differences(runs, "0.5", doc)
    assert set(pooled) == set(shared) | set(own[0]) | set(own[1])
    for q in shared:
        assert pooled[q] == pytest.approx(np.mean([r["0.5"][doc][q] - r["0.0"][doc][q] for r in runs]))
    assert pooled["b3"] == pytest.approx(runs[1]["0.5"][doc]["b3"] - runs[1]["0.0"][doc]["b3"])
    groups = {"shared": set(shared), "folds": set(own[0]) | set(own[1])}
    out = verdict(runs, {"scifact-document": 0.005}, 0.9, {"scifact-evidence": 1.0}, None, groups)
    half, whole = out["alphas"]["0.5"], out["alphas"]["1.0"]
    by_group = half["guarded"][doc]["by_group"]
    assert by_group["shared"]["queries"] == 60 and by_group["folds"]["queries"] == 80
    assert by_group["shared"]["difference"] == pytest.approx(np.mean([pooled[q] for q in shared]))
    assert half["scored"] == {evidence: pytest.approx((60 * 0.015 + 40 * 0.01 + 40 * 0.02) / 140)}
    assert half["guarded"][doc]["queries"] == 140 and half["guarded"][doc]["bound"] < half["guarded"][doc]["difference"]
    assert half["guarded"][doc]["difference"] == pytest.approx(-0.002, abs=0.003) and half["misses"] == []
    assert whole["misses"] == [doc] and whole["score"] > half["score"] > out["alphas"]["0.0"]["score"]
    assert out["kept"] == 0.5  # the checkpoint scores best and is refused

    folds = [fold_claim_ids((i, 5), str(data_dir)) for i in range(5)]
    readings = {"0.0": {doc: dict.fromkeys(["d1", *folds[2]], 0.5)}}
    (tmp_path / INTERPOLATION_READINGS).write_text(json.dumps(readings))
    assert load_run(tmp_path, 2, 5, str(data_dir)) == readings
    with pytest.raises(ValueError, match="is not fold 3 of 5"):
        load_run(tmp_path, 3, 5, str(data_dir))
    readings["0.0"][doc][folds[4][0]] = 0.5
    (tmp_path / INTERPOLATION_READINGS).write_text(json.dumps(readings))
    with pytest.raises(ValueError, match="reads fold 4's claims"):
        load_run(tmp_path, 2, 5, str(data_dir))
    readings["0.0"][doc].pop(folds[4][0])  # a recipe that also trains on the claims without evidence folds them too
    unevidenced = [fold_claim_ids((i, 5), str(data_dir), evidence=False) for i in range(5)]
    (tmp_path / INTERPOLATION_READINGS).write_text(json.dumps(readings))
    with pytest.raises(ValueError, match="does not read that fold's claims without evidence"):
        load_run(tmp_path, 2, 5, str(data_dir), without_evidence=True)
    readings["0.0"][doc] |= dict.fromkeys([*unevidenced[2], unevidenced[0][0]], 0.5)
    (tmp_path / INTERPOLATION_READINGS).write_text(json.dumps(readings))
    with pytest.raises(ValueError, match="reads fold 0's claims without evidence"):
        load_run(tmp_path, 2, 5, str(data_dir), without_evidence=True)
    readings["0.0"][doc].pop(unevidenced[0][0])
    (tmp_path / INTERPOLATION_READINGS).write_text(json.dumps(readings))
    assert load_run(tmp_path, 2, 5, str(data_dir), without_evidence=True) == readings
    assert load_run(tmp_path, 2, 5, str(data_dir)) == readings
    recipe = Path(__file__).parents[2] / "configs" / "context-head.yaml"
    common = ["--config", str(recipe), "--folds", "5", "--data-dir", str(data_dir), "--out", str(tmp_path / "o.json")]
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"extends: {recipe}\ninterpolate_tolerance: {{stsb: 0.005}}\n")
    refs = tmp_path / "refs.yaml"
    refs.write_text(f"extends: {recipe}\ninterpolate_references: [default]\n")
    for argv, words in (
        (["--config", str(extra), "--run", f"2={tmp_path}"], "'stsb'"),
        (["--config", str(refs), "--run", f"2={tmp_path}"], "interpolate_references"),
        (["--config", str(tmp_path / "none.yaml"), "--run", f"2={tmp_path}"], "none.yaml"),
        (["--run", f"2={tmp_path / 'nowhere'}"], "not found"),
        (["--run", "0"], "give I=PATH"),
        (["--run", "5=x"], "0 <= I < --folds 5"),
        (["--run", "1=x", "--run", "1=y"], "one run per fold"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*common, *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err.strip().splitlines()[-1] and "Traceback" not in err


def test_rationale_folds_against_pairs_each_query_with_the_other_sets_value(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--against``: two sets of fold runs (e.g. one recipe at two lengths) compared per query at each alpha both
    read: the mean of the pooled differences is the gain, its bound below it; a set over other queries is refused,
    and so is one over other folds, in one line."""
    import json

    from benchmarks.rationale_folds import main, paired
    from muses.training.checkpoint import INTERPOLATION_READINGS
    from muses.training.data import fold_claim_ids

    rng = np.random.default_rng(4)
    evidence, wiki = "dev/scifact-evidence@64", "dev/wikipedia-sentence@64"

    starts = [  # the same starting model's readings in both sets
        {evidence: {q: float(rng.uniform(0.2, 0.8)) for q in fold_claim_ids((fold, 5), str(data_dir))}}
        | {wiki: {f"w{i}": 0.5 for i in range(30)}}
        for fold in (0, 1)
    ]

    def run(fold: int, gain: float) -> dict:
        start = starts[fold]
        mix = {
            evidence: {q: v + gain + float(rng.normal(0, 0.01)) for q, v in start[evidence].items()},
            wiki: {q: v - gain for q, v in start[wiki].items()},
        }
        return {"0.0": start, "0.5": mix, "1.0": mix}

    longer, shorter = [run(0, 0.03), run(1, 0.03)], [run(0, 0.01), run(1, 0.01)]
    shorter[1].pop("1.0")  # an alpha one set lacks is not compared
    out = paired(longer, shorter, 0.9, None)
    assert set(out) == {"0.0", "0.5"}
    row = out["0.5"][evidence]
    assert row["difference"] == pytest.approx(0.02, abs=0.004) and row["bound"] < row["difference"]
    assert row["queries"] == len(fold_claim_ids((0, 5), str(data_dir))) + len(fold_claim_ids((1, 5), str(data_dir)))
    assert out["0.5"][wiki] == {"difference": pytest.approx(-0.02), "bound": pytest.approx(-0.02), "queries": 30}
    shorter[1]["0.5"][evidence].popitem()  # a claim of fold 1 that only one set read
    with pytest.raises(ValueError, match="other queries"):
        paired(longer, shorter, 0.9, None)

    recipe = Path(__file__).parents[2] / "configs" / "context-head.yaml"
    for name, r in (("l0", longer[0]), ("l1", longer[1]), ("s0", shorter[0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / INTERPOLATION_READINGS).write_text(json.dumps(r))
    common = ["--config", str(recipe), "--folds", "5", "--data-dir", str(data_dir), "--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit) as e:
        main(
            [
                *common,
                "--run",
                f"0={tmp_path / 'l0'}",
                "--run",
                f"1={tmp_path / 'l1'}",
                "--against",
                f"0={tmp_path / 's0'}",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "--against: one run per fold of --run ([0, 1])" in err
    assert not (tmp_path / "o.json").exists()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=30), st.builds("{}={}".format, st.text(max_size=4), st.text(max_size=8))))
def test_fuzzed_run_arguments_parse_or_are_refused_in_one_line(item: str) -> None:
    """``--run`` values: ``I=PATH`` with a decimal I and a path parses to ``(I, PATH)``; anything else is refused
    with argparse's own error, one line naming the form."""
    import argparse

    from benchmarks.rationale_folds import _run_arg

    fold, sep, path = item.partition("=")
    if sep and fold.isascii() and fold.isdigit() and path:
        assert _run_arg(item) == (int(fold), Path(path))
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="give I=PATH") as e:
            _run_arg(item)
        assert "\n" not in str(e.value)


def test_rationale_folds_main_pools_real_fold_claims_weighed_by_kind(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rationale_folds.main`` on two folds' readings of real SciFact claim ids, with the published recipe: the
    written verdict counts every claim once, weighs them by kind as the recipe does, splits the difference by kind,
    and keeps the mix whose bounds hold."""
    import json

    from benchmarks.rationale_folds import main
    from muses.data.scifact import load_scifact_claims
    from muses.training.checkpoint import INTERPOLATION_READINGS
    from muses.training.data import fold_claim_ids, scifact_kind_weights

    without = sorted(c.id for c in load_scifact_claims("train", data_dir) if not c.has_evidence)[:30]
    rng = np.random.default_rng(3)
    tasks = ["scifact-document", "scifact-sentence", "scifact-evidence", "ict-document", "ict-sentence"]
    tasks.append("wikipedia-sentence")
    runs = []
    for fold in (0, 1):
        claims = without + fold_claim_ids((fold, 5), str(data_dir))
        queries = {t: claims if t.startswith("scifact") else [f"w{i}" for i in range(40)] for t in tasks}
        start = {f"dev/{t}@64": {q: float(rng.uniform(0.2, 0.8)) for q in qs} for t, qs in queries.items()}
        mix = {m: {q: v + (0.02 if "evidence" in m else -0.001) for q, v in vs.items()} for m, vs in start.items()}
        readings = {"0.0": start, "0.25": mix}
        (tmp_path / f"f{fold}").mkdir()
        (tmp_path / f"f{fold}" / INTERPOLATION_READINGS).write_text(json.dumps(readings))
        runs.append(readings)
    recipe = Path(__file__).parents[2] / "configs" / "context-head.yaml"
    out = tmp_path / "pooled.json"
    runs_args = ["--run", f"0={tmp_path / 'f0'}", "--run", f"1={tmp_path / 'f1'}"]
    main(["--config", str(recipe), "--folds", "5", *runs_args, "--data-dir", str(data_dir), "--out", str(out)])
    result = json.loads(out.read_text())
    claims = set(without) | set(fold_claim_ids((0, 5), str(data_dir))) | set(fold_claim_ids((1, 5), str(data_dir)))
    assert result["claims"] == len(claims) and result["runs"] == [0, 1] and result["kept"] == 0.25
    row = result["alphas"]["0.25"]["guarded"]["dev/scifact-sentence@64"]
    assert row["queries"] == len(claims) and row["difference"] == pytest.approx(-0.001)
    assert row["by_group"]["without evidence"] == {"difference": pytest.approx(-0.001), "queries": 30}
    weights = scifact_kind_weights(claims, str(data_dir))
    assert sum(weights[q] for q in without) == pytest.approx(304 / 809)  # 30 claims weigh the kind's whole share
    scored = result["alphas"]["0.25"]["scored"]
    assert scored == {"dev/scifact-evidence@64": pytest.approx(0.02)}
    assert result["alphas"]["0.25"]["score"] > result["alphas"]["0.0"]["score"]
    # a recipe that also trains on the claims without evidence folds them: runs sharing them are refused
    all_claims = Path(__file__).parents[2] / "configs" / "context-head-all-claims.yaml"
    with pytest.raises(SystemExit) as e:
        main(["--config", str(all_claims), "--folds", "5", *runs_args, "--data-dir", str(data_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "claims without evidence on dev" in err


def test_wise_ft_guard_refuses_a_recipe_that_trained_on_the_grown_pools_claims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wise_ft_guard``'s grown pools read every train-fit claim without evidence: a recipe that trains on them
    (``data.scifact_claims_without_evidence``, or the 'scifact' task) is refused in one line before any reading."""
    from benchmarks.wise_ft_guard import main

    configs = Path(__file__).parents[2] / "configs"
    for recipe in ("context-head-all-claims.yaml", "smoke.yaml"):
        argv = ["wise_ft_guard.py", "--checkpoint", str(tmp_path), "--config", str(configs / recipe)]
        monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path / "g.json")])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and "trains on the train-fit claims without evidence" in err[-1]
        assert not (tmp_path / "g.json").exists()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["-c", "nope.yaml"], "nope.yaml"),
        (["--set", "steps"], "key.path=value"),
        ([], "train the recipe with interpolate_confidence set, to the end"),
    ],
)
def test_reread_mixes_refuses_what_it_cannot_read_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    """A missing recipe, a malformed ``--set`` or a run that kept no per-query readings: exit 2, one line that names
    the problem (and the fix), before anything is built or read."""
    from benchmarks.reread_mixes import main

    recipe = tmp_path / "r.yaml"
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    recipe.write_text(f"extends: {smoke}\noutput_dir: {tmp_path / 'run'}\n")
    args = ["-c", str(recipe), "--tasks", "scifact-hierarchy", "--out", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert problem in err[-1] and err[-1].startswith("usage:") is False
    assert not (tmp_path / "out").exists()

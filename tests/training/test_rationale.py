"""The rationale task on real SciFact data: claim -> its rationale sentences in context, siblings as negatives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from muses.data.beir import is_heldout_dev, load_beir
from muses.data.scifact import load_scifact_claims
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError
from muses.training.config import TrainConfig, load_config
from muses.training.data import Rationale, fold_claim_ids, load_training_data, scifact_rationales
from muses.training.dev import evaluate_dev
from muses.training.stages import load_stages
from muses.training.tasks import RationaleTask
from muses.training.trainer import Trainer
from tests.training.one_task import one_task_config, train_on_one_batch


def _config(tmp: Path, **data: object) -> TrainConfig:
    return one_task_config(tmp, "rationale", {"wikipedia_articles": 0, "scifact_rationales": True, **data})


def test_rationales_come_from_train_fit_claims_and_point_at_gold_sentences(data_dir: Path) -> None:
    items = scifact_rationales(data_dir)
    train_fit = load_beir("scifact", split="train-fit", data_dir=data_dir)
    assert len(items) > 300
    assert {r.query for r in items} <= set(train_fit.queries.values())  # never a held-out dev claim
    for r in items:
        assert r.positives and all(0 <= p < len(r.document.sentences) for p in r.positives)
        assert list(r.positives) == sorted(set(r.positives))
    # a known item: the first claim's gold sentence text is inside its abstract, at the span the index names
    r = items[0]
    assert r.document.sentence_texts()[r.positives[0]] in r.document.text


def test_rationale_loss_ranks_gold_sentences_and_training_lowers_it(tmp_path: Path, data_dir: Path) -> None:
    """On real claims and abstracts the base model already prefers the gold sentences (loss well under chance:
    log of the batch's sentence count), and three steps on one batch lower the loss on it."""
    cfg = _config(tmp_path, dev_scifact_distractors=None)
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    task = trainer.tasks["rationale"]
    assert isinstance(task, RationaleTask)
    long = 0
    for r in trainer.data.rationales[:120]:  # long abstracts: the window around the first gold sentence fits
        window, first = task.window(r)
        n_tokens = len(trainer.encoder.tokenizer(window.text, add_special_tokens=False)["input_ids"])
        assert window.sentence_texts() == r.document.sentence_texts()[first : first + len(window.sentences)]
        assert first <= r.positives[0] < first + len(window.sentences)
        assert n_tokens <= task.max_tokens or len(window.sentences) == 1
        long += len(window.sentences) < len(r.document.sentences)
    assert long > 10  # the data has them: cut from the start, 152 of the 455 items lose every gold sentence
    batch = [0, 1, 2, 3]
    before, after = train_on_one_batch(trainer, task, batch)
    n_sentences = sum(len(trainer.data.rationales[i].document.sentences) for i in batch)
    assert 0.0 < float(before["task"]) < 0.5 * float(torch.log(torch.tensor(float(n_sentences))))
    assert float(before["retention"]) < 1e-5  # the untrained student equals the base model
    assert float(after["task"]) < float(before["task"])
    assert float(after["retention"]) > 0.0


def test_rationale_maxsim_term_ranks_the_claims_own_abstract(tmp_path: Path, data_dir: Path) -> None:
    """`loss.rationale_maxsim_weight` adds the max-sim document ranking to the rationale loss on the same batch:
    positive (each claim's best sentence rarely beats every other abstract's by the whole scale), and it adds
    exactly its weight times that term."""
    losses = []
    for weight in (0.0, 1.0, 2.0):
        cfg = _config(tmp_path / str(weight), dev_scifact_distractors=None)
        cfg.loss.rationale_maxsim_weight = weight
        trainer = Trainer(cfg, load_training_data(cfg, data_dir))
        torch.manual_seed(0)
        losses.append(float(trainer.tasks["rationale"]([0, 1, 2, 3, 4, 5], 0.5)["task"].detach()))
    assert losses[1] > losses[0] and losses[1] - losses[0] == pytest.approx((losses[2] - losses[0]) / 2, rel=1e-4)


def test_dev_evidence_metric_uses_held_out_claims_only(tmp_path: Path, data_dir: Path) -> None:
    cfg = _config(tmp_path, dev_scifact_distractors=10, dev_scifact_claims=12, dev_scifact_evidence=True)
    data = load_training_data(cfg, data_dir)
    ev = data.dev.evidence
    assert ev is not None and ev.queries
    assert all(is_heldout_dev(q) for q in ev.queries)
    assert {d.id for d in ev.documents} == set(data.dev.scifact.corpus)  # type: ignore[union-attr]
    gold_docs = {s.split(":")[0] for rels in ev.qrels.values() for s in rels}
    assert gold_docs <= {d.id for d in ev.documents}
    trainer = Trainer(cfg, data)
    out = evaluate_dev(trainer.encoder, data.dev)
    assert 0.2 < out["dev/scifact-evidence@384"] <= 1.0
    assert 0.1 < out["dev/scifact-evidence@64"] < out["dev/scifact-evidence@384"]  # selection sees both dims


def test_dev_scifact_hierarchy_is_the_pools_whole_set_hierarchy_per_sentence(
    tmp_path: Path, data_dir: Path, encoder: MultiScaleEncoder
) -> None:
    """``data.dev_scifact_hierarchy``: each sentence of the SciFact evidence pool, pooled in context, picks its own
    abstract among all of the pool's or not, kept per sentence so the guard can bound a mix's difference; its mean is
    the test report's ``hierarchy/all`` over the same abstracts. Read only when the recipe asks (the digest of a dev
    set without it is the one it had before), and only with the evidence pool."""
    from muses.evaluation.corpus import MusesCorpusEncoder
    from muses.evaluation.hierarchy import evaluate_hierarchy
    from muses.training.dev import difference_bounds, read_dev

    evidence = {"dev_scifact_distractors": 10, "dev_scifact_claims": 12, "dev_scifact_evidence": True}
    plain = load_training_data(_config(tmp_path, **evidence), data_dir).dev
    dev = load_training_data(_config(tmp_path, **evidence, dev_scifact_hierarchy=True), data_dir).dev
    assert dev.evidence is not None and dev.scifact_hierarchy and not plain.scifact_hierarchy
    assert dev.digest() != plain.digest()
    plain.scifact_hierarchy = True
    assert plain.digest() == dev.digest()
    plain.scifact_hierarchy = False

    reading = read_dev(encoder, dev)
    docs = dev.evidence.documents
    whole = evaluate_hierarchy(MusesCorpusEncoder(encoder, name="m", context="document"), docs, dims=[64, 384])
    ids = {f"{d.id}:{i}" for d in docs for i in range(len(d.sentences))}
    for d in (64, 384):
        values = reading.per_query[f"dev/scifact-hierarchy@{d}"]
        assert set(values) == ids and set(values.values()) <= {0.0, 1.0}
        assert reading.metrics[f"dev/scifact-hierarchy@{d}"] == pytest.approx(whole[f"hierarchy/all@{d}"], abs=1e-9)
        assert 0.8 < reading.metrics[f"dev/scifact-hierarchy@{d}"] <= 1.0
    bounds = difference_bounds(reading, reading, {"scifact-hierarchy"}, 0.9, dev)
    assert bounds == {"dev/scifact-hierarchy@384": 0.0, "dev/scifact-hierarchy@64": 0.0}
    only = read_dev(encoder, dev, tasks=["scifact-hierarchy"]).metrics
    assert only == {k: v for k, v in reading.metrics.items() if "scifact-hierarchy" in k}
    asked = read_dev(encoder, plain, tasks=["scifact-evidence", "scifact-hierarchy"]).metrics
    assert set(asked) == {"dev/scifact-evidence@64", "dev/scifact-evidence@384"}  # a recipe without it: not read
    with pytest.raises(ValidationError, match=r"set data\.dev_scifact_evidence"):
        _config(tmp_path, dev_scifact_distractors=10, dev_scifact_hierarchy=True)


def test_unused_train_claims_join_the_scifact_dev_pool_and_stay_held_out(tmp_path: Path, data_dir: Path) -> None:
    """``data.dev_scifact_unused_claims`` adds exactly SciFact's train-fit claims without rationale evidence, and the
    abstracts they cite, to the dev pool: the dev claims' pool (claims, distractors) and the evidence dev set stay
    as they were, and no added claim is a rationale task query. Beside the ``scifact`` task, which trains on them,
    the recipe is refused, also when an earlier stage of the same command (or stage list) trains it."""
    plain = load_training_data(_config(tmp_path, dev_scifact_distractors=20, dev_scifact_evidence=True), data_dir)
    cfg = _config(tmp_path, dev_scifact_distractors=20, dev_scifact_evidence=True, dev_scifact_unused_claims=True)
    data = load_training_data(cfg, data_dir)
    pool, before = data.dev.scifact, plain.dev.scifact
    assert pool is not None and before is not None and pool.split == "dev+20+unused"
    added = set(pool.queries) - set(before.queries)
    unused = {c.id for c in load_scifact_claims("train", data_dir) if not is_heldout_dev(c.id) and not c.has_evidence}
    assert added == unused and len(added) == 247 and {q: pool.qrels[q] for q in before.qrels} == before.qrels
    assert not {pool.queries[q] for q in added} & {r.query for r in data.rationales}  # no task trains on them
    cited = {d for q in added for d in pool.qrels[q]}
    assert set(pool.corpus) == set(before.corpus) | cited and len(cited) > 150  # the dev pool's distractors stay
    assert list(pool.corpus) == [d for d in load_beir("scifact", "train", data_dir).corpus if d in pool.corpus]
    assert data.dev.evidence is not None and plain.dev.evidence is not None
    assert data.dev.evidence.qrels == plain.dev.evidence.qrels
    assert [d.id for d in data.dev.evidence.documents] == [d.id for d in plain.dev.evidence.documents]

    for task, data_cfg, problem in (
        ("scifact", {"scifact": True}, r"task_weights\.scifact to 0"),
        ("rationale", {"scifact_rationales": True, "dev_scifact_distractors": None}, "needs the SciFact dev pool"),
    ):
        with pytest.raises(ValidationError, match=problem):
            one_task_config(tmp_path, task, {**data_cfg, "dev_scifact_unused_claims": True})
    configs = Path(__file__).resolve().parents[2] / "configs"
    first, second, both = tmp_path / "first.yaml", tmp_path / "second.yaml", tmp_path / "both.yaml"
    first.write_text(f"extends: {configs / 'smoke.yaml'}\noutput_dir: {tmp_path / 'a'}\n")  # trains 'scifact'
    second.write_text(
        f"extends: {configs / 'smoke.yaml'}\noutput_dir: {tmp_path / 'b'}\ntask_weights: {{scifact: 0.0}}\n"
        "data: {dev_scifact_distractors: 10, dev_scifact_unused_claims: true}\n"
    )
    both.write_text("stages: [first.yaml, second.yaml]\n")
    assert load_stages([second])[0].data.dev_scifact_unused_claims
    for stages in ([first, second], [both]):
        with pytest.raises(InputError, match="the earlier stage 'smoke' trains on") as e:
            load_stages(stages)
        assert "\n" not in str(e.value)


def test_a_rationale_fold_moves_from_the_task_to_the_dev_pool(tmp_path: Path, data_dir: Path) -> None:
    """``data.dev_scifact_rationale_fold: [i, k]``: the k folds split the train-fit claims with rationale evidence;
    fold i's claims leave the rationale task and join the SciFact dev pool (with the abstracts they cite; the dev
    claims, their distractors and their qrels stay) and the dev evidence set (with their gold sentences). A bad
    fold, the 'scifact' task, and an earlier stage that trains the rationale task on every claim are refused."""
    with_evidence = {
        c.id for c in load_scifact_claims("train", data_dir) if c.has_evidence and not is_heldout_dev(c.id)
    }
    folds = [set(fold_claim_ids((i, 3), data_dir)) for i in range(3)]
    assert set().union(*folds) == with_evidence and sum(map(len, folds)) == len(with_evidence)
    assert all(len(f) > len(with_evidence) / 5 for f in folds)  # the hash spreads them

    base = {"dev_scifact_distractors": 20, "dev_scifact_evidence": True}
    plain = load_training_data(_config(tmp_path, **base), data_dir)
    data = load_training_data(_config(tmp_path, **base, dev_scifact_rationale_fold=[1, 3]), data_dir)
    pool, before = data.dev.scifact, plain.dev.scifact
    assert pool is not None and before is not None and pool.split == "dev+20+fold1of3"
    assert set(pool.queries) - set(before.queries) == folds[1]
    assert {q: pool.qrels[q] for q in before.qrels} == before.qrels and set(before.corpus) < set(pool.corpus)
    assert {d for q in folds[1] for d in pool.qrels[q]} <= set(pool.corpus)
    texts = {pool.queries[q] for q in folds[1]}
    assert not texts & {r.query for r in data.rationales} and texts <= {r.query for r in plain.rationales}
    assert len(plain.rationales) - len(data.rationales) >= len(folds[1])  # a claim cites one or more abstracts
    ev, ev_before = data.dev.evidence, plain.dev.evidence
    assert ev is not None and ev_before is not None
    assert set(ev.qrels) == set(ev_before.qrels) | folds[1]
    claims = {c.id: c for c in load_scifact_claims("train", data_dir)}
    for q in folds[1]:
        assert ev.qrels[q] == {f"{d}:{i}": 1 for d, i in claims[q].rationale_sentences}

    for data_cfg, problem in (
        ({"dev_scifact_rationale_fold": [3, 3]}, r"0 <= i < k"),
        ({"dev_scifact_rationale_fold": [0, 1]}, r"k >= 2"),
        ({"dev_scifact_rationale_fold": [0, 5], "dev_scifact_distractors": None}, "needs the SciFact dev pool"),
    ):
        with pytest.raises(ValidationError, match=problem):
            _config(tmp_path, **data_cfg)
    with pytest.raises(ValidationError, match=r"task_weights\.scifact to 0"):
        one_task_config(tmp_path, "scifact", {"scifact": True, "dev_scifact_rationale_fold": [0, 5]})
    configs = Path(__file__).resolve().parents[2] / "configs"
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"extends: {configs / 'sentence-heads.yaml'}\noutput_dir: {tmp_path / 'a'}\n")
    second.write_text(
        f"extends: {configs / 'sentence-heads.yaml'}\noutput_dir: {tmp_path / 'b'}\n"
        "data: {dev_scifact_rationale_fold: [0, 5]}\n"
    )
    assert load_stages([second])[0].data.dev_scifact_rationale_fold == (0, 5)
    with pytest.raises(InputError, match="the earlier stage 'sentence-heads' trains on") as e:
        load_stages([first, second])
    assert "\n" not in str(e.value)
    first.write_text(first.read_text() + "data: {dev_scifact_rationale_fold: [0, 5]}\n")  # the same fold: held out
    assert [s.data.dev_scifact_rationale_fold for s in load_stages([first, second])] == [(0, 5), (0, 5)]
    first.write_text(f"extends: {configs / 'smoke.yaml'}\noutput_dir: {tmp_path / 'a'}\n")  # trains 'scifact'
    with pytest.raises(InputError, match="the earlier stage 'smoke' trains on"):
        load_stages([first, second])


def test_claims_without_evidence_train_the_maxsim_term_and_fold_like_the_rest(tmp_path: Path, data_dir: Path) -> None:
    """``data.scifact_claims_without_evidence``: the train-fit claims without rationale evidence join the rationale
    task, one item per cited abstract with no gold sentence, and only the max-sim term trains on them (the ranking
    weight does not change their loss; a few steps lower it). With a fold, that fold's claims without evidence are
    held out too, and ``dev_scifact_unused_claims`` adds only those to dev. Without a positive max-sim weight, or
    beside ``dev_scifact_unused_claims`` with no fold, or after a stage that trained them, it is refused."""
    claims = load_scifact_claims("train", data_dir)
    claims_by_id = {c.id: c for c in claims}
    without = {c.id: c for c in claims if not c.has_evidence and not is_heldout_dev(c.id)}
    folds = [set(fold_claim_ids((i, 3), data_dir, evidence=False)) for i in range(3)]
    assert set().union(*folds) == set(without) and sum(map(len, folds)) == len(without)
    loss = {"rationale_maxsim_weight": 2.0}
    data_cfg = {"scifact_claims_without_evidence": True, "dev_scifact_distractors": 20, "dev_scifact_evidence": True}
    cfg = one_task_config(
        tmp_path,
        "rationale",
        {"wikipedia_articles": 0, "scifact_rationales": True, **data_cfg, "dev_scifact_rationale_fold": [1, 3]}
        | {"dev_scifact_unused_claims": True},
        loss,
    )
    data = load_training_data(cfg, data_dir)
    pool = data.dev.scifact
    assert pool is not None and pool.split == "dev+20+fold1of3+unused1of3"
    dev_claims = {c.id for c in claims if is_heldout_dev(c.id)}
    assert set(pool.queries) - dev_claims == set(fold_claim_ids((1, 3), data_dir)) | folds[1]
    trained = [r for r in data.rationales if not r.positives]
    held_texts = {claims_by_id[q].claim for q in pool.queries}
    assert not held_texts & {r.query for r in data.rationales}  # no dev claim, of either kind, is trained on
    assert {r.query for r in trained} == {without[q].claim for q in folds[0] | folds[2]}
    assert sorted((r.query, str(r.document.id)) for r in trained) == sorted(
        (without[q].claim, d) for q in folds[0] | folds[2] for d in without[q].cited_doc_ids
    )

    ids = {"without": [i for i, r in enumerate(data.rationales) if not r.positives][:3]}
    ids["with"] = [i for i, r in enumerate(data.rationales) if r.positives][:3]
    ids["mixed"] = ids["without"] + ids["with"]
    losses: dict[tuple[str, str, float], float] = {}
    for candidates in ("batch", "document"):
        for weight in (1.0, 5.0):
            cfg.loss.rationale_weight, cfg.loss.rationale_candidates = weight, candidates  # type: ignore[assignment]
            trainer = Trainer(cfg, data)
            task = trainer.tasks["rationale"]
            for name, batch in ids.items():
                torch.manual_seed(0)
                losses[name, candidates, weight] = float(task(batch, 0.5)["task"].detach())
        assert losses["without", candidates, 1.0] > 0  # the max-sim term alone: the ranking term does not see them
        assert losses["without", candidates, 1.0] == pytest.approx(losses["without", candidates, 5.0])
        # in a mixed batch the ranking term is the mean over the items with gold (4 more of it at weight 5): the
        # same as theirs alone when only their own abstract's sentences are candidates, more with the batch's
        ranking = {k: (losses[k, candidates, 5.0] - losses[k, candidates, 1.0]) / 4 for k in ("mixed", "with")}
        if candidates == "document":
            assert ranking["mixed"] == pytest.approx(ranking["with"], rel=1e-4) and ranking["with"] > 0
        else:
            assert ranking["mixed"] > ranking["with"] > 0
    before, after = train_on_one_batch(trainer, task, ids["without"])
    assert float(after["task"]) < float(before["task"])

    # an item with gold places its abstract's window even after one without gold: its gold sentence stays in
    def from_start(r: Rationale) -> Rationale:
        return Rationale("a claim without evidence", r.document, ())

    late = next(  # a gold sentence past the window cut from the start, and a sentence not gold in its own window
        r
        for r in data.rationales
        if r.positives
        and r.positives[0] >= len(task.window(from_start(r))[0].sentences)
        and len(task.window(r)[0].sentences) > len(r.positives)
    )
    pair = [from_start(late), late]
    shared = RationaleTask(task.ctx, pair, task.max_tokens)
    with torch.no_grad():
        cfg.loss.rationale_weight = 1.0
        low = float(shared([0, 1], 0.5)["task"])
        cfg.loss.rationale_weight = 5.0
        assert float(shared([0, 1], 0.5)["task"]) > low  # the ranking term sees the item with gold

    for extra, bad_loss, problem in (
        ({}, {}, r"positive loss\.rationale_maxsim_weight"),
        ({"dev_scifact_unused_claims": True}, loss, r"and data\.dev_scifact_rationale_fold together"),
        ({"dev_scifact_rationale_fold": [0, 5]}, loss, r"and data\.dev_scifact_rationale_fold together"),
    ):
        with pytest.raises(ValidationError, match=problem):
            one_task_config(tmp_path, "rationale", {"scifact_rationales": True, **data_cfg, **extra}, bad_loss)
    with pytest.raises(ValidationError, match=r"positive task_weights\.rationale"):
        one_task_config(tmp_path, "stsb", {"stsb": True, "scifact_rationales": True, **data_cfg}, loss)
    configs = Path(__file__).resolve().parents[2] / "configs"
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(
        f"extends: {configs / 'context-head-all-claims.yaml'}\noutput_dir: {tmp_path / 'a'}\ninterpolate_keep: null\n"
        "data: {dev_scifact_rationale_fold: [0, 5], dev_scifact_unused_claims: true}\n"
    )
    second.write_text(f"extends: {configs / 'context-head.yaml'}\noutput_dir: {tmp_path / 'b'}\n")
    with pytest.raises(InputError, match="the earlier stage 'context-head-all-claims' trains on") as e:
        load_stages([first, second])  # the second selects on all 247 claims; the first trained 4/5 of them
    assert "\n" not in str(e.value)
    second.write_text(
        f"extends: {configs / 'context-head-all-claims.yaml'}\noutput_dir: {tmp_path / 'b'}\ninterpolate_keep: null\n"
        "data: {dev_scifact_rationale_fold: [0, 5], dev_scifact_unused_claims: true}\n"
    )
    assert len(load_stages([first, second])) == 2  # the same fold held out in both
    fold = {"data.dev_scifact_rationale_fold": [0, 5], "data.dev_scifact_unused_claims": True}
    # a fold of a later stage's recipe: the earlier stage keeps its recipe's mix, read on the fold's claims all the same
    assert load_config(configs / "context-head-all-claims.yaml", fold).interpolate_keep == 0.5
    assert (
        load_config(configs / "context-head-all-claims.yaml", {**fold, "interpolate_keep": None}).interpolate_keep
        is None
    )


def test_rationale_document_candidates_rank_only_the_claims_own_abstract(tmp_path: Path, data_dir: Path) -> None:
    """With ``rationale_candidates: document`` a claim in a batch of four abstracts scores exactly as it does alone
    in a batch of its own abstract (its only candidates), and below its loss among every abstract's sentences."""
    cfg = _config(tmp_path, dev_scifact_distractors=None)
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    task = trainer.tasks["rationale"]
    assert isinstance(task, RationaleTask)
    seen: dict[str, int] = {}
    for i, r in enumerate(trainer.data.rationales):
        seen.setdefault(str(r.document.id), i)
    batch = list(seen.values())[:4]  # four claims, four different abstracts
    with torch.no_grad():
        every = float(task(batch, 1.0)["task"])
        alone = [float(task([i], 1.0)["task"]) for i in batch]
        task.ctx.loss = cfg.loss.model_copy(update={"rationale_candidates": "document"})
        own = float(task(batch, 1.0)["task"])
    assert own == pytest.approx(sum(alone) / len(alone), rel=1e-4)
    assert 0.0 < own < every


def test_rationale_document_retention_holds_the_abstracts_document_vectors(tmp_path: Path, data_dir: Path) -> None:
    """Three steps on the same batch from the same start: with ``rationale_retain_documents`` the abstracts' document
    vectors (one pass, as the task computes them) stay closer to the base model's than without it."""
    drift = {}
    for keep in (False, True):
        cfg = one_task_config(
            tmp_path / str(keep),
            "rationale",
            {"wikipedia_articles": 0, "scifact_rationales": True, "dev_scifact_distractors": None},
            {"rationale_candidates": "document", "rationale_retain_documents": keep},
        )
        trainer = Trainer(cfg, load_training_data(cfg, data_dir))
        task = trainer.tasks["rationale"]
        assert isinstance(task, RationaleTask)
        batch = [0, 1, 2, 3]
        windows = list({str(w.id): w for w in (task.window(trainer.data.rationales[i])[0] for i in batch)}.values())
        before, _ = train_on_one_batch(trainer, task, batch)
        assert float(before["retention"]) < 1e-5  # the untrained student's documents are the base model's too
        enc = trainer.encoder
        with torch.no_grad():
            states = enc.token_states([w.text for w in windows], batch_size=8)
            docs = torch.stack(
                [enc.document_vectors(w, st, ("document",))["document"] for w, st in zip(windows, states, strict=True)]
            )
            target = trainer.retention.targets([w.text for w in windows])
        drift[keep] = float((1 - torch.nn.functional.cosine_similarity(docs, target)).mean())
    assert 0.0 < drift[True] < drift[False]


def test_a_context_head_learns_the_rationale_task_alone(tmp_path: Path, data_dir: Path) -> None:
    """configs/context-head.yaml's set-up on a saved model: three steps of the rationale task lower its loss and
    change only the context head and its pooling; every other weight is the saved model's, bit for bit."""
    saved = tmp_path / "saved"
    MultiScaleEncoder.from_base(head_kind="identity").save(saved)
    cfg = _config(tmp_path, dev_scifact_distractors=None)
    heads = {"head_kind": "identity", "context_head": "residual-mlp", "context_pooling": "attention"}
    model = {"base": str(saved), "fresh_heads": True, "freeze_base": True, "train_heads": ["context"], **heads}
    cfg = TrainConfig.model_validate({**cfg.model_dump(), "model": model, "optim": {"head_lr": 1e-3}})
    trainer = Trainer(cfg, load_training_data(cfg, data_dir))
    start = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    before, after = train_on_one_batch(trainer, trainer.tasks["rationale"], [0, 1, 2, 3])
    assert float(before["retention"]) < 1e-5  # a fresh context head starts at the saved in-context vectors
    assert float(after["task"]) < float(before["task"])
    moved = {k for k, v in trainer.encoder.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(k.startswith(("model.1.heads.context.", "model.1.pool_context.")) for k in moved), moved


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.tuples(st.integers(-3, 8), st.integers(-3, 8)).map(list), st.lists(st.integers(0, 5), max_size=3)))
def test_fuzzed_rationale_folds_validate_or_are_refused(fold: list[int]) -> None:
    """``data.dev_scifact_rationale_fold``: ``[i, k]`` with ``0 <= i < k`` and ``k >= 2`` validates; any other value
    is refused by the config's validation, naming the option."""
    data = {"wikipedia_articles": 0, "scifact_rationales": True, "dev_scifact_rationale_fold": fold}
    if len(fold) == 2 and fold[1] >= 2 and 0 <= fold[0] < fold[1]:
        assert one_task_config(Path("unused"), "rationale", data).data.dev_scifact_rationale_fold == tuple(fold)
    else:
        with pytest.raises(ValidationError, match="dev_scifact_rationale_fold"):
            one_task_config(Path("unused"), "rationale", data)

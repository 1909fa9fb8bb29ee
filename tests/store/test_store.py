"""The multi-scale memory store on real SQuAD paragraphs: round trip across processes, a SIGKILL during adds,
delete and update, filters, the model-mismatch error, and agreement with the evaluation suite's zoom ranking."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from muses.data.squad import load_squad
from muses.encoder import MultiScaleEncoder, default_base_path
from muses.errors import InputError, ModelError
from muses.evaluation.corpus import EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.evidence import sentence_runs, squad_documents, squad_qrels
from muses.store import MemoryStore, StoreConfig, StoreExistsError
from muses.store import db as store_db
from muses.text import make_document
from muses.types import Document

N_DOCS = 24
DIM = 256


@pytest.fixture(scope="module")
def paragraphs(data_dir: Path) -> tuple[list[Document], dict[str, str]]:
    dataset = load_squad("squad", data_dir)
    docs = squad_documents(dataset, N_DOCS)
    queries, _ = squad_qrels(dataset, docs, max_questions=40)
    return docs, queries


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder, paragraphs: tuple[list[Document], dict]
) -> MemoryStore:
    s = MemoryStore.create(tmp_path_factory.mktemp("store") / "mem", encoder, StoreConfig(dim=DIM), model="default")
    s.add(paragraphs[0])
    return s


def test_search_every_scale_finds_the_answer_paragraph(store: MemoryStore, paragraphs: tuple) -> None:
    docs, queries = paragraphs
    question = next(iter(queries.values()))
    gold_doc = docs[0].id  # the first questions belong to the first paragraph
    for scale in ("document", "sentence", "token", "fusion"):
        hits = store.search(question, scale=scale, k=3)
        assert hits and all(h.scale == scale for h in hits)
        assert gold_doc in [h.id for h in hits], (scale, question)
        assert hits == sorted(hits, key=lambda h: -h.score)
    sentence = store.search(question, scale="sentence", k=1)[0]
    assert sentence.span is not None and docs[0].text[slice(*sentence.span)] == sentence.text
    json.dumps([h.to_dict() for h in store.search(question, "fusion")])  # JSON-serialisable


def test_every_hit_carries_the_score_of_each_scale_it_was_scored_at(store: MemoryStore, paragraphs: tuple) -> None:
    """A fusion hit's ``scores`` are the scale scores it was fused from: each one equals that scale's own search
    score for the same document, and the fused score is the hit's ``score``."""
    question = next(iter(paragraphs[1].values()))
    fused = store.search(question, "fusion", k=5)
    own = {s: {h.id: h.score for h in store.search(question, s, k=len(store))} for s in ("document", "token")}
    for hit in fused:
        assert set(hit.scores) == {"document", "sentence", "token", "fusion"} and hit.scores["fusion"] == hit.score
        for scale in ("document", "token"):
            assert hit.scores[scale] == pytest.approx(own[scale][hit.id], abs=1e-5), scale
    best_sentence = store.search(question, "sentence", k=1)[0]
    assert best_sentence.scores == {"sentence": best_sentence.score}
    by_doc = {h.id: h for h in fused}
    if best_sentence.id in by_doc:  # the document's sentence score is its best sentence's
        assert by_doc[best_sentence.id].scores["sentence"] == pytest.approx(best_sentence.score, abs=1e-5)
    for doc in store.zoom(question, k_docs=2):
        assert all(s.scores["document"] == doc.score and s.scores["sentence"] == s.score for s in doc.sentences)


def test_zoom_gives_sentences_and_highlights_inside_them(store: MemoryStore, paragraphs: tuple) -> None:
    _, queries = paragraphs
    results = store.zoom(next(iter(queries.values())), k_docs=2, k_sentences=2)
    assert len(results) == 2
    for doc in results:
        assert 1 <= len(doc.sentences) <= 2
        for s in doc.sentences:
            assert s.id == doc.id and s.span is not None and s.highlights
            assert all(s.span[0] <= a < b <= s.span[1] for a, b in s.highlights)
    json.dumps([r.to_dict() for r in results])


def test_store_zoom_equals_the_evaluation_zoom_ranking(
    store: MemoryStore, encoder: MultiScaleEncoder, paragraphs: tuple
) -> None:
    """One definition of zoom: the store's sentence search inside the top documents ranks sentences exactly as
    the evaluation suite's ``zoom`` run does (its top part, which is the same set of sentences)."""
    docs, queries = paragraphs
    model = MusesCorpusEncoder(encoder)
    vecs = EmbeddingCache(None).corpus(model, docs)
    q = model.encode_queries(list(queries.values()))
    runs = sentence_runs(q, vecs, list(queries), DIM, zoom_docs=3, depth=5)["zoom"]
    for qid, text in queries.items():
        expected = sorted(runs[qid].items(), key=lambda kv: -kv[1])
        got = store.search(text, scale="sentence", k=5, zoom_docs=3)
        assert [f"{h.id}:{h.sentence}" for h in got][:3] == [sid for sid, _ in expected][:3], text
        np.testing.assert_allclose([h.score for h in got][:3], [s - 4.0 for _, s in expected][:3], atol=1e-5)


def test_reopened_in_another_process_gives_the_same_results(store: MemoryStore, paragraphs: tuple) -> None:
    question = list(paragraphs[1].values())[5]
    here = [(h.id, h.sentence, round(h.score, 5)) for h in store.search(question, "sentence", k=5)]
    code = textwrap.dedent(
        f"""
        import json
        from muses.store import MemoryStore
        s = MemoryStore.open({str(store.path)!r})
        hits = s.search({question!r}, "sentence", k=5)
        print(json.dumps([[h.id, h.sentence, round(h.score, 5)] for h in hits]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert [tuple(x) for x in json.loads(out.splitlines()[-1])] == here


def test_update_delete_and_filters(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    s = MemoryStore.create(tmp_path / "m", encoder, StoreConfig(dim=64, token_pool=0))
    s.add(
        [
            {"id": "cat", "text": "Cats purr when they are content.", "metadata": {"kind": "pet"}},
            {"id": "tax", "text": "Income tax is due in April.", "metadata": {"kind": "money"}},
        ]
    )
    with pytest.raises(InputError, match="already in the store"):
        s.add([{"id": "cat", "text": "Another cat."}])
    assert s.search("when is tax due?", k=1)[0].id == "tax"
    assert s.search("when is tax due?", k=2, filters={"kind": "pet"})[0].id == "cat"
    assert s.search("when is tax due?", k=2, filters={"kind": "none"}) == []
    s.update([{"id": "tax", "text": "Dogs bark at the postman.", "metadata": {"kind": "pet"}}])
    assert s.get("tax")["text"] == "Dogs bark at the postman."
    assert s.search("why do dogs bark?", k=1)[0].id == "tax"
    assert s.delete(["cat"]) == 1 and len(s) == 1
    with pytest.raises(KeyError, match="unknown document id"):
        s.delete(["cat"])
    with pytest.raises(InputError, match="no token vectors"):
        s.search("dogs", scale="token")
    with pytest.raises(InputError, match="not available in this store"):
        s.search("dogs", dim=128)
    with pytest.raises(InputError, match="query is empty"):
        s.search("  ")
    with pytest.raises(InputError, match="unknown scale"):
        s.search("dogs", scale="paragraph")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="item 0 is empty"):
        s.add([""])
    with pytest.raises(InputError, match="already holds a store"):
        MemoryStore.create(tmp_path / "m", encoder)


def test_a_store_refuses_another_model(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    MemoryStore.create(tmp_path / "m", encoder, StoreConfig(dim=64)).add(["Some text to store."])
    other = MultiScaleEncoder.from_base()
    with torch.no_grad():
        next(other.heads.parameters()).add_(0.01)
    with pytest.raises(ModelError, match="open the store with the model that built it"):
        MemoryStore.open(tmp_path / "m", other)


WRITER = """
import sys
from muses.store import MemoryStore
s = MemoryStore.open(sys.argv[1])
for b in range(1000):
    s.add([{"id": f"{b}-{i}", "text": f"Batch {b}, document {i}. It has two sentences."} for i in range(5)])
    print(b, flush=True)
"""


def test_sigkill_during_adds_keeps_every_commit(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    path = tmp_path / "m"
    MemoryStore.create(path, encoder, StoreConfig(dim=64), model="default").close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = -1
    try:
        while committed < 3:
            line = proc.stdout.readline()
            assert line, "the writer died"
            committed = int(line)
        time.sleep(0.15)  # let it get into the middle of another add
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    con = sqlite3.connect(path / "store.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    s = MemoryStore.open(path, encoder)
    n = len(s)
    assert n % 5 == 0 and n >= 20, n  # whole batches only, at least those reported committed
    ids = {h for b in range(n // 5) for h in (f"{b}-{i}" for i in range(5))}
    assert {s.get(i)["id"] for i in ids} == ids
    assert all(len(s.get(i)["sentences"]) == 2 for i in ids)
    stats = s.stats()
    assert stats["documents"] == n and stats["sentences"] == 2 * n
    s.add([{"id": "after", "text": "The store still takes writes."}])  # and keeps working
    assert s.search("does it still take writes?", k=1)[0].id == "after"


def test_approximate_indexes_agree_with_exact_on_top1(
    tmp_path: Path, encoder: MultiScaleEncoder, paragraphs: tuple
) -> None:
    docs, queries = paragraphs
    exact = MemoryStore.create(tmp_path / "flat", encoder, StoreConfig(dim=64, token_pool=0))
    hnsw = MemoryStore.create(tmp_path / "hnsw", encoder, StoreConfig(dim=64, token_pool=0, index="hnsw"))
    exact.add(docs)
    hnsw.add(docs)
    assert hnsw.stats()["index"]["sentence"]["kind"] == "hnsw"
    agree = [
        exact.search(q, "sentence", k=1)[0].span == hnsw.search(q, "sentence", k=1)[0].span for q in queries.values()
    ]
    assert np.mean(agree) >= 0.95


def test_index_cli_add_search_stats_rm(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from muses.cli import app

    runner = CliRunner()
    src = tmp_path / "docs.jsonl"
    src.write_text(
        '{"id": "a", "text": "Leaves make oxygen. Roots take up water from the soil.", "metadata": {"t": "bio"}}\n'
        '{"id": "b", "text": "The stock market fell on Monday. Investors feared higher rates."}\n'
    )
    store = ["--store", str(tmp_path / "mem")]
    result = runner.invoke(app, ["index", "add", str(src), *store, "--dim", "64"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "search", "where is water absorbed?", *store, "--zoom", "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    zoomed = json.loads(result.stdout)
    assert zoomed[0]["id"] == "a" and zoomed[0]["sentences"][0]["text"] == "Roots take up water from the soil."
    result = runner.invoke(app, ["index", "search", "rates", *store, "--scale", "sentence", "--filter", "t=bio"])
    assert result.exit_code == 0 and "Investors" not in result.output
    assert json.loads(runner.invoke(app, ["index", "stats", *store]).stdout)["documents"] == 2
    result = runner.invoke(app, ["index", "rm", "nope", *store])
    assert result.exit_code == 2 and "unknown document id" in result.output
    assert runner.invoke(app, ["index", "rm", "a", *store]).exit_code == 0
    result = runner.invoke(app, ["index", "add", str(tmp_path / "missing.jsonl"), *store])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["index", "search", "x", "--store", str(tmp_path / "none")])
    assert result.exit_code == 2 and "holds no MuSES store" in result.output


# ---------------------------------------------------------------------- hostile input (issue 13)
TINY = [
    {"id": "bee", "text": "Bees make honey. They live in hives.", "metadata": {"topic": "bio", "n": 1}},
    {"id": "tax", "text": "Income tax is due in April.", "metadata": {"topic": "money", "n": 2}},
    {"id": "a/b", "text": "Ids may hold slashes.", "metadata": {}},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> MemoryStore:
    """Three short documents, token vectors kept (every scale works)."""
    s = MemoryStore.create(tmp_path_factory.mktemp("tiny") / "m", encoder, StoreConfig(dim=32, token_pool=2))
    s.add(TINY)
    return s


def test_a_filter_matching_nothing_gives_no_hits_at_every_scale(tiny: MemoryStore) -> None:
    q = tiny.encode_queries(["bees"])[0]
    for scale in ("document", "sentence", "token", "fusion"):
        assert tiny.search(q, scale=scale, filters={"topic": "zzz"}) == [], scale  # fusion: zero-size array
        assert tiny.search(q, scale=scale, filters={"topic": "bio"})[0].id == "bee", scale
    assert tiny.zoom(q, filters={"topic": "zzz"}) == []


@pytest.mark.parametrize(
    "metadata",
    [{"t": "\ud800"}, {"\udfff": 1}, {"deep": json.loads("[" * 900 + "]" * 900)}, {"x": float("nan")}, "bio", [1]],
    ids=["surrogate-value", "surrogate-key", "nested-900", "nan", "string", "list"],
)
def test_metadata_that_cannot_be_read_back_is_refused(tmp_path: Path, encoder: MultiScaleEncoder, metadata) -> None:
    s = MemoryStore.create(tmp_path / "m", encoder, StoreConfig(dim=32, token_pool=0))
    with pytest.raises(InputError, match="item 0: metadata"):
        s.add([{"id": "x", "text": "Some text.", "metadata": metadata}])
    doc = make_document("Some text.", id="x")
    doc.metadata = metadata
    with pytest.raises(InputError, match="item 0: metadata"):
        s.add([doc])
    assert len(s) == 0


def test_ids_are_checked_on_every_path(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    s = MemoryStore.create(tmp_path / "m", encoder, StoreConfig(dim=32, token_pool=0))
    for bad, why in [("", "is empty"), ("x" * 513, "over the limit"), ("a\x00b", "control character"), (7, "str")]:
        with pytest.raises(InputError, match=why):
            s.add([{"id": bad, "text": "Some text."}])
        with pytest.raises(InputError, match=why):
            s.add([make_document("Some text.", id=bad)])  # type: ignore[arg-type]
        with pytest.raises(InputError, match=why):
            s.delete([bad])  # type: ignore[list-item]
        with pytest.raises(InputError, match=why):
            s.get(bad)  # type: ignore[arg-type]
    assert len(s) == 0  # an empty id is not replaced by a random one
    random_id, _ = s.add([{"id": None, "text": "No id given."}, {"id": "../etc/passwd", "text": "Slash."}])
    assert len(random_id) == 32 and s.get("../etc/passwd")["text"] == "Slash."
    with pytest.raises(InputError, match="wrap it in a list"):
        s.delete("../etc/passwd")


def test_delete_counts_an_id_given_twice_once(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    s = MemoryStore.create(tmp_path / "m", encoder, StoreConfig(dim=32, token_pool=0))
    s.add([{"id": "a", "text": "One."}, {"id": "b", "text": "Two."}])
    assert s.delete(["a", "a"]) == 1 and len(s) == 1


@pytest.mark.parametrize(
    "filters,why",
    [
        ({f"k{i}": i for i in range(5000)}, "over the limit"),
        ({"n": 2**70}, "64-bit"),
        ({"n": [2**64]}, "64-bit"),
        ({"a b": 1}, "plain metadata field name"),
        ({"n": float("inf")}, "finite"),
        ({"t": "\ud800"}, "surrogate"),
        (["topic"], "must be an object"),
    ],
)
def test_bad_filters_are_refused(tiny: MemoryStore, filters, why: str) -> None:
    with pytest.raises(InputError, match=why):
        tiny.search("bees", filters=filters)
    with pytest.raises(InputError, match=why):
        tiny.zoom("bees", filters=filters)


def test_corrupt_truncated_or_foreign_files_are_one_line_errors(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    good = tmp_path / "good"
    s = MemoryStore.create(good, encoder, StoreConfig(dim=32, token_pool=0))
    s.add([{"id": f"d{i}", "text": f"Document {i} is about bees. It has two sentences."} for i in range(30)])
    s.close()
    size = (good / "store.sqlite").stat().st_size
    cases = {
        "garbage": (b"this is not SQLite at all\n" * 100, "not a readable SQLite database"),
        "truncated": ((good / "store.sqlite").read_bytes()[: size // 2], "not a readable SQLite database"),
        "zero-byte": (b"", "creation was interrupted"),
    }
    for name, (content, why) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "store.sqlite").write_bytes(content)
        with pytest.raises(InputError, match=why) as e:
            MemoryStore.open(tmp_path / name, encoder).search("bees")
        assert str(tmp_path / name / "store.sqlite") in str(e.value) and "\n" not in str(e.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "store.sqlite").execute("CREATE TABLE people (name TEXT)").connection.close()
    with pytest.raises(InputError, match="not a MuSES store"):
        MemoryStore.open(foreign, encoder)


def test_a_creation_killed_before_its_first_commit_is_taken_over(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    path = tmp_path / "m"
    path.mkdir()
    con = sqlite3.connect(path / "store.sqlite")  # what a creation killed before its commit leaves
    con.executescript(store_db.SCHEMA)
    con.close()
    (path / "write.lock").touch()
    with pytest.raises(InputError, match=r"creation was interrupted.*Create the store again"):
        MemoryStore.open(path, encoder)
    assert not MemoryStore.exists(path)
    s = MemoryStore.create(path, encoder, StoreConfig(dim=32, token_pool=0))
    s.add(["It works again."])
    assert len(MemoryStore.open(path, encoder)) == 1
    with pytest.raises(StoreExistsError, match="already holds a store"):
        MemoryStore.create(path, encoder)


def test_durable_stores_fsync_every_commit(tmp_path: Path, encoder: MultiScaleEncoder) -> None:
    normal = MemoryStore.create(tmp_path / "n", encoder, StoreConfig(dim=32, token_pool=0))
    durable = MemoryStore.create(tmp_path / "d", encoder, StoreConfig(dim=32, token_pool=0, durable=True))
    synchronous = "PRAGMA synchronous"  # 1 = NORMAL, 2 = FULL
    assert normal._con.execute(synchronous).fetchone()[0] == 1
    assert durable._con.execute(synchronous).fetchone()[0] == 2
    assert MemoryStore.open(tmp_path / "d", encoder)._con.execute(synchronous).fetchone()[0] == 2


def test_a_relative_model_path_is_recorded_absolute(
    tmp_path: Path, encoder: MultiScaleEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(default_base_path())
    s = MemoryStore.create("m", encoder, StoreConfig(dim=32, token_pool=0), model=relative)
    assert s.model_name == str(default_base_path().resolve())
    s.check_settings(model=relative)  # the same model, however it is spelled
    s.check_settings(model="default")
    with pytest.raises(InputError, match="other settings: you asked for model 'elsewhere'"):
        s.check_settings(model="elsewhere")
    with pytest.raises(InputError, match=r"dim 64 \(the store has 32\); token_pool 4 \(the store has 0\)"):
        s.check_settings(dim=64, token_pool=4)
    monkeypatch.chdir(tmp_path.parent)
    assert MemoryStore.open(tmp_path / "m").model_name == s.model_name  # loads the recorded model from elsewhere


def test_concurrent_creators_share_one_store(
    tmp_path: Path, encoder: MultiScaleEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads create the same store at once (the connect made slow to widen the race): with the same settings
    both get the store; with another dim, the second gets the conflict, and the first store's settings stay."""
    slow_connect = store_db.connect

    def connect(*args, **kwargs):
        time.sleep(0.2)
        return slow_connect(*args, **kwargs)

    monkeypatch.setattr(store_db, "connect", connect)

    def race(path: Path, dims: tuple[int, int]) -> list[object]:
        barrier = threading.Barrier(2)

        def create(dim: int) -> object:
            barrier.wait()
            try:
                return MemoryStore.create(path, encoder, StoreConfig(dim=dim, token_pool=0), exist_ok=True)
            except InputError as e:
                return e

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(create, dims))

    first, second = race(tmp_path / "same", (32, 32))
    assert isinstance(first, MemoryStore) and isinstance(second, MemoryStore), (first, second)
    first.add([{"id": "a", "text": "Written by one."}])
    assert second.get("a")["text"] == "Written by one."
    other = race(tmp_path / "other", (32, 64))
    errors = [r for r in other if isinstance(r, InputError)]
    assert len(errors) == 1 and "other settings" in str(errors[0]), other
    assert MemoryStore.open(tmp_path / "other", encoder).dim == (32 if isinstance(other[0], MemoryStore) else 64)

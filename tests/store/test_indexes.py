"""The store's persisted, incremental indexes on real SQuAD paragraphs: they follow commits from another process
without a rebuild, open from their snapshot, survive a writer killed between the SQLite commit and the snapshot,
and the funnel, HNSW tombstones, int8 tokens and broad filters agree with exact search."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from muses.data.squad import load_squad
from muses.encoder import MultiScaleEncoder
from muses.evaluation.evidence import squad_documents, squad_qrels
from muses.store import EncodedQuery, MemoryStore, StoreConfig
from muses.store import store as store_module
from muses.store.db import to_blob, to_int8
from muses.store.exact import ExactVectors
from muses.store.vectors import INDEX_FOLDER, IndexSet
from muses.types import MultiScaleEmbedding

DIM = 128
SCALES = ("document", "sentence", "token", "fusion")


@pytest.fixture(scope="module")
def corpus(data_dir: Path, encoder: MultiScaleEncoder) -> tuple[list[MultiScaleEmbedding], list[str]]:
    """60 SQuAD paragraphs encoded once (every scale, at DIM), with 12 of their questions."""
    dataset = load_squad("squad", data_dir)
    docs = squad_documents(dataset, 60)
    for i, d in enumerate(docs):
        d.metadata = {"half": i % 2, "tenth": i % 10}
    queries, _ = squad_qrels(dataset, docs, max_questions=400)
    embs = encoder.encode_documents(docs, scales=("document", "sentence", "token"), dim=DIM)
    return embs, list(queries.values())[::30][:12]


def results(store: MemoryStore, queries: list[str], **kw: object) -> list[list[tuple[str, int | None, float]]]:
    """Every scale's top 5 for every query: (document id, sentence, score)."""
    out = []
    encoded = store.encode_queries(queries)
    for q in encoded:
        for scale in SCALES:
            hits = store.search(q, scale=scale, k=5, **kw)  # type: ignore[arg-type]
            out.append([(h.id, h.sentence, round(h.score, 4)) for h in hits])
    return out


def fresh(path: Path, encoder: MultiScaleEncoder) -> MemoryStore:
    """The store in ``path``, its indexes rebuilt from SQLite."""
    s = MemoryStore.open(path, encoder)
    s.rebuild()
    return s


def test_indexes_follow_another_writers_commits_without_a_rebuild(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    embs, queries = corpus
    path = tmp_path / "mem"
    writer = MemoryStore.create(path, encoder, StoreConfig(dim=DIM), model="default")
    writer.add_encoded(embs[:30])
    reader = MemoryStore.open(path, encoder)
    reader.search(queries[0], "document")  # the reader builds its indexes once, here

    def no_rebuild(gen: int) -> None:
        raise AssertionError("the reader rebuilt its indexes instead of replaying the log")

    monkeypatch.setattr(reader, "_build", no_rebuild)
    writer.add_encoded(embs[30:])  # adds
    writer.add_encoded(embs[:5], upsert=True)  # replaces (new rows)
    writer.delete([str(e.doc.id) for e in embs[40:50]])  # deletes
    got = results(reader, queries)
    assert reader.stats()["generation"] == writer.stats()["generation"] == 4
    monkeypatch.undo()
    assert got == results(fresh(path, encoder), queries)
    deleted = {str(e.doc.id) for e in embs[40:50]}
    assert not deleted & {hit[0] for scale_hits in got for hit in scale_hits}


def test_a_closed_store_reopens_from_its_snapshot(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    embs, queries = corpus
    path = tmp_path / "mem"
    s = MemoryStore.create(path, encoder, StoreConfig(dim=DIM), model="default")
    s.add_encoded(embs[:40])
    s.delete([str(embs[0].doc.id)])
    expected = results(s, queries)
    s.close()  # saves the indexes: 39 documents changed since there was no snapshot
    assert IndexSet.saved_generation(path) == 2
    monkeypatch.setattr(MemoryStore, "_build", lambda self, gen: pytest.fail("rebuilt instead of loading"))
    again = MemoryStore.open(path, encoder)
    assert results(again, queries) == expected
    stats = again.stats()
    assert stats["index_snapshot"]["generation"] == stats["generation"] == 2
    assert stats["change_log"] == 0  # the snapshot covers the log, which was pruned
    assert stats["index"]["sentence"]["vectors"] == stats["sentences"]


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, pickle
    from muses.encoder import MultiScaleEncoder
    from muses.store import MemoryStore
    from muses.store import vectors

    path = sys.argv[1]
    embs = pickle.load(open(sys.argv[2], "rb"))
    store = MemoryStore.open(path, MultiScaleEncoder.from_base())
    store.add_encoded(embs[:10])  # saved: snapshot_every = 1

    def die(self, folder):
        (folder / vectors.INDEX_FOLDER / "tmp-half-written").mkdir()
        os._exit(9)  # killed after the SQLite commit, while saving the indexes

    vectors.IndexSet.save = die
    store.add_encoded(embs[10:20])
    """
)


def test_a_writer_killed_between_commit_and_snapshot_is_repaired(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple
) -> None:
    import pickle

    embs, queries = corpus
    path = tmp_path / "mem"
    MemoryStore.create(path, encoder, StoreConfig(dim=DIM, snapshot_every=1), model="default").close()
    dump = tmp_path / "embs.pkl"
    dump.write_bytes(pickle.dumps(embs))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), str(dump)], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert IndexSet.saved_generation(path) == 1  # the snapshot is one commit behind SQLite
    reopened = MemoryStore.open(path, encoder)
    assert len(reopened) == 20 and reopened.stats()["generation"] == 2  # the commit itself stands
    got = results(reopened, queries)
    assert {h.id for h in reopened.search(queries[0], "document", k=20)} == {str(e.doc.id) for e in embs[:20]}
    reopened.checkpoint()
    assert IndexSet.saved_generation(path) == 2
    assert not list((path / INDEX_FOLDER).glob("tmp-*"))  # the half-written snapshot is cleaned up
    assert got == results(fresh(path, encoder), queries)


def test_funnel_hnsw_and_int8_tokens_agree_with_exact_search(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple
) -> None:
    embs, queries = corpus
    exact = MemoryStore.create(tmp_path / "exact", encoder, StoreConfig(dim=DIM), model="default")
    exact.add_encoded(embs)
    config = StoreConfig(dim=DIM, funnel_dim=64, index="hnsw", token_dtype="int8")
    approx = MemoryStore.create(tmp_path / "approx", encoder, config, model="default")
    approx.add_encoded(embs[:20])
    approx.add_encoded(embs[20:])  # replayed into the HNSW index built at the first commit
    approx.delete([str(e.doc.id) for e in embs[50:]])  # HNSW cannot remove: tombstones
    exact.delete([str(e.doc.id) for e in embs[50:]])
    assert approx.stats()["index"]["sentence"]["tombstoned"] > 0
    for e in embs[20:50]:  # every document added by the second commit is found by its own vector
        own = EncodedQuery(str(e.doc.id), e.document)
        assert approx.search(own, "document", k=1)[0].id == e.doc.id
    overlap = []
    for q in queries:
        for scale in SCALES:
            a = [(h.id, h.sentence) for h in approx.search(q, scale, k=5)]
            b = [(h.id, h.sentence) for h in exact.search(q, scale, k=5)]
            assert not {str(e.doc.id) for e in embs[50:]} & {doc for doc, _ in a}
            overlap.append(len(set(a) & set(b)) / len(b))
            if scale in ("document", "sentence"):  # rescored exactly at the full dim: the same scores
                top = approx.search(q, scale, k=1)[0].score
                assert top == pytest.approx(exact.search(q, scale, k=1)[0].score, abs=1e-5) or a[0] != b[0]
    assert np.mean(overlap) >= 0.95, np.mean(overlap)

    def token_bytes(s: MemoryStore) -> int:
        return int(s._con.execute("SELECT SUM(LENGTH(vector)) FROM tokens").fetchone()[0])

    assert token_bytes(exact) == 4 * token_bytes(approx)


def test_a_broad_filter_filters_inside_the_index_search_exactly(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter matching many documents over-fetches from the index and drops the others; on a flat index that is
    exact, so it equals scoring the matching documents' vectors directly."""
    embs, queries = corpus
    s = MemoryStore.create(tmp_path / "mem", encoder, StoreConfig(dim=DIM), model="default")
    s.add_encoded(embs)
    for filters in ({"half": 1}, {"tenth": 3}):
        direct = results(s, queries[:4], filters=filters)  # few documents: scored directly
        direct_64 = results(s, queries[:4], filters=filters, dim=64)
        with monkeypatch.context() as m:
            m.setattr(store_module, "EXACT_FILTER_DOCS", 0)
            assert results(s, queries[:4], filters=filters) == direct
            assert results(s, queries[:4], filters=filters, dim=64) == direct_64
        allowed = {str(e.doc.id) for e in embs if all(e.doc.metadata[k] == v for k, v in filters.items())}
        assert {h[0] for scale_hits in direct for h in scale_hits} <= allowed


def test_hnsw_keeps_as_many_candidates_as_asked_for() -> None:
    """A funnel asks HNSW for more candidates (k * funnel_depth) than ``ef_search``: the search widens ``efSearch``
    to ``k``, so the candidates are nearly the exact top k (with FAISS's own default, efSearch < k, about 0.6 here).
    Random unit vectors at 64d, the hard case for a graph index."""
    from muses.store.vectors import Layout, ScaleIndex, make_ids

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ScaleIndex("document", Layout(64, "hnsw", {"hnsw_m": 32, "ef_search": 16}))
    ids = make_ids(np.arange(len(x)), np.zeros(len(x)), "document")
    index.add(ids, x)
    queries = x[:20] + 0.3 * rng.standard_normal((20, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :400]
    recall = []
    for q, want in zip(queries, exact, strict=True):
        _, got = index.search(q, 400)
        assert len(got) == 400
        recall.append(len(set(got.tolist()) & set(ids[want].tolist())) / 400)
    assert np.mean(recall) >= 0.95, np.mean(recall)
    together = index.neighbours(queries, 400)  # the token path: one search for every query vector
    assert np.isin(np.unique(ids[exact]), together).mean() >= 0.95


def test_hnsw_ef_construction_reaches_faiss_and_the_snapshot_key() -> None:
    """``hnsw_ef_construction`` builds the graph with that beam; unset, FAISS's default stands and the layout key
    (what a saved snapshot is checked against) is what stores made before the setting recorded."""
    import faiss

    from muses.store.vectors import Layout, ScaleIndex

    opts = {"hnsw_m": 16, "ef_search": 16}
    wide = ScaleIndex("document", Layout(32, "hnsw", opts | {"hnsw_ef_construction": 200}))
    plain = ScaleIndex("document", Layout(32, "hnsw", opts))
    assert faiss.downcast_index(wide.index.index).hnsw.efConstruction == 200
    default = faiss.IndexHNSWFlat(32, 16).hnsw.efConstruction
    assert faiss.downcast_index(plain.index.index).hnsw.efConstruction == default
    assert "hnsw_ef_construction" not in plain.layout.key()


def test_a_snapshot_it_cannot_use_is_rebuilt_and_saved_once(
    tmp_path: Path, encoder: MultiScaleEncoder, corpus: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot of an older format (here: its state file says format 1) is rebuilt from SQLite on open and
    saved, so the open after loads it instead of rebuilding again."""
    embs, queries = corpus
    path = tmp_path / "mem"
    s = MemoryStore.create(path, encoder, StoreConfig(dim=DIM), model="default")
    s.add_encoded(embs[:20])
    expected = results(s, queries)
    s.close()
    folder = path / INDEX_FOLDER / (path / INDEX_FOLDER / "CURRENT").read_text().strip()
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps(state | {"format": 1}))
    builds = []
    real_build = MemoryStore._build
    monkeypatch.setattr(MemoryStore, "_build", lambda self, gen: builds.append(gen) or real_build(self, gen))
    assert results(MemoryStore.open(path, encoder), queries) == expected
    assert builds == [1]
    assert results(MemoryStore.open(path, encoder), queries) == expected
    assert builds == [1]  # the second open loaded the snapshot the first one saved


def test_exact_vectors_follow_adds_and_removes_and_reload_from_their_file(tmp_path: Path) -> None:
    """The full-dim copy the store rescores with returns each document's vectors in order, at (row, ordinal)
    pairs, after removals, and the same from its saved, memory-mapped file; int8 keeps SQLite's bytes."""
    rng = np.random.default_rng(0)
    docs = np.repeat([3, 5, 9], [2, 0, 3])[:5]  # row 5 has no vectors here
    x = rng.standard_normal((5, 8)).astype(np.float32)
    for dtype in ("float32", "int8"):
        ev = ExactVectors(8, dtype)
        ev.add(docs, x)
        ev.add(np.array([12, 12]), x[:2] * 2)
        want = x if dtype == "float32" else to_int8(x)
        rows, ordinal, got = ev.documents([12, 9, 3, 7])
        assert rows.tolist() == [3, 3, 9, 9, 9, 12, 12] and ordinal.tolist() == [0, 1, 0, 1, 2, 0, 1]
        np.testing.assert_array_equal(got[:5], want)
        if dtype == "int8":
            blob = np.frombuffer(b"".join(to_blob(v, "int8") for v in x), dtype=np.int8).reshape(5, 8)
            np.testing.assert_array_equal(got[:5], blob)
            np.testing.assert_array_equal(to_int8(got.astype(np.float32)), got)  # idempotent: re-adding keeps bytes
        found, picked = ev.take(np.array([9, 3, 9, 4]), np.array([2, 1, 3, 0]))
        assert found.tolist() == [True, True, False, False]
        np.testing.assert_array_equal(picked, want[[4, 1]])
        ev.remove([3, 40])
        assert len(ev) == 5 and ev.present(np.array([3, 9, 12])).tolist() == [False, True, True]
        ev.save(tmp_path / f"{dtype}.npy")
        back = ExactVectors.load(tmp_path / f"{dtype}.npy", 8, dtype)
        assert isinstance(back.arrays[0], np.memmap) and len(back) == 5
        for a, b in zip(back.documents([3, 9, 12]), ev.documents([3, 9, 12]), strict=True):
            np.testing.assert_array_equal(a, b)
        back.add(np.array([20]), x[:1])  # adds after a load go to memory, beside the read-only file
        assert back.documents([20])[0].tolist() == [20]
        with pytest.raises(ValueError):
            ExactVectors.load(tmp_path / f"{dtype}.npy", 16, dtype)

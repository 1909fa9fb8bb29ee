"""Hierarchy consistency: does each sentence vector point back to its own document's vector?

For every sentence of a corpus, the candidates are documents and the sentence "picks" the one with the highest
cosine(sentence vector, document vector) at Matryoshka dim ``d``. The accuracy is the share of sentences whose
pick is their own parent document. It is reported two ways:

- ``hierarchy/batch{B}@d`` (the original, in-batch definition): the documents are cut into consecutive batches of
  ``B`` (32 by default), in the given order or after a seeded shuffle, and a sentence's candidates are the documents
  of its own batch. The last batch keeps the remainder (it may be smaller); ``hierarchy/chance_batch{B}`` is the
  mean of ``1 / candidates`` over the scored sentences.
- ``hierarchy/all@d``: every sentence's candidates are all ``N`` documents.

A sentence counts as correct only if its own document scores strictly higher than every other candidate (a tie,
e.g. with a duplicate document, counts as wrong). Since a batch is a subset of the whole set, the in-batch accuracy
is never below the whole-set accuracy. Vectors come from a :class:`~muses.evaluation.corpus.CorpusEncoder` through
an :class:`~muses.evaluation.corpus.EmbeddingCache`, so a MuSES model and a flat baseline are scored identically.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np

from muses.data.beir import load_beir
from muses.data.wikipedia import WikiArticle
from muses.evaluation.corpus import CorpusEncoder, CorpusVectors, EmbeddingCache
from muses.evaluation.retrieval import beir_documents
from muses.scoring import prefix_normalize
from muses.text import make_document
from muses.types import Document

_CHUNK = 4096  # sentences per similarity block: bounds the [chunk, N] matrix of the whole-set variant


# --- corpora ------------------------------------------------------------------------------------------------


def wikipedia_documents(articles: Sequence[WikiArticle]) -> list[Document]:
    """One Document per article (its lead section, segmented), id = title, ``metadata["topic"]`` = its label."""
    return [make_document(a.text, id=a.title, metadata={"topic": a.topic}) for a in articles]


def scifact_documents(data_dir: str | os.PathLike[str] | None = None, n_docs: int | None = None) -> list[Document]:
    """SciFact abstracts as Documents, built as the retrieval task builds them (:func:`beir_documents`), in corpus
    order: the embedding cache then serves both tasks from one encoding.

    Args:
        data_dir: the data root (default ``$MUSES_DATA_DIR``).
        n_docs: keep the first ``n_docs`` abstracts in corpus order, like :func:`subset_beir` (default: all 5,183).
    """
    corpus = load_beir("scifact", split="test", data_dir=data_dir).corpus
    return beir_documents(dict(itertools.islice(corpus.items(), n_docs)))


def select_documents(vectors: CorpusVectors, rows: Sequence[int] | np.ndarray) -> CorpusVectors:
    """The vectors of the documents ``rows`` (``[n]`` int, in that order) and of their sentences (tokens dropped).

    Exact for both kinds of encoder: a document's vectors do not depend on the other documents of the corpus, so a
    held-out subset can be scored from the vectors of a bigger corpus without encoding it again.
    """
    rows = np.asarray(rows, dtype=np.int64)
    new_row = np.full(len(vectors.document), -1, dtype=np.int64)
    new_row[rows] = np.arange(len(rows))
    keep = np.flatnonzero(new_row[vectors.sentence_doc] >= 0)
    keep = keep[np.argsort(new_row[vectors.sentence_doc[keep]], kind="stable")]
    return CorpusVectors(
        doc_ids=[vectors.doc_ids[i] for i in rows],
        document=vectors.document[rows],
        sentence=vectors.sentence[keep],
        sentence_doc=new_row[vectors.sentence_doc[keep]],
        sentence_pos=vectors.sentence_pos[keep],
    )


# --- scoring ------------------------------------------------------------------------------------------------


def batch_of_documents(n_docs: int, batch_size: int, seed: int | None = None) -> np.ndarray:
    """``[N]`` int: the batch of each document, consecutive ``batch_size`` blocks of the order (seeded shuffle
    when ``seed`` is not None, else the given order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    order = np.arange(n_docs) if seed is None else np.random.default_rng(seed).permutation(n_docs)
    batch = np.empty(n_docs, dtype=np.int64)
    batch[order] = np.arange(n_docs) // batch_size
    return batch


def parent_hits(
    sentence: np.ndarray, document: np.ndarray, sentence_doc: np.ndarray, doc_batch: np.ndarray | None = None
) -> np.ndarray:
    """Whether each sentence's own document is its strict best candidate.

    Args:
        sentence: ``[S, d]`` L2-normalised sentence vectors.
        document: ``[N, d]`` L2-normalised document vectors.
        sentence_doc: ``[S]`` int, the parent document row of each sentence.
        doc_batch: ``[N]`` int batch of each document: candidates are the documents of the sentence's parent's
            batch. None: all ``N`` documents are candidates.

    Returns:
        ``[S]`` bool.
    """
    hits = np.zeros(len(sentence), dtype=bool)
    if doc_batch is None:
        for c in range(0, len(sentence), _CHUNK):
            rows = np.arange(c, min(c + _CHUNK, len(sentence)))
            hits[rows] = _strict_best(sentence[rows] @ document.T, sentence_doc[rows])
        return hits
    sent_batch = doc_batch[sentence_doc]
    for b in np.unique(sent_batch):
        docs = np.flatnonzero(doc_batch == b)
        rows = np.flatnonzero(sent_batch == b)
        local = np.searchsorted(docs, sentence_doc[rows])  # parent's column among the batch's (sorted) documents
        hits[rows] = _strict_best(sentence[rows] @ document[docs].T, local)
    return hits


def _strict_best(sims: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``[s, n]`` similarities and ``[s]`` own columns -> ``[s]`` bool: own column strictly above all others."""
    rows = np.arange(len(own))
    own_score = sims[rows, own].copy()
    sims[rows, own] = -np.inf
    return own_score > sims.max(axis=1, initial=-np.inf)


def hierarchy_accuracy(
    vectors: CorpusVectors,
    dims: Sequence[int],
    batch_size: int = 32,
    seed: int | None = None,
    min_sentences: int = 1,
) -> dict[str, float]:
    """In-batch and whole-set parent-document accuracy at each dim, from full-size corpus vectors.

    Args:
        vectors: the corpus's ``[N, D]`` document and ``[S, D]`` sentence vectors with ``sentence_doc``.
        dims: Matryoshka dims; each uses the renormalised ``d``-prefix.
        batch_size: documents per batch for the in-batch variant.
        seed: None keeps the corpus order for batching; an int shuffles the documents first.
        min_sentences: only sentences of documents with at least this many sentences are scored (all documents
            stay candidates). 1 scores every sentence; 2 leaves out one-sentence documents, whose only sentence
            is the whole document.

    Returns:
        ``{"hierarchy/batch32@384": ..., "hierarchy/all@384": ..., ...}`` plus ``hierarchy/n_docs``,
        ``n_sentences`` (scored), ``n_batches``, ``batch_size``, ``chance_batch{B}`` and ``chance_all``.
    """
    n_docs = len(vectors.document)
    per_doc = np.bincount(vectors.sentence_doc, minlength=n_docs)
    scored = np.flatnonzero(per_doc[vectors.sentence_doc] >= min_sentences)
    sent_doc = vectors.sentence_doc[scored]
    doc_batch = batch_of_documents(n_docs, batch_size, seed)
    batch_sizes = np.bincount(doc_batch)
    out: dict[str, float] = {}
    for d in dims:
        sent = prefix_normalize(vectors.sentence[scored], d)
        doc = prefix_normalize(vectors.document, d)
        out[f"hierarchy/batch{batch_size}@{d}"] = _mean(parent_hits(sent, doc, sent_doc, doc_batch))
        out[f"hierarchy/all@{d}"] = _mean(parent_hits(sent, doc, sent_doc))
    out.update(
        {
            "hierarchy/n_docs": float(n_docs),
            "hierarchy/n_sentences": float(len(scored)),
            "hierarchy/n_batches": float(len(batch_sizes)),
            "hierarchy/batch_size": float(batch_size),
            f"hierarchy/chance_batch{batch_size}": _mean(1.0 / batch_sizes[doc_batch[sent_doc]]),
            "hierarchy/chance_all": 1.0 / n_docs if n_docs else 0.0,
        }
    )
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def evaluate_hierarchy(
    model: CorpusEncoder,
    docs: Sequence[Document],
    cache: EmbeddingCache | None = None,
    dims: Sequence[int] | None = None,
    batch_size: int = 32,
    seed: int | None = None,
    min_sentences: int = 1,
) -> dict[str, float]:
    """Hierarchy consistency of ``model`` on ``docs`` (e.g. held-out Wikipedia articles, SciFact abstracts).

    The corpus is encoded once at full size (through ``cache``; None: no caching); see
    :func:`hierarchy_accuracy` for the arguments and the returned keys. ``dims`` defaults to ``model.dims``.
    """
    vectors = (cache or EmbeddingCache(None)).corpus(model, docs)
    return hierarchy_accuracy(vectors, dims or model.dims, batch_size, seed, min_sentences)

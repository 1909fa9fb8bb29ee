"""Multi-scale corpus vectors for evaluation, for MuSES models and flat sentence-transformers baselines alike.

Every evaluation task talks to a :class:`CorpusEncoder`, so a MuSES model and a flat baseline do exactly the same
work and are scored by the same code:

- :class:`MusesCorpusEncoder`: one pass per document window; sentence vectors pooled in context (or standalone);
  token vectors from the same pass.
- :class:`FlatCorpusEncoder`: a plain sentence-transformers model, as people use one today: each document encoded
  on its own (truncated at the model's max length, as ``encode`` does), each sentence encoded on its own, and its
  token embeddings from the (truncated) document pass.

Vectors are kept at full size ``D``, L2-normalised; tasks take Matryoshka prefixes with
:func:`muses.scoring.prefix_normalize`. :class:`EmbeddingCache` stores them on disk keyed by model
fingerprint, dataset, scale and settings, so re-running a report does not re-encode 50k sentences.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from sentence_transformers import SentenceTransformer

from muses.encoder import MultiScaleEncoder
from muses.fingerprint import weights_fingerprint
from muses.types import Document


@dataclass
class CorpusVectors:
    """Full-size, L2-normalised vectors of a corpus at every scale, linked by index arrays.

    Attributes:
        doc_ids: ``N`` document ids, in corpus order.
        document: ``[N, D]`` float32.
        sentence: ``[S, D]`` float32, all sentences of all documents, in document order.
        sentence_doc: ``[S]`` int, the document row of each sentence.
        sentence_pos: ``[S]`` int, the index of each sentence inside its document.
        token: ``[T, D]`` float16 or None (token vectors are big: 1.5M tokens x 384 for SciFact).
        token_doc: ``[T]`` int, the document row of each token (empty when ``token`` is None).
    """

    doc_ids: list[str]
    document: np.ndarray
    sentence: np.ndarray
    sentence_doc: np.ndarray
    sentence_pos: np.ndarray
    token: np.ndarray | None = None
    token_doc: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays, for saving."""
        out = {k: getattr(self, k) for k in ("document", "sentence", "sentence_doc", "sentence_pos", "token_doc")}
        if self.token is not None:
            out["token"] = self.token
        return out


class CorpusEncoder(Protocol):
    """What every evaluation task needs from a model."""

    name: str
    dims: list[int]

    def fingerprint(self) -> str:
        """A hash of the weights and every setting that changes the vectors (cache key)."""
        ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """``[Q, D]`` full-size, L2-normalised query vectors."""
        ...

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray:
        """``[N, dim]`` standalone sentence vectors (STS)."""
        ...

    def encode_query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per query, ``[t, D]`` L2-normalised token vectors (for token MaxSim)."""
        ...

    def encode_corpus(self, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        """All scales of a corpus."""
        ...


def _normalize(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


def _link(docs: Sequence[Document], counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    doc = np.repeat(np.arange(len(docs)), counts)
    pos = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, dtype=np.int64)
    return doc.astype(np.int64), pos.astype(np.int64)


class MusesCorpusEncoder:
    """A :class:`MultiScaleEncoder` as a :class:`CorpusEncoder` (sentence vectors in context by default; ``context``
    as in :meth:`~muses.encoder.MultiScaleEncoder.encode_documents`)."""

    def __init__(
        self, encoder: MultiScaleEncoder, name: str = "muses", context: str = "document", batch_size: int = 32
    ) -> None:
        self.encoder = encoder
        self.name = name
        self.context = str(encoder.check_context(context))  # a bad one fails here, before any encoding
        self.batch_size = batch_size
        self.dims = encoder.dims
        self._fingerprint: str | None = None
        self._task_views: dict[str, MusesCorpusEncoder] = {}

    def with_task_adapter(self, task: str) -> MusesCorpusEncoder | None:
        """This model with its adapter for ``task`` merged (loaded once, under the same name), or None when the
        model folder ships no adapter for it or runs on another backend (see :mod:`muses.adapters.tasks`)."""
        from muses.adapters.tasks import list_tasks, load_for_task

        folder = self.encoder.folder
        if self.encoder.task is not None or self.encoder.backend != "torch" or task not in list_tasks(folder):
            return None
        if task not in self._task_views:
            merged = load_for_task(folder, task, device=str(self.encoder.device))  # type: ignore[arg-type]
            self._task_views[task] = MusesCorpusEncoder(merged, self.name, self.context, self.batch_size)
        return self._task_views[task]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.encoder.fingerprint(self.context)
        return self._fingerprint

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts, batch_size=self.batch_size)

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray:
        return self.encoder.encode_sentences(sentences, dim=dim, batch_size=self.batch_size)

    def encode_query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.encoder.encode_query_tokens(texts, self.batch_size)

    def encode_corpus(self, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        scales = ("document", "sentence", "token") if with_tokens else ("document", "sentence")
        embs = self.encoder.encode_documents(
            docs,
            scales=scales,
            context=self.context,
            batch_size=self.batch_size,
        )
        s_doc, s_pos = _link(docs, [len(e.sentences) for e in embs])
        out = CorpusVectors(
            doc_ids=[str(d.id) for d in docs],
            document=np.stack([e.document for e in embs]),
            sentence=np.concatenate([e.sentences for e in embs]),
            sentence_doc=s_doc,
            sentence_pos=s_pos,
        )
        if with_tokens:
            toks = [e.tokens for e in embs if e.tokens is not None]
            out.token = np.concatenate(toks).astype(np.float16)
            out.token_doc = _link(docs, [len(t) for t in toks])[0]
        return out


class FlatCorpusEncoder:
    """A plain sentence-transformers model as a :class:`CorpusEncoder`: every scale encoded on its own."""

    def __init__(
        self,
        model: SentenceTransformer,
        name: str = "flat",
        dims: Sequence[int] | None = None,
        batch_size: int = 32,
        query_prompt: str = "",
        sentences: bool = True,
    ) -> None:
        self.model = model
        self.query_prompt = query_prompt
        self.sentences = sentences  # False: documents only (sentence arrays empty), e.g. document-scale checks
        self.name = name
        full = int(model.get_embedding_dimension() or 0)
        self.dims = list(dims) if dims else [d for d in (32, 64, 128, 256) if d < full] + [full]
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            extra = {"kind": "flat", "max_seq_length": self.model.max_seq_length, "query_prompt": self.query_prompt}
            if not self.sentences:
                extra["sentences"] = False
            self._fingerprint = weights_fingerprint(self.model, extra)
        return self._fingerprint

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.query_prompt + t for t in texts])

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray:
        x = self._encode(sentences)
        if dim is None:
            return x
        x = x[:, :dim]
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)

    def _token_vectors(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, output_value="token_embeddings", convert_to_numpy=False
        )
        # drop the leading and trailing special tokens, as MuSES's token scale does
        return [_normalize(t[1:-1]) for t in out]

    def _documents_with_tokens(self, texts: Sequence[str], chunk: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward pass per text for both of its outputs: the pooled vectors ``[N, D]`` (L2-normalised) and each
        text's token vectors ``[T_i, D]`` (its padding and the special tokens at either end dropped, as in
        :meth:`_token_vectors`).

        The same numbers as ``_encode`` and ``_token_vectors`` called apart, at half the cost. ``chunk`` texts at a
        time, so only one chunk's padded batch outputs are held at once.
        """
        documents: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        for start in range(0, len(texts), chunk):
            outs = self.model.encode(list(texts[start : start + chunk]), batch_size=self.batch_size, output_value=None)
            for out in cast("list[dict[str, torch.Tensor]]", outs):  # every output of the pipeline, per text
                documents.append(_normalize(out["sentence_embedding"]))
                tokens.append(_normalize(out["token_embeddings"][out["attention_mask"].bool()][1:-1]))
        width = int(self.model.get_embedding_dimension() or 0)
        return (np.stack(documents) if documents else np.zeros((0, width), dtype=np.float32)), tokens

    def encode_query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._token_vectors([self.query_prompt + t for t in texts])

    def encode_corpus(self, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        counts = [len(d.sentences) if self.sentences else 0 for d in docs]
        sentences = [s for d in docs for s in d.sentence_texts()] if self.sentences else []
        s_doc, s_pos = _link(docs, counts)
        texts = [d.text for d in docs]
        toks: list[np.ndarray] = []
        if with_tokens:
            document, toks = self._documents_with_tokens(texts)
        else:
            document = self._encode(texts)
        out = CorpusVectors(
            doc_ids=[str(d.id) for d in docs],
            document=document,
            sentence=self._encode(sentences) if sentences else np.zeros((0, document.shape[1]), dtype=np.float32),
            sentence_doc=s_doc,
            sentence_pos=s_pos,
        )
        if with_tokens:
            out.token = (np.concatenate(toks) if toks else np.zeros((0, document.shape[1]))).astype(np.float16)
            out.token_doc = _link(docs, [len(t) for t in toks])[0]
        return out


def corpus_key(docs: Sequence[Document]) -> str:
    """A hash of a corpus's ids, texts and sentence spans (changes when the segmentation changes)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(f"{d.id}\x00{d.text}\x00".encode())
        h.update(np.asarray([(s.start, s.end) for s in d.sentences], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """On-disk cache of :class:`CorpusVectors` and query vectors, keyed by model fingerprint and data.

    The key hashes the model's weights and settings (:meth:`CorpusEncoder.fingerprint`), so a changed model never
    reads stale vectors. Files are written to a temporary name and renamed, so an interrupted run leaves no
    half-written entry. A corpus of more than ``part_docs`` documents is encoded ``part_docs`` at a time and each part
    is stored as it ends, so an interrupted encoding (a big baseline on CPU: hours) goes on from its last part when
    run again; the parts make one entry once all are there. ``root=None`` disables caching.
    """

    def __init__(self, root: str | os.PathLike[str] | None, part_docs: int = 512) -> None:
        if part_docs < 1:
            raise ValueError(f"part_docs must be >= 1, got {part_docs}.")
        self.root = Path(root) if root is not None else None
        self.part_docs = part_docs
        self.hits = 0
        self.misses = 0
        self.parts_reused = 0

    def _path(self, model: CorpusEncoder, kind: str, key: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / model.fingerprint() / f"{kind}-{key}.safetensors"

    def corpus(self, model: CorpusEncoder, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        """The corpus vectors, from the cache or freshly encoded (then stored).

        An entry with token vectors also serves a request without them (only the needed arrays are read).
        """
        key = corpus_key(docs)
        candidates = ["corpus-tok"] if with_tokens else ["corpus", "corpus-tok"]
        for kind in candidates:
            path = self._path(model, kind, key)
            if path is not None and path.is_file():
                self.hits += 1
                with safe_open(str(path), framework="numpy") as f:
                    names = [n for n in f.keys() if with_tokens or n != "token"]  # noqa: SIM118 - not a dict
                    arrays = {n: f.get_tensor(n) for n in names}
                return CorpusVectors(doc_ids=[str(d.id) for d in docs], **arrays)
        self.misses += 1
        path = self._path(model, candidates[0], key)
        if path is None or len(docs) <= self.part_docs:
            vecs = model.encode_corpus(docs, with_tokens=with_tokens)
        else:
            vecs = self._encode_in_parts(model, docs, with_tokens, path)
        if path is not None:
            self._save(path, vecs.arrays())
            for part in path.parent.glob(f"{path.stem}.part-*"):
                part.unlink()
        return vecs

    def _encode_in_parts(
        self, model: CorpusEncoder, docs: Sequence[Document], with_tokens: bool, path: Path
    ) -> CorpusVectors:
        """``docs`` encoded ``part_docs`` at a time, each part read from or stored next to ``path``; the parts joined
        (their document rows renumbered), the same vectors as one call up to float rounding."""
        starts = range(0, len(docs), self.part_docs)
        parts = []
        for n, start in enumerate(starts):
            part_path = path.with_name(f"{path.stem}.part-{n:05d}-of-{len(starts):05d}-{self.part_docs}.safetensors")
            if part_path.is_file():
                self.parts_reused += 1
                arrays = load_file(str(part_path))
            else:
                arrays = model.encode_corpus(docs[start : start + self.part_docs], with_tokens=with_tokens).arrays()
                self._save(part_path, arrays)
            parts.append((start, arrays))
        joined = {
            name: np.concatenate([a[name] + start if name.endswith("_doc") else a[name] for start, a in parts])
            for name in parts[0][1]
        }
        return CorpusVectors(doc_ids=[str(d.id) for d in docs], **joined)

    def queries(self, model: CorpusEncoder, texts: Sequence[str]) -> np.ndarray:
        """Query vectors ``[Q, D]``, from the cache or freshly encoded."""
        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        path = self._path(model, "queries", key)
        if path is not None and path.is_file():
            self.hits += 1
            return load_file(str(path))["queries"]
        self.misses += 1
        vecs = model.encode_queries(texts)
        if path is not None:
            self._save(path, {"queries": vecs})
        return vecs

    @staticmethod
    def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        tmp.replace(path)

"""MuSES in MTEB 2.x: an encoder for the sentence and document scales, a search for multi-scale retrieval, and
MTEB's STS-B and SciFact tasks filled from the local data folder (nothing is downloaded).

Needs the ``mteb`` extra: ``pip install 'muses[mteb]'`` (written against mteb 2.26).

- :class:`MusesEncoder`: MTEB's ``EncoderProtocol`` over a :class:`~muses.encoder.MultiScaleEncoder`. Queries
  (``prompt_type`` query) go through :meth:`~muses.encoder.MultiScaleEncoder.encode_queries`, so the model's own
  query prompt is honoured (MTEB's task instructions are not added: MuSES is not instruction-tuned, and its
  :class:`ModelMeta` says ``use_instructions=False`` unless the model has a query prompt). Other texts are embedded
  at ``scale``: ``"sentence"`` (standalone, :meth:`~muses.encoder.MultiScaleEncoder.encode_sentences`) or
  ``"document"`` (one windowed pass per text, :meth:`~muses.encoder.MultiScaleEncoder.encode_documents` with
  ``scales=("document",)``), at the Matryoshka ``dim``. Retrieval corpus items are joined as the evaluation suite
  joins them (:func:`~muses.evaluation.retrieval.doc_text`, ``title + ". " + text``), not with MTEB's space, so
  that the numbers match ``muses eval``. MTEB runs its own exhaustive cosine search over these vectors.
- :class:`MusesSearch`: MTEB's ``SearchProtocol``: ranks the corpus with one MuSES scoring of
  :data:`SEARCH_SCORINGS`, computed by the evaluation suite's own code (:func:`~muses.evaluation.retrieval.
  score_queries`, :func:`~muses.scoring.fuse`, :func:`~muses.evaluation.evidence.zoom_scores`) over the vectors of
  :class:`~muses.evaluation.corpus.MusesCorpusEncoder`, so that an :class:`~muses.evaluation.corpus.
  EmbeddingCache` shared with the harness encodes the corpus once.
- :func:`stsb_task`, :func:`scifact_task`, :func:`local_tasks`: MTEB's task objects with their ``dataset`` filled
  from :func:`~muses.data.stsb.load_stsb` / :func:`~muses.data.beir.load_beir` and ``data_loaded = True``, MTEB's
  supported way to evaluate data already in memory (``mteb.evaluate`` then never calls ``load_data``).
- :func:`evaluate_task`: ``mteb.evaluate`` without MTEB's result cache or CO2 tracker; returns the scores.

Search scorings (the evaluation suite's, :mod:`muses.evaluation.retrieval`; ``Q`` queries, ``N`` documents,
``P`` pooled candidates per query):

- ``document``: cosine of the query vector and each document vector, ``[Q, N]``, exhaustive.
- ``sentence``: a document's score is its best sentence's cosine (max-sim), ``[Q, N]``, exhaustive.
- ``token``: ColBERT MaxSim of the query's token vectors over each document's, on the rerank pool (the union of the
  top ``rerank_k`` documents by ``document`` and by ``sentence``; the harness's ``token-rerank``), ``[Q, P]``.
- ``fusion``: min-max weighted sum (or weighted RRF) of the three over the same pool; default weights
  :data:`DEFAULT_FUSION_WEIGHTS`, the store's (:class:`muses.store.StoreConfig`), which are also the dev-fitted
  SciFact weights at 384d.
- ``zoom``: the documents in the order of the evaluation suite's ``zoom`` sentence ranking (:mod:`muses.
  evaluation.evidence`): the top ``zoom_docs`` documents by ``document`` first, ordered by their best sentence,
  then all others by their best sentence.

MTEB tasks used (mteb 2.26.24; a task's version is its dataset revision, ``task.metadata.revision``):

- ``STSBenchmark``: dataset ``mteb/stsbenchmark-sts`` at revision ``b0fddb56ed78048fa8b90373c8a3cfc37b684831``,
  the original STS-B test split (1,379 pairs, scores 0-5) that :mod:`muses.evaluation.sts` reports on. MTEB marks
  it superseded by ``STSBenchmark.v2`` (duplicate pairs removed), which is not comparable with our numbers, so it
  is not used; ``mteb.evaluate`` logs a warning saying so.
- ``SciFact``: dataset ``mteb/scifact`` at revision ``d56462d0e63a25450459c4f213e49ffdb866f7f9`` (BEIR SciFact:
  5,183 abstracts, 300 test claims), main score ``ndcg_at_10``.

Example::

    import muses
    from muses.integrations.mteb import MusesEncoder, MusesSearch, evaluate_task, local_tasks

    enc = muses.MultiScaleEncoder.from_base()
    stsb, scifact = local_tasks()  # from $MUSES_DATA_DIR, no hub
    evaluate_task(MusesEncoder(enc, scale="sentence", dim=384), stsb)["cosine_spearman"]   # 0.8203
    evaluate_task(MusesSearch(enc, scoring="fusion"), scifact)["ndcg_at_10"]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from muses.data.beir import BeirDataset, load_beir
from muses.data.stsb import STSPairs, load_stsb
from muses.encoder import DEFAULT_BASE, MultiScaleEncoder
from muses.errors import InputError
from muses.evaluation.corpus import CorpusVectors, EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.evidence import zoom_scores
from muses.evaluation.metrics import run_from_scores
from muses.evaluation.retrieval import (
    DOCUMENT,
    SENTENCE,
    TITLE_SEP,
    TOKEN,
    ScoredQueries,
    beir_documents,
    pool_run,
    score_queries,
)
from muses.extras import require
from muses.heads import resolve_dim
from muses.scoring import FUSION_METHODS, fuse, prefix_normalize
from muses.types import Document

require("mteb", "mteb")  # one line naming `muses[mteb]` when it is not installed

from datasets import Dataset, DatasetDict  # noqa: E402  (a dependency of mteb)
from mteb import evaluate as _mteb_evaluate  # noqa: E402
from mteb import get_task  # noqa: E402
from mteb.abstasks import AbsTask  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.models.model_meta import ModelMeta, ScoringFunction  # noqa: E402
from mteb.types import PromptType  # noqa: E402

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.models_protocols import MTEBModels
    from torch.utils.data import DataLoader

Scale = Literal["sentence", "document"]
SearchScoring = Literal["document", "sentence", "token", "fusion", "zoom"]

ENCODER_SCALES: tuple[Scale, ...] = ("sentence", "document")
SEARCH_SCORINGS: tuple[SearchScoring, ...] = ("document", "sentence", "token", "fusion", "zoom")
DEFAULT_FUSION_WEIGHTS: dict[str, float] = {"document": 0.0, "sentence": 0.3, "token": 0.7}
"""The store's default fusion weights (:class:`muses.store.StoreConfig`), kept here so that this module does not
need the ``store`` extra; a test checks they are equal."""
STSB_TASK = "STSBenchmark"
SCIFACT_TASK = "SciFact"
TASK_REVISIONS: dict[str, str] = {
    STSB_TASK: "b0fddb56ed78048fa8b90373c8a3cfc37b684831",
    SCIFACT_TASK: "d56462d0e63a25450459c4f213e49ffdb866f7f9",
}
"""The MTEB task versions (dataset revisions) these numbers were reproduced with (mteb 2.26.24)."""
DEFAULT_BASE_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_HARNESS_NAMES = {"document": DOCUMENT, "sentence": SENTENCE, "token": TOKEN, TOKEN: TOKEN}

__all__ = [
    "DEFAULT_FUSION_WEIGHTS",
    "ENCODER_SCALES",
    "SEARCH_SCORINGS",
    "TASK_REVISIONS",
    "MusesEncoder",
    "MusesSearch",
    "evaluate_task",
    "local_tasks",
    "model_meta",
    "scifact_task",
    "stsb_task",
]


# --- model metadata -----------------------------------------------------------------------------------------


def _model_label(encoder: MultiScaleEncoder) -> str:
    """``all-MiniLM-L6-v2`` for the bundled base, else the last part of the base model's name or folder."""
    base = encoder.base_name or DEFAULT_BASE
    return DEFAULT_BASE_HUB_NAME.split("/")[-1] if base == DEFAULT_BASE else Path(base.rstrip("/\\")).name or base


def model_meta(
    encoder: MultiScaleEncoder,
    *,
    revision: str,
    dim: int,
    name: str | None = None,
    similarity: ScoringFunction = ScoringFunction.COSINE,
    model_type: Sequence[str] = ("dense",),
    experiment: Mapping[str, Any] | None = None,
) -> ModelMeta:
    """An honest :class:`mteb.models.model_meta.ModelMeta` for a MuSES model.

    Args:
        encoder: the model.
        revision: the encoder's fingerprint (:meth:`~muses.encoder.MultiScaleEncoder.fingerprint`): equal
            revisions, equal vectors.
        dim: the Matryoshka dim of the vectors MTEB sees.
        name: the part after ``muses/`` (default: the base model's name, e.g. ``all-MiniLM-L6-v2``).
        similarity: how the vectors are compared (``cosine`` for an encoder; a search states its own).
        model_type: MTEB model types (``dense``, ``late-interaction``, ``hybrid``).
        experiment: MTEB ``experiment_kwargs``: the settings (scale or scoring, dim...) that tell two runs of the
            same weights apart in MTEB's results.

    Fields MuSES cannot know for an arbitrary base (license, languages, training data, release date) are left
    ``None``. ``max_tokens`` is infinite: MuSES windows long texts instead of truncating them.
    """
    params = list(encoder.parameters())
    base = encoder.base_name or DEFAULT_BASE
    if base == DEFAULT_BASE:
        adapted_from: str | None = DEFAULT_BASE_HUB_NAME
    else:
        adapted_from = None if Path(base).exists() else base  # a hub name, not a local folder
    frameworks: list[Any] = ["Sentence Transformers", "PyTorch"]
    if encoder.backend.startswith("onnx"):
        frameworks.append("ONNX")
    elif encoder.backend.startswith("openvino"):
        frameworks.append("OpenVINO")
    embeddings = getattr(getattr(encoder.transformer, "auto_model", None), "get_input_embeddings", None)
    weight = getattr(embeddings(), "weight", None) if callable(embeddings) else None
    n_embedding = int(weight.numel()) if weight is not None else None
    return ModelMeta(
        loader=None,  # evaluate an instance: mteb.evaluate(MusesEncoder(...), task)
        name=f"muses/{name or _model_label(encoder)}",
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in params),
        n_embedding_parameters=n_embedding,
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1),
        max_tokens=float("inf"),
        embed_dim=dim,
        license=None,
        open_weights=None,
        public_training_code=None,
        public_training_data=None,
        framework=frameworks,
        reference=None,
        similarity_fn_name=similarity,
        use_instructions=bool(encoder.heads.query_prompt),
        training_datasets=None,
        adapted_from=adapted_from,
        model_type=list(model_type),
        experiment_kwargs=dict(experiment or {}),
    )


# --- reading MTEB's inputs ----------------------------------------------------------------------------------


def _corpus_docs(
    ids: Sequence[Any], titles: Sequence[Any] | None, bodies: Sequence[str], title_sep: str
) -> list[Document]:
    """The evaluation suite's segmented documents (:func:`beir_documents`) of MTEB corpus rows."""
    corpus = {
        str(i): {"title": str(t or ""), "text": b}
        for i, t, b in zip(ids, titles if titles is not None else [""] * len(bodies), bodies, strict=True)
    }
    if len(corpus) != len(bodies):
        raise InputError("the corpus has duplicate document ids; MTEB corpora need unique ids.")
    return beir_documents(corpus, title_sep)


def _query_texts(queries: Dataset) -> list[str]:
    """A query dataset's texts as MTEB's data loader builds them: ``text``, then ``" " + instruction`` if any."""
    texts = list(queries["text"])
    if texts and not isinstance(texts[0], str):
        raise InputError("MuSES searches text queries; this task's queries are conversations or another modality.")
    if "instruction" in queries.column_names:
        texts = [t if i is None else f"{t} {i}" for t, i in zip(texts, queries["instruction"], strict=True)]
    return texts


# --- encoder ------------------------------------------------------------------------------------------------


class MusesEncoder(AbsEncoder):
    """A MuSES model as an MTEB ``EncoderProtocol``, at one scale and one Matryoshka dim.

    Args:
        encoder: the MuSES model.
        scale: ``"sentence"`` (each text on its own, the base model's embedding for an untrained MuSES) or
            ``"document"`` (each text as a document: one windowed pass, the document head).
        dim: Matryoshka dim of the returned vectors (default: full).
        cache: with ``scale="document"``, retrieval corpora are encoded through this cache by the evaluation
            suite's :class:`~muses.evaluation.corpus.MusesCorpusEncoder` (all scales, shared with the harness
            and :class:`MusesSearch`); other texts are not cached.
        title_sep: joins a corpus item's title and text (the harness's default ``". "``).
        context: the corpus encoder's sentence context (only matters for the cache key and the fingerprint).
        batch_size: windows per transformer batch (MTEB's ``encode_kwargs["batch_size"]`` sizes only its loader).
        name: the model name after ``muses/`` in MTEB's results (default: the base model's).

    ``encode`` returns ``[N, dim]`` float32 L2-normalised vectors, one per input row, in input order.
    """

    def __init__(
        self,
        encoder: MultiScaleEncoder,
        scale: Scale = "sentence",
        dim: int | None = None,
        *,
        cache: EmbeddingCache | None = None,
        title_sep: str = TITLE_SEP,
        context: str = "document",
        batch_size: int = 32,
        name: str | None = None,
    ) -> None:
        if scale not in ENCODER_SCALES:
            raise InputError(f"scale must be one of {', '.join(ENCODER_SCALES)}, got {scale!r}.")
        self.model = encoder
        self.scale = scale
        self.dim = resolve_dim(dim, encoder.embed_dim)
        self.cache = cache
        self.title_sep = title_sep
        self.batch_size = batch_size
        self.corpus_encoder = MusesCorpusEncoder(encoder, name=name or "muses", context=context, batch_size=batch_size)
        self.mteb_model_meta = model_meta(
            encoder,
            revision=self.corpus_encoder.fingerprint(),
            dim=self.dim,
            name=name,
            experiment={"scale": scale, "dim": self.dim},
        )

    def encode(
        self,
        inputs: DataLoader[Any],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every row of ``inputs`` -> ``[N, dim]`` float32, L2-normalised (see the class docstring)."""
        texts: list[str] = []
        ids: list[Any] = []
        titles: list[Any] = []
        bodies: list[str] = []
        for batch in inputs:
            n = len(batch["text"])
            texts.extend(batch["text"])
            if "body" in batch:  # a retrieval corpus: id, title, body (MTEB's "text" joins them with a space)
                ids.extend(batch.get("id") or [f"{len(bodies) + i}" for i in range(n)])
                titles.extend(batch.get("title") or [""] * n)
                bodies.extend(batch["body"])
        enc = self.model
        if prompt_type == PromptType.query:
            return enc.encode_queries(texts, self.dim, self.batch_size, show_progress_bar=False)
        if texts and len(bodies) == len(texts):
            docs = _corpus_docs(ids, titles, bodies, self.title_sep)  # joined and segmented as the harness does
            if self.scale == "sentence":
                texts = [d.text for d in docs]
            elif self.cache is not None:
                return prefix_normalize(self.cache.corpus(self.corpus_encoder, docs).document, self.dim)
            else:
                return self._documents(docs)
        if self.scale == "sentence":
            return enc.encode_sentences(texts, self.dim, self.batch_size, show_progress_bar=False)
        return self._documents(texts)

    def _documents(self, items: Sequence[str | Document]) -> np.ndarray:
        """``[N, dim]`` document-scale vectors: one windowed pass per item, the document head."""
        embs = self.model.encode_documents(
            items, scales=("document",), dim=self.dim, batch_size=self.batch_size, show_progress_bar=False
        )
        return np.stack([e.document for e in embs]) if embs else np.zeros((0, self.dim), dtype=np.float32)


# --- search -------------------------------------------------------------------------------------------------


class MusesSearch:
    """MuSES multi-scale retrieval as an MTEB ``SearchProtocol`` (``index`` the corpus, then ``search``).

    Args:
        encoder: the MuSES model.
        scoring: one of :data:`SEARCH_SCORINGS` (see the module docstring).
        dim: Matryoshka dim every scale is scored at (default: full).
        cache: embedding cache for the corpus and query vectors; share it with the harness
            (:func:`~muses.evaluation.retrieval.evaluate_beir_retrieval`) to encode a corpus once.
        fusion_weights: ``fusion`` weights by scale (``document``, ``sentence``, ``token``; the harness's
            ``token-rerank`` is accepted too); default :data:`DEFAULT_FUSION_WEIGHTS`.
        fusion_method: ``"wsum"`` (min-max weighted sum, the store's) or ``"rrf"``.
        rerank_k: depth of the ``document`` and ``sentence`` rankings whose union ``token`` and ``fusion`` score.
        zoom_docs: documents zoomed into (``zoom``).
        title_sep: joins a corpus item's title and text (the harness's ``". "``).
        context: sentence vectors pooled in ``"document"`` context (the harness's default), ``"sentence"`` or
            ``"local:K"`` (:mod:`muses.local_context`).
        batch_size: windows per transformer batch.
        name: the model name after ``muses/`` in MTEB's results (default: the base model's).

    ``search`` returns, per query, its ``top_k`` documents by the scoring (fewer for ``token`` and ``fusion``: only
    the rerank pool is scored; documents without a finite score are left out).
    """

    def __init__(
        self,
        encoder: MultiScaleEncoder,
        scoring: SearchScoring = "fusion",
        dim: int | None = None,
        *,
        cache: EmbeddingCache | None = None,
        fusion_weights: Mapping[str, float] | None = None,
        fusion_method: str = "wsum",
        rerank_k: int = 100,
        zoom_docs: int = 10,
        title_sep: str = TITLE_SEP,
        context: str = "document",
        batch_size: int = 32,
        name: str | None = None,
    ) -> None:
        if scoring not in SEARCH_SCORINGS:
            raise InputError(f"scoring must be one of {', '.join(SEARCH_SCORINGS)}, got {scoring!r}.")
        if fusion_method not in FUSION_METHODS:
            raise InputError(f"fusion_method must be one of {', '.join(FUSION_METHODS)}, got {fusion_method!r}.")
        if rerank_k < 1 or zoom_docs < 1:
            raise InputError(f"rerank_k and zoom_docs must be positive, got {rerank_k} and {zoom_docs}.")
        weights = dict(DEFAULT_FUSION_WEIGHTS if fusion_weights is None else fusion_weights)
        unknown = sorted(set(weights) - set(_HARNESS_NAMES))
        if unknown:
            raise InputError(f"fusion weights name unknown scales {unknown}; use document, sentence and token.")
        self.encoder = encoder
        self.scoring = scoring
        self.dim = resolve_dim(dim, encoder.embed_dim)
        self.cache = cache if cache is not None else EmbeddingCache(None)
        self.fusion_weights = {_HARNESS_NAMES[k]: float(w) for k, w in weights.items() if w}
        self.fusion_method = fusion_method
        self.rerank_k = rerank_k
        self.zoom_docs = zoom_docs
        self.title_sep = title_sep
        self.corpus_encoder = MusesCorpusEncoder(encoder, name=name or "muses", context=context, batch_size=batch_size)
        self.with_tokens = scoring == "token" or (scoring == "fusion" and bool(self.fusion_weights.get(TOKEN)))
        self.vectors: CorpusVectors | None = None
        experiment: dict[str, Any] = {"scoring": scoring, "dim": self.dim}
        if scoring in ("token", "fusion"):
            experiment["rerank_k"] = rerank_k
        if scoring == "fusion":
            experiment["fusion"] = fusion_method
            experiment |= {f"w_{s}": float(weights.get(s, 0.0)) for s in ("document", "sentence")}
            experiment["w_token"] = float(weights.get("token", weights.get(TOKEN, 0.0)))
        if scoring == "zoom":
            experiment["zoom_docs"] = zoom_docs
        similarity = {"document": ScoringFunction.COSINE, "token": ScoringFunction.MAX_SIM}
        kind = {"token": ["late-interaction"], "fusion": ["hybrid"]}
        self._meta = model_meta(
            encoder,
            revision=self.corpus_encoder.fingerprint(),
            dim=self.dim,
            name=name,
            similarity=similarity.get(scoring, ScoringFunction.CUSTOM),
            model_type=kind.get(scoring, ["dense"]),
            experiment=experiment,
        )

    @property
    def mteb_model_meta(self) -> ModelMeta:
        """MTEB's metadata of this search (the scoring and its settings are its ``experiment_kwargs``)."""
        return self._meta

    def index(
        self,
        corpus: Dataset,
        *,
        task_metadata: TaskMetadata | None = None,
        hf_split: str = "",
        hf_subset: str = "",
        encode_kwargs: Mapping[str, Any] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Encode (or read from the cache) every scale of ``corpus`` (columns ``id``, ``text``, optional
        ``title``), as the harness does: :func:`~muses.evaluation.retrieval.beir_documents` then
        :meth:`EmbeddingCache.corpus <muses.evaluation.corpus.EmbeddingCache.corpus>`."""
        titles = corpus["title"] if "title" in corpus.column_names else None
        docs = _corpus_docs(corpus["id"], titles, corpus["text"], self.title_sep)
        self.vectors = self.cache.corpus(self.corpus_encoder, docs, with_tokens=self.with_tokens)

    def search(
        self,
        queries: Dataset,
        *,
        task_metadata: TaskMetadata | None = None,
        hf_split: str = "",
        hf_subset: str = "",
        top_k: int = 1000,
        encode_kwargs: Mapping[str, Any] | None = None,
        top_ranked: Mapping[str, list[str]] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, float]]:
        """Rank the indexed corpus for every query (columns ``id``, ``text``) -> ``{query id: {doc id: score}}``.

        Raises:
            InputError: before :meth:`index`, or for a reranking task (``top_ranked``), which this search does not
                support.
        """
        if self.vectors is None:
            raise InputError("MusesSearch.search needs a corpus: call index(corpus) first.")
        if top_ranked is not None:
            raise InputError("MusesSearch ranks the whole corpus; reranking tasks (top_ranked) are not supported.")
        if top_k < 1:
            raise InputError(f"top_k must be positive, got {top_k}.")
        texts = dict(zip((str(q) for q in queries["id"]), _query_texts(queries), strict=True))
        if not texts:
            return {}
        scored = score_queries(
            self.corpus_encoder, self.vectors, texts, [self.dim], self.cache, self.rerank_k, self.with_tokens
        )[self.dim]
        return self.rank(scored, top_k)

    def rank(self, scored: ScoredQueries, top_k: int) -> dict[str, dict[str, float]]:
        """The ``top_k`` run of this search's scoring from the evaluation suite's scores of one dim."""
        if self.scoring in ("token", "fusion"):
            pooled = (
                scored.pooled[TOKEN]
                if self.scoring == "token"
                else fuse(scored.pooled, self.fusion_weights, self.fusion_method)
            )
            return {q: _top(docs, top_k) for q, docs in pool_run(scored, pooled).items()}
        if self.scoring == "zoom":  # a document ranks where its best sentence ranks in the zoom sentence order
            n = len(scored.doc_ids)
            scores = zoom_scores(scored.dense[DOCUMENT], scored.dense[SENTENCE], np.arange(n), self.zoom_docs)
        else:
            scores = scored.dense[DOCUMENT if self.scoring == "document" else SENTENCE]
        run = run_from_scores(scored.query_ids, scored.doc_ids, scores, k=min(top_k, len(scored.doc_ids)))
        return {q: {d: s for d, s in docs.items() if np.isfinite(s)} for q, docs in run.items()}


def _top(docs: Mapping[str, float], k: int) -> dict[str, float]:
    """The ``k`` best of a query's run (all of them when it has at most ``k``)."""
    if len(docs) <= k:
        return dict(docs)
    return dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


# --- local tasks --------------------------------------------------------------------------------------------


def stsb_task(
    pairs: STSPairs | None = None, split: str = "test", data_dir: str | os.PathLike[str] | None = None
) -> AbsTask:
    """MTEB's ``STSBenchmark`` task holding the local STS-B ``split`` (default :func:`~muses.data.stsb.load_stsb`),
    evaluated as MTEB's ``test`` split."""
    pairs = pairs if pairs is not None else load_stsb(split, data_dir)
    task = get_task(STSB_TASK)
    columns = {"sentence1": pairs.sentences1, "sentence2": pairs.sentences2, "score": [float(s) for s in pairs.scores]}
    task.dataset = cast(Any, DatasetDict({"test": Dataset.from_dict(columns)}))
    task.data_loaded = True
    return task


def scifact_task(
    dataset: BeirDataset | None = None, split: str = "test", data_dir: str | os.PathLike[str] | None = None
) -> AbsTask:
    """MTEB's ``SciFact`` task holding a local BEIR dataset (default ``load_beir("scifact", split)``; a
    :func:`~muses.evaluation.retrieval.subset_beir` slice or any :class:`~muses.data.beir.BeirDataset` works),
    evaluated as MTEB's ``test`` split. Corpus order is kept."""
    data = dataset if dataset is not None else load_beir("scifact", split, data_dir)
    task = get_task(SCIFACT_TASK)
    corpus = Dataset.from_dict(
        {
            "id": list(data.corpus),
            "title": [d.get("title", "") for d in data.corpus.values()],
            "text": [d["text"] for d in data.corpus.values()],
        }
    )
    queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
    relevant = {q: dict(rels) for q, rels in data.qrels.items()}
    split_data = {"corpus": corpus, "queries": queries, "relevant_docs": relevant, "top_ranked": None}
    task.dataset = cast(Any, {"default": {"test": split_data}})
    task.data_loaded = True
    return task


def local_tasks(data_dir: str | os.PathLike[str] | None = None) -> list[AbsTask]:
    """``[STSBenchmark, SciFact]``, their test splits read from ``data_dir`` (default ``$MUSES_DATA_DIR``)."""
    return [stsb_task(data_dir=data_dir), scifact_task(data_dir=data_dir)]


def evaluate_task(model: MTEBModels, task: AbsTask, split: str = "test", **kwargs: Any) -> dict[str, Any]:
    """Run ``mteb.evaluate(model, task)`` and return the scores of ``split`` (default subset): MTEB's metric
    names, e.g. ``main_score``, ``cosine_spearman`` (STS) or ``ndcg_at_10`` (retrieval).

    MTEB's result cache (``~/.cache/mteb``) and CO2 tracker are off unless ``kwargs`` sets ``cache`` or
    ``co2_tracker``; other ``kwargs`` go to ``mteb.evaluate``.
    """
    options: dict[str, Any] = {"cache": None, "co2_tracker": False, "show_progress_bar": False} | kwargs
    result = _mteb_evaluate(model, task, **options)
    if result.exceptions:
        raise RuntimeError(f"MTEB failed on {task.metadata.name}: {result.exceptions[0].exception}")
    return dict(result.task_results[0].scores[split][0])

"""Measurement functions of the domain-shift experiment: domain LoRA adapters served from an AdapterCache.

The run's inputs are YAML (:func:`load_bench_settings`, :func:`load_recipes`): a profile of sizes
(``configs/bench/adapters/*.yaml``, :class:`BenchSettings`) and one training recipe per domain
(``configs/adapters/<domain>.yaml``). :func:`run_adapter_bench` runs the whole measurement and returns its results
as one JSON-ready dict; ``benchmarks/adapters.py`` is the driver that writes them with their report, and
``muses bench adapters`` a thin command over the same functions.

Domains: one per recipe. A recipe with one ``data.wikipedia_topics`` topic is a Wikipedia domain (its topic among
the package's topic labels); a recipe that trains on SciFact is the scientific domain.

1. **Adapters.** One LoRA adapter per domain, trained with the project's trainer in adapter mode (base and heads
   frozen) as its recipe says. The shipped Wikipedia recipes train the inverse-cloze task (``ict``: a held-out
   sentence -> its article without it, MNRL) on their topic's train-side articles (the hierarchy task is the other
   choice, which lost on dev, see docs/adapters.md); SciFact's trains its ``train-fit`` claim -> abstract pairs
   (MNRL). No checkpoint selection: the adapter after the last step is used. Two merged adapters (PEFT
   ``add_weighted_adapter``, ``cat``: the sum of the domain updates, weighted ``1/n`` ("mean") or 1 ("sum")) are
   the one-adapter-for-all alternative.
2. **Evaluation data** (test sides only, for reporting; nothing is tuned on them):

   - Wikipedia domain: ``test_articles`` articles of the topic from the test side of the seeded topic-stratified
     split. Retrieval: one held-out sentence of each article (seeded, not the first, at least 6 words) is the query;
     its article without that sentence is the relevant document, among the domain's other test articles; nDCG@10
     as :mod:`muses.evaluation.retrieval` defines it (``document`` scoring and ``sentence`` max-sim).
     k-NN topic accuracy as :mod:`muses.evaluation.knn` defines it (document scale, ``k = 10``, votes weighted by
     cosine): index = ``knn_index_articles`` train-side articles per Wikipedia domain, labelled with their topic;
     queries = the test articles (without the held-out sentence); the domain's number is the accuracy on its own
     test articles. Dev: the same retrieval on ``dev_articles`` train-side articles the adapter did not train on.
   - SciFact: the BEIR ``test`` claims against their cited abstracts plus ``scifact_distractors`` random other
     abstracts (a reduced corpus: numbers are not comparable with the full-corpus nDCG of ``muses eval``).

3. **Conditions.** ``none``: the base model. ``dedicated``: every text under its own domain's adapter.
   ``merged``: every text under one merged adapter. ``cache K``: the corpus side (retrieval corpora and the k-NN
   index) is indexed under its domain's key through the cache (an index knows its domain), and the query side
   (queries, claims, the articles to classify) arrives as **traffic**, phases of one domain each in the order
   ``sequence`` (e.g. A -> B -> C -> A -> D -> E -> A), in requests of ``request_size`` texts, either with an
   explicit key or routed by the centroid router, per text or per request. Each cache reserves its ``K`` slots at
   startup (:meth:`~muses.adapters.AdapterCache.reserve`, timed apart), so that a miss copies weights into a slot.
   Retention = cached quality / dedicated quality.
4. **Costs** from the same run: the cache's hit rate, loads, evictions, miss latency (ms), memory per adapter
   (KB), and switch overhead = time loading, evicting and activating adapters as a % of encode time; plus the
   forward overhead of an active (unmerged) LoRA adapter against the base model on the same requests.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from muses.adapters import AdapterCache
from muses.adapters.lora import (
    AdapterMeta,
    base_fingerprint,
    list_adapters,
    read_meta,
    write_adapter_folder,
)
from muses.encoder import MultiScaleEncoder
from muses.errors import ConfigError, InputError
from muses.evaluation.corpus import CorpusVectors, EmbeddingCache, MusesCorpusEncoder
from muses.evaluation.knn import accuracy_macro_f1, knn_votes, predict
from muses.evaluation.retrieval import beir_documents, evaluate_scored, score_queries
from muses.scoring import prefix_normalize
from muses.text import make_document
from muses.types import Document

if TYPE_CHECKING:
    from muses.training.config import TrainConfig

MERGED = ("merged-mean", "merged-sum")
ALL_WIKI = "all-wiki"  # quality's key for the k-NN numbers over every Wikipedia domain
Log = Callable[[str], None]


class BenchSettings(BaseModel):
    """The run's sizes (a YAML profile, ``configs/bench/adapters/*.yaml``); the adapters' training is in their recipes.

    ``domains``: recipe names (``<recipes>/<name>.yaml``), in the run's order (None: every recipe of the folder,
    by name). ``train_overrides``: recipe-name pattern (``fnmatch``) -> dotted settings laid over the matching
    recipes (e.g. a smoke run's fewer steps).
    """

    model_config = ConfigDict(extra="forbid")

    domains: list[str] | None = None
    sequence: list[str] = Field(min_length=1)
    capacities: list[int] = Field(min_length=1)
    request_size: int = Field(ge=1)
    test_articles: int = Field(ge=1)
    dev_articles: int = Field(ge=1)
    knn_index_articles: int = Field(ge=1)
    scifact_distractors: int = Field(ge=0)
    scifact_claims: int | None = None
    dims: list[int] = Field(min_length=1)
    timing_repeats: int = Field(1, ge=1)
    seed: int = 0
    train_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_bench_settings(path: str | os.PathLike[str]) -> BenchSettings:
    """Read and validate a bench profile (YAML).

    Raises:
        ConfigError: naming the file and each bad field.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bench profile {p} does not exist (the shipped ones are in configs/bench/adapters/).")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return BenchSettings.model_validate(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{p}: invalid bench profile: {problems}") from None


def load_recipes(
    folder: str | os.PathLike[str],
    s: BenchSettings,
    work: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
) -> dict[str, TrainConfig]:
    """The adapter recipes of the run, domain key -> validated recipe, in ``s.domains`` order.

    Each is ``<folder>/<name>.yaml`` with ``s.train_overrides`` for its name laid over it, then ``overrides`` (every
    recipe); ``work`` (when given) replaces each ``output_dir`` with ``<work>/<name>``. The domain key is the
    recipe's ``model.adapter.key`` (default: its name).

    Raises:
        InputError: a missing folder or recipe, a recipe without ``model.adapter``, two recipes with one key.
        ConfigError: a recipe that does not validate.
    """
    from muses.training.config import load_config

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"recipe folder {root} does not exist (the shipped recipes are in configs/adapters/).")
    names = s.domains if s.domains is not None else sorted(p.stem for p in root.glob("*.yaml"))
    missing = [n for n in names if not (root / f"{n}.yaml").is_file()]
    if missing or not names:
        raise InputError(f"no recipe {', '.join(f'{n}.yaml' for n in missing) or '*.yaml'} in {root}.")
    out: dict[str, TrainConfig] = {}
    for name in names:
        laid = {k: v for pattern, o in s.train_overrides.items() if fnmatch(name, pattern) for k, v in o.items()}
        laid |= overrides or {}
        if work is not None:
            laid["output_dir"] = str(Path(work) / name)
        cfg = load_config(root / f"{name}.yaml", laid)
        if cfg.model.adapter is None:
            raise InputError(f"{root / name}.yaml trains the whole model: an adapter recipe sets model.adapter.")
        key = cfg.model.adapter.key or cfg.name
        if key in out:
            raise InputError(f"two recipes in {root} train the adapter {key!r}; give each domain its own key.")
        out[key] = cfg
    return out


def domain_topic(cfg: TrainConfig) -> str | None:
    """The Wikipedia topic a recipe's domain is (one ``data.wikipedia_topics`` topic), or None for SciFact.

    Raises:
        InputError: a recipe that is neither.
    """
    topics = cfg.data.wikipedia_topics or []
    if cfg.data.wikipedia_articles and len(topics) == 1:
        return topics[0]
    if cfg.data.scifact and not cfg.data.wikipedia_articles:
        return None
    raise InputError(
        f"recipe {cfg.name!r}: a bench domain trains on one Wikipedia topic (data.wikipedia_topics: [TOPIC]) or on "
        "SciFact (data.scifact: true, data.wikipedia_articles: 0)."
    )


# ---------------------------------------------------------------------------------------------- data


@dataclass
class DomainData:
    """One domain's evaluation data: retrieval queries, qrels and corpus; for Wikipedia also the k-NN index.

    The query side (traffic) is ``queries`` and, for Wikipedia, ``corpus`` again as articles to classify.
    """

    key: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: list[Document]
    topic: str | None = None
    index: list[Document] = field(default_factory=list)

    @property
    def classify(self) -> bool:
        """Whether its articles are also classified by k-NN (test data of a Wikipedia domain)."""
        return bool(self.index)


def held_out_retrieval(
    key: str, topic: str, articles: Sequence[Any], n: int, rng: np.random.Generator
) -> tuple[dict[str, str], dict[str, dict[str, int]], list[Document]]:
    """Up to ``n`` articles (in ``rng`` order) as held-out-sentence retrieval: queries, qrels and the corpus of the
    articles without their query sentence (:func:`~muses.training.data.held_out_sentence`)."""
    from muses.training.data import held_out_sentence

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    corpus: list[Document] = []
    for i in rng.permutation(len(articles)):
        art = articles[int(i)]
        pair = held_out_sentence(make_document(art.text, id=art.title), rng)
        if pair is None:
            continue
        corpus.append(make_document(pair[1], id=art.title, metadata={"topic": topic}))
        qid = f"{key}/{len(queries)}"
        queries[qid], qrels[qid] = pair[0], {art.title: 1}
        if len(corpus) == n:
            break
    return queries, qrels, corpus


def wiki_domain(
    key: str, topic: str, train_side: Sequence[Any], test_side: Sequence[Any], s: BenchSettings
) -> DomainData:
    """Held-out-sentence retrieval (test side) and k-NN data of one topic (see the module docstring)."""
    test = [a for a in test_side if a.topic == topic]
    queries, qrels, corpus = held_out_retrieval(key, topic, test, s.test_articles, np.random.default_rng(s.seed))
    train = [a for a in train_side if a.topic == topic]
    picked = np.random.default_rng(s.seed + 1).permutation(len(train))[: s.knn_index_articles]
    index = [make_document(train[int(i)].text, id=train[int(i)].title, metadata={"topic": topic}) for i in picked]
    return DomainData(key, queries, qrels, corpus, topic, index)


def wiki_dev_domain(key: str, topic: str, train_side: Sequence[Any], cfg: TrainConfig, s: BenchSettings) -> DomainData:
    """Held-out-sentence retrieval on train-side articles of the topic that the adapter (recipe ``cfg``) did not
    train on (dev)."""
    train = [a for a in train_side if a.topic == topic]
    unused = np.random.default_rng(cfg.seed).permutation(len(train))[cfg.data.wikipedia_articles :]  # as training
    rest = [train[int(i)] for i in sorted(unused)]
    queries, qrels, corpus = held_out_retrieval(key, topic, rest, s.dev_articles, np.random.default_rng(s.seed + 2))
    return DomainData(key, queries, qrels, corpus, topic)


def scifact_domain(key: str, s: BenchSettings, data_dir: str | os.PathLike[str] | None) -> DomainData:
    """SciFact test claims against their cited abstracts plus seeded distractors."""
    from muses.data.beir import load_beir
    from muses.training.dev import scifact_dev_subset

    test = scifact_dev_subset(
        load_beir("scifact", "test", data_dir), s.scifact_distractors, seed=s.seed, max_claims=s.scifact_claims
    )
    return DomainData(key, dict(test.queries), dict(test.qrels), beir_documents(test.corpus))


def load_domains(
    recipes: dict[str, TrainConfig], s: BenchSettings, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, DomainData], dict[str, DomainData]]:
    """Test data of every domain (in ``recipes`` order), and dev data of the Wikipedia domains."""
    from muses.data.wikipedia import load_wikipedia, stratified_split

    topics = {k: domain_topic(cfg) for k, cfg in recipes.items()}
    out: dict[str, DomainData] = {}
    dev: dict[str, DomainData] = {}
    if any(t is not None for t in topics.values()):
        train_side, test_side = stratified_split(load_wikipedia(), 0.2, seed=0)  # the split training and k-NN use
    for key, topic in topics.items():
        if topic is None:
            out[key] = scifact_domain(key, s, data_dir)
        else:
            out[key] = wiki_domain(key, topic, train_side, test_side, s)
            dev[key] = wiki_dev_domain(key, topic, train_side, recipes[key], s)
    return out, dev


# ---------------------------------------------------------------------------------------------- adapters


def train_adapters(
    recipes: dict[str, TrainConfig], data_dir: str | os.PathLike[str] | None, log: Log
) -> dict[str, dict[str, Any]]:
    """Train (or resume, or reuse) every domain's adapter as its recipe says; returns key -> training summary."""
    from muses.training.data import load_training_data
    from muses.training.trainer import BEST, Trainer

    out: dict[str, dict[str, Any]] = {}
    for key, cfg in recipes.items():
        data = load_training_data(cfg, data_dir)
        t = time.perf_counter()
        summary = Trainer(cfg, data).train(progress=False)
        seconds = time.perf_counter() - t
        meta = read_meta(Path(cfg.output_dir) / BEST)
        history = [json.loads(ln) for ln in Path(summary["history"]).read_text(encoding="utf-8").splitlines()]
        step_s = [h["seconds"] for h in history if "seconds" in h]
        out[key] = {
            "steps": summary["steps"],
            "train_items": data.sizes(),
            "seconds_this_run": round(seconds, 1),
            "seconds_per_step": round(float(np.mean(step_s)), 2) if step_s else None,
            "folder": str(Path(cfg.output_dir) / BEST),
            "centroid_texts": meta.n_texts,
        }
        log(f"adapter {key}: {summary['steps']} steps, {seconds:.0f}s this run")
    return out


def merge_adapters(folders: dict[str, Path], work: Path, log: Log) -> dict[str, Path]:
    """The merged adapters (PEFT ``add_weighted_adapter``, ``cat``) with weights ``1/n`` and 1, as folders."""
    from peft import PeftModel, get_peft_model_state_dict

    host = MultiScaleEncoder.from_base()
    fingerprint = base_fingerprint(host)
    names = list(folders)
    peft_model = PeftModel.from_pretrained(host.transformer.auto_model, str(folders[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(str(folders[name]), adapter_name=name)
    metas = [read_meta(folders[n]) for n in names]
    cents = [m.centroid for m in metas if m.centroid is not None]
    out: dict[str, Path] = {}
    for key, w in zip(MERGED, (1.0 / len(names), 1.0), strict=True):
        peft_model.add_weighted_adapter(names, [w] * len(names), key, combination_type="cat")
        weights = {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model, adapter_name=key).items()
        }
        meta = AdapterMeta(
            key=key,
            base_model=host.base_name,
            base_fingerprint=fingerprint,
            centroid=np.mean(cents, axis=0).tolist() if cents else None,
            info={"merged": names, "weight": w, "combination_type": "cat"},
        )
        out[key] = write_adapter_folder(work / key, peft_model.peft_config[key], weights, meta)
        log(f"merged adapter {key}: rank {getattr(peft_model.peft_config[key], 'r', '?')}")
    return out


# ---------------------------------------------------------------------------------------------- encoding


@dataclass
class QuerySide:
    """Vectors of a domain's traffic: queries ``[Q, D]`` and, for Wikipedia, the articles to classify ``[N, D]``."""

    queries: np.ndarray
    articles: np.ndarray | None = None


@dataclass
class CorpusSide:
    """A domain's indexed vectors: its retrieval corpus, and for Wikipedia its k-NN index documents ``[M, D]``."""

    corpus: CorpusVectors
    index: np.ndarray | None = None


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _doc_vectors(embs: Sequence[Any]) -> np.ndarray:
    return np.stack([e.document for e in embs]).astype(np.float32)


def encode_corpus_side(cache: AdapterCache, d: DomainData, key: str) -> CorpusSide:
    """The domain's corpus (document + in-context sentence vectors) and k-NN index under ``key``."""
    model = MusesCorpusEncoder(cast(MultiScaleEncoder, cache.view(key)), name=key)
    corpus = model.encode_corpus(d.corpus)
    index = _doc_vectors(cache.encode_documents(d.index, key=key, scales=("document",))) if d.index else None
    return CorpusSide(corpus, index)


@dataclass
class Request:
    """One traffic request: ``size`` texts of one domain, queries or articles (documents)."""

    domain: str
    kind: str  # "queries" or "articles"
    rows: list[int]


def domain_requests(d: DomainData, size: int) -> list[Request]:
    """A domain's traffic in requests of ``size``: its queries, then (Wikipedia) its articles to classify."""
    reqs = [Request(d.key, "queries", rows) for rows in _chunks(len(d.queries), size)]
    if d.classify:
        reqs += [Request(d.key, "articles", rows) for rows in _chunks(len(d.corpus), size)]
    return reqs


def serve(cache: AdapterCache, d: DomainData, req: Request, key: str | None) -> np.ndarray:
    """Encode one request through the cache (``key`` None: routed) -> ``[n, D]`` full-dim vectors."""
    if req.kind == "queries":
        texts = list(d.queries.values())
        return cache.encode_queries([texts[i] for i in req.rows], key=key)
    return _doc_vectors(cache.encode_documents([d.corpus[i] for i in req.rows], key=key, scales=("document",)))


def _assemble(d: DomainData, parts: dict[tuple[str, int], np.ndarray], size: int) -> QuerySide:
    width = next(iter(parts.values())).shape[1]
    q = np.zeros((len(d.queries), width), dtype=np.float32)
    a = np.zeros((len(d.corpus), width), dtype=np.float32) if d.classify else None
    for req in domain_requests(d, size):
        v = parts[(req.kind, req.rows[0])]
        if req.kind == "queries":
            q[req.rows] = v
        elif a is not None:
            a[req.rows] = v
    return QuerySide(q, a)


def encode_query_side(cache: AdapterCache, d: DomainData, key: str, size: int) -> QuerySide:
    """The domain's traffic encoded under ``key``, request by request (same batches as the traffic run)."""
    parts = {(r.kind, r.rows[0]): serve(cache, d, r, key) for r in domain_requests(d, size)}
    return _assemble(d, parts, size)


def run_traffic(
    cache: AdapterCache, domains: dict[str, DomainData], s: BenchSettings, routed: bool
) -> tuple[dict[str, QuerySide], dict[str, Any]]:
    """Send every domain's traffic through ``cache`` in phases following ``s.sequence``.

    A domain's requests are split into contiguous parts, one per visit of the domain in the sequence. Returns the
    vectors per domain and the cache's stats (overall and per phase).
    """
    visits = {k: s.sequence.count(k) for k in domains}
    plans = {
        k: np.array_split(np.arange(len(domain_requests(d, s.request_size))), visits[k]) for k, d in domains.items()
    }
    reqs = {k: domain_requests(d, s.request_size) for k, d in domains.items()}
    seen = dict.fromkeys(domains, 0)
    parts: dict[str, dict[tuple[str, int], np.ndarray]] = {k: {} for k in domains}
    phases = []
    cache.reset_stats()
    t0 = time.perf_counter()
    for key in s.sequence:
        before = cache.stats()
        for i in plans[key][seen[key]]:
            r = reqs[key][int(i)]
            parts[key][(r.kind, r.rows[0])] = serve(cache, domains[key], r, None if routed else key)
        seen[key] += 1
        after = cache.stats()
        phases.append(
            {
                "domain": key,
                "requests": after["requests"] - before["requests"],
                "hits": after["hits"] - before["hits"],
                "misses": after["misses"] - before["misses"],
                "loads": after["loads"] - before["loads"],
                "evictions": after["evictions"] - before["evictions"],
                "resident_after": after["resident"],
            }
        )
    stats = {**cache.stats(), "wall_ms": round(1000 * (time.perf_counter() - t0), 1), "phases": phases}
    return {k: _assemble(d, parts[k], s.request_size) for k, d in domains.items()}, stats


# ---------------------------------------------------------------------------------------------- metrics


class _Fixed:
    """A :class:`~muses.evaluation.corpus.CorpusEncoder` answering queries from vectors computed already."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, dims: list[int]) -> None:
        self.name = "fixed"
        self.dims = dims
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def fingerprint(self) -> str:
        return "fixed"

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]

    def encode_sentences(self, sentences: Sequence[str], dim: int | None = None) -> np.ndarray:
        raise NotImplementedError("query vectors only")

    def encode_query_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError("query vectors only")

    def encode_corpus(self, docs: Sequence[Document], with_tokens: bool = False) -> CorpusVectors:
        raise NotImplementedError("query vectors only")


def quality(
    domains: dict[str, DomainData],
    corpus: dict[str, CorpusSide],
    queries: dict[str, QuerySide],
    dims: list[int],
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Per domain: retrieval nDCG@10 (document, sentence) and, for Wikipedia, k-NN topic accuracy, at every dim."""
    out: dict[str, dict[str, float]] = {}
    for key, d in domains.items():
        model = _Fixed(list(d.queries.values()), queries[key].queries, dims)
        scored = score_queries(model, corpus[key].corpus, d.queries, dims, EmbeddingCache(None), with_tokens=False)
        m = evaluate_scored(scored, d.qrels, ks=(10,))
        out[key] = {f"{s}/ndcg@10@{dim}": m[f"{s}/ndcg@10@{dim}"] for s in ("document", "sentence") for dim in dims}
    wiki = [key for key, d in domains.items() if d.classify]
    if wiki:
        labels = np.concatenate([np.full(len(domains[w].index), i) for i, w in enumerate(wiki)])
        truth = np.concatenate([np.full(len(domains[w].corpus), i) for i, w in enumerate(wiki)])
        index = np.concatenate([cast(np.ndarray, corpus[w].index) for w in wiki])
        tests = np.concatenate([cast(np.ndarray, queries[w].articles) for w in wiki])
        for dim in dims:
            votes = knn_votes(prefix_normalize(index, dim), labels, prefix_normalize(tests, dim), len(wiki), k)
            pred = predict(votes)
            for i, w in enumerate(wiki):
                out[w][f"knn/accuracy@{dim}"] = float(np.mean(pred[truth == i] == i))
            acc, f1 = accuracy_macro_f1(truth, pred)
            out.setdefault(ALL_WIKI, {}).update({f"knn/accuracy@{dim}": acc, f"knn/macro_f1@{dim}": f1})
    return out


def retention(
    cached: dict[str, dict[str, float]], dedicated: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """100 x cached / dedicated, per domain and metric."""
    return {
        d: {m: 100.0 * v / dedicated[d][m] if dedicated[d][m] else float("nan") for m, v in metrics.items()}
        for d, metrics in cached.items()
    }


def router_accuracy(cache: AdapterCache, domains: dict[str, DomainData], size: int) -> dict[str, dict[str, float]]:
    """Share of each domain's traffic the router sends to the domain's own adapter: per query text, per request
    (all its texts together, ``routing="request"``) and per article to classify."""
    out: dict[str, dict[str, float]] = {}
    for key, d in domains.items():
        texts = list(d.queries.values())
        routes = cache.route(texts)
        out[key] = {"queries": float(np.mean([r == key for r in routes]))}
        out[key]["requests"] = float(
            np.mean([cache.router.route_group([texts[i] for i in r.rows]) == key for r in domain_requests(d, size)])
        )
        if d.classify:
            out[key]["articles"] = float(np.mean([r == key for r in cache.route([x.text for x in d.corpus])]))
    return out


def forward_overhead(
    cache: AdapterCache, d: DomainData, keys: Sequence[str], size: int, repeats: int
) -> dict[str, float]:
    """Encode time of the domain's traffic with each adapter already active, as a % over the base model's.

    The adapters are loaded first; base and adapter runs are interleaved and the fastest of ``repeats`` is kept.
    """
    reqs = domain_requests(d, size)
    best: dict[str, float] = {}
    for k in ["base", *keys]:
        with cache.use(k):  # loaded before timing
            pass
    for _ in range(repeats):
        for k in ["base", *keys]:
            with cache.use(k):
                t = time.perf_counter()
                for r in reqs:
                    serve(cache, d, r, k)
                best[k] = min(best.get(k, float("inf")), time.perf_counter() - t)
    return {k: round(100.0 * (best[k] / best["base"] - 1.0), 2) for k in keys} | {
        "base_ms": round(1000 * best["base"], 1)
    }


# ---------------------------------------------------------------------------------------------- the run


def run_adapter_bench(
    s: BenchSettings,
    recipes: dict[str, TrainConfig],
    work: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Run the whole measurement (see the module docstring) and return its results, JSON-ready.

    Args:
        s: the run's sizes (:func:`load_bench_settings`).
        recipes: domain key -> adapter recipe (:func:`load_recipes`); adapters already trained in their
            ``output_dir`` are reused, interrupted ones resumed.
        work: where the merged adapters are written (beside the trained ones, usually).
    """
    missing = [k for k in recipes if k not in s.sequence]
    if missing:
        raise InputError(f"the traffic sequence never visits {missing}; every domain needs at least one phase.")
    unknown = sorted(set(s.sequence) - set(recipes))
    if unknown:
        raise InputError(f"the traffic sequence names {unknown}, which no recipe trains; domains: {list(recipes)}.")
    work = Path(work)
    t_start = time.perf_counter()
    wiki_domains = {k: topic for k, cfg in recipes.items() if (topic := domain_topic(cfg)) is not None}
    training = train_adapters(recipes, data_dir, log)
    folders = {k: Path(v["folder"]) for k, v in training.items()}
    merged = merge_adapters(folders, work, log)
    domains, dev_domains = load_domains(recipes, s, data_dir)
    log(f"domains: {', '.join(f'{k} ({len(d.queries)} queries, {len(d.corpus)} docs)' for k, d in domains.items())}")

    enc = MultiScaleEncoder.from_base()
    every = AdapterCache(enc, {**folders, **merged}, capacity=len(folders) + len(merged))
    conditions = {"none": {k: "base" for k in domains}, "dedicated": {k: k for k in domains}}
    conditions |= {m: dict.fromkeys(domains, m) for m in MERGED}
    corpus_side: dict[str, dict[str, CorpusSide]] = {}
    query_side: dict[str, dict[str, QuerySide]] = {}
    for name, keys in conditions.items():
        t = time.perf_counter()
        corpus_side[name] = {k: encode_corpus_side(every, d, keys[k]) for k, d in domains.items()}
        query_side[name] = {k: encode_query_side(every, d, keys[k], s.request_size) for k, d in domains.items()}
        log(f"encoded condition {name} in {time.perf_counter() - t:.0f}s")
    dev = {
        name: quality(
            dev_domains,
            {k: encode_corpus_side(every, d, keys[k]) for k, d in dev_domains.items()},
            {k: encode_query_side(every, d, keys[k], s.request_size) for k, d in dev_domains.items()},
            s.dims,
        )
        for name, keys in conditions.items()
        if name in ("none", "dedicated")
    }
    timing = forward_overhead(
        every, domains[s.sequence[0]], [s.sequence[0], MERGED[0]], s.request_size, s.timing_repeats
    )
    routing = router_accuracy(every, domains, s.request_size)
    every.clear()

    results: dict[str, Any] = {"quality": {}, "retention": {}, "traffic": {}}
    for name in conditions:
        results["quality"][name] = quality(domains, corpus_side[name], query_side[name], s.dims)
    dedicated = results["quality"]["dedicated"]
    for name in ("none", *MERGED):
        results["retention"][name] = retention(results["quality"][name], dedicated)
    serving = MultiScaleEncoder.from_base()
    for capacity in s.capacities:
        corpus_name = "none" if capacity == 0 else "dedicated"
        for mode in ("explicit key", "routed per text", "routed per request"):
            granularity = "request" if mode == "routed per request" else "text"
            cache = AdapterCache(serving, folders, capacity=capacity, routing=granularity)
            startup_ms = round(1000 * cache.reserve(), 1)  # slots attached at startup: misses then copy weights
            vecs, stats = run_traffic(cache, domains, s, routed=mode != "explicit key")
            stats["startup_reserve_ms"] = startup_ms
            check = _same_as(cache, domains, corpus_side[corpus_name], s.request_size)
            cache.clear()
            name = f"cache K={capacity} {mode}"
            q = quality(domains, corpus_side[corpus_name], vecs, s.dims)
            results["quality"][name] = q
            results["retention"][name] = retention(q, dedicated)
            results["traffic"][name] = {**stats, "corpus_side_max_abs_diff": check}
            log(f"{name}: hit rate {stats['hit_rate']}, switch overhead {stats['switch_overhead_pct']}%")
    results.update(
        {
            "settings": s.model_dump(),
            "wiki_domains": wiki_domains,
            "recipes": {k: cfg.model_dump(mode="json") for k, cfg in recipes.items()},
            "training": training,
            "merged": {k: str(v) for k, v in merged.items()},
            "adapters": [{**i.__dict__, "path": str(i.path)} for i in list_adapters(work)],
            "data": {
                k: {"queries": len(d.queries), "corpus": len(d.corpus), "knn_index": len(d.index)}
                for k, d in domains.items()
            },
            "router_accuracy": routing,
            "dev": dev,
            "lora_forward_overhead_pct": timing,
            "machine": {"platform": platform.platform(), "torch_threads": _threads()},
            "seconds": round(time.perf_counter() - t_start, 1),
        }
    )
    return results


def run_configured(
    config: str | os.PathLike[str],
    recipes: str | os.PathLike[str],
    work: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """:func:`run_adapter_bench` from YAML: the profile ``config``, the recipes in folder ``recipes`` (their
    ``output_dir`` moved under ``work``), ``overrides`` (dotted keys) laid over every recipe."""
    s = load_bench_settings(config)
    return run_adapter_bench(s, load_recipes(recipes, s, work, overrides), work, data_dir, log)


def mean_retention(results: dict[str, Any]) -> dict[str, float]:
    """Per condition: retention (%) averaged over every (domain, metric) cell at the full dim (the all-Wikipedia
    k-NN numbers left out: they are not one domain's)."""
    full = max(results["settings"]["dims"])
    return {
        c: float(
            np.mean(
                [v for d, per in by_domain.items() if d != ALL_WIKI for k, v in per.items() if k.endswith(f"@{full}")]
            )
        )
        for c, by_domain in results["retention"].items()
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _same_as(cache: AdapterCache, domains: dict[str, DomainData], want: dict[str, CorpusSide], size: int) -> float:
    """Max abs difference between a sample of corpus vectors re-encoded through ``cache`` under each domain's key
    and the corpus-side vectors used for it (0.0: the cache serves exactly the vectors the index holds)."""
    worst = 0.0
    for key, d in domains.items():
        k = key if cache.capacity > 0 else "base"
        got = MusesCorpusEncoder(cast(MultiScaleEncoder, cache.view(k))).encode_corpus(d.corpus[:size])
        worst = max(worst, float(np.abs(got.document - want[key].corpus.document[:size]).max()))
    return worst

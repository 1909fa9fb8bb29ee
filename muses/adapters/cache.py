"""AdapterCache: one MuSES encoder serving many domain adapters, at most ``capacity`` of them in memory.

The public facade over three parts, each with one job:

- **Registry and routing** (here): adapter key -> folder; a request names its adapter (``key="scifact"``), asks
  for the base model (``key="base"``), or is routed (``key=None``): each text goes to the adapter of the nearest
  routing centroid (:class:`~muses.adapters.router.CentroidRouter`), and texts routed to different adapters are
  encoded in groups. A miss loads the adapter lazily from its folder; capacity 0 keeps no adapter (every request
  is served by the bare base model).
- **Slots** (:class:`~muses.adapters.slots.SlotPool`): LRU order, PEFT hot-swap, and the lock whose invariant
  makes the cache thread safe (stated in :mod:`muses.adapters.slots`). The slow part of a miss, reading the
  safetensors file, happens outside the lock.
- **Instruments** (:class:`~muses.adapters.stats.CacheStats`): :meth:`AdapterCache.stats` gives requests, hits,
  misses, hit rate, loads, evictions, switches, miss latency (ms: mean, p50, max), memory per resident adapter
  (KB), time spent switching (loading, evicting, activating) against time spent encoding.
- **Warm-up** (:mod:`muses.adapters.warmup`): :meth:`AdapterCache.warm_up` makes an adapter for an unseen domain
  from a handful of examples in at most 10 steps, starting from the nearest adapter or from zero.

Encode through the cache while it serves an encoder: a direct ``encoder.encode_*`` call takes no lock and runs
with whichever adapter happens to be active.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from muses.adapters.config import RESERVED_KEYS, AdapterConfig
from muses.adapters.lora import (
    AdapterFiles,
    adapter_weights,
    base_fingerprint,
    hf_model,
    list_adapters,
    read_adapter,
    read_meta,
)
from muses.adapters.router import CentroidRouter
from muses.adapters.slots import SlotPool
from muses.adapters.stats import CacheStats
from muses.adapters.warmup import Example, WarmupResult, example_texts, warm_up_domain
from muses.errors import InputError, ModelError
from muses.text import as_documents
from muses.types import Document, MultiScaleEmbedding

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

BASE = RESERVED_KEYS[0]
"""The key that asks for the base model, no adapter."""
T = TypeVar("T")


class AdapterCache:
    """An LRU cache of LoRA adapters on one encoder (see the module docstring).

    Args:
        encoder: the MuSES encoder; the cache attaches and detaches adapters on its transformer.
        adapters: a folder searched for adapter folders (:func:`~muses.adapters.lora.list_adapters`), or a mapping
            key -> adapter folder. Only their small JSON files are read here; weights load on first use.
        capacity: adapters kept in memory (0: always the base model).
        min_similarity: routing threshold (see :class:`CentroidRouter`); None: always the nearest adapter.
        routing: ``"text"``: each text of a request goes to its own nearest adapter (a request may be split);
            ``"request"``: a whole request goes to the adapter nearest its texts' mean feature.
        check_base: refuse an adapter trained on another base model (by weights fingerprint).

    Example:
        >>> cache = AdapterCache(enc, "runs/adapters", capacity=2)
        >>> cache.encode_queries(["Aspirin lowers fever."])              # routed
        >>> cache.encode_queries(["Who painted it?"], key="wiki-people")  # explicit
        >>> cache.stats()["hit_rate"]
    """

    def __init__(
        self,
        encoder: MultiScaleEncoder,
        adapters: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]] | None = None,
        capacity: int = 4,
        min_similarity: float | None = None,
        check_base: bool = True,
        routing: str = "text",
    ) -> None:
        if capacity < 0:
            raise InputError(f"capacity must be >= 0 (0: always the base model), got {capacity}.")
        if routing not in ("text", "request"):
            raise InputError(f"routing must be 'text' or 'request', got {routing!r}.")
        self.routing = routing
        self.encoder = encoder
        self.capacity = capacity
        self.check_base = check_base
        self.root = Path(adapters) if isinstance(adapters, str | os.PathLike) else None
        self.router = CentroidRouter(encoder, min_similarity=min_similarity)
        self._paths: dict[str, Path] = {}
        self._stats = CacheStats()
        self._pool = SlotPool(encoder, capacity, self._stats)
        self._fingerprint: str | None = None
        if self.root is not None:
            for info in list_adapters(self.root):
                self.register(info.key, info.path)
        elif adapters is not None:
            for key, folder in adapters.items():  # type: ignore[union-attr]
                self.register(key, folder)

    # ------------------------------------------------------------------ registry
    @property
    def keys(self) -> list[str]:
        """Keys of every registered adapter (in memory or not), sorted."""
        return sorted(self._paths)

    @property
    def resident(self) -> list[str]:
        """Keys of the adapters in memory, least recently used first."""
        with self._pool.lock:
            return list(self._pool.resident)

    def fingerprint(self) -> str:
        """The base model's fingerprint (:func:`~muses.adapters.lora.base_fingerprint`), computed once."""
        if self._fingerprint is None:
            self._fingerprint = base_fingerprint(self.encoder)
        return self._fingerprint

    def register(self, key: str, folder: str | os.PathLike[str]) -> None:
        """Make the adapter in ``folder`` available as ``key`` (reads its JSON only; weights load lazily)."""
        meta = read_meta(folder)
        if key in RESERVED_KEYS:
            raise InputError(f"adapter key {key!r} is reserved for the base model; rename the adapter.")
        if self.check_base and meta.base_fingerprint and meta.base_fingerprint != self.fingerprint():
            raise ModelError(
                f"adapter {key!r} ({folder}) was trained on another base model (fingerprint {meta.base_fingerprint},"
                f" this one {self.fingerprint()}, base {meta.base_model!r}); serve it on its own base model, or pass "
                "check_base=False to use it anyway."
            )
        with self._pool.lock:
            if key in self._pool.resident:
                self._pool.evict(key)
            self._paths[key] = Path(folder)
            if meta.centroid is not None:
                self.router.add(key, meta.centroid)
            else:
                self.router.remove(key)

    def _check(self, key: str) -> None:
        if key != BASE and key not in self._paths:
            raise InputError(f"no adapter {key!r}; known: {', '.join(self.keys) or 'none'} (or {BASE!r}).")

    def _read(self, key: str) -> AdapterFiles:
        """Read ``key``'s adapter files (no lock needed: touches no shared state)."""
        return read_adapter(self._paths[key], device=self.encoder.device)

    # ------------------------------------------------------------------ stats
    def reset_stats(self) -> None:
        """Zero every counter and timer."""
        with self._pool.lock:
            self._stats.reset()

    def stats(self) -> dict[str, Any]:
        """Counters and timings since creation (or :meth:`reset_stats`), as JSON-ready numbers
        (:meth:`CacheStats.summary <muses.adapters.stats.CacheStats.summary>` defines them)."""
        with self._pool.lock:
            memory = {k: slot.nbytes for k, slot in self._pool.resident.items()}
            return self._stats.summary(self.capacity, len(self._paths), memory, len(self._pool.spare))

    # ------------------------------------------------------------------ slots
    def _count_unserved(self, keys: Iterable[str | None]) -> None:
        """Count requests served by the base model: asked for it, or (capacity 0) for an adapter (a miss)."""
        with self._pool.lock:
            for key in keys:
                self._stats.requests += 1
                if key is None or key == BASE:
                    self._stats.base_requests += 1
                else:
                    self._stats.misses += 1

    @contextmanager
    def use(self, key: str | None, count: bool = True) -> Iterator[str | None]:
        """Hold the model with adapter ``key`` active (None or ``"base"``: the base model); yields the active key.

        A miss reads the adapter's files before taking the lock, then loads them under the lock (into the least
        recently used adapter's slot when full). Encode inside the ``with`` block; other threads wait for it. With
        capacity 0 every key gets the base model. ``count=False``: not counted in the request stats.
        """
        pool, stats = self._pool, self._stats
        if key is None or key == BASE or self.capacity == 0:
            if key is not None and key != BASE:
                self._check(key)
            if count:
                self._count_unserved([key])
            with pool.lock:
                t = time.perf_counter()
                pool.activate(None)
                stats.switch_s += time.perf_counter() - t
                yield None
            return
        self._check(key)
        with pool.lock:
            hit = key in pool.resident
        files: AdapterFiles | None = None
        read_s = 0.0
        if not hit:
            t = time.perf_counter()
            files = self._read(key)
            read_s = time.perf_counter() - t
        with pool.lock:
            t = time.perf_counter()
            stats.requests += int(count)
            if key in pool.resident:
                pool.resident.move_to_end(key)
                if hit:
                    stats.hits += int(count)
                else:
                    stats.misses += int(count)
            else:  # a miss, or evicted by another thread since the check
                stats.misses += int(count)
                pool.load(key, files if files is not None else self._read(key))
                stats.miss_ms.append(1000 * (read_s + time.perf_counter() - t))
            pool.activate(key)
            stats.switch_s += read_s + time.perf_counter() - t
            yield key

    def evict(self, key: str) -> None:
        """Drop ``key`` from memory now (it stays registered and reloads on its next use)."""
        with self._pool.lock:
            if key in self._pool.resident:
                self._pool.evict(key)

    def clear(self) -> None:
        """Drop every adapter (and spare slot) from memory; the base model is active."""
        with self._pool.lock:
            self._pool.clear()

    def reserve(self, like: str | None = None) -> float:
        """Attach all ``capacity`` slots now, shaped like adapter ``like`` (default: the first registered one), so
        that later misses only copy weights into them (PEFT hotswap) instead of injecting layers; returns the
        seconds it took. A startup cost, paid once (it also covers the process's first, slowest injection)."""
        t = time.perf_counter()
        with self._pool.lock:
            if self.capacity == 0 or not self._paths:
                return 0.0
            key = like or self.keys[0]
            self._check(key)
            self._pool.reserve(self._read(key))
        return time.perf_counter() - t

    # ------------------------------------------------------------------ routing and encoding
    def route(self, texts: Sequence[str]) -> list[str | None]:
        """The adapter key each text of a request would be served by (None: the base model), without encoding."""
        with self._pool.lock:
            if self.routing == "request":
                return [self.router.route_group(texts)] * len(texts)
            return self.router.route(texts)

    def _keys_for(self, texts: Sequence[str], key: str | None) -> list[str | None]:
        if key is not None:
            self._check(key)
            return [None if key == BASE else key] * len(texts)
        return self.route(texts)

    def _grouped(self, texts: Sequence[str], key: str | None, run: Callable[[list[int]], list[T]]) -> list[T]:
        """Encode the texts of each key under its adapter (``run(indices)`` -> one result per index), in order.

        With capacity 0 all texts go in one group to the base model (each asked-for adapter counts as a miss), so
        the batches, and hence the vectors, are exactly the base model's.
        """
        keys = self._keys_for(texts, key)
        groups: dict[str | None, list[int]] = {}
        if self.capacity == 0:
            self._count_unserved(dict.fromkeys(keys))
            groups = {None: list(range(len(texts)))} if texts else {}
        else:
            for i, k in enumerate(keys):
                groups.setdefault(k, []).append(i)
        out: list[T | None] = [None] * len(texts)
        for k, idx in groups.items():
            with self.use(k, count=self.capacity > 0):
                t = time.perf_counter()
                results = run(idx)
                self._stats.encode_s += time.perf_counter() - t
                self._stats.texts += len(idx)
            for i, r in zip(idx, results, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]  # every index is filled

    def _encode_texts(
        self, texts: Sequence[str], key: str | None, encode: Callable[..., np.ndarray], dim: int | None, batch_size: int
    ) -> np.ndarray:
        """``encode(texts, dim, batch_size)`` (an encoder method) run per adapter group -> ``[N, dim]``."""
        items = list(texts)
        rows = self._grouped(items, key, lambda idx: list(encode([items[i] for i in idx], dim, batch_size)))
        return np.stack(rows) if rows else np.zeros((0, dim or self.encoder.embed_dim), dtype=np.float32)

    def encode_sentences(
        self, sentences: Sequence[str], key: str | None = None, dim: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """:meth:`MultiScaleEncoder.encode_sentences` under adapter ``key`` (None: routed per text) -> ``[N, dim]``."""
        return self._encode_texts(sentences, key, self.encoder.encode_sentences, dim, batch_size)

    def encode_queries(
        self, queries: Sequence[str], key: str | None = None, dim: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """:meth:`MultiScaleEncoder.encode_queries` under adapter ``key`` (None: routed per query) -> ``[N, dim]``."""
        return self._encode_texts(queries, key, self.encoder.encode_queries, dim, batch_size)

    def encode_documents(
        self, documents: Iterable[str | Document], key: str | None = None, **kwargs: Any
    ) -> list[MultiScaleEmbedding]:
        """:meth:`MultiScaleEncoder.encode_documents` under adapter ``key`` (None: routed per document text)."""
        docs = as_documents(list(documents), self.encoder.splitter)
        return self._grouped(
            [d.text for d in docs], key, lambda idx: self.encoder.encode_documents([docs[i] for i in idx], **kwargs)
        )

    def view(self, key: str | None) -> KeyedEncoder:
        """An encoder-like view whose encodes go through this cache under ``key`` (None: routed), for code that
        takes a :class:`MultiScaleEncoder` (e.g. :class:`~muses.evaluation.corpus.MusesCorpusEncoder`)."""
        if key is not None:
            self._check(key)
        return KeyedEncoder(self, key)

    # ------------------------------------------------------------------ few-shot warm-up
    def warm_up(
        self,
        key: str,
        examples: Sequence[Example],
        init: str = "nearest",
        steps: int = 10,
        folder: str | os.PathLike[str] | None = None,
        config: AdapterConfig | None = None,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> WarmupResult:
        """Make an adapter for an unseen domain from a handful of examples, save it and register it (resident).

        Args:
            key: the new domain's key (must not exist yet).
            examples: documents, or ``(query, positive)`` pairs (see :mod:`muses.adapters.warmup`).
            init: ``"nearest"`` (the weights of the registered adapter whose centroid is nearest the examples; from
                zero when there is none) or ``"zero"`` (PEFT's default init: the base model).
            steps: 1 to 10.
            folder: where to save it (default ``<adapters root>/<key>``).
            config: adapter settings for a start from zero.

        Other requests wait while it trains (it runs under the cache's lock).
        """
        if key in self._paths or key in RESERVED_KEYS:
            raise InputError(f"adapter {key!r} exists already (or is reserved); choose a new key.")
        if init not in ("nearest", "zero"):
            raise InputError(f"init must be 'nearest' or 'zero', got {init!r}.")
        texts = example_texts(examples)
        if folder is None and self.root is None:
            raise InputError("warm_up needs a folder to save the adapter in (the cache was not built from a folder).")
        out = Path(folder) if folder is not None else Path(self.root or ".") / key
        source = self.router.nearest(texts) if init == "nearest" else None
        with self._pool.lock:
            start = self._weights_of(source) if source is not None else None
            slot = self._pool.make_room()
            result, domain_centroid = warm_up_domain(
                self.encoder, key, slot, examples, out, self.fingerprint(), config, start, source, steps, lr, seed
            )
            self._paths[key] = out
            self.router.add(key, domain_centroid)
            self._pool.adopt(key, slot)
        return result

    def _weights_of(self, key: str) -> tuple[Any, dict[str, Any]]:
        """``(peft_config, weights)`` of adapter ``key``: from its slot when resident, else from its folder (lock
        held)."""
        if key in self._pool.resident:
            name = self._pool.resident[key].name
            return hf_model(self.encoder).peft_config[name], adapter_weights(self.encoder, name)
        files = self._read(key)
        return files.peft_config, files.weights


class KeyedEncoder:
    """The encode methods of a :class:`MultiScaleEncoder`, served by an :class:`AdapterCache` under one key.

    Read-only settings (dims, heads, tokenizer...) come from the cache's encoder; lower-level methods such as
    ``token_states`` are deliberately absent (they would bypass the cache and its lock).
    """

    _SHARED = frozenset(
        {"dims", "embed_dim", "heads", "tokenizer", "splitter", "window", "window_overlap", "base_name", "device"}
    )

    def __init__(self, cache: AdapterCache, key: str | None) -> None:
        self.cache = cache
        self.key = key

    def __getattr__(self, name: str) -> Any:
        if name in KeyedEncoder._SHARED:
            return getattr(self.cache.encoder, name)
        raise AttributeError(f"{name!r}: an adapter view offers only the encode methods and settings")

    def encode_documents(self, documents: Iterable[str | Document], **kwargs: Any) -> list[MultiScaleEmbedding]:
        kwargs.pop("show_progress_bar", None)
        return self.cache.encode_documents(documents, key=self.key, **kwargs)

    def encode_queries(
        self,
        queries: Sequence[str],
        dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        return self.cache.encode_queries(queries, key=self.key, dim=dim, batch_size=batch_size)

    def encode_sentences(
        self,
        sentences: Sequence[str],
        dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        return self.cache.encode_sentences(sentences, key=self.key, dim=dim, batch_size=batch_size)

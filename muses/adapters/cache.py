"""AdapterCache: one MuSES encoder serving many domain adapters, at most ``capacity`` of them in memory.

- **Keys.** A request names its adapter (``key="scifact"``), asks for the base model (``key="base"``), or is routed
  (``key=None``): each text goes to the adapter of the nearest routing centroid
  (:class:`~muses.adapters.router.CentroidRouter`), and texts routed to different adapters are encoded in groups.
- **LRU.** Resident adapters are kept in least-recently-used order, each in a *slot* (a PEFT adapter named
  ``slot000``, ``slot001``... inside the model). A miss loads the adapter lazily from its folder; when the cache is
  full, the least recently used adapter is evicted: its slot's weights are overwritten in place with the new ones
  (PEFT hotswap, a tensor copy) when both adapters have the same rank, alpha and target layers, else the slot is
  deleted (PEFT ``delete_adapter``) and a new one injected. Capacity 0 keeps no adapter: every request is served by
  the bare base model.
- **Threads.** One re-entrant lock guards the model: injecting, evicting, activating an adapter and the encode that
  uses it all happen under it, so an encode never sees a half-loaded adapter or another request's adapter. The
  slow part of a miss, reading the safetensors file, happens outside the lock.
- **Instruments.** :meth:`AdapterCache.stats`: requests, hits, misses, hit rate, loads, evictions, switches, miss
  latency (ms: mean, p50, max), memory per resident adapter (KB), time spent switching (loading, evicting,
  activating) against time spent encoding.
- **Warm-up.** :meth:`AdapterCache.warm_up` makes an adapter for an unseen domain from a handful of examples in
  at most 10 steps (:mod:`muses.adapters.warmup`), starting from the nearest adapter or from zero.

Encode through the cache while it serves an encoder: a direct ``encoder.encode_*`` call takes no lock and runs
with whichever adapter happens to be active.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from muses.adapters.config import RESERVED_KEYS, AdapterConfig
from muses.adapters.lora import (
    AdapterFiles,
    adapter_nbytes,
    adapter_weights,
    base_fingerprint,
    hf_model,
    hotswap_adapter,
    inject_adapter,
    list_adapters,
    loaded_adapters,
    read_adapter,
    read_meta,
    remove_adapter,
    save_adapter,
)
from muses.adapters.router import CentroidRouter, centroid
from muses.adapters.warmup import Example, WarmupResult, check_examples, warm_up_adapter
from muses.errors import InputError, ModelError
from muses.text import as_documents
from muses.types import Document, MultiScaleEmbedding

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

BASE = RESERVED_KEYS[0]
"""The key that asks for the base model, no adapter."""
T = TypeVar("T")
_STALE = "-stale-"  # never a key: forces the next activation


@dataclass
class _Slot:
    """Where a resident adapter lives: its name in the model (PEFT adapter name) and its bytes."""

    name: str
    nbytes: int


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
        self._resident: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._spare: list[_Slot] = []  # slots attached by reserve() that hold no adapter yet
        self._active: str | None = None  # key of the adapter in use; None: the base model
        self._enabled = False  # whether the model's adapters are enabled (PEFT)
        self._lock = threading.RLock()
        self._fingerprint: str | None = None
        self.reset_stats()
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
        with self._lock:
            return list(self._resident)

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
        with self._lock:
            if key in self._resident:
                self._evict(key)
            self._paths[key] = Path(folder)
            if meta.centroid is not None:
                self.router.add(key, meta.centroid)
            else:
                self.router.remove(key)

    # ------------------------------------------------------------------ stats
    def reset_stats(self) -> None:
        """Zero every counter and timer."""
        self._stats: dict[str, Any] = {
            "requests": 0,
            "base_requests": 0,
            "hits": 0,
            "misses": 0,
            "loads": 0,
            "hotswaps": 0,
            "evictions": 0,
            "switches": 0,
            "switch_s": 0.0,
            "encode_s": 0.0,
            "texts": 0,
        }
        self._miss_ms: list[float] = []

    def stats(self) -> dict[str, Any]:
        """Counters and timings since creation (or :meth:`reset_stats`), as JSON-ready numbers.

        ``hit_rate`` is hits / adapter requests (a request is one group of texts served by one adapter; requests
        for the base model are counted apart). ``miss_latency_ms`` covers a load (file read + injection +
        evictions it needed). ``switch_overhead_pct`` is the time spent loading, evicting and activating adapters
        as a percentage of the time spent encoding.
        """
        with self._lock:
            s = dict(self._stats)
            lat = np.asarray(self._miss_ms, dtype=np.float64)
            memory = {k: round(slot.nbytes / 1024, 1) for k, slot in self._resident.items()}
            spare = len(self._spare)
        asked = s["hits"] + s["misses"]
        return {
            "capacity": self.capacity,
            "registered": len(self._paths),
            "spare_slots": spare,
            "resident": list(memory),
            "requests": s["requests"],
            "base_requests": s["base_requests"],
            "hits": s["hits"],
            "misses": s["misses"],
            "hit_rate": round(s["hits"] / asked, 4) if asked else 0.0,
            "loads": s["loads"],
            "hotswaps": s["hotswaps"],
            "evictions": s["evictions"],
            "switches": s["switches"],
            "miss_latency_ms": {
                "mean": round(float(lat.mean()), 3) if len(lat) else 0.0,
                "p50": round(float(np.median(lat)), 3) if len(lat) else 0.0,
                "max": round(float(lat.max()), 3) if len(lat) else 0.0,
            },
            "memory_kb": memory,
            "memory_kb_total": round(sum(memory.values()), 1),
            "switch_ms_total": round(1000 * s["switch_s"], 3),
            "encode_ms_total": round(1000 * s["encode_s"], 3),
            "switch_overhead_pct": round(100 * s["switch_s"] / s["encode_s"], 4) if s["encode_s"] else 0.0,
            "texts": s["texts"],
        }

    # ------------------------------------------------------------------ loading, eviction, activation
    def _check(self, key: str) -> None:
        if key != BASE and key not in self._paths:
            raise InputError(f"no adapter {key!r}; known: {', '.join(self.keys) or 'none'} (or {BASE!r}).")

    def _free_slot(self) -> str:
        """A slot name not in use (fixed width: no slot name is a substring of another, as PEFT's hotswap needs)."""
        used = {slot.name for slot in self._resident.values()} | set(loaded_adapters(self.encoder))
        return next(f"slot{i:03d}" for i in range(len(used) + 1) if f"slot{i:03d}" not in used)

    def _evict(self, key: str) -> None:
        """Drop ``key`` from memory: its slot is detached (lock held)."""
        slot = self._resident.pop(key)
        remove_adapter(self.encoder, slot.name)  # the base model is active if it was
        self._stats["evictions"] += 1
        if self._active == key:
            self._active, self._enabled = None, False

    def _load(self, key: str, files: AdapterFiles) -> None:
        """Bring ``files`` into memory as ``key`` (lock held): into a spare slot (:meth:`reserve`), or when full into
        the least recently used adapter's slot, overwritten in place (PEFT hotswap) if the two are compatible; else
        a slot is injected (after evicting the least recently used adapter when full)."""
        if (
            self._spare
            and len(self._resident) < self.capacity
            and hotswap_adapter(self.encoder, self._spare[-1].name, files)
        ):
            self._resident[key] = self._spare.pop()
            self._stats["loads"] += 1
            self._stats["hotswaps"] += 1
            return
        if self._resident and len(self._resident) >= self.capacity:
            victim, slot = next(iter(self._resident.items()))
            if hotswap_adapter(self.encoder, slot.name, files):
                del self._resident[victim]
                self._resident[key] = _Slot(slot.name, slot.nbytes)
                self._stats["evictions"] += 1
                self._stats["loads"] += 1
                self._stats["hotswaps"] += 1
                if self._active == victim:
                    self._active = _STALE  # the slot is active but holds another adapter now
                return
        while self._resident and len(self._resident) >= self.capacity:
            self._evict(next(iter(self._resident)))
        name = self._free_slot()
        inject_adapter(self.encoder, name, files)  # attached active, adapters enabled
        self._resident[key] = _Slot(name, adapter_nbytes(self.encoder, name))
        self._active, self._enabled = key, True
        self._stats["loads"] += 1

    def _activate(self, key: str | None) -> None:
        """Make ``key`` (None: the base) the active adapter (lock held)."""
        if key == self._active:
            return
        model = hf_model(self.encoder)
        if key is None:
            if self._enabled and (self._resident or self._spare):
                model.disable_adapters()
            self._enabled = False
        else:
            if not self._enabled:
                model.enable_adapters()
                self._enabled = True
            model.set_adapter(self._resident[key].name)
        self._active = key
        self._stats["switches"] += 1

    def _count_unserved(self, keys: Iterable[str | None]) -> None:
        """Count requests served by the base model: asked for it, or (capacity 0) for an adapter (a miss)."""
        with self._lock:
            for key in keys:
                self._stats["requests"] += 1
                self._stats["base_requests" if key is None or key == BASE else "misses"] += 1

    @contextmanager
    def use(self, key: str | None, count: bool = True) -> Iterator[str | None]:
        """Hold the model with adapter ``key`` active (None or ``"base"``: the base model); yields the active key.

        A miss reads the adapter's files before taking the lock, then loads them under the lock (into the least
        recently used adapter's slot when full). Encode inside the ``with`` block; other threads wait for it. With
        capacity 0 every key gets the base model. ``count=False``: not counted in the request stats.
        """
        if key is None or key == BASE or self.capacity == 0:
            if key is not None and key != BASE:
                self._check(key)
            if count:
                self._count_unserved([key])
            with self._lock:
                t = time.perf_counter()
                self._activate(None)
                self._stats["switch_s"] += time.perf_counter() - t
                yield None
            return
        self._check(key)
        with self._lock:
            hit = key in self._resident
        files: AdapterFiles | None = None
        read_s = 0.0
        if not hit:
            t = time.perf_counter()
            files = read_adapter(self._paths[key], device=self.encoder.device)
            read_s = time.perf_counter() - t
        with self._lock:
            t = time.perf_counter()
            self._stats["requests"] += int(count)
            if key in self._resident:
                self._resident.move_to_end(key)
                self._stats["hits" if hit else "misses"] += int(count)
            else:  # a miss, or evicted by another thread since the check
                self._stats["misses"] += int(count)
                if files is None:
                    files = read_adapter(self._paths[key], device=self.encoder.device)
                self._load(key, files)
                self._miss_ms.append(1000 * (read_s + time.perf_counter() - t))
            self._activate(key)
            self._stats["switch_s"] += read_s + time.perf_counter() - t
            yield key

    def evict(self, key: str) -> None:
        """Drop ``key`` from memory now (it stays registered and reloads on its next use)."""
        with self._lock:
            if key in self._resident:
                self._evict(key)

    def clear(self) -> None:
        """Drop every adapter (and spare slot) from memory; the base model is active."""
        with self._lock:
            for key in list(self._resident):
                self._evict(key)
            while self._spare:
                remove_adapter(self.encoder, self._spare.pop().name)
            self._activate(None)

    def reserve(self, like: str | None = None) -> float:
        """Attach all ``capacity`` slots now, shaped like adapter ``like`` (default: the first registered one), so
        that later misses only copy weights into them (PEFT hotswap) instead of injecting layers; returns the
        seconds it took. A startup cost, paid once (it also covers the process's first, slowest injection)."""
        t = time.perf_counter()
        with self._lock:
            if self.capacity == 0 or not self._paths:
                return 0.0
            key = like or self.keys[0]
            self._check(key)
            files = read_adapter(self._paths[key], device=self.encoder.device)
            while len(self._resident) + len(self._spare) < self.capacity:
                name = self._free_slot()
                inject_adapter(self.encoder, name, files)  # active: the base model is restored below
                self._spare.append(_Slot(name, adapter_nbytes(self.encoder, name)))
                self._active, self._enabled = _STALE, True
            self._activate(None)
        return time.perf_counter() - t

    # ------------------------------------------------------------------ routing and encoding
    def route(self, texts: Sequence[str]) -> list[str | None]:
        """The adapter key each text of a request would be served by (None: the base model), without encoding."""
        with self._lock:
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
                self._stats["encode_s"] += time.perf_counter() - t
                self._stats["texts"] += len(idx)
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
        kind = check_examples(examples)
        texts = [str(e) for e in examples] if kind == "documents" else [t for e in examples for t in e]
        if folder is None and self.root is None:
            raise InputError("warm_up needs a folder to save the adapter in (the cache was not built from a folder).")
        out = Path(folder) if folder is not None else Path(self.root or ".") / key
        source = self.router.nearest(texts) if init == "nearest" else None
        start: tuple[Any, dict[str, Any]] | None = None
        with self._lock:
            if source is not None:
                if source in self._resident:
                    name = self._resident[source].name
                    start = (hf_model(self.encoder).peft_config[name], adapter_weights(self.encoder, name))
                else:
                    files = read_adapter(self._paths[source], device=self.encoder.device)
                    start = (files.peft_config, files.weights)
            if self._spare:  # the new adapter takes a spare slot's memory
                remove_adapter(self.encoder, self._spare.pop().name)
            while self._resident and len(self._resident) >= max(self.capacity, 1):
                self._evict(next(iter(self._resident)))
            slot = self._free_slot()
            result = warm_up_adapter(
                self.encoder, slot, examples, config, init=start, init_from=source, steps=steps, lr=lr, seed=seed
            )
            result.key = key
            self._active, self._enabled = key, True
            domain_centroid = centroid(self.encoder, texts)
            save_adapter(
                self.encoder,
                key,
                out,
                centroid=domain_centroid,
                n_texts=len(texts),
                info={"warm_up": result.to_json()},
                fingerprint=self.fingerprint(),
                attached_as=slot,
            )
            self._paths[key] = out
            self.router.add(key, domain_centroid)
            if self.capacity == 0:
                remove_adapter(self.encoder, slot)
                self._active, self._enabled = None, False
            else:
                self._resident[key] = _Slot(slot, adapter_nbytes(self.encoder, slot))
        return result


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

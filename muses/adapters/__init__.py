"""Domain LoRA adapters on a MuSES encoder (PEFT), served from an LRU :class:`AdapterCache`.

- :mod:`muses.adapters.config`: :class:`AdapterConfig` (rank, alpha, dropout, target modules).
- :mod:`muses.adapters.lora`: attach, activate, save, load and list adapters (plain folders in PEFT's format).
- :mod:`muses.adapters.router`: :class:`CentroidRouter`, a cheap nearest-centroid router on word-piece embeddings.
- :mod:`muses.adapters.slots`: :class:`~muses.adapters.slots.SlotPool`, adapters resident in the model in LRU order
  (PEFT hot-swap) and the lock whose invariant makes the cache thread safe.
- :mod:`muses.adapters.stats`: :class:`~muses.adapters.stats.CacheStats`, the cache's counters and timers.
- :mod:`muses.adapters.cache`: :class:`AdapterCache`, the facade: registry, routing, lazy loads, capacity ``K``.
- :mod:`muses.adapters.warmup`: few-shot warm-up (<= 10 steps) of an adapter for an unseen domain.

Training an adapter with the project's trainer: set ``model.adapter`` in a recipe (``configs/adapters/``).
"""

from muses.adapters.cache import BASE, AdapterCache
from muses.adapters.config import AdapterConfig
from muses.adapters.lora import (
    AdapterInfo,
    activate,
    attach_adapter,
    list_adapters,
    load_adapter,
    loaded_adapters,
    remove_adapter,
    save_adapter,
)
from muses.adapters.router import CentroidRouter, centroid
from muses.adapters.warmup import MAX_WARMUP_STEPS, WarmupResult, warm_up_adapter

__all__ = [
    "BASE",
    "MAX_WARMUP_STEPS",
    "AdapterCache",
    "AdapterConfig",
    "AdapterInfo",
    "CentroidRouter",
    "WarmupResult",
    "activate",
    "attach_adapter",
    "centroid",
    "list_adapters",
    "load_adapter",
    "loaded_adapters",
    "remove_adapter",
    "save_adapter",
    "warm_up_adapter",
]

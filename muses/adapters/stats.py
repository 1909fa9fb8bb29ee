"""The counters and timers of an :class:`~muses.adapters.cache.AdapterCache`, and their JSON-ready summary."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class CacheStats:
    """What a cache did since creation (or :meth:`reset`); mutated only under the cache's lock.

    A *request* is one group of texts served by one adapter; requests for the base model are counted apart
    (``base_requests``). ``miss_ms`` holds one latency per miss that loaded an adapter (file read + injection or
    hot-swap + the evictions it needed). ``switch_s`` is the time spent loading, evicting and activating adapters;
    ``encode_s`` the time spent encoding under them.
    """

    requests: int = 0
    base_requests: int = 0
    hits: int = 0
    misses: int = 0
    loads: int = 0
    hotswaps: int = 0
    evictions: int = 0
    switches: int = 0
    switch_s: float = 0.0
    encode_s: float = 0.0
    texts: int = 0
    miss_ms: list[float] = field(default_factory=list)

    def reset(self) -> None:
        """Zero every counter and timer, in place (whoever holds this record sees the zeros)."""
        for f in fields(self):
            setattr(self, f.name, [] if f.name == "miss_ms" else type(getattr(self, f.name))())

    def summary(self, capacity: int, registered: int, memory_bytes: dict[str, int], spare: int) -> dict[str, Any]:
        """The counters as JSON-ready numbers, with the cache's shape.

        Args:
            capacity: adapters the cache keeps in memory.
            registered: adapters it knows.
            memory_bytes: key -> bytes of each resident adapter, least recently used first.
            spare: slots attached but holding no adapter yet.

        ``hit_rate`` is hits / adapter requests; ``switch_overhead_pct`` is ``switch_s`` as a percentage of
        ``encode_s``; latencies are in ms (mean, p50, max), memory in KB.
        """
        lat = np.asarray(self.miss_ms, dtype=np.float64)
        memory = {k: round(n / 1024, 1) for k, n in memory_bytes.items()}
        asked = self.hits + self.misses
        return {
            "capacity": capacity,
            "registered": registered,
            "spare_slots": spare,
            "resident": list(memory),
            "requests": self.requests,
            "base_requests": self.base_requests,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / asked, 4) if asked else 0.0,
            "loads": self.loads,
            "hotswaps": self.hotswaps,
            "evictions": self.evictions,
            "switches": self.switches,
            "miss_latency_ms": {
                "mean": round(float(lat.mean()), 3) if len(lat) else 0.0,
                "p50": round(float(np.median(lat)), 3) if len(lat) else 0.0,
                "max": round(float(lat.max()), 3) if len(lat) else 0.0,
            },
            "memory_kb": memory,
            "memory_kb_total": round(sum(memory.values()), 1),
            "switch_ms_total": round(1000 * self.switch_s, 3),
            "encode_ms_total": round(1000 * self.encode_s, 3),
            "switch_overhead_pct": round(100 * self.switch_s / self.encode_s, 4) if self.encode_s else 0.0,
            "texts": self.texts,
        }

"""The slot pool: LoRA adapters resident in one encoder, in least-recently-used order, and the lock guarding them.

Each resident adapter lives in a *slot*, a PEFT adapter named ``slot000``, ``slot001``... inside the model. A load
goes into a spare slot (:meth:`SlotPool.reserve`), or, when the pool is full, into the least recently used
adapter's slot, overwritten in place (PEFT hot-swap, a tensor copy) when both have the same rank, alpha and target
layers; otherwise the least recently used slot is deleted and a new one injected.

**Thread-safety invariant.** ``lock`` (re-entrant) guards the model's adapter state and this pool's bookkeeping as
one: every change to the model's adapters (inject, hot-swap, delete, enable, disable, set active), every read or
write of ``resident``, ``spare``, ``active`` and the stats record, and every encode that relies on the active
adapter happen while holding it. The methods below do not take it: their caller holds it (``with pool.lock:``).
So an encode never sees a half-loaded adapter nor another request's adapter. Only work that touches none of this
state, such as reading an adapter's files from disk, may happen outside the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from muses.adapters.lora import (
    AdapterFiles,
    adapter_nbytes,
    hf_model,
    hotswap_adapter,
    inject_adapter,
    loaded_adapters,
    remove_adapter,
)
from muses.adapters.stats import CacheStats

if TYPE_CHECKING:
    from muses.encoder import MultiScaleEncoder

STALE = "-stale-"  # never a key: the active slot holds another adapter now, so the next activation must run


@dataclass
class Slot:
    """Where a resident adapter lives: its name in the model (a PEFT adapter name) and its bytes."""

    name: str
    nbytes: int


class SlotPool:
    """At most ``capacity`` adapters attached to ``encoder`` (see the module docstring); counts into ``stats``."""

    def __init__(self, encoder: MultiScaleEncoder, capacity: int, stats: CacheStats) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self.stats = stats
        self.lock = threading.RLock()
        self.resident: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self.spare: list[Slot] = []  # slots attached by reserve() that hold no adapter yet
        self.active: str | None = None  # key of the adapter in use; None: the base model
        self.enabled = False  # whether the model's adapters are enabled (PEFT)

    def free_name(self) -> str:
        """A slot name not in use (fixed width: no slot name is a substring of another, as PEFT's hotswap needs)."""
        used = {s.name for s in self.resident.values()} | set(loaded_adapters(self.encoder))
        return next(f"slot{i:03d}" for i in range(len(used) + 1) if f"slot{i:03d}" not in used)

    def evict(self, key: str) -> None:
        """Detach ``key``'s slot (the base model becomes active if ``key`` was)."""
        remove_adapter(self.encoder, self.resident.pop(key).name)
        self.stats.evictions += 1
        if self.active == key:
            self.active, self.enabled = None, False

    def load(self, key: str, files: AdapterFiles) -> None:
        """Bring ``files`` in as ``key``: a spare slot, else the LRU slot in place, else a new slot."""
        full = len(self.resident) >= self.capacity
        if self.spare and not full and hotswap_adapter(self.encoder, self.spare[-1].name, files):
            self.resident[key] = self.spare.pop()
            self._count_hotswap()
            return
        if self.resident and full:
            victim, slot = next(iter(self.resident.items()))
            if hotswap_adapter(self.encoder, slot.name, files):
                del self.resident[victim]
                self.resident[key] = slot
                self.stats.evictions += 1
                self._count_hotswap()
                if self.active == victim:
                    self.active = STALE
                return
        while self.resident and len(self.resident) >= self.capacity:
            self.evict(next(iter(self.resident)))
        name = self.free_name()
        inject_adapter(self.encoder, name, files)  # attached active, adapters enabled
        self.resident[key] = Slot(name, adapter_nbytes(self.encoder, name))
        self.active, self.enabled = key, True
        self.stats.loads += 1

    def _count_hotswap(self) -> None:
        self.stats.loads += 1
        self.stats.hotswaps += 1

    def adopt(self, key: str, name: str) -> None:
        """Keep slot ``name`` (attached and active in the model, e.g. by a warm-up) as ``key``'s, most recently
        used; with capacity 0 it is detached instead and the base model is active."""
        if self.capacity == 0:
            remove_adapter(self.encoder, name)
            self.active, self.enabled = None, False
        else:
            self.resident[key] = Slot(name, adapter_nbytes(self.encoder, name))
            self.active, self.enabled = key, True

    def activate(self, key: str | None) -> None:
        """Make resident ``key`` (None: the base model) the active adapter."""
        if key == self.active:
            return
        model = hf_model(self.encoder)
        if key is None:
            if self.enabled and (self.resident or self.spare):
                model.disable_adapters()
            self.enabled = False
        else:
            if not self.enabled:
                model.enable_adapters()
                self.enabled = True
            model.set_adapter(self.resident[key].name)
        self.active = key
        self.stats.switches += 1

    def reserve(self, files: AdapterFiles) -> None:
        """Attach spare slots shaped like ``files`` until ``capacity`` slots exist; the base model is active after."""
        while len(self.resident) + len(self.spare) < self.capacity:
            name = self.free_name()
            inject_adapter(self.encoder, name, files)
            self.spare.append(Slot(name, adapter_nbytes(self.encoder, name)))
            self.active, self.enabled = STALE, True
        self.activate(None)

    def make_room(self) -> str:
        """Free memory for one adapter attached from outside (a spare slot goes first, then the LRU adapter,
        down to ``max(capacity, 1) - 1`` resident); returns the name to attach it as."""
        if self.spare:
            remove_adapter(self.encoder, self.spare.pop().name)
        while self.resident and len(self.resident) >= max(self.capacity, 1):
            self.evict(next(iter(self.resident)))
        return self.free_name()

    def clear(self) -> None:
        """Detach every slot; the base model is active."""
        for key in list(self.resident):
            self.evict(key)
        while self.spare:
            remove_adapter(self.encoder, self.spare.pop().name)
        self.activate(None)

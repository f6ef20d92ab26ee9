"""One tenant-aware LRU + TTL pool with statistics, for what a process keeps warm.

Entries are found by key alone (a token's fingerprint says nothing about its tenant before it is
verified) but belong to a tenant, and each tenant holds at most `max_per_tenant` of them: a noisy
tenant that fills the pool evicts its own least recently used entries, never a quiet tenant's.
The whole pool also has a bound (`max_size`); when it is reached, the entry evicted is the least
recently used one of the tenant holding the most entries, so the pool shares itself out fairly.

Every pool registers itself by name (`pools()`): cluster health and /metrics report their
statistics (size, hits, misses, evictions, expirations). Not thread-safe: used from the event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import msgspec
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Entries without a tenant (operators, say) are accounted to this pseudo-tenant.
NO_TENANT = ""


class PoolStats(msgspec.Struct, kw_only=True):
    name: str
    size: int
    max_size: int
    max_per_tenant: int
    tenants: int
    hits: int
    misses: int
    evictions: int
    expirations: int


class TenantPool(Generic[K, V]):
    def __init__(
        self,
        name: str,
        *,
        max_size: int,
        max_per_tenant: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        register: bool = True,
        on_remove: Callable[[K, V], None] | None = None,
    ) -> None:
        """on_remove(key, value): told of every entry that leaves (evicted, expired, replaced, popped)."""
        if max_size < 1 or max_per_tenant < 1 or ttl <= 0:
            raise ValueError("a pool needs max_size >= 1, max_per_tenant >= 1 and ttl > 0")
        self.name = name
        self.max_size = max_size
        self.max_per_tenant = min(max_per_tenant, max_size)
        self.ttl = ttl
        self._clock = clock
        self._on_remove = on_remove
        # key -> (tenant, value, expires at); per tenant: its keys in LRU order (oldest first).
        self._entries: dict[K, tuple[str, V, float]] = {}
        self._by_tenant: dict[str, OrderedDict[K, None]] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        if register:
            _REGISTRY[name] = self

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        tenant, value, expires = entry
        if expires <= self._clock():
            self._remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self._by_tenant[tenant].move_to_end(key)
        self.hits += 1
        return value

    def put(self, tenant: str | None, key: K, value: V, *, ttl: float | None = None) -> None:
        """Add or replace; ttl: shorter than the pool's for this entry (never longer)."""
        tenant = tenant or NO_TENANT
        if key in self._entries:
            self._remove(key)
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        if lifetime <= 0:
            return
        self._entries[key] = (tenant, value, self._clock() + lifetime)
        keys = self._by_tenant.setdefault(tenant, OrderedDict())
        keys[key] = None
        while len(keys) > self.max_per_tenant:
            self._evict_oldest(tenant)
        while len(self._entries) > self.max_size:
            self._evict_oldest(max(self._by_tenant, key=lambda t: len(self._by_tenant[t])))

    def pop(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._remove(key)
        return entry[1]

    def evict_where(self, predicate: Callable[[str, V], bool], *, tenant: str | None = None) -> int:
        """Drop the entries (of `tenant`, or all) for which predicate(tenant, value) holds."""
        tenants = [tenant or NO_TENANT] if tenant is not None else list(self._by_tenant)
        doomed = [
            key for t in tenants for key in self._by_tenant.get(t, ()) if predicate(t, self._entries[key][1])
        ]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def evict_tenant(self, tenant: str) -> int:
        return self.evict_where(lambda _t, _v: True, tenant=tenant)

    def clear(self) -> None:
        for key in list(self._entries):
            self._remove(key)

    def items(self) -> Iterator[tuple[K, V]]:
        for key, (_, value, _) in list(self._entries.items()):
            yield key, value

    def tenant_size(self, tenant: str | None) -> int:
        return len(self._by_tenant.get(tenant or NO_TENANT, ()))

    def stats(self) -> PoolStats:
        return PoolStats(
            name=self.name,
            size=len(self._entries),
            max_size=self.max_size,
            max_per_tenant=self.max_per_tenant,
            tenants=len(self._by_tenant),
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            expirations=self.expirations,
        )

    def _evict_oldest(self, tenant: str) -> None:
        key = next(iter(self._by_tenant[tenant]))
        self._remove(key)
        self.evictions += 1

    def _remove(self, key: K) -> None:
        tenant, value, _ = self._entries.pop(key)
        keys = self._by_tenant[tenant]
        del keys[key]
        if not keys:
            del self._by_tenant[tenant]
        if self._on_remove is not None:
            self._on_remove(key, value)


_REGISTRY: dict[str, TenantPool[Any, Any]] = {}


def pools() -> list[PoolStats]:
    """Statistics of the pools of this process, by name (the latest pool made under each name)."""
    return [pool.stats() for _, pool in sorted(_REGISTRY.items())]


class _PoolCollector(Collector):
    """Every registered pool's statistics, read at scrape time (no per-operation metric cost)."""

    def collect(self) -> Iterator[Metric]:
        stats = pools()
        size = GaugeMetricFamily(
            "vectorhive_pool_entries", "Entries held by a tenant-aware pool", labels=["pool"]
        )
        tenants = GaugeMetricFamily(
            "vectorhive_pool_tenants", "Tenants with entries in a pool", labels=["pool"]
        )
        counters = {
            name: CounterMetricFamily(f"vectorhive_pool_{name}", help_text, labels=["pool"])
            for name, help_text in (
                ("hits", "Lookups answered by a pool"),
                ("misses", "Lookups a pool could not answer (absent or expired)"),
                ("evictions", "Entries a pool dropped to stay within its bounds"),
                ("expirations", "Entries a pool dropped because their TTL had passed"),
            )
        }
        for s in stats:
            size.add_metric([s.name], s.size)
            tenants.add_metric([s.name], s.tenants)
            for name, family in counters.items():
                family.add_metric([s.name], getattr(s, name))
        yield size
        yield tenants
        yield from counters.values()


REGISTRY.register(_PoolCollector())

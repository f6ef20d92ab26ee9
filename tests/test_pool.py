"""The tenant-aware LRU + TTL pool: bounds per tenant and in all, expiry, statistics, and that a
noisy tenant cannot evict a quiet tenant's entries (from the verified-key cache too)."""

from __future__ import annotations

from service.auth.cache import KeyCache
from service.auth.keys import KeyKind
from service.auth.principal import Permission, Principal
from service.pool import TenantPool, pools
from tests.conftest import Api, bearer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_noisy_tenant_evicts_only_its_own_entries() -> None:
    pool: TenantPool[str, int] = TenantPool(
        "fairness", max_size=100, max_per_tenant=20, ttl=60, register=False
    )
    for i in range(5):
        pool.put("quiet", f"quiet-{i}", i)
    for i in range(10_000):
        pool.put("noisy", f"noisy-{i}", i)
        if i % 100 == 0:  # the quiet tenant keeps using its entries, rarely
            assert pool.get("quiet-0") == 0
    assert all(pool.get(f"quiet-{i}") == i for i in range(5))
    assert pool.tenant_size("noisy") == 20 and pool.tenant_size("quiet") == 5
    # The noisy tenant kept its most recent entries; the rest were evicted, counted.
    assert pool.get("noisy-9999") == 9999 and pool.get("noisy-0") is None
    stats = pool.stats()
    assert stats.evictions == 10_000 - 20 and stats.size == 25 and stats.tenants == 2


def test_the_overall_bound_takes_from_the_largest_tenant() -> None:
    pool: TenantPool[str, int] = TenantPool("shares", max_size=30, max_per_tenant=25, ttl=60, register=False)
    for tenant, count in (("a", 3), ("b", 5)):
        for i in range(count):
            pool.put(tenant, f"{tenant}{i}", i)
    for i in range(40):  # within its own bound, but the pool as a whole is full
        pool.put("c", f"c{i}", i)
    assert len(pool) == 30
    assert pool.tenant_size("a") == 3 and pool.tenant_size("b") == 5 and pool.tenant_size("c") == 22
    # Many tenants: the largest gives way first, down to an even share.
    for tenant in "defghij":
        for i in range(3):
            pool.put(tenant, f"{tenant}{i}", i)
    sizes = {t: pool.tenant_size(t) for t in "abcdefghij"}
    assert sum(sizes.values()) == 30 and sizes["c"] <= 5 and sizes["a"] == 3


def test_entries_expire_and_are_counted() -> None:
    clock = Clock()
    pool: TenantPool[str, str] = TenantPool(
        "ttl", max_size=10, max_per_tenant=10, ttl=5, clock=clock, register=False
    )
    pool.put("t", "k", "v")
    pool.put("t", "short", "v", ttl=1)
    assert pool.get("k") == "v" and pool.get("short") == "v"
    clock.now += 2
    assert pool.get("short") is None and pool.get("k") == "v"
    clock.now += 4
    assert pool.get("k") is None
    assert pool.get("never") is None
    stats = pool.stats()
    assert (stats.hits, stats.misses, stats.expirations, stats.size) == (3, 3, 2, 0)
    pool.put("t", "a", "1")
    pool.put("u", "b", "2")
    assert pool.evict_tenant("t") == 1 and pool.get("b") == "2" and "a" not in pool


def test_the_key_cache_keeps_a_quiet_tenants_keys_under_a_flood() -> None:
    cache = KeyCache(ttl=300, max_size=50, negative_ttl=10, max_per_tenant=10)

    def principal(tenant: str, key_id: str) -> Principal:
        return Principal(
            kind=KeyKind.TENANT, key_id=key_id, tenant_id=tenant, permission=Permission.READ_ONLY
        )

    cache.put(b"quiet-key", principal("quiet", "quietkey0001"))
    for i in range(500):
        cache.put(f"noisy-{i}".encode(), principal("noisy", f"noisy{i:07d}"))
    assert cache.get(b"quiet-key") is not None
    assert cache.get(b"noisy-0") is None and cache.get(b"noisy-499") is not None
    # Eviction by key id still finds the entry; an evicted key's id is forgotten too.
    cache.evict_key("quietkey0001")
    assert cache.get(b"quiet-key") is None
    assert "noisy0000000" not in cache._by_key_id and "noisy0000499" in cache._by_key_id


async def test_pool_statistics_in_cluster_health_and_metrics(api: Api) -> None:
    tenant = await api.make_tenant()
    assert (await api.client.get("/api/v1/me", headers=bearer(tenant.admin))).status_code == 200
    assert (await api.client.get("/api/v1/me", headers=bearer(tenant.admin))).status_code == 200
    health = await api.client.get("/api/v1/cluster/health", headers=bearer(api.operator_key))
    assert health.status_code == 200, health.text
    by_name = {p["name"]: p for p in health.json()["pools"]}
    assert {"api_keys", "session_tokens"} <= set(by_name)
    assert by_name["api_keys"]["hits"] >= 1 and by_name["api_keys"]["size"] >= 1
    assert set(by_name["api_keys"]) >= {
        "size",
        "hits",
        "misses",
        "evictions",
        "expirations",
        "max_per_tenant",
    }
    assert {p.name for p in pools()} >= {"api_keys", "session_tokens"}
    metrics = await api.client.get("/metrics", headers=bearer(api.operator_key))
    assert metrics.status_code == 200  # on the API port (metrics.port is not set in tests)
    assert 'vectorhive_pool_hits_total{pool="api_keys"}' in metrics.text
    assert 'vectorhive_pool_entries{pool="session_tokens"}' in metrics.text

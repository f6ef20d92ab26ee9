"""Per-tenant quotas and rate limits: windows, the token bucket, storage quotas (403, nothing written)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import (
    LiveServer,
    MakeSettings,
    MakeTenant,
    assert_problem,
    bearer,
    run_live_server,
    set_quotas,
)


@pytest.fixture(scope="module")
async def qclient(make_settings: MakeSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = make_settings(
        rate_limiting={"token_bucket_capacity": 1_000_000, "token_refill_per_second": 1000}
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def test_operators_set_quotas_and_bad_values_change_nothing(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    body = await set_quotas(qclient, operator_key, tenant.tenant_id, max_vectors=5, requests_per_minute=100)
    assert body["overrides"] == {"max_vectors": 5, "requests_per_minute": 100}
    assert body["effective"]["max_vectors"] == 5 and body["effective"]["requests_per_hour"] == 10000
    assert body["effective"]["source"] == "tenant"
    ops = bearer(operator_key)
    url = f"/api/v1/admin/tenants/{tenant.tenant_id}/quotas"
    for bad in ({"max_vectors": -1}, {"requests_per_minute": 0}, {"nope": 1}, {"max_vectors": "many"}):
        assert_problem(await qclient.put(url, json=bad, headers=ops), 400, "invalid_request")
    assert (await qclient.get(url, headers=ops)).json()["overrides"] == body["overrides"]
    assert_problem(await qclient.put("/api/v1/admin/tenants/nobody-here/quotas", json={}, headers=ops), 404)
    assert_problem(await qclient.get(url, headers=bearer(tenant.admin)), 403, "operator_key_required")


async def test_request_window_429_names_the_limit_and_spares_other_tenants(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    limited, other = await make_tenant(), await make_tenant()
    await set_quotas(qclient, operator_key, limited.tenant_id, requests_per_minute=3)
    for _ in range(3):
        assert (await qclient.get("/api/v1/collections", headers=bearer(limited.admin))).status_code == 200
    response = await qclient.get("/api/v1/collections", headers=bearer(limited.admin))
    body = assert_problem(response, 429, "rate_limited")
    assert body["limit"] == "requests_per_minute" and body["scope"] == "tenant" and body["value"] == 3
    assert response.headers["ratelimit-limit"] == "3"
    assert response.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert int(response.headers["ratelimit-reset"]) == int(response.headers["retry-after"])
    assert (await qclient.get("/api/v1/collections", headers=bearer(other.admin))).status_code == 200
    # Operators are not limited.
    for _ in range(5):
        assert (await qclient.get("/api/v1/admin/tenants", headers=bearer(operator_key))).status_code == 200
    # Raising the limit takes effect at once in this replica.
    await set_quotas(qclient, operator_key, limited.tenant_id, requests_per_minute=100)
    assert (await qclient.get("/api/v1/collections", headers=bearer(limited.admin))).status_code == 200


async def test_token_bucket_charges_by_cost(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    assert (
        await qclient.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=key)
    ).status_code == 201
    # search costs 1, an upserted vector 0.1 (defaults); 5 tokens, refilled very slowly.
    await set_quotas(
        qclient, operator_key, tenant.tenant_id, token_bucket_capacity=5, token_refill_per_second=0.001
    )
    vectors = {"vectors": [{"id": str(i), "vector": [1, i]} for i in range(20)]}  # 2 tokens
    assert (await qclient.put("/api/v1/collections/c/vectors", json=vectors, headers=key)).status_code == 200
    search = {"vector": [1, 0], "top_k": 1}
    codes = [
        (await qclient.post("/api/v1/collections/c/search", json=search, headers=key)).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    response = await qclient.post("/api/v1/collections/c/search", json=search, headers=key)
    body = assert_problem(response, 429, "rate_limited")
    assert body["limit"] == "token_bucket" and body["value"] == 5
    assert int(response.headers["retry-after"]) >= 1
    # Cheap calls that cost no tokens still work.
    assert (await qclient.get("/api/v1/collections/c", headers=key)).status_code == 200
    # A batch costing more than the bucket holds is refused and says so.
    await set_quotas(
        qclient, operator_key, tenant.tenant_id, token_bucket_capacity=5, token_refill_per_second=1000
    )
    big = {"vectors": [{"id": f"b{i}", "vector": [1, i]} for i in range(60)]}  # 6 tokens
    body = assert_problem(await qclient.put("/api/v1/collections/c/vectors", json=big, headers=key), 429)
    assert "smaller parts" in body["detail"]
    count = (await qclient.get("/api/v1/collections/c", headers=key)).json()["vector_count"]
    assert count == 20


async def test_storage_quotas_refuse_before_writing(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await set_quotas(
        qclient, operator_key, tenant.tenant_id, max_vectors=10, max_collections=2, max_dimension=8
    )
    for name in ("a", "b"):
        assert (
            await qclient.post("/api/v1/collections", json={"name": name, "dimension": 2}, headers=key)
        ).status_code == 201
    body = assert_problem(
        await qclient.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=key),
        403,
        "quota_exceeded",
    )
    assert body["quota"] == "collections" and body["limit"] == 2
    body = assert_problem(
        await qclient.post("/api/v1/collections", json={"name": "d", "dimension": 9}, headers=key),
        403,
        "quota_exceeded",
    )
    assert body["quota"] == "dimension"

    def batch(prefix: str, n: int) -> dict[str, Any]:
        return {"vectors": [{"id": f"{prefix}{i}", "vector": [1, i]} for i in range(n)]}

    assert (
        await qclient.put("/api/v1/collections/a/vectors", json=batch("x", 6), headers=key)
    ).status_code == 200
    # The quota is the tenant's: 6 in a + 5 in b would be 11.
    body = assert_problem(
        await qclient.put("/api/v1/collections/b/vectors", json=batch("y", 5), headers=key),
        403,
        "quota_exceeded",
    )
    assert body["quota"] == "vectors" and body["current"] == 6 and body["requested"] == 5
    assert (await qclient.get("/api/v1/collections/b", headers=key)).json()["vector_count"] == 0
    scroll = await qclient.get("/api/v1/collections/b/vectors", headers=key)
    assert scroll.json()["items"] == []
    # Overwriting vectors that exist adds nothing and is allowed at the limit.
    assert (
        await qclient.put("/api/v1/collections/b/vectors", json=batch("y", 4), headers=key)
    ).status_code == 200
    assert (
        await qclient.put("/api/v1/collections/a/vectors", json=batch("x", 6), headers=key)
    ).status_code == 200
    assert_problem(await qclient.put("/api/v1/collections/a/vectors", json=batch("z", 1), headers=key), 403)
    # Deleting makes room.
    deleted = await qclient.post(
        "/api/v1/collections/a/vectors/delete", json={"ids": ["x0", "x1"]}, headers=key
    )
    assert deleted.status_code == 200, deleted.text
    assert (
        await qclient.put("/api/v1/collections/a/vectors", json=batch("z", 2), headers=key)
    ).status_code == 200


async def test_storage_bytes_quota(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    assert (
        await qclient.post("/api/v1/collections", json={"name": "c", "dimension": 64}, headers=key)
    ).status_code == 201
    on_disk = (await qclient.get("/api/v1/collections/c", headers=key)).json()["size_bytes"]
    await set_quotas(qclient, operator_key, tenant.tenant_id, max_storage_bytes=on_disk + 20_000)
    small = {"vectors": [{"id": f"s{i}", "vector": [1.0] * 64} for i in range(10)]}
    assert (await qclient.put("/api/v1/collections/c/vectors", json=small, headers=key)).status_code == 200
    big = {"vectors": [{"id": f"b{i}", "vector": [1.0] * 64} for i in range(200)]}
    body = assert_problem(
        await qclient.put("/api/v1/collections/c/vectors", json=big, headers=key), 403, "quota_exceeded"
    )
    assert body["quota"] == "storage_bytes"
    assert (await qclient.get("/api/v1/collections/c", headers=key)).json()["vector_count"] == 10


# -- hammering: concurrent requests against real servers ----------------------------------------------


async def hammer(
    urls: list[str], key: str, n: int, *, path: str = "/api/v1/collections", json: Any = None
) -> dict[int, int]:
    """n requests, 32 at a time, spread over the servers; counts by status."""
    counts: dict[int, int] = {}
    slots = asyncio.Semaphore(32)
    clients = [httpx.AsyncClient(base_url=u, headers=bearer(key), timeout=30) for u in urls]

    async def one(i: int) -> None:
        async with slots:
            client = clients[i % len(clients)]
            response = await (client.post(path, json=json) if json is not None else client.get(path))
            counts[response.status_code] = counts.get(response.status_code, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for client in clients:
            await client.aclose()
    return counts


@pytest.fixture(scope="module")
def limited_server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    with run_live_server(make_settings(rate_limiting={"default_requests_per_minute": 400})) as server:
        yield server


async def test_hammered_window_allows_exactly_the_limit(
    limited_server: LiveServer, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    counts = await hammer([limited_server.url], tenant.admin, 600)
    assert set(counts) <= {200, 429}, counts
    assert abs(counts[200] - 400) <= 4, counts  # within 1% of the limit


async def test_hourly_window_counts_only_requests_the_minute_window_let_in(
    qclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    await set_quotas(qclient, operator_key, tenant.tenant_id, requests_per_minute=3, requests_per_hour=5)
    codes = [
        (await qclient.get("/api/v1/collections", headers=bearer(tenant.admin))).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    # A larger minute window: the hour has counted 3 (not the refused 4th), so 2 more pass.
    await set_quotas(qclient, operator_key, tenant.tenant_id, requests_per_minute=100, requests_per_hour=5)
    codes = [
        (await qclient.get("/api/v1/collections", headers=bearer(tenant.admin))).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    body = assert_problem(await qclient.get("/api/v1/collections", headers=bearer(tenant.admin)), 429)
    assert body["limit"] == "requests_per_hour" and body["value"] == 5

"""Cluster mode with HiveHub: keys that are not local are validated by a real HTTP hub on 127.0.0.1."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from tests.conftest import MakeSettings, MakeTenant, UniqueId, assert_problem, bearer
from tests.fake_hivehub import API_KEY, FakeHub, serve


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with serve(FakeHub()) as running:
        yield running


@pytest.fixture(autouse=True)
def healthy_hub(hub: FakeHub) -> None:
    hub.down, hub.delay = False, 0.0
    hub.faults.clear()


@pytest.fixture(scope="module")
async def hclient(hub: FakeHub, make_settings: MakeSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = make_settings(
        cluster={
            "enabled": True,
            "hivehub_api_url": hub.url,
            "hivehub_api_key": API_KEY,
            "hivehub_timeout": 0.5,
        },
        auth={"api_key_negative_cache_ttl": 30},
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def hub_key() -> str:
    return "hh_" + secrets.token_urlsafe(24)


def new_tenant(unique_id: UniqueId) -> str:
    return unique_id("hub")


async def test_a_hub_key_works_and_its_tenant_is_created_locally(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, db: Database, unique_id: UniqueId
) -> None:
    tenant, key = new_tenant(unique_id), hub_key()
    hub.add_key(key, tenant, tenant_name="Acme")
    me = await hclient.get("/api/v1/me", headers=bearer(key))
    assert me.status_code == 200, me.text
    assert me.json()["tenant_id"] == tenant and me.json()["permission"] == "admin"
    row = await db.pool.fetchrow("SELECT display_name, source FROM tenants WHERE id = $1", tenant)
    assert dict(row) == {"display_name": "Acme", "source": "hivehub"}
    # The tenant's own role exists: its data path works end to end.
    created = await hclient.post(
        "/api/v1/collections", json={"name": "c", "dimension": 2}, headers=bearer(key)
    )
    assert created.status_code == 201, created.text
    up = await hclient.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "a", "vector": [1, 0]}]},
        headers=bearer(key),
    )
    assert up.status_code == 200, up.text
    # The service's own credential went with the call.
    assert all(auth == f"Bearer {API_KEY}" for _, _, auth in hub.calls)


@pytest.mark.parametrize(
    ("spelled", "level"),
    [("ADMIN", "admin"), ("READ_WRITE", "read_write"), ("Read_Only", "read_only")],
)
async def test_the_seeds_permission_spelling_is_accepted(
    hclient: AsyncTestClient[Litestar],
    hub: FakeHub,
    unique_id: UniqueId,
    spelled: str,
    level: str,
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id), permission=spelled)
    me = await hclient.get("/api/v1/me", headers=bearer(key))
    assert me.status_code == 200, me.text
    assert me.json()["permission"] == level


async def test_the_seeds_mcp_spelling_is_an_mcp_key(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id), permission="MCP")
    # A valid MCP key (not an outage): refused on the REST API like every MCP key.
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 403, "mcp_key_not_allowed")


async def test_an_unknown_permission_is_still_an_outage(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id), permission="SUPERUSER")
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 503, "hivehub_unavailable")


async def test_answers_are_cached(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key, bad = hub_key(), hub_key()
    hub.add_key(key, new_tenant(unique_id), permission="read_only")
    before = hub.calls_to("/api/v1/keys/validate")
    for _ in range(3):
        assert (await hclient.get("/api/v1/me", headers=bearer(key))).status_code == 200
        assert_problem(await hclient.get("/api/v1/me", headers=bearer(bad)), 401, "unauthorized")
    assert hub.calls_to("/api/v1/keys/validate") - before == 2  # one for each key


async def test_invalid_and_expired_keys_are_refused(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(hub_key())), 401, "unauthorized")
    expired = hub_key()
    hub.add_key(
        expired, new_tenant(unique_id), expires_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    )
    body = assert_problem(await hclient.get("/api/v1/me", headers=bearer(expired)), 401, "unauthorized")
    assert "expired" in body["detail"]
    # A key in the local format but not in the database is asked of the hub too.
    local_format = "vh_abcdefghijkl_" + "A" * 43
    hub.add_key(local_format, new_tenant(unique_id))
    assert (await hclient.get("/api/v1/me", headers=bearer(local_format))).status_code == 200


async def test_local_keys_still_work_in_cluster_mode(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    before = len(hub.calls)
    me = await hclient.get("/api/v1/me", headers=bearer(tenant.admin))
    assert me.status_code == 200 and me.json()["tenant_id"] == tenant.tenant_id
    assert len(hub.calls) == before


async def test_hub_down_cached_keys_work_unknown_keys_get_503(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId, operator_key: str
) -> None:
    known, unknown = hub_key(), hub_key()
    hub.add_key(known, new_tenant(unique_id))
    hub.add_key(unknown, new_tenant(unique_id))
    assert (await hclient.get("/api/v1/me", headers=bearer(known))).status_code == 200
    hub.down = True
    assert (await hclient.get("/api/v1/me", headers=bearer(known))).status_code == 200
    response = await hclient.get("/api/v1/me", headers=bearer(unknown))
    assert_problem(response, 503, "hivehub_unavailable")
    assert response.headers["retry-after"]
    health = (await hclient.get("/api/v1/cluster/health", headers=bearer(operator_key))).json()
    assert health["hivehub"]["reachable"] is False and health["status"] == "degraded"
    metrics = (await hclient.get("/metrics", headers=bearer(operator_key))).text
    assert "vectorhive_hivehub_up 0.0" in metrics
    assert 'vectorhive_hivehub_errors_total{endpoint="validate",kind="status"}' in metrics
    # The outage is not remembered as a bad key: once the hub is back, the key works.
    hub.down = False
    assert (await hclient.get("/api/v1/me", headers=bearer(unknown))).status_code == 200
    health = (await hclient.get("/api/v1/cluster/health", headers=bearer(operator_key))).json()
    assert health["hivehub"]["reachable"] is True


async def test_slow_or_dropping_hub_is_a_503_within_the_timeout(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id))
    hub.faults["validate"] = ["slow:2"]
    started = time.monotonic()
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 503, "hivehub_unavailable")
    assert time.monotonic() - started < 1.9  # timeout 0.5 s, not retried
    hub.faults["validate"] = ["drop", "drop"]
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 503, "hivehub_unavailable")
    hub.faults["validate"] = ["drop"]  # one dropped connection is retried once
    assert (await hclient.get("/api/v1/me", headers=bearer(key))).status_code == 200


async def test_hub_quotas_are_enforced(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id), quotas={"requests_per_minute": 3, "max_collections": 0})
    statuses = [(await hclient.get("/api/v1/collections", headers=bearer(key))).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    storage_key = hub_key()
    hub.add_key(storage_key, new_tenant(unique_id), quotas={"max_collections": 0})
    refused = await hclient.post(
        "/api/v1/collections", json={"name": "c", "dimension": 2}, headers=bearer(storage_key)
    )
    assert assert_problem(refused, 403, "quota_exceeded")["quota"] == "collections"


async def test_hub_answers_that_break_the_contract_are_503(
    hclient: AsyncTestClient[Litestar], hub: FakeHub
) -> None:
    key = hub_key()
    hub.keys[key] = {"valid": True, "tenant_id": "NOT A VALID ID", "permission": "admin"}
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 503, "hivehub_unavailable")
    key2 = hub_key()
    hub.keys[key2] = {"valid": "yes"}
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key2)), 503, "hivehub_unavailable")


async def test_operators_inspect_keys_without_seeing_hashes(
    hclient: AsyncTestClient[Litestar],
    hub: FakeHub,
    make_tenant: MakeTenant,
    operator_key: str,
    unique_id: UniqueId,
) -> None:
    tenant = await make_tenant("read_only")
    ops = bearer(operator_key)

    async def validate(key: str) -> dict[str, Any]:
        response = await hclient.post("/api/v1/cluster/keys/validate", json={"key": key}, headers=ops)
        assert response.status_code == 200, response.text
        assert "hash" not in response.text and "argon2" not in response.text
        result: dict[str, Any] = response.json()
        return result

    local = await validate(tenant.key("read_only"))
    assert local["valid"] and local["status"] == "active" and local["source"] == "local"
    assert local["tenant_id"] == tenant.tenant_id and local["permission"] == "read_only"
    key_id = local["key_id"]
    revoked = await hclient.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))
    assert revoked.status_code == 200
    assert (await validate(tenant.key("read_only")))["status"] == "revoked"
    hkey = hub_key()
    hub.add_key(hkey, new_tenant(unique_id), permission="read_write")
    remote = await validate(hkey)
    assert remote["source"] == "hivehub" and remote["permission"] == "read_write" and remote["valid"]
    assert (await validate(hub_key()))["status"] == "unknown"
    # Tenant keys may not use the endpoint.
    assert_problem(
        await hclient.post("/api/v1/cluster/keys/validate", json={"key": hkey}, headers=bearer(tenant.admin)),
        403,
        "operator_key_required",
    )


async def test_a_hub_key_cannot_take_over_a_local_tenant_with_the_same_id(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, make_tenant: MakeTenant
) -> None:
    local = await make_tenant()
    created = await hclient.post(
        "/api/v1/collections", json={"name": "private", "dimension": 2}, headers=bearer(local.admin)
    )
    assert created.status_code == 201
    key = hub_key()
    hub.add_key(key, local.tenant_id)  # HiveHub names a customer with the local tenant's id
    for path in ("/api/v1/me", "/api/v1/collections/private"):
        assert_problem(await hclient.get(path, headers=bearer(key)), 403, "hivehub_tenant_conflict")
    assert (await hclient.get("/api/v1/collections/private", headers=bearer(local.admin))).status_code == 200


async def test_a_hub_expiry_without_a_time_zone_is_a_broken_answer(
    hclient: AsyncTestClient[Litestar], hub: FakeHub, unique_id: UniqueId
) -> None:
    key = hub_key()
    hub.add_key(key, new_tenant(unique_id), expires_at="2099-01-01T00:00:00")
    assert_problem(await hclient.get("/api/v1/me", headers=bearer(key)), 503, "hivehub_unavailable")


async def test_usage_the_hub_refuses_is_set_aside_without_blocking_the_rest(
    hub: FakeHub, db: Database, make_settings: MakeSettings, unique_id: UniqueId
) -> None:
    from service.hivehub.client import HiveHubClient
    from service.quota import store as quota_store
    from service.quota.usage import UsageReporter
    from service.tenants import store as tenant_store

    good, refused, local = unique_id("hubok"), unique_id("hubno"), unique_id("local")
    async with db.transaction() as conn:
        await tenant_store.insert(conn, good, good, source="hivehub")
        await tenant_store.insert(conn, refused, refused, source="hivehub")
        await tenant_store.insert(conn, local, local)
        now = datetime.now(UTC)
        rows = [(t, "requests", "getCollection", 5) for t in (good, refused, local)]
        await quota_store.insert_usage(conn, rows, now - timedelta(minutes=1), now)
    hub.reject_tenants = {refused}
    settings = make_settings(
        cluster={"enabled": True, "hivehub_api_url": hub.url, "hivehub_api_key": API_KEY}
    )
    client = HiveHubClient(settings.cluster)
    reporter = UsageReporter(db, client, interval=0.01, batch_size=100)
    try:
        await reporter.report_all()
        await reporter.report_all()  # the refused row is not sent again
    finally:
        await client.close()
        hub.reject_tenants = set()
    state = {
        r["tenant_id"]: (r["sent_at"] is not None, r["rejected_at"] is not None, r["rejected_reason"])
        for r in await db.pool.fetch(
            """SELECT tenant_id, sent_at, rejected_at, rejected_reason FROM usage_outbox
               WHERE tenant_id = ANY($1) AND metric = 'requests'""",
            [good, refused, local],
        )
    }
    assert state[good][:2] == (True, False)
    assert state[refused][:2] == (False, True) and "422" in state[refused][2]
    assert state[local] == (False, False, None)  # local tenants' usage is not the hub's business
    sent = [r for r in hub.reports if r["tenant_id"] in (good, refused, local)]
    assert {r["tenant_id"] for r in sent} == {good}
    # Bytes stored travels as a snapshot (a level, not a count), for hub tenants only.
    snapshots = [r for r in sent if r["metric"] == "bytes_stored"]
    assert snapshots and all(r["quantity"] == 0 and r["period_start"] == r["period_end"] for r in snapshots)
    async with db.transaction() as conn:
        assert await quota_store.snapshot_storage(conn, min_age_seconds=3600) == 0  # one per interval

"""Usage figures, cluster endpoints, the audit log and /metrics (in-process, default settings)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import LiveServer, MakeTenant, UniqueId, assert_problem, bearer


async def test_usage_counts_the_tenants_own_work_only(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant, other = await make_tenant("read_only"), await make_tenant()
    key = bearer(tenant.admin)
    assert (
        await client.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=key)
    ).status_code == 201
    vectors = {"vectors": [{"id": str(i), "vector": [1, i]} for i in range(7)]}
    assert (await client.put("/api/v1/collections/c/vectors", json=vectors, headers=key)).status_code == 200
    batch = {"queries": [{"vector": [1, 0]}, {"vector": [0, 1]}]}
    assert (
        await client.post("/api/v1/collections/c/search/batch", json=batch, headers=key)
    ).status_code == 200
    assert (
        await client.post("/api/v1/collections/c/vectors/delete", json={"ids": ["0", "1", "9"]}, headers=key)
    ).status_code == 200
    assert (await client.get("/api/v1/collections", headers=bearer(other.admin))).status_code == 200

    usage = (await client.get("/api/v1/usage", headers=bearer(tenant.key("read_only")))).json()
    assert usage["tenant_id"] == tenant.tenant_id
    figures = usage["usage"]
    assert figures["vectors_written"] == 7 and figures["vectors_deleted"] == 2 and figures["searches"] == 2
    assert figures["requests_by_operation"] == {
        "createCollection": 1,
        "upsertVectors": 1,
        "searchCollectionBatch": 1,
        "deleteVectors": 1,
        "getUsage": 1,  # counted as it is let in
    }
    assert figures["requests"] == 5
    assert usage["storage"]["collections"] == 1 and usage["storage"]["vectors"] == 5
    assert usage["storage"]["bytes"] > 0

    other_usage = (await client.get("/api/v1/usage", headers=bearer(other.admin))).json()
    assert other_usage["usage"]["vectors_written"] == 0 and other_usage["usage"]["requests"] == 2

    # Operators: per tenant, with tenant and time-range filters.
    ops = bearer(operator_key)
    one = (await client.get(f"/api/v1/cluster/usage?tenant_id={tenant.tenant_id}", headers=ops)).json()
    assert [u["tenant_id"] for u in one["items"]] == [tenant.tenant_id]
    assert one["items"][0]["usage"]["vectors_written"] == 7
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    farther = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    later = await client.get(
        "/api/v1/cluster/usage",
        params={"tenant_id": tenant.tenant_id, "since": future, "until": farther},
        headers=ops,
    )
    assert later.json()["items"][0]["usage"]["requests"] == 0
    assert_problem(await client.get("/api/v1/usage?since=yesterday", headers=key), 400, "invalid_request")
    assert_problem(await client.get("/api/v1/usage?since=2026-01-01T00:00:00", headers=key), 400)
    assert_problem(
        await client.get(
            "/api/v1/usage", params={"since": future, "until": "2020-01-01T00:00:00Z"}, headers=key
        ),
        400,
    )
    assert_problem(await client.get("/api/v1/cluster/usage?tenant_id=nobody-x", headers=ops), 404)
    assert_problem(await client.get("/api/v1/cluster/usage", headers=key), 403, "operator_key_required")


async def test_cluster_tenants_and_health(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    ops = bearer(operator_key)
    page = (await client.get("/api/v1/cluster/tenants?limit=1000", headers=ops)).json()
    mine = next(item for item in page["items"] if item["tenant"]["id"] == tenant.tenant_id)
    assert mine["limits"]["requests_per_minute"] == 1000 and mine["limits"]["source"] == "default"
    assert mine["usage"]["storage"]["vectors"] == 0
    first = (await client.get("/api/v1/cluster/tenants?limit=1", headers=ops)).json()
    assert len(first["items"]) == 1 and first["next_cursor"]

    health = (await client.get("/api/v1/cluster/health", headers=ops)).json()
    assert health["status"] == "ok" and health["database"]["ok"] and not health["cluster_mode"]
    assert health["hivehub"]["configured"] is False
    names = {job["name"] for job in health["background_jobs"]}
    assert {"usage-flush", "last-used-recorder"} <= names and all(
        j["running"] for j in health["background_jobs"]
    )
    imports = health["imports"]
    assert imports["portal_url"] is None and imports["runner_id"] > 0  # the session app has no portal
    assert imports["running_here"] == 0 and imports["active_in_cluster"] >= 0
    assert_problem(await client.get("/api/v1/cluster/health", headers=bearer(tenant.admin)), 403)
    assert_problem(await client.get("/api/v1/cluster/health"), 401)


async def test_audit_log_records_key_changes_operator_actions_and_failures(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant, other = await make_tenant(), await make_tenant()
    admin = bearer(tenant.admin)
    ops = bearer(operator_key)
    created = (await client.post("/api/v1/keys", json={"permission": "read_only"}, headers=admin)).json()
    rotated = (await client.post(f"/api/v1/keys/{created['key_id']}/rotate", headers=admin)).json()
    assert (await client.delete(f"/api/v1/keys/{rotated['key_id']}", headers=admin)).status_code == 200
    assert (
        await client.post(f"/api/v1/admin/tenants/{tenant.tenant_id}/suspend", headers=ops)
    ).status_code == 200
    assert (
        await client.post(f"/api/v1/admin/tenants/{tenant.tenant_id}/resume", headers=ops)
    ).status_code == 200
    # A wrong secret for one of this tenant's keys is a failure on its record.
    key_id = tenant.admin.split("_")[1]
    wrong = f"vh_{key_id}_" + "A" * 43
    assert_problem(await client.get("/api/v1/me", headers=bearer(wrong)), 401)

    events = (await client.get("/api/v1/audit", headers=admin)).json()["items"]
    actions = [e["action"] for e in events]
    assert actions[:6] == [
        "auth.failure",
        "tenant.resume",
        "tenant.suspend",
        "key.revoke",
        "key.rotate",
        "key.create",
    ]
    assert events[0]["details"] == {"reason": "invalid"} and events[0]["actor_key_id"] == key_id
    assert events[1]["actor_kind"] == "operator"
    assert events[5]["actor_kind"] == "tenant" and events[5]["target"] == created["key_id"]
    assert all(e["tenant_id"] == tenant.tenant_id for e in events)
    assert "secret" not in str(events) and "argon2" not in str(events)
    # Paging and filters.
    page = (await client.get("/api/v1/audit?limit=2&action=key", headers=admin)).json()
    assert [e["action"] for e in page["items"]] == ["key.revoke", "key.rotate"]
    rest = (
        await client.get(f"/api/v1/audit?limit=2&action=key&cursor={page['next_cursor']}", headers=admin)
    ).json()
    # ... then the creation of this key, and of the fixture's admin key (by the CLI's KeyService).
    assert [(e["action"], e["actor_kind"]) for e in rest["items"]] == [
        ("key.create", "tenant"),
        ("key.create", "cli"),
    ]
    # Another tenant sees none of it; operators see it all.
    assert not [
        e
        for e in (await client.get("/api/v1/audit", headers=bearer(other.admin))).json()["items"]
        if e["tenant_id"] == tenant.tenant_id
    ]
    cluster = (await client.get(f"/api/v1/cluster/audit?tenant_id={tenant.tenant_id}", headers=ops)).json()
    assert [e["action"] for e in cluster["items"]] == actions
    assert_problem(await client.get("/api/v1/audit?cursor=abc", headers=admin), 400)
    read_only = await make_tenant("read_only")
    assert_problem(await client.get("/api/v1/audit", headers=bearer(read_only.key("read_only"))), 403)


async def test_metrics_endpoint(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    assert (
        await client.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=key)
    ).status_code == 201
    assert (await client.get("/api/v1/collections/c", headers=key)).status_code == 200
    assert_problem(await client.get("/metrics", headers=key), 403, "operator_key_required")
    assert_problem(await client.get("/metrics"), 401)
    response = await client.get("/metrics", headers=bearer(operator_key))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    t = tenant.tenant_id
    assert f'vectorhive_tenant_requests_total{{operation="getCollection",tenant_id="{t}"}} 1.0' in text
    assert f'vectorhive_tenant_storage_bytes{{tenant_id="{t}"}}' in text
    assert 'route="/api/v1/collections/{name}"' in text  # templates, never raw paths
    assert 'route="/api/v1/collections/c"' not in text
    for name in (
        "vectorhive_http_request_duration_seconds_bucket",
        "vectorhive_auth_cache_hits_total",
        "vectorhive_auth_cache_misses_total",
        "vectorhive_tenant_rate_limit_exceeded_total",
        "vectorhive_tenant_quota_exceeded_total",
        "vectorhive_hivehub_request_duration_seconds",
    ):
        assert name in text, name
    assert tenant.admin not in text


def test_request_metric_labels_stay_bounded_whatever_the_method(live_server: LiveServer) -> None:
    """The metric must not grow a series per method a client makes up.

    httptools (llhttp) refuses a method it does not know before the app sees it (0.9 and newer),
    so the made-up tokens below may never reach the middleware; the WebDAV and other extension
    methods llhttp does parse reach it, and must all count as OTHER."""
    from prometheus_client import REGISTRY

    def series() -> set[str]:
        return {
            sample.labels["method"]
            for metric in REGISTRY.collect()
            if metric.name == "vectorhive_http_request_duration_seconds"
            for sample in metric.samples
        }

    for method in ("PROPFIND", "MKCOL", "LOCK", "PURGE", "REPORT"):
        assert httpx.request(method, f"{live_server.url}/nowhere").status_code in (404, 405)
    for i in range(5):
        httpx.request(f"ZZTOP{i}", f"{live_server.url}/nowhere")
    methods = series()
    assert "OTHER" in methods
    assert not any(m.startswith("ZZTOP") for m in methods)
    assert not methods & {"PROPFIND", "MKCOL", "LOCK", "PURGE", "REPORT"}


async def test_retention_deletes_old_rows_but_never_unreported_usage(db: Any, unique_id: UniqueId) -> None:
    import uuid

    from service.audit import store as audit_store
    from service.quota import store as quota_store
    from service.tenants import store as tenant_store

    hub_tenant, local_tenant = unique_id("hubr"), unique_id("locr")
    async with db.transaction() as conn:
        await tenant_store.insert(conn, hub_tenant, hub_tenant, source="hivehub")
        await tenant_store.insert(conn, local_tenant, local_tenant)
    old, recent = datetime.now(UTC) - timedelta(days=500), datetime.now(UTC)
    rows = {
        "old_sent": (hub_tenant, old, True),
        "old_unsent": (hub_tenant, old, False),  # HiveHub still waits for it: kept
        "old_local": (local_tenant, old, False),  # never reported (local tenant): may go
        "recent_sent": (hub_tenant, recent, True),
    }
    ids = {name: uuid.uuid4() for name in rows}
    for name, (tenant, created, sent) in rows.items():
        await db.pool.execute(
            """INSERT INTO usage_outbox (id, tenant_id, metric, quantity, period_start, period_end,
                                         created_at, sent_at)
               VALUES ($1, $2, 'requests', 1, $3::timestamptz, $3, $3,
                       CASE WHEN $4 THEN $3::timestamptz END)""",
            ids[name],
            tenant,
            created,
            sent,
        )
    await db.pool.execute(
        """INSERT INTO audit_log (at, tenant_id, actor_kind, action, outcome)
           VALUES ($1, $2, 'cli', 'test.old', 'ok'), (now(), $2, 'cli', 'test.recent', 'ok')""",
        old,
        hub_tenant,
    )
    async with db.transaction() as conn:
        await quota_store.prune_usage(conn, days=400)
        await audit_store.prune(conn, days=400)
    left = {
        r["id"]
        for r in await db.pool.fetch("SELECT id FROM usage_outbox WHERE id = ANY($1)", list(ids.values()))
    }
    assert left == {ids["old_unsent"], ids["recent_sent"]}
    actions = [
        r["action"]
        for r in await db.pool.fetch("SELECT action FROM audit_log WHERE tenant_id = $1", hub_tenant)
    ]
    assert actions == ["test.recent"]

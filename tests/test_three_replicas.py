"""Three replicas, one service: three `vectorhive serve` processes on one PostgreSQL and the local
Redis, in cluster mode behind a HiveHub stand-in, with traffic spread over all three. Limits are
shared, revocations reach every replica within a second, an import runs on exactly one replica and
ends cleanly when that one is killed, usage is reported once and an index is built once."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db import Database
from tests.conftest import MakeTenant, UniqueId, bearer
from tests.fake_hivehub import API_KEY, FakeHub
from tests.fake_hivehub import serve as serve_hub
from tests.fake_s5 import FakePortal
from tests.fake_s5 import serve as serve_portal
from tests.s5_fixtures import build
from tests.support.server import ServerProcess, replica_env
from tests.test_cluster_processes import REDIS_URL, redis_reachable, wait_for
from tests.test_quotas import hammer

pytestmark = pytest.mark.slow

KEY_HEX = bytes(range(32)).hex()


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with serve_hub(FakeHub()) as running:
        yield running


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve_portal(FakePortal()) as running:
        yield running


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, hub: FakeHub, portal: FakePortal) -> Iterator[list[ServerProcess]]:
    if not redis_reachable():
        pytest.skip(f"needs Redis at {REDIS_URL} (shared counters); none is reachable")
    env = {
        "VECTORHIVE_RATE_LIMITING__STORAGE_URI": REDIS_URL,
        "VECTORHIVE_CLUSTER__ENABLED": "true",
        "VECTORHIVE_CLUSTER__HIVEHUB_API_URL": hub.url,
        "HIVEHUB_API_KEY": API_KEY,
        "VECTORHIVE_CLUSTER__USAGE_REPORT_INTERVAL": "0.5",
        "VECTORHIVE_USAGE__FLUSH_INTERVAL": "0.5",
        "VECTORHIVE_COLLECTIONS__INDEX_THRESHOLD": "200",
        "VECTORHIVE_COLLECTIONS__INDEX_BUILD_QUIET_SECONDS": "0",
        "VECTORHIVE_DATABASE__POOL_MIN_SIZE": "1",
        "S5_PORTAL_URL": portal.url,
    }
    servers = [ServerProcess(tmp_path, env=replica_env(pg_url, **env)) for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop(signal.SIGTERM)


async def test_rate_limits_and_token_buckets_are_shared_exactly(
    replicas: list[ServerProcess], make_tenant: MakeTenant, db: Database
) -> None:
    windowed, bucketed = await make_tenant(), await make_tenant()
    await db.pool.execute(
        "UPDATE tenants SET quotas = $2::jsonb WHERE id = $1",
        windowed.tenant_id,
        '{"requests_per_minute": 90}',
    )
    await db.pool.execute(
        "UPDATE tenants SET quotas = $2::jsonb WHERE id = $1",
        bucketed.tenant_id,
        json.dumps({"token_bucket_capacity": 45, "token_refill_per_second": 0.001}),
    )
    urls = [s.base for s in replicas]
    counts = await hammer(urls, windowed.admin, 240)
    assert set(counts) <= {200, 429}, counts
    assert abs(counts[200] - 90) <= 1.5, counts  # one window for three replicas, not 3 x 90

    async with httpx.AsyncClient(base_url=urls[0], headers=bearer(bucketed.admin)) as http:
        assert (await http.post("/api/v1/collections", json={"name": "c", "dimension": 2})).status_code == 201
    counts = await hammer(
        urls, bucketed.admin, 120, path="/api/v1/collections/c/search", json={"vector": [1, 0], "top_k": 1}
    )
    assert set(counts) <= {200, 429}, counts
    assert abs(counts[200] - 45) <= 1, counts  # 45 tokens, one search each, across all three


async def test_revocation_and_suspension_through_one_replica_reach_the_others_within_a_second(
    replicas: list[ServerProcess], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    first, *others = replicas
    async with httpx.AsyncClient(base_url=first.base, headers=bearer(tenant.admin)) as http:
        made = await http.post("/api/v1/keys", json={"permission": "read_only", "name": "doomed"})
        assert made.status_code == 201, made.text
        doomed = made.json()
    for server in replicas:  # cached as valid on every replica
        assert httpx.get(server.base + "/api/v1/me", headers=bearer(doomed["key"])).status_code == 200
    revoked = httpx.delete(f"{first.base}/api/v1/keys/{doomed['key_id']}", headers=bearer(tenant.admin))
    assert revoked.status_code in (200, 204), revoked.text
    await asyncio.sleep(1.0)
    for server in others:
        assert httpx.get(server.base + "/api/v1/me", headers=bearer(doomed["key"])).status_code == 401

    for server in replicas:
        assert httpx.get(server.base + "/api/v1/me", headers=bearer(tenant.admin)).status_code == 200
    suspended = httpx.post(
        f"{others[0].base}/api/v1/admin/tenants/{tenant.tenant_id}/suspend", headers=bearer(operator_key)
    )
    assert suspended.status_code == 200, suspended.text
    await asyncio.sleep(1.0)
    for server in (first, others[1]):
        refused = httpx.get(server.base + "/api/v1/me", headers=bearer(tenant.admin))
        assert refused.status_code in (401, 403), refused.text


async def test_usage_is_reported_once_and_an_index_is_built_once(
    replicas: list[ServerProcess], hub: FakeHub, db: Database, unique_id: UniqueId
) -> None:
    tenant = unique_id("three")
    key = "hh_" + secrets.token_urlsafe(24)
    hub.add_key(key, tenant)
    clients = [httpx.AsyncClient(base_url=s.base, headers=bearer(key), timeout=30) for s in replicas]
    try:
        assert (
            await clients[0].post("/api/v1/collections", json={"name": "c", "dimension": 4})
        ).status_code == 201
        # 300 vectors written through all three replicas (past the index threshold of 200), 30 reads.
        for batch in range(6):
            vectors = [{"id": f"{batch}-{i}", "vector": [1, i, batch, 1]} for i in range(50)]
            written = await clients[batch % 3].put("/api/v1/collections/c/vectors", json={"vectors": vectors})
            assert written.status_code == 200, written.text
        for i in range(30):
            assert (await clients[i % 3].get("/api/v1/collections/c")).status_code == 200

        async def index_ready() -> bool:
            return (await clients[1].get("/api/v1/collections/c")).json()["index"]["status"] == "ready"

        await wait_for(index_ready, 60, "the index to be built")
    finally:
        for client in clients:
            await client.aclose()

    async def all_sent() -> bool:
        unsent = await db.pool.fetchval(
            "SELECT count(*) FROM usage_outbox WHERE tenant_id = $1 AND sent_at IS NULL", tenant
        )
        total = await db.pool.fetchval("SELECT count(*) FROM usage_outbox WHERE tenant_id = $1", tenant)
        return bool(total) and unsent == 0

    await asyncio.sleep(1.5)  # every replica's flush interval has passed
    await wait_for(all_sent, 30, "the usage outbox to be reported")
    raw = [r for r in hub.reports if r["tenant_id"] == tenant]
    assert len(raw) == len([r for r in hub.unique_reports() if r["tenant_id"] == tenant])  # none twice
    billed: dict[str, int] = {}
    for report in raw:
        billed[report["metric"]] = billed.get(report["metric"], 0) + report["quantity"]
    assert billed["vectors_written"] == 300
    assert billed["requests"] >= 37  # create, 6 writes, 30 reads, and the index polls

    builds = sum(s.log.read_text().count('"building HNSW index"') for s in replicas)
    assert builds == 1, [s.log.read_text()[-2000:] for s in replicas]
    table = await db.pool.fetchval(
        "SELECT 'vectors_' || id FROM collections WHERE tenant_id = $1 AND name = 'c'", tenant
    )
    indexes = await db.pool.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexdef ILIKE '%USING hnsw%'", table
    )
    assert indexes == 1


async def test_an_import_runs_on_one_replica_and_ends_cleanly_when_that_one_is_killed(
    replicas: list[ServerProcess],
    portal: FakePortal,
    make_tenant: MakeTenant,
    unique_id: UniqueId,
) -> None:
    tenant = await make_tenant()
    source = build(name=unique_id("db"), n=300, chunk_size=100, key=bytes(range(32)))
    portal.files.update(source.files)
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:60"]  # the import stays busy on its runner
    victim, *survivors = replicas
    accepted = httpx.post(
        f"{victim.base}/api/v1/collections/victim/imports",
        json={
            "source": "s5",
            "manifest_path": source.manifest_path,
            "user_address": source.user_address,
            "encryption_key": KEY_HEX,
        },
        headers=bearer(tenant.admin),
    )
    assert accepted.status_code == 202, accepted.text
    import_id = accepted.json()["import_id"]

    def status(server: ServerProcess) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(
            f"{server.base}/api/v1/imports/{import_id}", headers=bearer(tenant.admin)
        ).json()
        return answer

    deadline = time.monotonic() + 30
    while status(survivors[0])["status"] != "loading":
        assert time.monotonic() < deadline, status(survivors[0])
        time.sleep(0.1)
    # Only the replica that accepted it works on it: the others' logs never mention it.
    time.sleep(0.5)
    assert all(import_id not in s.log.read_text() for s in survivors)

    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    # A surviving replica's sweep (every 30 s) ends it; nothing was written.
    deadline = time.monotonic() + 45
    while (seen := status(survivors[1]))["status"] in ("pending", "loading"):
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    assert seen["status"] == "error" and seen["error"]["code"] == "interrupted", seen
    missing = httpx.get(f"{survivors[0].base}/api/v1/collections/victim", headers=bearer(tenant.admin))
    assert missing.status_code == 404
    portal.faults.pop(f"{source.folder}/chunk-2.json", None)

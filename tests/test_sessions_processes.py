"""Sessions across real `vectorhive serve` processes on the test database: ending a session,
revoking its parent key or suspending its tenant reaches the other replica through LISTEN/NOTIFY
(not after the 300 s verified-token TTL), and expiry survives a SIGKILL of the process that
created the session (any replica sweeps it).

Like tests/test_revocation.py, these wait at most 10 s for a change and print how long it took
(the speed itself is measured, not asserted)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db import Database
from tests.conftest import MakeTenant, UniqueId, bearer
from tests.support.server import ServerProcess, replica_env
from tests.test_revocation import cli, until

pytestmark = pytest.mark.slow

SEARCH = {"vector": [1.0, 0.0, 0.5], "top_k": 1}


def start(workdir: Path, pg_url: str, **env: str) -> ServerProcess:
    # Sessions need no model: none is prepared or loaded (a chat model download in progress
    # would otherwise outlast a quick stop).
    no_models = {"VECTORHIVE_GENERATION__ENABLED": "false", "VECTORHIVE_EMBEDDINGS__ENABLED": "false"}
    return ServerProcess(workdir, env=replica_env(pg_url, **no_models, **env))


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[list[ServerProcess]]:
    # One working folder: both replicas share the signing-key secret file, as replicas share
    # sessions.signing_key_secret in production.
    workdir = tmp_path_factory.mktemp("session-replicas")
    servers = [start(workdir, pg_url) for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGTERM)


async def prepare(base: str, admin: str) -> None:
    async with httpx.AsyncClient(base_url=base, headers=bearer(admin), timeout=30) as http:
        created = await http.post("/api/v1/collections", json={"name": "docs", "dimension": 3})
        assert created.status_code == 201, created.text
        vectors = [{"id": "a", "vector": [1, 0, 0.5]}]
        assert (
            await http.put("/api/v1/collections/docs/vectors", json={"vectors": vectors})
        ).status_code == 200


async def open_session(base: str, key: str, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=30) as http:
        response = await http.post("/api/v1/sessions", json={"collections": ["docs"], **body})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


async def statuses(servers: list[ServerProcess], token: str) -> list[int]:
    async with httpx.AsyncClient(headers=bearer(token), timeout=10) as http:
        return [
            (await http.post(server.base + "/api/v1/collections/docs/search", json=SEARCH)).status_code
            for server in servers
        ]


async def test_ending_revoking_and_suspending_reach_the_other_replica(
    two_servers: list[ServerProcess], make_tenant: MakeTenant, pg_url: str
) -> None:
    first, second = two_servers
    tenant = await make_tenant("read_only")
    await prepare(first.base, tenant.admin)

    # Deleted on the first replica: refused on the second.
    deleted = await open_session(first.base, tenant.admin)
    assert await statuses(two_servers, deleted["token"]) == [200, 200]  # verified and cached on both
    async with httpx.AsyncClient(base_url=first.base, headers=bearer(tenant.admin)) as http:
        assert (await http.delete(f"/api/v1/sessions/{deleted['session_id']}")).status_code == 204
    assert await statuses([first], deleted["token"]) == [401]  # at once where it was deleted

    async def ended() -> bool:
        return await statuses([second], deleted["token"]) == [401]

    await until(ended, "session deletion on one replica seen by the other")

    # Parent key revoked with the CLI (a third process): both replicas refuse its session.
    child = await open_session(second.base, tenant.key("read_only"))
    assert await statuses(two_servers, child["token"]) == [200, 200]
    cli(pg_url, "keys", "revoke", tenant.key("read_only").split("_")[1])

    async def revoked() -> bool:
        return await statuses(two_servers, child["token"]) == [401, 401]

    await until(revoked, "parent key revocation (CLI) seen by both replicas")

    # Tenant suspended with the CLI: refused on both, and back after resuming.
    held = await open_session(first.base, tenant.admin)
    assert await statuses(two_servers, held["token"]) == [200, 200]
    cli(pg_url, "tenants", "suspend", tenant.tenant_id)

    async def suspended() -> bool:
        return await statuses(two_servers, held["token"]) == [403, 403]

    await until(suspended, "tenant suspension seen by both replicas")
    cli(pg_url, "tenants", "resume", tenant.tenant_id)

    async def resumed() -> bool:
        return await statuses(two_servers, held["token"]) == [200, 200]

    await until(resumed, "tenant resumption seen by both replicas")


async def test_a_session_outlives_a_sigkill_only_until_its_ttl(
    tmp_path: Path, pg_url: str, make_tenant: MakeTenant, db: Database
) -> None:
    fast = {
        "VECTORHIVE_SESSIONS__MIN_TTL_SECONDS": "1",
        "VECTORHIVE_SESSIONS__SWEEP_INTERVAL_SECONDS": "0.5",
    }
    doomed = start(tmp_path, pg_url, **fast)
    tenant = await make_tenant()
    await prepare(doomed.base, tenant.admin)
    created = await open_session(doomed.base, tenant.admin, ttl_seconds=3)
    assert await statuses([doomed], created["token"]) == [200]
    doomed.process.send_signal(signal.SIGKILL)
    assert doomed.process.wait(timeout=30) == -signal.SIGKILL
    row = await db.pool.fetchrow(
        "SELECT ended_at, expires_at FROM sessions WHERE id = $1", created["session_id"]
    )
    assert row["ended_at"] is None  # nothing ended it: the process that made it is gone

    survivor = start(tmp_path, pg_url, **fast)
    try:
        start_wait = time.monotonic()

        async def swept() -> bool:
            reason = await db.pool.fetchval(
                "SELECT end_reason FROM sessions WHERE id = $1", created["session_id"]
            )
            return reason == "expired"

        await until(swept, "expired session of a killed server swept by another")
        print(f"swept {time.monotonic() - start_wait:.2f} s after the survivor started")
        assert await statuses([survivor], created["token"]) == [401]
        events = await db.pool.fetch(
            "SELECT action FROM audit_log WHERE target = $1 ORDER BY id", created["session_id"]
        )
        actions = [e["action"] for e in events]
        assert actions[0] == "session.create" and "session.expire" in actions
    finally:
        survivor.stop(signal.SIGTERM)


async def test_an_s5_sessions_collection_is_dropped_after_its_server_is_killed(
    tmp_path: Path,
    pg_url: str,
    make_tenant: MakeTenant,
    db: Database,
    unique_id: UniqueId,
) -> None:
    from tests.fake_s5 import FakePortal, serve
    from tests.s5_fixtures import build

    with serve(FakePortal()) as portal:
        s5db = build(name=unique_id("db"), n=60, dimensions=4, chunk_size=30)
        portal.files.update(s5db.files)
        env = {
            "VECTORHIVE_SESSIONS__MIN_TTL_SECONDS": "1",
            "VECTORHIVE_SESSIONS__SWEEP_INTERVAL_SECONDS": "0.5",
            "VECTORHIVE_S5__PORTAL_URL": portal.url,
        }
        doomed = start(tmp_path, pg_url, **env)
        tenant = await make_tenant()
        source = {"type": "s5", "manifest_path": s5db.manifest_path, "user_address": s5db.user_address}
        async with httpx.AsyncClient(base_url=doomed.base, headers=bearer(tenant.admin), timeout=30) as http:
            created = await http.post("/api/v1/sessions", json={"source": source, "ttl_seconds": 4})
            assert created.status_code == 201, created.text
            sid, name = created.json()["session_id"], created.json()["collections"][0]

            async def ready() -> bool:
                return (await http.get(f"/api/v1/sessions/{sid}")).json()["status"] == "ready"

            await until(ready, "S5 session loaded")
        assert await db.pool.fetchval("SELECT count(*) FROM collections WHERE name = $1", name) == 1
        doomed.process.send_signal(signal.SIGKILL)
        assert doomed.process.wait(timeout=30) == -signal.SIGKILL

        survivor = start(tmp_path, pg_url, **env)
        try:

            async def dropped() -> bool:
                row = await db.pool.fetchrow("SELECT end_reason, dropped_at FROM sessions WHERE id = $1", sid)
                return row["end_reason"] == "expired" and row["dropped_at"] is not None

            await until(dropped, "the killed server's S5 session expired and its collection dropped")
            assert await db.pool.fetchval("SELECT count(*) FROM collections WHERE name = $1", name) == 0
        finally:
            survivor.stop(signal.SIGTERM)

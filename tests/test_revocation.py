"""Revocation, suspension, rotation and quota changes reach every server process on the database
at once (LISTEN/NOTIFY), whoever made them: the CLI, the API of another replica.

Two real `vectorhive serve` processes on the test database, with the default key cache TTL
(300 s) and quota interval (60 s): without notifications both would keep the old state that long.
The tests wait at most 10 s for the change and print how long it took (speed is not asserted).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service.db import Database
from service.db.notify import LISTENER_APPLICATION_NAME
from tests.conftest import MakeTenant, bearer
from tests.support.server import ServerProcess, replica_env, vectorhive_cli

pytestmark = pytest.mark.slow

PROPAGATION_WAIT = 10.0  # far below the 300 s cache TTL and the 60 s quota interval


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[list[ServerProcess]]:
    workdir = tmp_path_factory.mktemp("replicas")
    servers = [ServerProcess(workdir, env=replica_env(pg_url)) for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGTERM)


def cli(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return vectorhive_cli(*args, env={"VECTORHIVE_DATABASE__URL": pg_url})


async def statuses(servers: list[ServerProcess], key: str, path: str = "/api/v1/me") -> list[int]:
    async with httpx.AsyncClient(headers=bearer(key), timeout=10) as http:
        return [(await http.get(server.base + path)).status_code for server in servers]


async def until(condition: Callable[[], Any], what: str) -> float:
    """Seconds until condition() holds; fails after PROPAGATION_WAIT."""
    start = time.monotonic()
    while time.monotonic() - start < PROPAGATION_WAIT:
        if await condition():
            elapsed = time.monotonic() - start
            print(f"{what}: {elapsed:.3f} s")
            return elapsed
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {PROPAGATION_WAIT} s")


async def test_cli_revocation_reaches_every_server(
    two_servers: list[ServerProcess], make_tenant: MakeTenant, pg_url: str
) -> None:
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    assert await statuses(two_servers, key) == [200, 200]  # cached in both now
    assert await statuses(two_servers, key) == [200, 200]

    cli(pg_url, "keys", "revoke", key.split("_")[1])

    async def refused() -> bool:
        return await statuses(two_servers, key) == [401, 401]

    await until(refused, "CLI revocation seen by both servers")


async def test_api_revocation_and_rotation_reach_the_other_replica(
    two_servers: list[ServerProcess], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_write")
    first, second = two_servers
    assert await statuses(two_servers, tenant.key("read_write")) == [200, 200]
    async with httpx.AsyncClient(base_url=first.base, headers=bearer(tenant.admin)) as http:
        key_id = tenant.key("read_write").split("_")[1]
        assert (await http.delete(f"/api/v1/keys/{key_id}")).status_code in (200, 204)

    async def revoked() -> bool:
        return await statuses([second], tenant.key("read_write")) == [401]

    await until(revoked, "API revocation on one replica seen by the other")

    assert await statuses(two_servers, tenant.admin) == [200, 200]
    async with httpx.AsyncClient(base_url=first.base, headers=bearer(tenant.admin)) as http:
        rotated = await http.post(f"/api/v1/keys/{tenant.admin.split('_')[1]}/rotate")
        assert rotated.status_code in (200, 201), rotated.text
        new_key = rotated.json()["key"]

    async def old_refused() -> bool:
        return await statuses([second], tenant.admin) == [401]

    await until(old_refused, "rotation on one replica seen by the other")
    assert await statuses(two_servers, new_key) == [200, 200]


async def test_cli_suspension_reaches_every_server(
    two_servers: list[ServerProcess], make_tenant: MakeTenant, pg_url: str
) -> None:
    tenant = await make_tenant()
    path = "/api/v1/collections"
    assert await statuses(two_servers, tenant.admin, path) == [200, 200]

    cli(pg_url, "tenants", "suspend", tenant.tenant_id)

    async def suspended() -> bool:
        return await statuses(two_servers, tenant.admin, path) == [403, 403]

    await until(suspended, "CLI suspension seen by both servers")

    cli(pg_url, "tenants", "resume", tenant.tenant_id)

    async def resumed() -> bool:
        return await statuses(two_servers, tenant.admin, path) == [200, 200]

    await until(resumed, "CLI resumption seen by both servers")


async def test_quota_change_reaches_the_other_replica(
    two_servers: list[ServerProcess], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    first, second = two_servers
    async with httpx.AsyncClient(base_url=second.base, headers=bearer(tenant.admin)) as http:
        path = "/api/v1/collections"
        assert (await http.post(path, json={"name": "a", "dimension": 2})).status_code == 201
    async with httpx.AsyncClient(base_url=first.base, headers=bearer(operator_key)) as http:
        changed = await http.put(
            f"/api/v1/admin/tenants/{tenant.tenant_id}/quotas", json={"max_collections": 1}
        )
        assert changed.status_code == 200, changed.text

    names = iter(f"c{i}" for i in range(1000))

    async def enforced() -> bool:
        async with httpx.AsyncClient(base_url=second.base, headers=bearer(tenant.admin)) as http:
            response = await http.post(path, json={"name": next(names), "dimension": 2})
        return response.status_code == 403 and response.json()["code"] == "quota_exceeded"

    await until(enforced, "quota change on one replica enforced by the other")


async def test_listener_reconnects_after_losing_its_connection(
    two_servers: list[ServerProcess], make_tenant: MakeTenant, db: Database, pg_url: str
) -> None:
    async def listeners() -> list[int]:
        rows = await db.pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", LISTENER_APPLICATION_NAME
        )
        return sorted(r["pid"] for r in rows)

    before = await listeners()
    assert len(before) >= 2  # one per server process (other test apps may add theirs)
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    assert await statuses(two_servers, key) == [200, 200]

    # What a database restart does to the listening connections.
    await db.pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        LISTENER_APPLICATION_NAME,
    )

    async def reconnected() -> bool:
        now = await listeners()
        return len(now) >= 2 and not set(now) & set(before)

    await until(reconnected, "listeners reconnected")
    cli(pg_url, "keys", "revoke", key.split("_")[1])

    async def refused() -> bool:
        return await statuses(two_servers, key) == [401, 401]

    await until(refused, "revocation after a reconnection seen by both servers")


async def test_notifications_are_transactional_and_the_cache_is_bypassed_without_them(
    db: Database,
) -> None:
    from service.auth.cache import KeyCache
    from service.auth.keys import KeyKind
    from service.auth.principal import Permission, Principal
    from service.db.notify import AUTH_CHANNEL, NotificationHub, notify

    hub = NotificationHub(lambda: db.url)
    cache = KeyCache(ttl=300, max_size=10, negative_ttl=10)
    cache.attach(hub)
    seen: list[str] = []
    hub.subscribe(AUTH_CHANNEL, seen.append)
    principal = Principal(
        kind=KeyKind.TENANT, key_id="abcdefghijkl", tenant_id="t", permission=Permission.ADMIN
    )
    cache.put(b"fp", principal)
    assert cache.get(b"fp") is None  # not listening yet: nothing is trusted, nothing kept
    await hub.start()
    try:
        assert hub.listening
        cache.put(b"fp", principal)
        assert cache.get(b"fp") == principal
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await notify(conn, AUTH_CHANNEL, "key:rolled-back")
                raise RuntimeError("roll back")
        async with db.transaction() as conn:
            await notify(conn, AUTH_CHANNEL, "key:abcdefghijkl")
            await asyncio.sleep(0.2)
            assert cache.get(b"fp") == principal  # not before COMMIT

        async def evicted() -> bool:
            return cache.get(b"fp") is None

        await until(evicted, "notification delivered")
        assert seen == ["key:abcdefghijkl"]
    finally:
        await hub.close()
    assert not hub.listening

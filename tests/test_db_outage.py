"""A database that goes away answers 503 problem+json with Retry-After, never 500.

Two outages: PostgreSQL ending the server's connections (what a restart does; whether a request
meets a dead one depends on whether the pool noticed first), and a database that is down (through
tests/db_proxy.py: connections cut and refused), where every request that needs it must be 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer
from tests.db_proxy import DatabaseProxy, database_proxy

APP_NAME = "vh-outage-test"


@pytest.fixture
async def outage_client(make_settings: MakeSettings, pg_url: str) -> AsyncIterator[AsyncTestClient[Litestar]]:
    # asyncpg passes unknown URL parameters on as server settings: the pool's connections carry
    # this application name, so the test can cut exactly them.
    separator = "&" if "?" in pg_url else "?"
    settings = make_settings(database={"url": f"{pg_url}{separator}application_name={APP_NAME}"})
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def cut_connections(db: Database) -> int:
    """What a PostgreSQL restart or crash does to the server's pooled connections."""
    killed: int = await db.pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        APP_NAME,
    )
    return killed


async def test_connections_lost_answer_503_with_retry_after(
    outage_client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    headers = bearer(tenant.admin)
    assert (await outage_client.get("/api/v1/collections", headers=headers)).status_code == 200
    assert await cut_connections(db) >= 1
    statuses = []
    for _ in range(6):  # every pooled connection is dead: each request may meet one
        response = await outage_client.get("/api/v1/collections", headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 503:
            body = assert_problem(response, 503, "database_unavailable")
            assert int(response.headers["retry-after"]) >= 1
            assert "database" in body["detail"].lower()
    # Whether a request meets a dead connection depends on whether the pool noticed first.
    assert set(statuses) <= {200, 503}, statuses
    # The pool replaces the dead connections: the service comes back by itself. A terminated
    # backend may take a while to go on a loaded machine, so "comes back" gets a deadline, and
    # nothing but 200 or 503 may be answered meanwhile.
    await comes_back(outage_client, headers)


async def comes_back(client: AsyncTestClient[Litestar], headers: dict[str, str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (response := await client.get("/api/v1/collections", headers=headers)).status_code != 200:
        assert_problem(response, 503, "database_unavailable")
        assert time.monotonic() < deadline, "the service did not come back after the outage"
        await asyncio.sleep(0.2)


@pytest.fixture
async def proxied_client(
    make_settings: MakeSettings, pg_url: str
) -> AsyncIterator[tuple[AsyncTestClient[Litestar], DatabaseProxy]]:
    """An app whose database is reached through a proxy the test can cut (tests/db_proxy.py)."""
    with database_proxy(pg_url) as proxy:
        settings = make_settings(database={"url": proxy.url})
        async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client, proxy


async def test_a_database_that_is_down_answers_503_then_the_service_recovers(
    proxied_client: tuple[AsyncTestClient[Litestar], DatabaseProxy], make_tenant: MakeTenant
) -> None:
    client, proxy = proxied_client
    tenant = await make_tenant()
    headers = bearer(tenant.admin)
    assert (await client.get("/api/v1/collections", headers=headers)).status_code == 200
    proxy.refuse()  # every connection cut, new ones refused: not a request can reach the database
    for _ in range(3):
        response = await client.get("/api/v1/collections", headers=headers)
        body = assert_problem(response, 503, "database_unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert "database" in body["detail"].lower()
    write = await client.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=headers)
    assert_problem(write, 503, "database_unavailable")
    proxy.restore()
    await comes_back(client, headers)
    listed = await client.get("/api/v1/collections", headers=headers)
    assert [c["name"] for c in listed.json()["items"]] == []  # the refused write changed nothing


async def test_authentication_during_an_outage_answers_503(
    outage_client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    assert (await outage_client.get("/readyz")).status_code in (200, 503)
    await cut_connections(db)
    # Not cached yet: verifying the key needs the database.
    response = await outage_client.get("/api/v1/me", headers=bearer(tenant.admin))
    assert response.status_code != 500, response.text
    if response.status_code == 503:
        assert_problem(response, 503, "database_unavailable")


async def test_authentication_with_the_database_down_answers_503_not_401(
    proxied_client: tuple[AsyncTestClient[Litestar], DatabaseProxy], make_tenant: MakeTenant
) -> None:
    client, proxy = proxied_client
    tenant = await make_tenant("read_only")
    assert (await client.get("/readyz")).status_code == 200
    proxy.refuse()
    # Not cached yet: verifying the key needs the database, which cannot answer.
    response = await client.get("/api/v1/me", headers=bearer(tenant.key("read_only")))
    assert_problem(response, 503, "database_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert_problem(await client.get("/readyz"), 503, "unavailable")
    proxy.restore()
    deadline = time.monotonic() + 30
    while (
        response := await client.get("/api/v1/me", headers=bearer(tenant.key("read_only")))
    ).status_code != 200:
        assert_problem(response, 503, "database_unavailable")
        assert time.monotonic() < deadline, "authentication did not come back after the outage"
        await asyncio.sleep(0.2)

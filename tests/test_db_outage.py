"""A database that goes away answers 503 problem+json with Retry-After, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from service.db import Database
from tests.conftest import assert_problem, bearer

APP_NAME = "vh-outage-test"


@pytest.fixture
async def outage_client(
    make_settings: Callable[..., Settings], pg_url: str
) -> AsyncIterator[AsyncTestClient[Litestar]]:
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
    outage_client: AsyncTestClient[Litestar], make_tenant: Callable[..., Any], db: Database
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
    # The pool replaces the dead connections: the service comes back by itself.
    assert (await outage_client.get("/api/v1/collections", headers=headers)).status_code == 200


async def test_authentication_during_an_outage_answers_503(
    outage_client: AsyncTestClient[Litestar], make_tenant: Callable[..., Any], db: Database
) -> None:
    tenant = await make_tenant()
    assert (await outage_client.get("/readyz")).status_code in (200, 503)
    await cut_connections(db)
    # Not cached yet: verifying the key needs the database.
    response = await outage_client.get("/api/v1/me", headers=bearer(tenant.admin))
    assert response.status_code != 500, response.text
    if response.status_code == 503:
        assert_problem(response, 503, "database_unavailable")

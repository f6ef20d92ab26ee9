"""Single-statement tenant reads (service/db/tenant_reads.py): the common search runs on a
connection kept in its tenant's context, without a transaction around it. Here that pool has one
connection, so every search shares it and tenants take turns on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from tests.conftest import MakeSettings, MakeTenant, bearer

API = "/api/v1/collections"


@pytest.fixture(scope="module")
async def app(make_settings: MakeSettings) -> Litestar:
    # pool_max_size 2: the single-statement pool gets max(1, 2 // 2) = 1 connection.
    return create_app(make_settings(database={"pool_min_size": 1, "pool_max_size": 2}))


@pytest.fixture(scope="module")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def database(app: Litestar) -> Database:
    db: Database = app.state.db
    return db


async def collection(client: Any, key: str, vectors: dict[str, list[float]]) -> None:
    created = await client.post(API, json={"name": "c", "dimension": 2}, headers=bearer(key))
    assert created.status_code == 201, created.text
    items = [{"id": i, "vector": v} for i, v in vectors.items()]
    put = await client.put(f"{API}/c/vectors", json={"vectors": items}, headers=bearer(key))
    assert put.status_code == 200, put.text


async def search(client: Any, key: str, **body: Any) -> Any:
    return await client.post(
        f"{API}/c/search", json={"vector": [1, 0], "top_k": 5, **body}, headers=bearer(key)
    )


def session_value(app: Litestar, client: Any, sql: str) -> Any:
    """What the one single-statement connection says (it keeps its session state), asked in the
    app's own event loop."""

    async def read() -> Any:
        async with database(app).reads.pool.acquire() as conn:
            return await conn.fetchval(sql)

    return client.blocking_portal.call(read)


async def test_tenants_taking_turns_on_one_connection_see_only_their_own(
    app: Litestar, client: Any, make_tenant: MakeTenant
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await collection(client, a.admin, {"a1": [1, 0], "a2": [0, 1]})
    await collection(client, b.admin, {"b1": [1, 0.1]})
    for _ in range(3):
        found_a = await search(client, a.admin)
        found_b = await search(client, b.admin)
        assert found_a.status_code == found_b.status_code == 200, (found_a.text, found_b.text)
        assert {hit["id"] for hit in found_a.json()["results"]} == {"a1", "a2"}
        assert {hit["id"] for hit in found_b.json()["results"]} == {"b1"}
    # The connection is left in the last tenant's role, at session level: no transaction was used.
    role = session_value(app, client, "SELECT current_user")
    assert role == database(app).tenant_role(b.tenant_id)


async def test_search_parameters_follow_each_request(
    app: Litestar, client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, {"x": [1, 0]})
    # In pairs: checking the connection's state borrows it, which makes the pool forget its
    # context; the second search of each pair runs on the context the first one left.
    for first, second in ((17, 123), (123, 17)):
        assert (await search(client, tenant.admin, ef_search=first)).status_code == 200
        assert (await search(client, tenant.admin, ef_search=second)).status_code == 200
        assert session_value(app, client, "SHOW hnsw.ef_search") == str(second)


async def test_a_connection_in_the_wrong_role_is_refused_the_table_never_shown_it(
    app: Litestar, client: Any, make_tenant: MakeTenant
) -> None:
    """Isolation does not rest on the pool's bookkeeping: with the connection in tenant b's role
    while the pool believes it is in a's, a's search fails (b's role has no grant on a's table)
    and shows nothing; the failure makes the pool forget, and the next search is right again."""
    a, b = await make_tenant(), await make_tenant()
    await collection(client, a.admin, {"a1": [1, 0]})
    await collection(client, b.admin, {"b-secret": [1, 0]})
    assert (await search(client, a.admin)).status_code == 200
    reads = database(app).reads
    believed = dict(next(iter(reads._contexts.values())))
    role_b = database(app).tenant_role(b.tenant_id)

    async def put_in_b_role() -> None:
        async with reads.pool.acquire() as conn:
            await conn.execute(f"SET ROLE {role_b}")
            await conn.execute(f"SELECT set_config('app.tenant_id', '{b.tenant_id}', false)")

    client.blocking_portal.call(put_in_b_role)
    # put_in_b_role's release was not a clean read: the pool forgot the context. Make it believe
    # the connection is still in a's context, as a bookkeeping bug would.
    (conn,) = [holder._con for holder in reads.pool._holders if holder._con is not None]
    reads._contexts[conn] = tuple(sorted(believed.items()))
    refused = await search(client, a.admin)
    # ("b-secret" cannot occur by chance in the problem's hex request id.)
    assert refused.status_code == 500 and "b-secret" not in refused.text
    assert refused.json()["code"] == "internal_error"
    again = await search(client, a.admin)
    assert again.status_code == 200 and [hit["id"] for hit in again.json()["results"]] == ["a1"]


async def test_a_collection_dropped_and_created_again_is_searched_afresh(
    client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, {"old": [1, 0]})
    assert [h["id"] for h in (await search(client, tenant.admin)).json()["results"]] == ["old"]
    assert (await client.delete(f"{API}/c", headers=bearer(tenant.admin))).status_code == 204
    await collection(client, tenant.admin, {"new": [1, 0]})
    found = await search(client, tenant.admin)
    assert found.status_code == 200 and [h["id"] for h in found.json()["results"]] == ["new"]

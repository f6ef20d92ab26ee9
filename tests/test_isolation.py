"""Tenants never see each other: enforced by PostgreSQL itself (row-level security under the tenant
role), and checked through every collections endpoint."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.db import Database
from tests.conftest import MakeTenant, assert_problem, bearer

API = "/api/v1/collections"


async def make_secret(client: AsyncTestClient[Litestar], key: dict[str, str]) -> None:
    assert (await client.post(API, headers=key, json={"name": "secret", "dimension": 3})).status_code == 201
    items = [
        {"id": f"s{i}", "vector": [1.0, float(i), 0.5], "metadata": {"owner": "a", "i": i}} for i in range(5)
    ]
    assert (
        await client.put(f"{API}/secret/vectors", headers=key, json={"vectors": items})
    ).status_code == 200


async def snapshot(client: AsyncTestClient[Litestar], key: dict[str, str]) -> Any:
    collection = (await client.get(f"{API}/secret", headers=key)).json()
    collection.pop("size_bytes")  # physical size may move with vacuum; the content may not
    params = {"include_vector": "true"}
    return collection, (await client.get(f"{API}/secret/vectors", headers=key, params=params)).json()


async def test_unscoped_query_under_tenant_context_sees_no_other_tenant(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await make_secret(client, bearer(b.admin))
    await client.post(API, headers=bearer(a.admin), json={"name": "mine", "dimension": 3})
    b_table = "vectors_" + str(
        await db.pool.fetchval(
            "SELECT id FROM collections WHERE tenant_id = $1 AND name = 'secret'", b.tenant_id
        )
    )

    async with db.tenant_transaction(a.tenant_id) as conn:
        # Deliberately no WHERE on the shared catalog: row-level security filters it.
        names = {
            (r["tenant_id"], r["name"]) for r in await conn.fetch("SELECT tenant_id, name FROM collections")
        }
        assert names == {(a.tenant_id, "mine")}
        assert await conn.execute("UPDATE collections SET vector_count = 0") == "UPDATE 1"  # its own row only
    b_rows = await db.pool.fetchval("SELECT vector_count FROM collections WHERE tenant_id = $1", b.tenant_id)
    assert b_rows == 5
    # B's vector table is B's role's alone: every statement from A's context is refused.
    for statement in (
        f"SELECT * FROM {b_table}",
        f"UPDATE {b_table} SET metadata = '{{}}'",
        f"DELETE FROM {b_table}",
        f"INSERT INTO {b_table} (id, embedding) VALUES ('x', '[1,2,3]')",
        "SELECT * FROM api_keys",
        "SELECT * FROM tenants",
    ):
        async with db.tenant_transaction(a.tenant_id) as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(statement)
    async with db.tenant_transaction(b.tenant_id) as conn:
        assert len(await conn.fetch(f"SELECT * FROM {b_table}")) == 5  # the owner still sees them
    # The tenant context ends with the transaction: the pooled connection is back to normal.
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        assert await conn.fetchval("SELECT current_user") != "vectorhive_tenant"


ATTEMPTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "{c}", None),
    ("DELETE", "{c}", None),
    ("PUT", "{c}/vectors", {"vectors": [{"id": "s0", "vector": [0, 0, 1], "metadata": {"owner": "b"}}]}),
    ("GET", "{c}/vectors", None),
    ("GET", "{c}/vectors/s0", None),
    ("DELETE", "{c}/vectors/s0", None),
    ("POST", "{c}/vectors/delete", {"ids": ["s0", "s1"]}),
    ("POST", "{c}/vectors/delete", {"filter": {"owner": "a"}}),
    ("POST", "{c}/search", {"vector": [1, 0, 0]}),
    ("POST", "{c}/search/batch", {"queries": [{"vector": [1, 0, 0]}]}),
]


@pytest.mark.parametrize("name_form", ["short", "qualified"])
async def test_every_endpoint_refuses_another_tenants_collection(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, name_form: str
) -> None:
    a, b = await make_tenant(), await make_tenant("read_write")
    a_key = bearer(a.admin)
    await make_secret(client, a_key)
    before = await snapshot(client, a_key)
    target = "secret" if name_form == "short" else f"{a.tenant_id}:secret"

    for key, role in ((bearer(b.admin), "admin"), (bearer(b.key("read_write")), "read_write")):
        for method, template, body in ATTEMPTS:
            response = await client.request(
                method, f"{API}/{template.format(c=target)}", headers=key, json=body
            )
            problem = assert_problem(response, 404 if role == "admin" else response.status_code)
            assert response.status_code in (403, 404), (role, method, template)
            # No sign of existence: exactly what a name that never existed gets.
            control = await client.request(
                method, f"{API}/{template.format(c='never-existed')}", headers=key, json=body
            )
            assert response.status_code == control.status_code, (role, method, template)
            assert problem["detail"] == control.json()["detail"].replace("never-existed", target)
            assert a.tenant_id not in problem["detail"].replace(target, "")
        assert (await client.get(API, headers=key)).json()["items"] == []

    # B may own a collection of the same short name; it is B's, and A's is untouched.
    made = await client.post(API, headers=bearer(b.admin), json={"name": "secret", "dimension": 3})
    assert made.status_code == 201 and made.json()["qualified_name"] == f"{b.tenant_id}:secret"
    assert (
        await client.post(f"{API}/secret/search", headers=bearer(b.admin), json={"vector": [1, 0, 0]})
    ).json()["results"] == []
    assert await snapshot(client, a_key) == before


async def test_a_tenant_transaction_leaves_nothing_on_its_connection(
    db: Any, make_tenant: MakeTenant
) -> None:
    """Its BEGIN carries the tenant context and its connection skips the pool's reset query: what it
    set must still end with it, committed or rolled back."""
    tenant = await make_tenant()
    login = await db.pool.fetchval("SELECT current_user")
    for fail in (False, True):
        try:
            async with db.tenant_transaction(tenant.tenant_id, {"hnsw.ef_search": "77"}) as conn:
                inside = await conn.fetchrow(
                    "SELECT current_user AS role, current_setting('app.tenant_id') AS tenant, "
                    "current_setting('hnsw.ef_search') AS ef"
                )
                assert inside["tenant"] == tenant.tenant_id and inside["ef"] == "77"
                assert inside["role"] == db.tenant_role(tenant.tenant_id)
                if fail:
                    raise RuntimeError("the request failed")
        except RuntimeError:
            pass
        for _ in range(db.settings.pool_max_size):  # whichever connection the pool hands out next
            after = await db.pool.fetchrow(
                "SELECT current_user AS role, current_setting('app.tenant_id', true) AS tenant, "
                "current_setting('hnsw.ef_search') AS ef"
            )
            assert after["role"] == login and not after["tenant"] and after["ef"] != "77", after

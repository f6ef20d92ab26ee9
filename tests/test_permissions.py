"""The permission matrix, operators vs tenant ADMINs, and tenants kept apart."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.auth.keys import parse_key
from tests.conftest import Api, MakeTenant, assert_problem, bearer

ROLES = ["admin", "read_write", "read_only", "mcp", "operator"]

# (method, path template, body, expected status per role)
MATRIX: list[tuple[str, str, dict[str, Any] | None, dict[str, int]]] = [
    (
        "GET",
        "/api/v1/me",
        None,
        {"admin": 200, "read_write": 200, "read_only": 200, "mcp": 403, "operator": 200},
    ),
    (
        "GET",
        "/api/v1/keys",
        None,
        {"admin": 200, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 403},
    ),
    (
        "POST",
        "/api/v1/keys",
        {"permission": "read_only"},
        {"admin": 201, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 403},
    ),
    (
        "GET",
        "/api/v1/keys/{own_key}",
        None,
        {"admin": 200, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 403},
    ),
    (
        "POST",
        "/api/v1/keys/{spare_key}/rotate",
        None,
        {"admin": 201, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 403},
    ),
    (
        "DELETE",
        "/api/v1/keys/{spare_key}",
        None,
        {"admin": 200, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 403},
    ),
    (
        "GET",
        "/api/v1/admin/tenants",
        None,
        {"admin": 403, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 200},
    ),
    (
        "GET",
        "/api/v1/admin/tenants/{tenant}",
        None,
        {"admin": 403, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 200},
    ),
    (
        "POST",
        "/api/v1/admin/tenants/{tenant}/keys",
        {"permission": "read_only"},
        {"admin": 403, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 201},
    ),
    (
        "GET",
        "/api/v1/admin/tenants/{tenant}/keys",
        None,
        {"admin": 403, "read_write": 403, "read_only": 403, "mcp": 403, "operator": 200},
    ),
]


@pytest.mark.parametrize(
    ("method", "template", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, *_ in MATRIX]
)
async def test_permission_matrix(
    api: Api, method: str, template: str, body: dict[str, Any] | None, expected: dict[str, int]
) -> None:
    tenant = await api.make_tenant("read_write", "read_only", "mcp", "admin")
    for role in ROLES:
        spare = await api.client.post(
            "/api/v1/keys", headers=bearer(tenant.admin), json={"permission": "read_only"}
        )
        path = template.format(
            own_key=parse_key(tenant.admin).key_id,  # type: ignore[union-attr]
            spare_key=spare.json()["key_id"],
            tenant=tenant.tenant_id,
        )
        key = api.operator_key if role == "operator" else tenant.key(role)
        response = await api.client.request(method, path, headers=bearer(key), json=body)
        assert response.status_code == expected[role], f"{role}: {response.text}"
        if expected[role] == 403:
            assert_problem(response, 403)


async def test_tenant_admin_never_sees_or_touches_another_tenant(api: Api) -> None:
    a = await api.make_tenant("read_only")
    b = await api.make_tenant()
    a_key_id = parse_key(a.key("read_only")).key_id  # type: ignore[union-attr]
    before = await api.db.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", a_key_id)

    listed = await api.client.get("/api/v1/keys", headers=bearer(b.admin))
    assert a_key_id not in {k["key_id"] for k in listed.json()["items"]}
    for method, path in [
        ("GET", f"/api/v1/keys/{a_key_id}"),
        ("DELETE", f"/api/v1/keys/{a_key_id}"),
        ("POST", f"/api/v1/keys/{a_key_id}/rotate"),
    ]:
        response = await api.client.request(method, path, headers=bearer(b.admin))
        body = assert_problem(response, 404, "not_found")
        assert a.tenant_id not in body["detail"]
    # Same answer as for a key id that does not exist at all: existence is not revealed.
    missing = await api.client.get("/api/v1/keys/aaaaaaaaaaaa", headers=bearer(b.admin))
    assert missing.status_code == 404
    assert missing.json()["detail"].replace("aaaaaaaaaaaa", a_key_id) == response.json()["detail"]

    after = await api.db.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", a_key_id)
    assert dict(after) == dict(before)
    assert (await api.client.get("/api/v1/me", headers=bearer(a.key("read_only")))).status_code == 200


async def test_admin_api_manages_tenants(api: Api) -> None:
    op = bearer(api.operator_key)
    tenant_id = api.unique_id("acme")
    created = await api.client.post(
        "/api/v1/admin/tenants", headers=op, json={"id": tenant_id, "display_name": "Acme"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"
    assert_problem(
        await api.client.post("/api/v1/admin/tenants", headers=op, json={"id": tenant_id}), 409, "conflict"
    )
    body = assert_problem(
        await api.client.post("/api/v1/admin/tenants", headers=op, json={"id": "Not_Valid"}), 400
    )
    assert body["errors"][0]["field"] == "id"
    got = await api.client.get(f"/api/v1/admin/tenants/{tenant_id}", headers=op)
    assert got.json()["display_name"] == "Acme"
    assert_problem(await api.client.get("/api/v1/admin/tenants/no-such-tenant", headers=op), 404)
    assert_problem(
        await api.client.post(
            "/api/v1/admin/tenants/no-such-tenant/keys", headers=op, json={"permission": "admin"}
        ),
        404,
    )

    key = await api.client.post(
        f"/api/v1/admin/tenants/{tenant_id}/keys", headers=op, json={"permission": "admin"}
    )
    assert key.status_code == 201 and key.json()["key"].startswith("vh_")
    me = await api.client.get("/api/v1/me", headers=bearer(key.json()["key"]))
    assert me.json()["tenant_id"] == tenant_id and me.json()["permission"] == "admin"
    listed = await api.client.get(f"/api/v1/admin/tenants/{tenant_id}/keys", headers=op)
    assert [k["key_id"] for k in listed.json()["items"]] == [key.json()["key_id"]]
    assert "key" not in listed.json()["items"][0] and "secret_hash" not in listed.json()["items"][0]

    revoked = await api.client.delete(
        f"/api/v1/admin/tenants/{tenant_id}/keys/{key.json()['key_id']}", headers=op
    )
    assert revoked.status_code == 200
    assert_problem(await api.client.get("/api/v1/me", headers=bearer(key.json()["key"])), 401)


async def test_tenant_list_is_paginated(api: Api) -> None:
    for _ in range(3):
        await api.make_tenant()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (
            await api.client.get("/api/v1/admin/tenants", headers=bearer(api.operator_key), params=params)
        ).json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) >= 3 and seen == sorted(set(seen))
    assert_problem(
        await api.client.get(
            "/api/v1/admin/tenants", headers=bearer(api.operator_key), params={"cursor": "%%%"}
        ),
        400,
    )
    assert_problem(
        await api.client.get("/api/v1/admin/tenants", headers=bearer(api.operator_key), params={"limit": 0}),
        400,
    )


async def test_collection_limited_key(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant("read_only", collections=["docs", "faq"])
    me = await client.get("/api/v1/me", headers=bearer(tenant.key("read_only")))
    assert me.json()["collections"] == ["docs", "faq"]
    bad = await client.post(
        "/api/v1/keys",
        headers=bearer(tenant.admin),
        json={"permission": "read_only", "collections": ["no spaces"]},
    )
    assert_problem(bad, 400)

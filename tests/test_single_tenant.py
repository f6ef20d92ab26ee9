"""Single-tenant mode: cluster.enabled false + auth.require_authentication false serves one default
tenant without keys, for local development."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer


async def test_requests_without_a_key_act_as_the_default_tenant(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    other = await make_tenant("read_only")
    app = create_app(make_settings(auth={"require_authentication": False, "default_tenant_id": "local"}))
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        me = await client.get("/api/v1/me")
        assert me.status_code == 200
        assert me.json() == {
            "kind": "tenant",
            "key_id": None,
            "tenant_id": "local",
            "permission": "admin",
            "collections": None,
            "expires_at": None,
        }
        created = await client.post("/api/v1/keys", json={"permission": "read_only"})
        assert created.status_code == 201 and created.json()["tenant_id"] == "local"
        # A key that is sent is still checked, and speaks for its own tenant.
        keyed = await client.get("/api/v1/me", headers=bearer(other.key("read_only")))
        assert keyed.json()["tenant_id"] == other.tenant_id
        assert_problem(await client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}), 401)
        # Operator endpoints still need an operator key.
        assert_problem(await client.get("/api/v1/admin/tenants"), 403, "operator_key_required")


async def test_warns_when_listening_beyond_loopback(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="vectorhive.app")
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        caplog.clear()
        settings = make_settings(auth={"require_authentication": False}, server={"host": host})
        async with AsyncTestClient(create_app(settings)):
            pass
        assert any("authentication is off" in r.getMessage() for r in caplog.records) is warned, host


async def test_authentication_on_refuses_keyless_requests(make_settings: MakeSettings) -> None:
    async with AsyncTestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        assert_problem(await client.get("/api/v1/me"), 401)

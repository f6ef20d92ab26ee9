"""A key limited to some collections learns nothing about the others: not through other keys'
`collections`, not through the audit trail, not through the tenant's storage totals."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.auth.models import CreateKeyRequest
from service.auth.principal import Permission
from service.auth.service import KeyService
from service.db import Database
from tests.conftest import MakeTenant, bearer

SECRET = "secret-plans"


async def test_a_scoped_key_does_not_see_other_collections(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    keys = KeyService(db)
    for name in ("docs", SECRET):
        made = await client.post(
            "/api/v1/collections", json={"name": name, "dimension": 2}, headers=bearer(tenant.admin)
        )
        assert made.status_code == 201, made.text
    # Through the API, so that the audit trail records key.create with its collections.
    secret_key = await client.post(
        "/api/v1/keys",
        json={"permission": "read_only", "collections": [SECRET]},
        headers=bearer(tenant.admin),
    )
    assert secret_key.status_code in (200, 201), secret_key.text
    scoped = await keys.create(
        tenant.tenant_id, CreateKeyRequest(permission=Permission.ADMIN, collections=["docs"])
    )
    docs_reader = await client.post(
        "/api/v1/keys", json={"permission": "read_only", "collections": ["docs"]}, headers=bearer(scoped.key)
    )
    assert docs_reader.status_code in (200, 201), docs_reader.text
    headers = bearer(scoped.key)

    listed = await client.get("/api/v1/keys", headers=headers)
    assert listed.status_code == 200
    assert SECRET not in listed.text
    ids = {k["key_id"] for k in listed.json()["items"]}
    assert {scoped.key_id, docs_reader.json()["key_id"]} <= ids
    assert secret_key.json()["key_id"] not in ids
    assert (
        await client.get(f"/api/v1/keys/{secret_key.json()['key_id']}", headers=headers)
    ).status_code == 404

    audit = await client.get("/api/v1/audit", headers=headers)
    assert audit.status_code == 200
    assert SECRET not in audit.text
    assert any(e["action"] == "key.create" for e in audit.json()["items"])  # its own scope's events stay

    usage = await client.get("/api/v1/usage", headers=headers)
    assert usage.status_code == 200
    assert usage.json()["storage"]["collections"] == 1  # docs only
    # The unscoped admin still sees everything.
    full = await client.get("/api/v1/usage", headers=bearer(tenant.admin))
    assert full.json()["storage"]["collections"] == 2
    assert SECRET in (await client.get("/api/v1/keys", headers=bearer(tenant.admin))).text

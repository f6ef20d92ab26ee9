"""A key limited to some collections learns nothing about the others: not through other keys'
`collections`, not through the audit trail, not through the tenant's storage totals."""

from __future__ import annotations

from service.auth.models import CreateKeyRequest
from service.auth.principal import Permission
from service.auth.service import KeyService
from tests.conftest import Api, bearer

SECRET = "secret-plans"


async def test_a_scoped_key_does_not_see_other_collections(api: Api) -> None:
    tenant = await api.make_tenant()
    keys = KeyService(api.db)
    for name in ("docs", SECRET):
        made = await api.client.post(
            "/api/v1/collections", json={"name": name, "dimension": 2}, headers=bearer(tenant.admin)
        )
        assert made.status_code == 201, made.text
    # Through the API, so that the audit trail records key.create with its collections.
    secret_key = await api.client.post(
        "/api/v1/keys",
        json={"permission": "read_only", "collections": [SECRET]},
        headers=bearer(tenant.admin),
    )
    assert secret_key.status_code in (200, 201), secret_key.text
    scoped = await keys.create(
        tenant.tenant_id, CreateKeyRequest(permission=Permission.ADMIN, collections=["docs"])
    )
    docs_reader = await api.client.post(
        "/api/v1/keys", json={"permission": "read_only", "collections": ["docs"]}, headers=bearer(scoped.key)
    )
    assert docs_reader.status_code in (200, 201), docs_reader.text
    headers = bearer(scoped.key)

    listed = await api.client.get("/api/v1/keys", headers=headers)
    assert listed.status_code == 200
    assert SECRET not in listed.text
    ids = {k["key_id"] for k in listed.json()["items"]}
    assert {scoped.key_id, docs_reader.json()["key_id"]} <= ids
    assert secret_key.json()["key_id"] not in ids
    assert (
        await api.client.get(f"/api/v1/keys/{secret_key.json()['key_id']}", headers=headers)
    ).status_code == 404

    audit = await api.client.get("/api/v1/audit", headers=headers)
    assert audit.status_code == 200
    assert SECRET not in audit.text
    assert any(e["action"] == "key.create" for e in audit.json()["items"])  # its own scope's events stay

    usage = await api.client.get("/api/v1/usage", headers=headers)
    assert usage.status_code == 200
    assert usage.json()["storage"]["collections"] == 1  # docs only
    # The unscoped admin still sees everything.
    full = await api.client.get("/api/v1/usage", headers=bearer(tenant.admin))
    assert full.json()["storage"]["collections"] == 2
    assert SECRET in (await api.client.get("/api/v1/keys", headers=bearer(tenant.admin))).text

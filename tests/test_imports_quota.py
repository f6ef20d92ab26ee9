"""Imports within a tenant's quotas: storage limits checked before the merge writes anything, and
the token bucket pacing an import instead of failing it."""

from __future__ import annotations

from tests.conftest import assert_problem, bearer, set_quotas
from tests.s5_fixtures import build
from tests.support.imports import Imports
from tests.support.imports import import_server_fixture as import_server_fixture  # the fixtures
from tests.support.imports import imports_fixture as imports_fixture


async def test_storage_quota_fails_the_import_and_changes_nothing(
    imports: Imports,
    operator_key: str,
) -> None:
    tenant = await imports.tenant()
    await set_quotas(imports.http, operator_key, tenant.tenant_id, max_vectors=250)
    too_big = imports.published(n=300, chunk_size=100)
    status = await imports.import_and_wait(tenant.admin, "c", too_big)
    assert status["status"] == "error" and status["error"]["code"] == "quota_exceeded", status
    assert "250" in status["error"]["message"]
    assert_problem(await imports.http.get("/api/v1/collections/c", headers=bearer(tenant.admin)), 404)

    fits = imports.published(n=200, chunk_size=100)
    assert (await imports.import_and_wait(tenant.admin, "c", fits))["status"] == "loaded"
    usage = (await imports.http.get("/api/v1/usage", headers=bearer(tenant.admin))).json()
    assert usage["usage"]["vectors_imported"] == 200, usage
    # Re-importing the same ids adds nothing new, so it is within the quota.
    fits.files[fits.manifest_path] = build(
        name=fits.name, n=200, chunk_size=100, manifest_overrides={"updated": 2}
    ).files[fits.manifest_path]
    imports.publish(fits)
    assert (await imports.import_and_wait(tenant.admin, "c", fits))["status"] == "loaded"


async def test_an_import_refused_on_storage_bytes_leaves_room_for_what_fits(
    imports: Imports,
    operator_key: str,
) -> None:
    """The storage check comes before the merge writes anything: a refused import leaves no pages
    behind that would count against the tenant afterwards."""
    tenant = await imports.tenant()
    await imports.collection(tenant.admin, "c", [{"id": "a", "vector": [1.0] * 8}], dimension=8)
    size = await imports.db.pool.fetchval(
        """SELECT sum(pg_total_relation_size(to_regclass('vectors_' || id)))
           FROM collections WHERE tenant_id = $1""",
        tenant.tenant_id,
    )
    await set_quotas(imports.http, operator_key, tenant.tenant_id, max_storage_bytes=int(size) + 20_000)
    big = imports.published(n=2000, chunk_size=1000)
    status = await imports.import_and_wait(tenant.admin, "c", big)
    assert status["error"]["code"] == "quota_exceeded", status
    after = await imports.db.pool.fetchval(
        """SELECT sum(pg_total_relation_size(to_regclass('vectors_' || id)))
           FROM collections WHERE tenant_id = $1""",
        tenant.tenant_id,
    )
    assert after == size
    small = await imports.http.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "b", "vector": [0.5] * 8}]},
        headers=bearer(tenant.admin),
    )
    assert small.status_code == 200, small.text


async def test_an_import_is_paced_by_the_tenants_token_bucket(
    imports: Imports,
    operator_key: str,
) -> None:
    """300 vectors at 0.001 tokens each need 0.3 tokens; a bucket of 0.1 refilled at 0.2/s makes the
    import wait about a second for them instead of failing."""
    tenant = await imports.tenant()
    await set_quotas(
        imports.http, operator_key, tenant.tenant_id, token_bucket_capacity=0.1, token_refill_per_second=0.2
    )
    source = imports.published(n=300, chunk_size=100)
    status = await imports.import_and_wait(tenant.admin, "c", source)
    assert status["status"] == "loaded", status
    assert status["duration_ms"] >= 900, status


async def test_an_import_that_can_never_afford_a_vector_fails_at_once(
    imports: Imports,
    operator_key: str,
) -> None:
    tenant = await imports.tenant()
    await set_quotas(
        imports.http, operator_key, tenant.tenant_id, token_bucket_capacity=0.0005
    )  # one imported vector costs 0.001
    source = imports.published(n=10, chunk_size=10)
    status = await imports.import_and_wait(tenant.admin, "c", source)
    assert status["error"]["code"] == "quota_exceeded", status
    assert "token bucket" in status["error"]["message"]

"""Who sees and starts which imports: tenants apart (down to row-level security on the imports
table), collection-scoped keys, refused requests, paging, and the bound on active imports."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import assert_problem, bearer
from tests.s5_fixtures import OWNER
from tests.support.imports import Imports
from tests.support.imports import import_server_fixture as import_server_fixture  # the fixtures
from tests.support.imports import imports_fixture as imports_fixture


async def test_imports_are_invisible_to_other_tenants(
    imports: Imports,
) -> None:
    a = await imports.tenant()
    b = await imports.tenant()
    source = imports.published(n=10, chunk_size=10)
    status = await imports.import_and_wait(a.admin, "shared-name", source)
    import_id = status["import_id"]
    for method in ("get", "delete"):
        response = await getattr(imports.http, method)(
            f"/api/v1/imports/{import_id}", headers=bearer(b.admin)
        )
        body = assert_problem(response, 404, "not_found")
        never = await getattr(imports.http, method)(
            f"/api/v1/imports/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=bearer(b.admin)
        )
        assert body["detail"].replace(import_id, "X") == assert_problem(never, 404)["detail"].replace(
            f"{'0' * 8}-0000-0000-0000-{'0' * 12}", "X"
        )
    assert (await imports.http.get("/api/v1/imports", headers=bearer(b.admin))).json()["items"] == []
    listed = (await imports.http.get("/api/v1/imports", headers=bearer(a.admin))).json()["items"]
    assert [i["import_id"] for i in listed] == [import_id]
    # B importing into the same name gets a collection of its own.
    mine = await imports.import_and_wait(b.admin, "shared-name", source)
    assert mine["status"] == "loaded"
    assert len(await imports.all_vectors(a.admin, "shared-name")) == 10
    assert (await imports.http.get(f"/api/v1/imports/{import_id}", headers=bearer(a.admin))).json()[
        "status"
    ] == "loaded"


async def test_unscoped_queries_on_imports_see_only_the_tenants_own_rows(
    imports: Imports,
) -> None:
    """Row-level security on the imports table: a query that forgets its WHERE cannot reach another
    tenant's imports (their manifest paths and owner addresses)."""
    a = await imports.tenant()
    b = await imports.tenant()
    source = imports.published(n=5, chunk_size=5)
    await imports.import_and_wait(a.admin, "c", source)
    b_import = await imports.import_and_wait(b.admin, "c", source)

    class Undo(Exception):
        pass

    with pytest.raises(Undo):  # rolls the transaction back
        async with imports.db.tenant_transaction(a.tenant_id) as conn:
            tenants = {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM imports")}
            assert tenants == {a.tenant_id}
            assert await conn.execute("UPDATE imports SET status = 'error'") == "UPDATE 1"
            raise Undo
    row = await imports.db.pool.fetchrow(
        "SELECT status FROM imports WHERE id = $1::uuid", b_import["import_id"]
    )
    assert row["status"] == "loaded"


async def test_collection_scoped_keys_see_only_their_collections(
    imports: Imports,
) -> None:
    tenant = await imports.tenant("read_write", collections=["mine"])
    source = imports.published(n=5, chunk_size=5)
    other = await imports.import_and_wait(tenant.admin, "other", source)
    mine = await imports.import_and_wait(tenant.key("read_write"), "mine", source)
    assert mine["status"] == "loaded"
    scoped = bearer(tenant.key("read_write"))
    assert_problem(await imports.http.get(f"/api/v1/imports/{other['import_id']}", headers=scoped), 404)
    listed = (await imports.http.get("/api/v1/imports", headers=scoped)).json()["items"]
    assert [i["import_id"] for i in listed] == [mine["import_id"]]
    refused = await imports.http.post(
        "/api/v1/collections/other/imports",
        json={"source": "s5", "manifest_path": source.manifest_path, "user_address": OWNER},
        headers=scoped,
    )
    assert_problem(refused, 404)


async def test_bad_requests_are_refused_and_change_nothing(
    imports: Imports,
    client: AsyncTestClient[Litestar],
) -> None:
    tenant = await imports.tenant("read_only", "read_write")
    good = {"source": "s5", "manifest_path": "home/vector-databases/x/y/manifest.json", "user_address": OWNER}
    count = await imports.db.pool.fetchval(
        "SELECT count(*) FROM imports WHERE tenant_id = $1", tenant.tenant_id
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "source": "ipfs"}, "source"),
        ({**good, "user_address": "0x123"}, "user_address"),
        ({**good, "manifest_path": "home/../../etc/passwd"}, "manifest_path"),
        ({**good, "encryption_key": "c2VjcmV0LWJ1dC10b28tc2hvcnQ="}, "encryption_key"),
        ({**good, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        response = await imports.http.post(
            "/api/v1/collections/c/imports", json=body, headers=bearer(tenant.admin)
        )
        problem = assert_problem(response, 400)
        assert field in response.text, response.text
        assert "c2VjcmV0" not in response.text  # the key is never echoed
        del problem
    missing = await imports.http.post(
        "/api/v1/collections/nope/imports",
        json={**good, "create_collection": False},
        headers=bearer(tenant.admin),
    )
    assert_problem(missing, 404, "not_found")
    read_only = await imports.http.post(
        "/api/v1/collections/c/imports", json=good, headers=bearer(tenant.key("read_only"))
    )
    assert_problem(read_only, 403)
    # The session's server has no portal configured: imports are off there, and say so.
    off = await client.post("/api/v1/collections/c/imports", json=good, headers=bearer(tenant.admin))
    assert_problem(off, 503, "imports_not_configured")
    assert (
        await imports.db.pool.fetchval("SELECT count(*) FROM imports WHERE tenant_id = $1", tenant.tenant_id)
        == count
    )


async def test_list_pages_newest_first(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=5, chunk_size=5)
    ids = [(await imports.import_and_wait(tenant.admin, f"c{i}", source))["import_id"] for i in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await imports.http.get("/api/v1/imports", params=params, headers=bearer(tenant.admin))).json()
        seen += [item["import_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert_problem(
        await imports.http.get(
            "/api/v1/imports", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=bearer(tenant.admin)
        ),
        400,
    )


async def test_a_tenant_has_a_bounded_number_of_active_imports(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    other = await imports.tenant()
    source = imports.published(n=5, chunk_size=5)
    imports.portal.faults[source.manifest_path] = ["slow:0.8"] * 4
    accepted = [await imports.submit(tenant.admin, f"c{i}", source) for i in range(4)]
    payload = {"source": "s5", "manifest_path": source.manifest_path, "user_address": OWNER}
    refused = await imports.http.post(
        "/api/v1/collections/c9/imports", json=payload, headers=bearer(tenant.admin)
    )
    assert_problem(refused, 409, "too_many_active_imports")
    # Another tenant is not affected.
    assert (await imports.submit(other.admin, "c", source))["status"] == "pending"
    for item in accepted:
        await imports.wait_for(tenant.admin, item["import_id"])
    assert (await imports.submit(tenant.admin, "c9", source))["status"] == "pending"

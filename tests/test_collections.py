"""Collections and vectors through the API: shapes, validation, atomicity, permissions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.db import Database
from tests.conftest import LiveServer, MakeTenant, assert_problem, bearer

API = "/api/v1/collections"


def vectors(n: int, dim: int, seed: int = 0, prefix: str = "v") -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, dim)).astype(np.float32)
    return [{"id": f"{prefix}{i}", "vector": data[i].tolist(), "metadata": {"i": i}} for i in range(n)]


async def test_create_get_list_delete(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    created = await client.post(
        API,
        headers=key,
        json={
            "name": "docs",
            "dimension": 4,
            "metric": "l2",
            "index": {"m": 8, "ef_construction": 32},
            "description": "test",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "docs" and body["qualified_name"] == f"{tenant.tenant_id}:docs"
    assert (body["dimension"], body["metric"], body["storage"]) == (4, "l2", "float32")
    assert body["index"]["status"] == "none" and (body["index"]["m"], body["index"]["ef_construction"]) == (
        8,
        32,
    )
    assert body["vector_count"] == 0 and body["size_bytes"] > 0

    assert_problem(
        await client.post(API, headers=key, json={"name": "docs", "dimension": 4}), 409, "conflict"
    )
    await client.post(API, headers=key, json={"name": "faq", "dimension": 4})
    page = (await client.get(API, headers=key, params={"limit": 1})).json()
    assert [c["name"] for c in page["items"]] == ["docs"] and page["next_cursor"]
    page2 = (await client.get(API, headers=key, params={"cursor": page["next_cursor"]})).json()
    assert [c["name"] for c in page2["items"]] == ["faq"] and page2["next_cursor"] is None

    await client.put(f"{API}/docs/vectors", headers=key, json={"vectors": vectors(3, 4)})
    stats = (await client.get(f"{API}/docs", headers=key)).json()
    assert stats["vector_count"] == 3

    collection_id = await db.pool.fetchval(
        "SELECT id FROM collections WHERE tenant_id = $1 AND name = 'docs'", tenant.tenant_id
    )
    table = f"vectors_{collection_id}"
    assert (await client.delete(f"{API}/docs", headers=key)).status_code == 204
    assert_problem(await client.get(f"{API}/docs", headers=key), 404)
    assert await db.pool.fetchval("SELECT to_regclass($1)", table) is None  # storage dropped
    # The name is free again.
    assert (await client.post(API, headers=key, json={"name": "docs", "dimension": 8})).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "has space", "dimension": 4}, "name"),
        ({"name": "x" * 65, "dimension": 4}, "name"),
        ({"name": "ok", "dimension": 0}, "dimension"),
        ({"name": "ok", "dimension": 2001}, "dimension"),  # float32 HNSW limit
        ({"name": "ok", "dimension": 4001, "storage": "float16"}, "dimension"),
        ({"name": "ok", "dimension": 4, "metric": "hamming"}, "metric"),
        ({"name": "ok", "dimension": 4, "index": {"m": 1}}, "index.m"),
        ({"name": "ok", "dimension": 4, "extra": 1}, "extra"),
    ],
)
async def test_create_validation(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, body: dict[str, Any], field: str
) -> None:
    tenant = await make_tenant()
    problem = assert_problem(await client.post(API, headers=bearer(tenant.admin), json=body), 400)
    assert field in str(problem)
    assert (await client.get(API, headers=bearer(tenant.admin))).json()["items"] == []


async def test_float16_allows_4000_dimensions(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    made = await client.post(API, headers=key, json={"name": "big", "dimension": 4000, "storage": "float16"})
    assert made.status_code == 201, made.text
    data = vectors(2, 4000)
    assert (await client.put(f"{API}/big/vectors", headers=key, json={"vectors": data})).status_code == 200
    got = (await client.get(f"{API}/big/vectors/v1", headers=key)).json()
    assert np.allclose(got["vector"], data[1]["vector"], atol=1e-2, rtol=1e-3)


async def test_upsert_replaces_and_counts(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 3})
    first = await client.put(
        f"{API}/c/vectors",
        headers=key,
        json={"vectors": [{"id": "a", "vector": [1, 0, 0], "metadata": {"v": 1}}]},
    )
    assert first.json() == {"upserted": 1}
    await client.put(
        f"{API}/c/vectors",
        headers=key,
        json={
            "vectors": [
                {"id": "a", "vector": [0, 1, 0], "metadata": {"v": 2}},
                {"id": "b", "vector": [0, 0, 1]},
            ]
        },
    )
    got = (await client.get(f"{API}/c/vectors/a", headers=key)).json()
    assert got == {"id": "a", "metadata": {"v": 2}, "vector": [0.0, 1.0, 0.0]}
    assert (await client.get(f"{API}/c/vectors/b", headers=key)).json()["metadata"] == {}
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 2


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([{"id": "a", "vector": [1, 2, 3]}, {"id": "b", "vector": [1, 2]}], "vectors[1].vector"),
        ([{"id": "a", "vector": [1, 2, 3]}, {"id": "a", "vector": [1, 2, 3]}], "vectors[1].id"),
        ([{"id": "a", "vector": [1, 2, 3]}, {"id": "b", "vector": [1e39, 0, 0]}], "vectors[1].vector"),
        # Overflows float64: refused while the body is decoded, before it has field names.
        ([{"id": "a", "vector": ["__1e999__", 0, 0]}], "vectors[0].vector[0]: Number out of range"),
        ([{"id": "a", "vector": [1, 2, 3], "metadata": [1, 2]}], "vectors[0].metadata"),
        ([{"id": "a", "vector": [1, 2, 3], "metadata": "text"}], "vectors[0].metadata"),
        (
            [
                {"id": "a", "vector": [1, 2, 3]},
                {"id": "b", "vector": [1, 2, 3], "metadata": {"x": "y" * 70_000}},
            ],
            "vectors[1].metadata",
        ),
        ([{"id": "", "vector": [1, 2, 3]}], "vectors[0].id"),
        ([{"id": "a/b", "vector": [1, 2, 3]}], "vectors[0].id"),
        ([], "vectors"),
    ],
)
async def test_bad_upserts_name_the_item_and_change_nothing(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, items: list[dict[str, Any]], field: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 3})
    await client.put(f"{API}/c/vectors", headers=key, json={"vectors": [{"id": "keep", "vector": [1, 1, 1]}]})
    # Sent as text so that literals Python cannot hold (1e999) reach the server as written.
    body = json.dumps({"vectors": items}).replace('"__1e999__"', "1e999")
    response = await client.put(
        f"{API}/c/vectors", headers=key | {"content-type": "application/json"}, content=body
    )
    problem = assert_problem(response, 400)
    assert field in str(problem), problem
    page = (await client.get(f"{API}/c/vectors", headers=key)).json()
    assert [v["id"] for v in page["items"]] == ["keep"]
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 1


async def test_nan_is_not_json(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    response = await client.put(
        f"{API}/c/vectors",
        headers=key | {"content-type": "application/json"},
        content=b'{"vectors": [{"id": "a", "vector": [NaN, 1]}]}',
    )
    assert "not valid JSON" in assert_problem(response, 400)["detail"]


async def test_batch_limits(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, app: Litestar
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    limit = app.state.settings.collections.max_batch_vectors
    too_many = [{"id": str(i), "vector": [1.0, 2.0]} for i in range(limit + 1)]
    assert (
        "at most"
        in assert_problem(await client.put(f"{API}/c/vectors", headers=key, json={"vectors": too_many}), 400)[
            "detail"
        ]
    )
    huge = (
        b'{"vectors": [{"id": "a", "vector": [1, 2], "metadata": {"x": "'
        + b"y" * (17 * 1024 * 1024)
        + b'"}}]}'
    )
    response = await client.put(
        f"{API}/c/vectors", headers=key | {"content-type": "application/json"}, content=huge
    )
    assert_problem(response, 413, "payload_too_large")
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 0


async def test_delete_by_id_ids_and_filter(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    items = [{"id": f"v{i}", "vector": [1.0, float(i)], "metadata": {"even": i % 2 == 0}} for i in range(10)]
    await client.put(f"{API}/c/vectors", headers=key, json={"vectors": items})
    assert (await client.delete(f"{API}/c/vectors/v0", headers=key)).status_code == 204
    assert_problem(await client.delete(f"{API}/c/vectors/v0", headers=key), 404)
    deleted = await client.post(f"{API}/c/vectors/delete", headers=key, json={"ids": ["v1", "v2", "nope"]})
    assert deleted.json() == {"deleted": 2}
    deleted = await client.post(f"{API}/c/vectors/delete", headers=key, json={"filter": {"even": True}})
    assert deleted.json() == {"deleted": 3}  # v4 v6 v8
    remaining = [v["id"] for v in (await client.get(f"{API}/c/vectors", headers=key)).json()["items"]]
    assert remaining == ["v3", "v5", "v7", "v9"]
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 4
    for body in ({}, {"ids": ["v3"], "filter": {"even": False}}):
        assert_problem(await client.post(f"{API}/c/vectors/delete", headers=key, json=body), 400)
    assert_problem(
        await client.post(f"{API}/c/vectors/delete", headers=key, json={"filter": {"$nope": 1}}),
        400,
        "invalid_filter",
    )


async def test_scroll_is_stable_and_complete(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    ids = [f"id-{i:03d}" for i in range(25)]
    await client.put(
        f"{API}/c/vectors", headers=key, json={"vectors": [{"id": i, "vector": [1, 2]} for i in ids]}
    )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10, "include_vector": "true"} | (
            {"cursor": cursor} if cursor else {}
        )
        page = (await client.get(f"{API}/c/vectors", headers=key, params=params)).json()
        assert all(item["vector"] == [1.0, 2.0] for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    plain = (await client.get(f"{API}/c/vectors", headers=key, params={"limit": 1})).json()
    assert "vector" not in plain["items"][0]


async def test_permissions_on_collections(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant("read_write", "read_only", "mcp")
    admin, rw, ro, mcp = (bearer(tenant.key(p)) for p in ("admin", "read_write", "read_only", "mcp"))
    assert (await client.post(API, headers=admin, json={"name": "c", "dimension": 2})).status_code == 201
    for key in (rw, ro, mcp):
        assert_problem(await client.post(API, headers=key, json={"name": "d", "dimension": 2}), 403)
        assert_problem(await client.delete(f"{API}/c", headers=key), 403)
    write = {"vectors": [{"id": "a", "vector": [1, 2]}]}
    assert (await client.put(f"{API}/c/vectors", headers=rw, json=write)).status_code == 200
    assert_problem(
        await client.put(f"{API}/c/vectors", headers=ro, json=write), 403, "insufficient_permission"
    )
    assert_problem(await client.post(f"{API}/c/vectors/delete", headers=ro, json={"ids": ["a"]}), 403)
    assert_problem(await client.delete(f"{API}/c/vectors/a", headers=ro), 403)
    search = {"vector": [1, 2]}
    assert (await client.post(f"{API}/c/search", headers=ro, json=search)).status_code == 200
    assert_problem(await client.post(f"{API}/c/search", headers=mcp, json=search), 403, "mcp_key_not_allowed")


async def test_collection_limited_key_sees_only_its_collections(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_write", collections=["allowed"])
    admin, limited = bearer(tenant.admin), bearer(tenant.key("read_write"))
    for name in ("allowed", "hidden"):
        await client.post(API, headers=admin, json={"name": name, "dimension": 2})
        await client.put(
            f"{API}/{name}/vectors", headers=admin, json={"vectors": [{"id": "a", "vector": [1, 2]}]}
        )
    assert [c["name"] for c in (await client.get(API, headers=limited)).json()["items"]] == ["allowed"]
    assert (
        await client.post(f"{API}/allowed/search", headers=limited, json={"vector": [1, 2]})
    ).status_code == 200
    for method, path, body in [
        ("GET", f"{API}/hidden", None),
        ("GET", f"{API}/hidden/vectors/a", None),
        ("GET", f"{API}/hidden/vectors", None),
        ("PUT", f"{API}/hidden/vectors", {"vectors": [{"id": "b", "vector": [1, 2]}]}),
        ("POST", f"{API}/hidden/search", {"vector": [1, 2]}),
        ("POST", f"{API}/hidden/vectors/delete", {"ids": ["a"]}),
    ]:
        assert_problem(await client.request(method, path, headers=limited, json=body), 404)
    assert (await client.get(f"{API}/hidden", headers=admin)).json()["vector_count"] == 1


async def test_same_short_name_in_two_tenants(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    a, b = await make_tenant(), await make_tenant()
    for tenant, value in ((a, [1.0, 0.0]), (b, [0.0, 1.0])):
        made = await client.post(API, headers=bearer(tenant.admin), json={"name": "shared", "dimension": 2})
        assert made.json()["qualified_name"] == f"{tenant.tenant_id}:shared"
        await client.put(
            f"{API}/shared/vectors",
            headers=bearer(tenant.admin),
            json={"vectors": [{"id": "x", "vector": value}]},
        )
    assert (await client.get(f"{API}/shared/vectors/x", headers=bearer(a.admin))).json()["vector"] == [
        1.0,
        0.0,
    ]
    assert (await client.get(f"{API}/shared/vectors/x", headers=bearer(b.admin))).json()["vector"] == [
        0.0,
        1.0,
    ]


async def test_concurrent_overlapping_upserts_do_not_deadlock(
    live_server: LiveServer, make_tenant: MakeTenant
) -> None:
    """Writers into one collection with overlapping ids, in opposite orders, truly at once: all succeed."""
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    async with httpx.AsyncClient(base_url=live_server.url, headers=key, timeout=60) as http:
        await http.post(API, json={"name": "c", "dimension": 2})
        batches = []
        for round_ in range(8):
            ids = [f"id{i}" for i in range(300)]
            if round_ % 2:
                ids.reverse()
            batches.append({"vectors": [{"id": i, "vector": [1.0, float(round_)]} for i in ids]})
        responses = await asyncio.gather(*(http.put(f"{API}/c/vectors", json=b) for b in batches))
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        assert (await http.get(f"{API}/c")).json()["vector_count"] == 300


async def test_inputs_the_database_cannot_store_are_400(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    assert "name" in str(
        assert_problem(await client.post(API, headers=key, json={"name": "docs\n", "dimension": 2}), 400)
    )
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    nul = {"vectors": [{"id": "a", "vector": [1, 2], "metadata": {"text": "x\u0000y"}}]}
    assert_problem(await client.put(f"{API}/c/vectors", headers=key, json=nul), 400, "invalid_request")
    assert_problem(await client.get(f"{API}/c/vectors/a%00b", headers=key), 400)
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 0


async def test_zero_vectors_have_no_cosine(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "cos", "dimension": 2})
    await client.post(API, headers=key, json={"name": "euclid", "dimension": 2, "metric": "l2"})
    zero = {"vectors": [{"id": "a", "vector": [1, 0]}, {"id": "z", "vector": [0, 0]}]}
    problem = assert_problem(await client.put(f"{API}/cos/vectors", headers=key, json=zero), 400)
    assert problem["errors"][0]["field"] == "vectors[1].vector"
    assert_problem(await client.post(f"{API}/cos/search", headers=key, json={"vector": [0, 0]}), 400)
    assert (await client.put(f"{API}/euclid/vectors", headers=key, json=zero)).status_code == 200
    hits = (await client.post(f"{API}/euclid/search", headers=key, json={"vector": [0, 0]})).json()["results"]
    assert [h["id"] for h in hits] == ["z", "a"] and hits[0]["score"] == 0.0


async def test_empty_delete_filter_is_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    await client.put(f"{API}/c/vectors", headers=key, json={"vectors": [{"id": "a", "vector": [1, 2]}]})
    assert_problem(await client.post(f"{API}/c/vectors/delete", headers=key, json={"filter": {}}), 400)
    assert (await client.get(f"{API}/c", headers=key)).json()["vector_count"] == 1


async def test_oversized_filters_are_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await client.post(API, headers=key, json={"name": "c", "dimension": 2})
    many = {"$or": [{"n": {"$in": list(range(900))}} for _ in range(3)]}
    problem = assert_problem(
        await client.post(f"{API}/c/search", headers=key, json={"vector": [1, 2], "filter": many}),
        400,
        "invalid_filter",
    )
    assert "more than 1000 conditions" in problem["detail"]
    empties = {"$or": [{}] * 5000}
    assert_problem(
        await client.post(f"{API}/c/search", headers=key, json={"vector": [1, 2], "filter": empties}), 400
    )


async def test_delete_collection_during_writes(live_server: LiveServer, make_tenant: MakeTenant) -> None:
    """Deleting a collection while upserts run: every request ends cleanly (no 500, no deadlock)."""
    tenant = await make_tenant()
    async with httpx.AsyncClient(base_url=live_server.url, headers=bearer(tenant.admin), timeout=60) as http:
        await http.post(API, json={"name": "c", "dimension": 8})
        rng = np.random.default_rng(0)
        batches = [
            {"vectors": [{"id": f"{r}-{i}", "vector": rng.normal(size=8).tolist()} for i in range(300)]}
            for r in range(6)
        ]
        writes = [http.put(f"{API}/c/vectors", json=b) for b in batches]
        responses = await asyncio.gather(*writes[:3], http.delete(f"{API}/c"), *writes[3:])
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 204, 404}, [r.text for r in responses if r.status_code >= 500]
        assert statuses[3] == 204
        assert (await http.get(f"{API}/c")).status_code == 404

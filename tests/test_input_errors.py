"""Bad input is refused with a 400/413/415 problem that names the first problem in words (issue 11),
never a 500 and never a quiet empty 200."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import MakeTenant, assert_problem, bearer

API = "/api/v1/collections"


async def _tenant_with_collection(client: Any, make_tenant: MakeTenant, **create: Any) -> dict[str, str]:
    tenant = await make_tenant()
    h = bearer(tenant.admin)
    body = {"name": "c", "dimension": 3, **create}
    assert (await client.post(API, headers=h, json=body)).status_code == 201
    return h


async def test_detail_names_the_first_problem(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    h = bearer((await make_tenant()).admin)
    body = assert_problem(await client.post(API, headers=h, json={"name": "x"}), 400, "invalid_request")
    assert body["detail"] == "dimension is required"
    assert body["errors"] == [{"source": "body", "message": "is required", "field": "dimension"}]

    body = assert_problem(await client.post(API, headers=h, content=b""), 400)
    assert body["detail"] == "The request needs a JSON body (a CreateCollectionRequest object); it was empty."

    body = assert_problem(
        await client.post(API, headers=h, json={"name": "x", "dimension": 3, "metric": "dot"}), 400
    )
    assert body["detail"] == "metric: 'dot' is not one of the allowed values: cosine, l2, inner_product"

    body = assert_problem(await client.post(API, headers=h, json={"name": "a b", "dimension": 3}), 400)
    assert "letters, digits" in body["detail"] and "regex" not in body["detail"]

    # The limit of the storage asked for, not the largest of all storages.
    body = assert_problem(await client.post(API, headers=h, json={"name": "x", "dimension": 5000}), 400)
    assert "2000 for float32" in body["detail"]

    body = assert_problem(await client.get(API, headers=h, params={"limit": "x"}), 400)
    assert body["errors"][0]["source"] == "query"
    assert body["detail"].startswith("query parameter limit:")

    body = assert_problem(
        await client.post(API, headers=h, json={"name": "x", "dimension": 3, "bogus": 1}), 400
    )
    assert body["errors"][0]["field"] == "bogus" and "known fields: name, dimension" in body["detail"]


async def test_types_are_strict_and_bodies_are_json(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    h = await _tenant_with_collection(client, make_tenant)
    body = assert_problem(
        await client.post(f"{API}/c/search", headers=h, json={"vector": [1, 0, 0], "top_k": "5"}), 400
    )
    assert body["detail"] == "top_k: Expected `int`, got `str`"
    body = assert_problem(await client.post(f"{API}/c/search", headers=h, json={"vector": ["1", 0, 0]}), 400)
    assert body["errors"][0]["field"] == "vector[0]"
    body = assert_problem(
        await client.post(
            f"{API}/c/search", headers=h | {"content-type": "text/plain"}, content=b'{"vector": [1, 0, 0]}'
        ),
        415,
        "unsupported_media_type",
    )
    assert "application/json" in body["detail"]
    # application/json with a charset, and no Content-Type at all, are JSON.
    ok = await client.post(
        f"{API}/c/search",
        headers=h | {"content-type": "application/json; charset=utf-8"},
        content=b'{"vector": [1, 0, 0]}',
    )
    assert ok.status_code == 200, ok.text


async def test_dot_names_are_refused(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    h = bearer((await make_tenant()).admin)
    for name in (".", ".."):
        assert_problem(await client.post(API, headers=h, json={"name": name, "dimension": 3}), 400)
    assert (await client.post(API, headers=h, json={"name": ".a.", "dimension": 3})).status_code == 201


async def test_body_too_large_names_the_limit(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    h = await _tenant_with_collection(client, make_tenant)
    body = assert_problem(
        await client.put(
            f"{API}/c/vectors",
            headers=h | {"content-type": "application/json"},
            content=b" " * (17 * 1024 * 1024),
        ),
        413,
    )
    assert "16,777,216 bytes" in body["detail"]


async def test_filter_mistakes_are_400_not_empty_200(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    h = await _tenant_with_collection(client, make_tenant)
    search = f"{API}/c/search"
    body = assert_problem(
        await client.post(search, headers=h, json={"vector": [1, 0, 0], "filter": {"year": {"gte": 2022}}}),
        400,
        "invalid_filter",
    )
    assert "$gte" in body["detail"]
    for wrong in ({"year": {"$gte": [2022]}}, {"year": {"$in": 2022}}, {"year": {"$exists": "yes"}}):
        assert_problem(await client.post(search, headers=h, json={"vector": [1, 0, 0], "filter": wrong}), 400)
    # An explicit $eq with such an object is still allowed.
    ok = await client.post(
        search, headers=h, json={"vector": [1, 0, 0], "filter": {"y": {"$eq": {"gte": 1}}}}
    )
    assert ok.status_code == 200, ok.text


async def test_deep_input_is_400_not_500(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    h = await _tenant_with_collection(client, make_tenant)
    search = f"{API}/c/search"
    deep = b'{"vector": [1, 0, 0], "filter": {"a": ' + b"[" * 3000 + b"]" * 3000 + b"}}"
    assert_problem(
        await client.post(search, headers=h | {"content-type": "application/json"}, content=deep), 400
    )
    path = ".".join(["a"] * 1000)
    assert_problem(await client.post(search, headers=h, json={"vector": [1, 0, 0], "filter": {path: 1}}), 400)
    value: Any = 1
    for _ in range(900):
        value = [value]
    assert_problem(
        await client.post(search, headers=h, json={"vector": [1, 0, 0], "filter": {"a": {"$eq": value}}}), 400
    )


async def test_bad_query_values_are_400_not_500(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    h = bearer((await make_tenant()).admin)
    assert_problem(await client.get("/api/v1/audit", headers=h, params={"cursor": "wrI"}), 400)
    assert_problem(
        await client.get("/api/v1/audit", headers=h, params={"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OQ"}), 400
    )
    # Nothing can come before the earliest time: the range is empty, which is a 400 (not an OverflowError).
    assert_problem(
        await client.get("/api/v1/usage", headers=h, params={"until": "0001-01-01T00:00:00Z"}), 400
    )
    ok = await client.get("/api/v1/usage", headers=h, params={"until": "0001-02-01T00:00:00Z"})
    assert ok.status_code == 200, ok.text
    assert_problem(
        await client.get("/api/v1/usage", headers=h, params={"until": "9999-12-31T23:00:00-05:00"}), 400
    )


async def test_vectors_without_a_numeric_score_are_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    h = bearer(tenant.admin)
    assert (
        await client.post(API, headers=h, json={"name": "h", "dimension": 3, "storage": "float16"})
    ).status_code == 201
    body = assert_problem(
        await client.put(
            f"{API}/h/vectors", headers=h, json={"vectors": [{"id": "a", "vector": [1e-10, 0, 0]}]}
        ),
        400,
    )
    assert "float16" in body["detail"] and body["errors"][0]["field"] == "vectors[0].vector"
    assert (await client.post(API, headers=h, json={"name": "c", "dimension": 3})).status_code == 201
    assert (
        await client.put(f"{API}/c/vectors", headers=h, json={"vectors": [{"id": "a", "vector": [0, 1, 0]}]})
    ).status_code == 200
    assert_problem(await client.post(f"{API}/c/search", headers=h, json={"vector": [1e-30, 0, 0]}), 400)
    assert (
        await client.post(API, headers=h, json={"name": "l", "dimension": 3, "metric": "l2"})
    ).status_code == 201
    assert_problem(
        await client.put(
            f"{API}/l/vectors", headers=h, json={"vectors": [{"id": "a", "vector": [1e20, 0, 0]}]}
        ),
        400,
    )
    # Small but representable vectors still score a number.
    found = await client.post(f"{API}/c/search", headers=h, json={"vector": [1e-15, 1e-15, 0]})
    assert found.status_code == 200 and isinstance(found.json()["results"][0]["score"], float)

"""Upserts with vectors as base64 of little-endian float32 (`vector_b64`) beside JSON number lists."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import assert_problem, bearer


def b64(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


async def count(client: AsyncTestClient[Litestar], key: dict[str, str], name: str) -> int:
    response = await client.get(f"/api/v1/collections/{name}", headers=key)
    assert response.status_code == 200, response.text
    total: int = response.json()["vector_count"]
    return total


async def test_same_vectors_as_json_and_base64_search_alike(
    client: AsyncTestClient[Litestar], make_tenant: Callable[..., Any]
) -> None:
    key = bearer((await make_tenant()).admin)
    vectors = np.random.default_rng(7).standard_normal((40, 8)).astype(np.float32)
    results = []
    for name, item in (
        ("as-json", lambda i, v: {"id": f"v{i}", "vector": v.tolist(), "metadata": {"i": i}}),
        ("as-b64", lambda i, v: {"id": f"v{i}", "vector_b64": b64(v), "metadata": {"i": i}}),
    ):
        created = await client.post("/api/v1/collections", json={"name": name, "dimension": 8}, headers=key)
        assert created.status_code == 201, created.text
        body = {"vectors": [item(i, v) for i, v in enumerate(vectors)]}
        upserted = await client.put(f"/api/v1/collections/{name}/vectors", json=body, headers=key)
        assert upserted.status_code == 200, upserted.text
        assert upserted.json() == {"upserted": 40}
        search = await client.post(
            f"/api/v1/collections/{name}/search",
            json={"vector": vectors[3].tolist(), "top_k": 5, "include_vector": True},
            headers=key,
        )
        assert search.status_code == 200, search.text
        results.append(search.json()["results"])
    assert results[0] == results[1]
    assert results[0][0]["id"] == "v3"

    # One batch may mix both forms.
    mixed = {
        "vectors": [{"id": "a", "vector": vectors[0].tolist()}, {"id": "b", "vector_b64": b64(vectors[1])}]
    }
    assert (
        await client.put("/api/v1/collections/as-b64/vectors", json=mixed, headers=key)
    ).status_code == 200
    stored = (await client.get("/api/v1/collections/as-b64/vectors/b", headers=key)).json()["vector"]
    assert stored == vectors[1].tolist()


async def test_bad_base64_writes_nothing_and_names_the_item(
    client: AsyncTestClient[Litestar], make_tenant: Callable[..., Any]
) -> None:
    key = bearer((await make_tenant()).admin)
    url = "/api/v1/collections/c/vectors"
    created = await client.post("/api/v1/collections", json={"name": "c", "dimension": 4}, headers=key)
    assert created.status_code == 201
    good = {"id": "ok", "vector_b64": b64([1, 2, 3, 4])}
    cases = [
        ({"id": "x", "vector_b64": "not base64!"}, "vectors[1].vector_b64", "is not valid base64"),
        ({"id": "x", "vector_b64": "AAAA"}, "vectors[1].vector_b64", "decodes to 3 bytes"),
        ({"id": "x", "vector_b64": b64([1, 2, 3])}, "vectors[1].vector_b64", "dimension is 4, so 16 bytes"),
        ({"id": "x", "vector_b64": b64([1, 2, 3, np.nan])}, "vectors[1].vector_b64", "NaN or Infinity"),
        ({"id": "x", "vector_b64": b64([0, 0, 0, 0])}, "vectors[1].vector_b64", "all zeros"),
        (
            {"id": "x", "vector": [1, 2, 3, 4], "vector_b64": b64([1, 2, 3, 4])},
            "vectors[1].vector_b64",
            "one of",
        ),
        ({"id": "x"}, "vectors[1].vector", "is missing"),
    ]
    for item, field, words in cases:
        response = await client.put(url, json={"vectors": [good, item]}, headers=key)
        body = assert_problem(response, 400, "invalid_request")
        assert body["errors"][0]["field"] == field, body
        assert words in body["detail"], body
        assert await count(client, key, "c") == 0

    # float16 storage keeps its range check for base64 values.
    half = {"name": "h", "dimension": 2, "storage": "float16"}
    assert (await client.post("/api/v1/collections", json=half, headers=key)).status_code == 201
    response = await client.put(
        "/api/v1/collections/h/vectors",
        json={"vectors": [{"id": "big", "vector_b64": b64([1e5, 1])}]},
        headers=key,
    )
    assert "too large for float16" in assert_problem(response, 400)["detail"]
    assert await count(client, key, "h") == 0

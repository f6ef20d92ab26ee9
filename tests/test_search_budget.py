"""What one search request may make the server build is bounded in bytes, and the token bucket
is charged by the bytes it did build, not only by its number of queries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer

BIG = "x" * 10_000  # 10 kB of metadata per vector


def make_client(settings: Settings) -> Any:
    return AsyncTestClient(create_app(settings), raise_server_exceptions=False)


async def load(client: Any, key: str) -> None:
    headers = bearer(key)
    assert (
        await client.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=headers)
    ).status_code == 201
    vectors = {"vectors": [{"id": str(i), "vector": [1, i], "metadata": {"text": BIG}} for i in range(50)]}
    assert (
        await client.put("/api/v1/collections/c/vectors", json=vectors, headers=headers)
    ).status_code == 200


@pytest.fixture
async def small_limit(make_settings: MakeSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with make_client(make_settings(collections={"max_search_response_bytes": 200_000})) as client:
        yield client


async def test_a_search_that_would_answer_too_many_bytes_is_refused(
    small_limit: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await load(small_limit, tenant.admin)
    queries = {"queries": [{"vector": [1, 0], "top_k": 50} for _ in range(5)]}
    response = await small_limit.post(
        "/api/v1/collections/c/search/batch", json=queries, headers=bearer(tenant.admin)
    )
    body = assert_problem(response, 400, "response_too_large")
    assert "200000 bytes" in body["detail"] and "max_search_response_bytes" in body["detail"]
    one = await small_limit.post(
        "/api/v1/collections/c/search", json={"vector": [1, 0], "top_k": 50}, headers=bearer(tenant.admin)
    )
    assert_problem(one, 400, "response_too_large")
    # Within the limit: fewer hits, or the same hits without their metadata.
    small = await small_limit.post(
        "/api/v1/collections/c/search", json={"vector": [1, 0], "top_k": 5}, headers=bearer(tenant.admin)
    )
    assert small.status_code == 200 and len(small.json()["results"]) == 5
    lean = {"queries": [{"vector": [1, 0], "top_k": 50, "include_metadata": False} for _ in range(5)]}
    ok = await small_limit.post("/api/v1/collections/c/search/batch", json=lean, headers=bearer(tenant.admin))
    assert ok.status_code == 200, ok.text


async def test_the_bucket_is_charged_by_response_bytes(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    settings = make_settings(rate_limiting={"token_bucket_capacity": 15, "token_refill_per_second": 0.001})
    async with make_client(settings) as client:
        tenant = await make_tenant()
        await load(client, tenant.admin)
        queries = {"queries": [{"vector": [1, 0], "top_k": 50} for _ in range(5)]}  # ~2.5 MB of hits
        first = await client.post(
            "/api/v1/collections/c/search/batch", json=queries, headers=bearer(tenant.admin)
        )
        assert first.status_code == 200, first.text
        # 5 tokens for the upsert, 5 queries + 2 MiB = 7: 3 of 15 left, the same batch no longer fits.
        again = await client.post(
            "/api/v1/collections/c/search/batch", json=queries, headers=bearer(tenant.admin)
        )
        assert_problem(again, 429, "rate_limited")

"""Sessions started by a key that HiveHub validated (no row in api_keys here): they work, and
their delegation tokens can be exchanged, within what the key could read."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import MakeSettings, UniqueId, assert_problem, bearer
from tests.fake_hivehub import API_KEY, FakeHub, serve


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with serve(FakeHub()) as running:
        yield running


@pytest.fixture(scope="module")
async def hclient(hub: FakeHub, make_settings: MakeSettings) -> AsyncIterator[Any]:
    settings = make_settings(
        cluster={
            "enabled": True,
            "hivehub_api_url": hub.url,
            "hivehub_api_key": API_KEY,
            "hivehub_timeout": 2,
        }
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def test_a_hivehub_key_starts_and_delegates_sessions(
    hclient: Any, hub: FakeHub, unique_id: UniqueId
) -> None:
    tenant, key = unique_id("hub"), "hh_" + secrets.token_urlsafe(24)
    hub.add_key(key, tenant)
    assert (
        await hclient.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=bearer(key))
    ).status_code == 201
    vectors = {"vectors": [{"id": "a", "vector": [1, 0]}]}
    assert (
        await hclient.put("/api/v1/collections/c/vectors", json=vectors, headers=bearer(key))
    ).status_code == 200

    created = await hclient.post("/api/v1/sessions", json={"collections": ["c"]}, headers=bearer(key))
    assert created.status_code == 201, created.text
    assert created.json()["parent_key_id"].startswith("hub_")
    search = {"vector": [1, 0], "top_k": 1}
    found = await hclient.post(
        "/api/v1/collections/c/search", json=search, headers=bearer(created.json()["token"])
    )
    assert found.status_code == 200 and found.json()["results"][0]["id"] == "a", found.text

    delegated = await hclient.post(
        "/api/v1/sessions/delegations", json={"collections": ["c"]}, headers=bearer(key)
    )
    assert delegated.status_code == 201, delegated.text
    exchanged = await hclient.post(
        "/api/v1/sessions/create", json={"delegation_token": delegated.json()["delegation_token"]}
    )
    assert exchanged.status_code == 201, exchanged.text
    token = bearer(exchanged.json()["token"])
    assert (await hclient.post("/api/v1/collections/c/search", json=search, headers=token)).status_code == 200
    assert_problem(await hclient.get("/api/v1/collections", headers=token), 403, "session_token_not_allowed")

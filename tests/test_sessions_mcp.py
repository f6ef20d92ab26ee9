"""A session token on the MCP endpoint (the official client over streamable HTTP): the read tools
of its collections only, its searches counted towards max_queries, and it ends with its session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import LiveServer, MakeSettings, MakeTenant, bearer, run_live_server
from tests.test_mcp import READ_TOOLS, call, connect, fails, make_collection, snapshot, writes_and_reads


@pytest.fixture(scope="module")
def server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    with run_live_server(make_settings()) as live:
        yield live


@pytest.fixture
async def rest(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


async def test_a_session_token_over_mcp(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_collection(rest, tenant.admin, "mine")
    await make_collection(rest, tenant.admin, "hidden")
    before = await snapshot(rest, tenant.admin, "mine")
    created = await rest.post(
        "/api/v1/sessions", json={"collections": ["mine"], "max_queries": 2}, headers=bearer(tenant.admin)
    )
    assert created.status_code == 201, created.text
    token, sid = created.json()["token"], created.json()["session_id"]
    async with connect(server, token) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
        listed = await call(client, "list_collections", {})
        assert [c["name"] for c in listed["items"]] == ["mine"]
        assert (await call(client, "search", {"collection": "mine", "vector": [1, 0, 0]}))["results"]
        assert (await call(client, "describe_collection", {"collection": "mine"}))["vector_count"] == 3
        for tool, arguments in writes_and_reads("mine"):
            if tool != "search":
                expected = "session_token_not_allowed" if tool in ("upsert_vectors", "delete") else None
                if expected:
                    await fails(client, tool, arguments, expected)
        for tool, arguments in writes_and_reads("hidden"):
            if tool in ("describe_collection", "search"):
                await fails(client, tool, arguments, "not_found")
        # The second query of two; then the allowance is spent (the not-found search counted too).
        await fails(
            client, "search", {"collection": "mine", "vector": [1, 0, 0]}, "session_queries_exhausted"
        )
    shown = await rest.get(f"/api/v1/sessions/{sid}", headers=bearer(tenant.admin))
    assert shown.json()["queries_used"] == 2
    assert await snapshot(rest, tenant.admin, "mine") == before

    # Ended: the MCP endpoint refuses the token as REST does.
    assert (await rest.delete(f"/api/v1/sessions/{sid}", headers=bearer(tenant.admin))).status_code == 204
    refused = await rest.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**bearer(token), "Accept": "application/json, text/event-stream"},
    )
    assert refused.status_code == 401, refused.text

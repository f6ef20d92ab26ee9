"""MCP tools on text collections (bound to the real default embedding model): add_documents,
get_documents, search by text in each mode, through the SDK client against a live server; and
the same refusals as REST for read-only keys and other tenants."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, MakeTenant, TenantKeys, bearer
from tests.test_embeddings_api import MODEL, wait_for_model
from tests.test_mcp import call, connect, fails

DOCUMENTS = [
    {"id": "rivers", "text": "The Danube flows through ten countries before it reaches the Black Sea."},
    {"id": "guitar", "text": "Learning to play the guitar takes patience and daily practice of chords."},
    {"id": "bread", "text": "Sourdough bread rises slowly because wild yeast ferments the dough overnight."},
    {"id": "order", "text": "Order ZQX-4471 shipped on Tuesday.", "metadata": {"kind": "order"}},
]


@pytest.fixture
async def rest(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as http:
        yield http


async def text_collection(rest: httpx.AsyncClient, tenant: TenantKeys, name: str) -> None:
    await wait_for_model(rest, tenant.admin)
    made = await rest.post(
        "/api/v1/collections",
        json={"name": name, "embedding": {"model": MODEL}},
        headers=bearer(tenant.admin),
    )
    assert made.status_code == 201, made.text


async def listing(rest: httpx.AsyncClient, tenant: TenantKeys, name: str) -> list[dict[str, Any]]:
    page = await rest.get(f"/api/v1/collections/{name}/documents", headers=bearer(tenant.admin))
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


async def test_documents_through_mcp(
    live_server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await text_collection(rest, tenant, "kb")
    async with connect(live_server, tenant.key("mcp")) as client:
        added = await call(client, "add_documents", {"collection": "kb", "documents": DOCUMENTS})
        assert added["documents"] == 4 and added["chunks"] == 4 and added["tokens"] > 0

        described = await call(client, "describe_collection", {"collection": "kb"})
        assert described["embedding"]["model"] == MODEL and described["dimension"] == 384

        found = await call(client, "search", {"collection": "kb", "text": "baking with yeast", "top_k": 1})
        hit = found["results"][0]
        assert (hit["document_id"], hit["chunk_index"]) == ("bread", 0)
        assert hit["text"] == DOCUMENTS[2]["text"]
        keyword = await call(
            client, "search", {"collection": "kb", "text": "ZQX-4471", "mode": "keyword", "top_k": 2}
        )
        assert [h["document_id"] for h in keyword["results"]] == ["order"]
        hybrid = await call(
            client,
            "search",
            {"collection": "kb", "text": "which river ends in the Black Sea", "mode": "hybrid", "top_k": 1},
        )
        assert hybrid["results"][0]["document_id"] == "rivers"
        assert hybrid["strategy"].startswith("hybrid")
        filtered = await call(
            client, "search", {"collection": "kb", "text": "shipping", "filter": {"kind": "order"}}
        )
        assert [h["document_id"] for h in filtered["results"]] == ["order"]

        got = await call(client, "get_documents", {"collection": "kb", "ids": ["guitar", "nope", "guitar"]})
        assert [d["id"] for d in got["documents"]] == ["guitar"] and got["not_found"] == ["nope"]
        assert got["documents"][0]["text"] == DOCUMENTS[1]["text"]
        assert got["documents"][0]["chunks"][0]["id"] == "guitar#0"
        page = await call(client, "get_documents", {"collection": "kb", "limit": 3})
        assert [d["id"] for d in page["listed"]] == ["bread", "guitar", "order"]
        rest_of_it = await call(client, "get_documents", {"collection": "kb", "cursor": page["next_cursor"]})
        assert [d["id"] for d in rest_of_it["listed"]] == ["rivers"] and rest_of_it["next_cursor"] is None

        # The same refusal as REST for the same body.
        bad = await fails(client, "add_documents", {"collection": "kb", "documents": []}, "invalid_request")
        same = await rest.post(
            "/api/v1/collections/kb/documents", json={"documents": []}, headers=bearer(tenant.admin)
        )
        assert same.json()["detail"] == bad["detail"]
    assert [d["id"] for d in await listing(rest, tenant, "kb")] == ["bread", "guitar", "order", "rivers"]


async def test_text_search_needs_a_model_as_in_rest(
    live_server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    made = await rest.post(
        "/api/v1/collections", json={"name": "plain", "dimension": 3}, headers=bearer(tenant.admin)
    )
    assert made.status_code == 201
    async with connect(live_server, tenant.key("mcp")) as client:
        problem = json.loads(
            (await client.call_tool("search", {"collection": "plain", "text": "hello"})).content[0].text
        )
    same = await rest.post(
        "/api/v1/collections/plain/search", json={"text": "hello"}, headers=bearer(tenant.admin)
    )
    assert same.status_code == problem["status"] and same.status_code >= 400
    assert same.json()["detail"] == problem["detail"] and same.json()["code"] == problem["code"]


async def test_read_only_and_other_tenants(
    live_server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    owner: TenantKeys = await make_tenant("read_only")
    other: TenantKeys = await make_tenant("mcp")
    await text_collection(rest, owner, "secret")
    added = await rest.post(
        "/api/v1/collections/secret/documents", json={"documents": DOCUMENTS[:2]}, headers=bearer(owner.admin)
    )
    assert added.status_code in (200, 201), added.text
    before = await listing(rest, owner, "secret")

    async with connect(live_server, owner.key("read_only")) as client:
        assert (await call(client, "get_documents", {"collection": "secret", "ids": ["rivers"]}))["documents"]
        await fails(
            client,
            "add_documents",
            {"collection": "secret", "documents": [{"id": "x", "text": "new"}]},
            "insufficient_permission",
        )
    async with connect(live_server, other.key("mcp")) as client:
        for tool, arguments in [
            ("get_documents", {"collection": "secret", "ids": ["rivers"]}),
            ("get_documents", {"collection": "secret"}),
            ("search", {"collection": "secret", "text": "Danube"}),
            ("search", {"collection": "secret", "text": "Danube", "mode": "keyword"}),
            (
                "add_documents",
                {"collection": "secret", "documents": [{"id": "rivers", "text": "overwritten"}]},
            ),
        ]:
            problem = await fails(client, tool, arguments, "not_found")
            assert problem["detail"] == "Collection 'secret' does not exist."
    after = await listing(rest, owner, "secret")
    assert after == before
    text = await rest.get("/api/v1/collections/secret/documents/rivers", headers=bearer(owner.admin))
    assert text.json()["text"] == DOCUMENTS[0]["text"]

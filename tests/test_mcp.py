"""The MCP server, through the official MCP SDK's client over streamable HTTP against a live server:
discovery on both protocol eras, tools per credential, each tool, scopes, other tenants, revocation,
rate limits, bad arguments, and the HTTP-level refusals (401 challenge, 403, Host/Origin)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from litestar.testing import AsyncTestClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from service.app import create_app
from service.auth.keys import parse_key
from service.auth.service import KeyService
from service.db import Database
from service.tenants.models import TenantStatus
from service.tenants.service import TenantService
from tests.conftest import (
    LiveServer,
    MakeSettings,
    MakeTenant,
    TenantKeys,
    assert_problem,
    bearer,
    run_live_server,
)

MODES = ["auto", "legacy"]  # protocol 2026-07-28, and the initialize handshake of earlier revisions
# answer and context: generation is enabled in the tests' settings (the tiny chat model).
READ_TOOLS = {"list_collections", "describe_collection", "search", "get_documents", "answer", "context"}
WRITE_TOOLS = {"upsert_vectors", "delete", "add_documents"}


@pytest.fixture(scope="module")
def server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    # Usage reaches the outbox quickly, so that a test can read what a tool call metered.
    with run_live_server(make_settings(usage={"flush_interval": 0.2})) as live:
        yield live


@pytest.fixture
async def rest(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@asynccontextmanager
async def connect(server: LiveServer, key: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    headers = bearer(key) if key is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A successful tool call's structured result (and its text says the same)."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    assert json.loads(result.content[0].text) == result.structured_content
    data: dict[str, Any] = result.structured_content
    return data


async def fails(client: Client, tool: str, arguments: dict[str, Any], code: str) -> dict[str, Any]:
    """A tool error (isError, not a transport failure) carrying the REST problem document."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    assert result.structured_content is None  # it would have to match the tool's outputSchema
    problem: dict[str, Any] = json.loads(result.content[0].text)
    assert problem["code"] == code, problem
    assert problem["type"] == "urn:vectorhive:problem:" + code
    assert problem["tool"] == tool
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


async def make_collection(rest: httpx.AsyncClient, admin: str, name: str, vectors: int = 3) -> None:
    made = await rest.post("/api/v1/collections", json={"name": name, "dimension": 3}, headers=bearer(admin))
    assert made.status_code == 201, made.text
    if vectors:
        items = [
            {"id": f"v{i}", "vector": [1.0, float(i), 0.5], "metadata": {"n": i, "even": i % 2 == 0}}
            for i in range(vectors)
        ]
        put = await rest.put(
            f"/api/v1/collections/{name}/vectors", json={"vectors": items}, headers=bearer(admin)
        )
        assert put.status_code == 200, put.text


async def snapshot(rest: httpx.AsyncClient, admin: str, name: str) -> dict[str, Any]:
    """Everything in a collection, through REST: what must not change."""
    page = await rest.get(
        f"/api/v1/collections/{name}/vectors", params={"include_vector": "true"}, headers=bearer(admin)
    )
    assert page.status_code == 200, page.text
    described = await rest.get(f"/api/v1/collections/{name}", headers=bearer(admin))
    return {"vectors": page.json()["items"], "count": described.json()["vector_count"]}


# -- discovery -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_discovery_and_tools_per_permission(
    server: LiveServer, make_tenant: MakeTenant, mode: str
) -> None:
    tenant: TenantKeys = await make_tenant("mcp", "read_only", "read_write")
    async with connect(server, tenant.key("mcp"), mode) as client:
        if mode == "auto":
            assert client.protocol_version == "2026-07-28"
        else:
            assert client.protocol_version < "2026-07-28"
        assert client.server_info is not None and client.server_info.name == "vectorhive"
        assert client.server_capabilities.tools is not None
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == READ_TOOLS | WRITE_TOOLS
    for name in READ_TOOLS:
        assert tools[name].annotations is not None and tools[name].annotations.read_only_hint is True
    for name in WRITE_TOOLS:
        annotations = tools[name].annotations
        assert annotations is not None
        assert annotations.read_only_hint is False and annotations.destructive_hint is True
    search = tools["search"].input_schema
    assert search["type"] == "object" and search["required"] == ["collection"]
    assert {"vector", "text", "mode", "filter", "top_k"} <= set(search["properties"])
    assert search["properties"]["top_k"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}
    assert search["additionalProperties"] is False
    assert tools["delete"].input_schema["properties"]["dry_run"]["type"] == "boolean"
    assert tools["search"].output_schema is not None
    assert tools["search"].output_schema["type"] == "object"

    async with connect(server, tenant.key("read_only"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
    async with connect(server, tenant.key("read_write"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS | WRITE_TOOLS
    # A tenant ADMIN key gets the same tools: no ADMIN function has one.
    async with connect(server, tenant.admin, mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS | WRITE_TOOLS


# -- each tool --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_tool(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, mode: str
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "notes", vectors=0)
    async with connect(server, tenant.key("mcp"), mode) as client:
        listed = await call(client, "list_collections", {})
        assert [c["name"] for c in listed["items"]] == ["notes"]
        assert listed["items"][0]["qualified_name"] == f"{tenant.tenant_id}:notes"

        items = [
            {"id": "a", "vector": [1, 0, 0], "metadata": {"lang": "en", "n": 1}},
            {"id": "b", "vector": [0, 1, 0], "metadata": {"lang": "de", "n": 2}},
            {"id": "c", "vector": [0, 0, 1], "metadata": {"lang": "en", "n": 3}},
        ]
        assert await call(client, "upsert_vectors", {"collection": "notes", "vectors": items}) == {
            "upserted": 3
        }
        described = await call(client, "describe_collection", {"collection": "notes"})
        assert described["vector_count"] == 3 and described["dimension"] == 3

        found = await call(client, "search", {"collection": "notes", "vector": [0.9, 0.1, 0], "top_k": 2})
        assert [hit["id"] for hit in found["results"]] == ["a", "b"]
        assert found["results"][0]["metadata"] == {"lang": "en", "n": 1}
        # The same answer REST gives for the same body.
        same = await rest.post(
            "/api/v1/collections/notes/search",
            json={"vector": [0.9, 0.1, 0], "top_k": 2},
            headers=bearer(tenant.admin),
        )
        assert [h["id"] for h in same.json()["results"]] == ["a", "b"]
        filtered = await call(
            client, "search", {"collection": "notes", "vector": [1, 0, 0], "filter": {"lang": "de"}}
        )
        assert [hit["id"] for hit in filtered["results"]] == ["b"]

        dry = await call(client, "delete", {"collection": "notes", "filter": {"lang": "en"}, "dry_run": True})
        assert dry == {"dry_run": True, "matched": 2, "deleted": 0}
        assert (await snapshot(rest, tenant.admin, "notes"))["count"] == 3  # nothing went
        dry_ids = await call(client, "delete", {"collection": "notes", "ids": ["a", "zzz"], "dry_run": True})
        assert dry_ids == {"dry_run": True, "matched": 1, "deleted": 0}

        gone = await call(client, "delete", {"collection": "notes", "filter": {"n": {"$gte": 3}}})
        assert gone == {"dry_run": False, "matched": 1, "deleted": 1}
        gone = await call(client, "delete", {"collection": "notes", "ids": ["a"]})
        assert gone["deleted"] == 1
    left = await snapshot(rest, tenant.admin, "notes")
    assert [v["id"] for v in left["vectors"]] == ["b"] and left["count"] == 1


async def test_tool_calls_are_metered_by_tool_name(
    server: LiveServer,
    rest: httpx.AsyncClient,
    make_tenant: MakeTenant,
    db: Database,
    operator_key: str,
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "m")
    async with connect(server, tenant.key("mcp")) as client:
        await call(client, "search", {"collection": "m", "vector": [1, 0, 0]})
        await call(client, "search", {"collection": "m", "vector": [1, 0, 0]})
        one = [{"id": "x", "vector": [1, 1, 1]}]
        await call(client, "upsert_vectors", {"collection": "m", "vectors": one})
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        rows = await db.pool.fetch(
            "SELECT metric, operation, sum(quantity)::int AS q FROM usage_outbox WHERE tenant_id = $1 "
            "GROUP BY metric, operation",
            tenant.tenant_id,
        )
        usage = {(r["metric"], r["operation"]): r["q"] for r in rows}
        # A flush may fall between a call's request count and what its service meters after.
        if usage.get(("requests", "mcp.upsert_vectors")) == 1 and usage.get(("vectors_written", "")) == 4:
            break
        assert asyncio.get_running_loop().time() < deadline, usage
        await asyncio.sleep(0.2)
    assert usage[("requests", "mcp.search")] == 2
    assert usage[("searches", "")] == 2  # what CollectionService meters, as for REST
    assert usage[("vectors_written", "")] == 3 + 1  # REST's upsert in make_collection, then the tool's
    assert usage[("requests", "upsertVectors")] == 1  # REST requests keep their operation ids
    metrics = (await rest.get("/metrics", headers=bearer(operator_key))).text
    assert 'vectorhive_mcp_tool_calls_total{outcome="ok",tool="search"}' in metrics
    labels = f'operation="mcp.search",tenant_id="{tenant.tenant_id}"'
    assert f"vectorhive_tenant_requests_total{{{labels}}} 2.0" in metrics


# -- who may do what --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_read_only_key_cannot_write(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, mode: str
) -> None:
    tenant: TenantKeys = await make_tenant("read_only")
    await make_collection(rest, tenant.admin, "ro")
    before = await snapshot(rest, tenant.admin, "ro")
    async with connect(server, tenant.key("read_only"), mode) as client:
        assert (await call(client, "describe_collection", {"collection": "ro"}))["vector_count"] == 3
        # Not listed, and refused when called anyway: every call re-checks the permission.
        problem = await fails(
            client,
            "upsert_vectors",
            {"collection": "ro", "vectors": [{"id": "n", "vector": [1, 2, 3]}]},
            "insufficient_permission",
        )
        assert problem["status"] == 403
        rest_refusal = await rest.put(
            "/api/v1/collections/ro/vectors",
            json={"vectors": [{"id": "n", "vector": [1, 2, 3]}]},
            headers=bearer(tenant.key("read_only")),
        )
        assert rest_refusal.json()["detail"] == problem["detail"]
        await fails(client, "delete", {"collection": "ro", "ids": ["v0"]}, "insufficient_permission")
        dry_run = {"collection": "ro", "ids": ["v0"], "dry_run": True}
        await fails(client, "delete", dry_run, "insufficient_permission")
    assert await snapshot(rest, tenant.admin, "ro") == before


async def test_collection_scoped_key(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp", collections=["mine"])
    await make_collection(rest, tenant.admin, "mine")
    await make_collection(rest, tenant.admin, "hidden")
    before = await snapshot(rest, tenant.admin, "hidden")
    async with connect(server, tenant.key("mcp")) as client:
        listed = await call(client, "list_collections", {})
        assert [c["name"] for c in listed["items"]] == ["mine"]
        assert (await call(client, "search", {"collection": "mine", "vector": [1, 0, 0]}))["results"]
        # Outside the scope reads exactly like a collection that does not exist.
        absent = await fails(client, "describe_collection", {"collection": "nonexistent"}, "not_found")
        hidden = await fails(client, "describe_collection", {"collection": "hidden"}, "not_found")
        assert hidden["detail"] == absent["detail"].replace("nonexistent", "hidden")
        for tool, arguments in writes_and_reads("hidden"):
            await fails(client, tool, arguments, "not_found")
    assert await snapshot(rest, tenant.admin, "hidden") == before


def writes_and_reads(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("describe_collection", {"collection": name}),
        ("search", {"collection": name, "vector": [1, 0, 0]}),
        ("upsert_vectors", {"collection": name, "vectors": [{"id": "v0", "vector": [9, 9, 9]}]}),
        ("upsert_vectors", {"collection": name, "vectors": [{"id": "new", "vector": [9, 9, 9]}]}),
        ("delete", {"collection": name, "ids": ["v0", "v1"]}),
        ("delete", {"collection": name, "filter": {"n": {"$gte": 0}}}),
        ("delete", {"collection": name, "filter": {"n": {"$gte": 0}}, "dry_run": True}),
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_another_tenant_sees_and_changes_nothing(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, mode: str
) -> None:
    owner: TenantKeys = await make_tenant()
    other: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, owner.admin, "private")
    before = await snapshot(rest, owner.admin, "private")
    rest_404 = await rest.get("/api/v1/collections/private", headers=bearer(other.admin))
    assert rest_404.status_code == 404
    for key in (other.key("mcp"), other.admin):
        async with connect(server, key, mode) as client:
            assert (await call(client, "list_collections", {}))["items"] == []
            for tool, arguments in writes_and_reads("private"):
                problem = await fails(client, tool, arguments, "not_found")
                assert problem["status"] == 404
                assert problem["detail"] == rest_404.json()["detail"]
                assert owner.tenant_id not in json.dumps(problem)
    assert await snapshot(rest, owner.admin, "private") == before


# -- credentials over time, limits, arguments ---------------------------------------------------


async def test_key_revoked_mid_session(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, db: Database
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "r")
    key = tenant.key("mcp")
    async with connect(server, key) as client:
        await call(client, "list_collections", {})
        parsed = parse_key(key)
        assert parsed is not None
        await KeyService(db).revoke(tenant.tenant_id, parsed.key_id)
        # Revocation reaches the server's key cache within a second (LISTEN/NOTIFY).
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(MCPError) as refused:
            while True:
                await call(client, "list_collections", {})
                assert asyncio.get_running_loop().time() < deadline, "revoked key still accepted"
                await asyncio.sleep(0.1)
        # The SDK surfaces the refusal's own words (a JSON-RPC error in the 401's body).
        assert isinstance(refused.value, MCPError), repr(refused.value)
        assert refused.value.message == "The API key has been revoked."
        assert refused.value.data["code"] == "unauthorized" and refused.value.data["status"] == 401
    answer = await rest.post("/mcp", json=JSONRPC_LIST, headers={**bearer(key), **MCP_ACCEPT})
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "The API key has been revoked."
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limit_is_a_clear_tool_error(
    server: LiveServer,
    rest: httpx.AsyncClient,
    make_tenant: MakeTenant,
    operator_key: str,
    mode: str,
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "limited")
    limited = await rest.put(
        f"/api/v1/admin/tenants/{tenant.tenant_id}/quotas",
        json={"requests_per_minute": 3},
        headers=bearer(operator_key),
    )
    assert limited.status_code == 200, limited.text
    async with connect(server, tenant.key("mcp"), mode) as client:
        # The tenant's REST requests count in the same window; a window may also roll over meanwhile.
        for _ in range(10):
            result = await client.call_tool("search", {"collection": "limited", "vector": [1, 0, 0]})
            if result.is_error:
                break
        arguments = {"collection": "limited", "vector": [1, 0, 0]}
        problem = await fails(client, "search", arguments, "rate_limited")
        assert json.loads(result.content[0].text)["code"] == "rate_limited"  # the first refusal, as the next
    assert problem["status"] == 429
    words = f"Rate limit exceeded: 3 requests per minute for tenant '{tenant.tenant_id}'. Retry in "
    assert problem["detail"].startswith(words)
    assert problem["limit"] == "requests_per_minute" and problem["value"] == 3
    assert 1 <= problem["retry_after"] <= 60


@pytest.mark.parametrize("mode", MODES)
async def test_bad_arguments_are_tool_errors_with_the_rest_messages(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, mode: str
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "args")
    before = await snapshot(rest, tenant.admin, "args")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("search", {"vector": [1, 0, 0], "top_k": "5"}, "top_k"),
        ("search", {"vector": [1, 0, 0], "top_k": 0}, "top_k"),
        ("search", {"top_k": 3}, "vector"),
        ("search", {"vector": [1, 0]}, "vector"),
        ("search", {"vector": [1, 0, 0], "filter": {"n": {"$regex": "x"}}}, None),
        ("search", {"vector": [1, 0, 0], "colour": "red"}, "colour"),
        ("upsert_vectors", {"vectors": [{"id": "a/b", "vector": [1, 0, 0]}]}, "vectors[0].id"),
        ("upsert_vectors", {"vectors": [{"id": "z", "vector": [1, 0, 0]}] * 2}, "vectors[1].id"),
        ("delete", {"ids": ["v0"], "filter": {"n": 1}}, "ids"),
        ("delete", {"filter": {}}, "filter"),
    ]
    paths = {
        "search": ("POST", "/api/v1/collections/args/search"),
        "upsert_vectors": ("PUT", "/api/v1/collections/args/vectors"),
        "delete": ("POST", "/api/v1/collections/args/vectors/delete"),
    }
    async with connect(server, tenant.key("mcp"), mode) as client:
        for tool, body, field in cases:
            problem = await fails(client, tool, {"collection": "args", **body}, problem_code(tool, body))
            method, path = paths[tool]
            same = await rest.request(method, path, json=body, headers=bearer(tenant.admin))
            assert same.status_code == problem["status"] == 400, (tool, body, same.text)
            expected = same.json()["detail"]
            if "known fields" in expected:
                expected += ", collection"  # the tool's one argument more
            assert problem["detail"] == expected, (tool, body)
            assert same.json()["code"] == problem["code"]
            if field is not None:
                assert problem["errors"][0]["field"] == field, problem
        bad_name = await fails(client, "describe_collection", {"collection": "../x"}, "invalid_request")
        assert bad_name["errors"][0]["field"] == "collection"
        missing = await fails(client, "describe_collection", {}, "invalid_request")
        assert missing["detail"] == "collection is required"
        with pytest.raises(MCPError, match="Unknown tool: create_collection"):
            await client.call_tool("create_collection", {"name": "x", "dimension": 3})
    assert await snapshot(rest, tenant.admin, "args") == before


def problem_code(tool: str, body: dict[str, Any]) -> str:
    return "invalid_filter" if "$regex" in json.dumps(body) else "invalid_request"


async def refusal(server: LiveServer, key: str | None, mode: str) -> MCPError:
    """The MCPError the SDK client raises when the server refuses it (inside exception groups)."""
    try:
        async with connect(server, key, mode) as client:
            await client.list_tools()
    except BaseException as exc:  # an ExceptionGroup from the client's task groups, or the error
        pending: list[BaseException] = [exc]
        while pending:
            current = pending.pop()
            if isinstance(current, MCPError):
                return current
            pending.extend(getattr(current, "exceptions", ()))
            if current.__cause__ is not None:
                pending.append(current.__cause__)
            if current.__context__ is not None:
                pending.append(current.__context__)
        raise
    raise AssertionError("the server did not refuse the client")


# -- HTTP level ------------------------------------------------------------------------------------

JSONRPC_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


async def test_missing_or_bad_credentials_get_the_mcp_challenge(
    server: LiveServer, rest: httpx.AsyncClient, operator_key: str, make_tenant: MakeTenant
) -> None:
    metadata_url = f"{server.url}/.well-known/oauth-protected-resource/mcp"
    # Anyone but an MCP client (Accept: */* here) gets the app's one error shape.
    missing = await rest.post("/mcp", json=JSONRPC_LIST)
    assert_problem(missing, 401, "unauthorized")
    assert missing.json()["detail"] == "No API key was sent: add the header 'Authorization: Bearer <key>'."
    # An MCP client (Accept: application/json, text/event-stream) gets it as a JSON-RPC error's data.
    as_jsonrpc = await rest.post("/mcp", json=JSONRPC_LIST, headers=MCP_ACCEPT)
    assert as_jsonrpc.status_code == 401
    assert as_jsonrpc.headers["content-type"] == "application/json"
    error = as_jsonrpc.json()["error"]
    assert error["message"] == missing.json()["detail"] and error["data"]["code"] == "unauthorized"
    challenge = missing.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
    assert "error=" not in challenge  # RFC 6750: no error code without a credential

    wrong = await rest.post("/mcp", json=JSONRPC_LIST, headers=bearer("vh_nope"))
    assert_problem(wrong, 401, "unauthorized")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]

    operator = await rest.post("/mcp", json=JSONRPC_LIST, headers=bearer(operator_key))
    assert_problem(operator, 403, "operator_key_not_allowed")
    assert "www-authenticate" not in operator.headers

    document = await rest.get("/.well-known/oauth-protected-resource/mcp")
    assert document.status_code == 200
    assert document.json() == {
        "resource": f"{server.url}/mcp",
        "bearer_methods_supported": ["header"],
        "resource_name": "vectorhive MCP server",
    }
    # The SDK client reports the refusal in its words instead of hanging or retrying forever.
    for key, mode, words in [
        (None, "auto", "No API key was sent"),
        (operator_key, "legacy", "Operator keys cannot use the MCP endpoint"),
    ]:
        assert words in (await refusal(server, key, mode)).message

    # An MCP key is for /mcp only.
    tenant: TenantKeys = await make_tenant("mcp")
    refused = await rest.get("/api/v1/collections", headers=bearer(tenant.key("mcp")))
    assert refused.status_code == 403 and refused.json()["code"] == "mcp_key_not_allowed"


async def test_host_and_origin_checks(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    headers = {**MCP_ACCEPT, **bearer(tenant.key("mcp"))}
    ok = await rest.post("/mcp", json={**JSONRPC_LIST}, headers=headers)
    assert ok.status_code == 200, ok.text
    plain = {k: v for k, v in headers.items() if k != "Accept"}  # so that the answer is problem+json
    rebinding = await rest.post("/mcp", json=JSONRPC_LIST, headers={**plain, "Host": "evil.example"})
    assert_problem(rebinding, 421, "misdirected_request")
    assert (
        "'evil.example'" in rebinding.json()["detail"] and "mcp.allowed_hosts" in rebinding.json()["detail"]
    )
    foreign = await rest.post("/mcp", json=JSONRPC_LIST, headers={**plain, "Origin": "https://evil.example"})
    assert_problem(foreign, 403, "origin_not_allowed")
    # Checked before the credential: a foreign Host learns nothing, not even the challenge.
    anonymous = await rest.post("/mcp", json=JSONRPC_LIST, headers={"Host": "evil.example"})
    assert anonymous.status_code == 421 and "www-authenticate" not in anonymous.headers
    huge = await rest.post(
        "/mcp", content=b" " * (16 * 1024 * 1024 + 1), headers={**plain, "Content-Type": "application/json"}
    )
    assert_problem(huge, 413, "payload_too_large")
    assert huge.json()["detail"] == "The request body is larger than the limit of 16,777,216 bytes."
    local = await rest.post("/mcp", json=JSONRPC_LIST, headers={**headers, "Origin": "http://localhost:6274"})
    assert local.status_code == 200


async def test_disabled_mcp_has_no_endpoint(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(mcp={"enabled": False}))
    async with AsyncTestClient(app) as client:
        assert_problem(await client.post("/mcp", json=JSONRPC_LIST), 404, "not_found")
        assert_problem(await client.get("/.well-known/oauth-protected-resource/mcp"), 404, "not_found")


async def test_suspended_tenant_is_refused(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, db: Database
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    async with connect(server, tenant.key("mcp")) as client:
        await call(client, "list_collections", {})
        await TenantService(db).set_status(tenant.tenant_id, TenantStatus.SUSPENDED)
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(MCPError) as refused:
            while True:
                await call(client, "list_collections", {})
                assert asyncio.get_running_loop().time() < deadline, "suspended tenant still served"
                await asyncio.sleep(0.1)
        assert refused.value.message == f"Tenant '{tenant.tenant_id}' is suspended."
        assert refused.value.data["status"] == 403 and refused.value.data["code"] == "tenant_suspended"


async def test_token_bucket_and_listing_limits(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await make_collection(rest, tenant.admin, "bucket")
    # A bucket of 5 tokens, refilled slowly: upserting 100 vectors costs 10 (cost_upsert_vector 0.1).
    limited = await rest.put(
        f"/api/v1/admin/tenants/{tenant.tenant_id}/quotas",
        json={"token_bucket_capacity": 5, "token_refill_per_second": 0.01},
        headers=bearer(operator_key),
    )
    assert limited.status_code == 200, limited.text
    before = await snapshot(rest, tenant.admin, "bucket")
    vectors = [{"id": f"b{i}", "vector": [1, 0, i]} for i in range(100)]
    async with connect(server, tenant.key("mcp")) as client:
        problem = await fails(
            client, "upsert_vectors", {"collection": "bucket", "vectors": vectors}, "rate_limited"
        )
        assert problem["limit"] == "token_bucket" and problem["retry_after"] >= 1
        assert "costs 10 tokens, more than tenant" in problem["detail"]
    assert await snapshot(rest, tenant.admin, "bucket") == before

    # tools/list is a request too: past the window it is a JSON-RPC error with the same words.
    windows = await rest.put(
        f"/api/v1/admin/tenants/{tenant.tenant_id}/quotas",
        json={"requests_per_minute": 1},
        headers=bearer(operator_key),
    )
    assert windows.status_code == 200
    async with connect(server, tenant.key("mcp"), "legacy") as client:
        with pytest.raises(MCPError) as refused:
            for _ in range(3):
                await client.list_tools()
    assert refused.value.message.startswith("Rate limit exceeded: 1 requests per minute")
    assert refused.value.data == {"code": "rate_limited", "status": 429}


async def test_single_tenant_mode_needs_no_key_and_is_logged(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """Local development without keys: the default tenant over MCP too; the access log names the
    tenant of an MCP request like any other (the mount shares the request's scope)."""
    caplog.set_level("INFO", logger="vectorhive.access")
    settings = make_settings(auth={"require_authentication": False})
    with run_live_server(settings) as live:
        async with connect(live, None) as client:
            assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS | WRITE_TOOLS
            await call(client, "list_collections", {})
    mcp_lines = [
        r for r in caplog.records if r.name == "vectorhive.access" and getattr(r, "route", "") == "/mcp"
    ]
    assert mcp_lines and all(r.__dict__["status"] == 200 for r in mcp_lines)
    assert {r.__dict__["tenant_id"] for r in mcp_lines} == {settings.auth.default_tenant_id}


def test_every_tool_mirrors_a_rest_operation() -> None:
    """Each tool names the REST operation it is a twin of; a renamed or removed one fails here."""
    from pathlib import Path

    from service.mcp.tools import TOOLS

    document = json.loads((Path(__file__).resolve().parent.parent / "openapi" / "openapi.json").read_text())
    operations = {
        operation["operationId"]
        for path in document["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    assert {tool.mirrors for tool in TOOLS.values()} <= operations
    assert set(TOOLS) == READ_TOOLS | WRITE_TOOLS
    # No ADMIN-only operation has a tool.
    assert not {"createCollection", "deleteCollection", "createKey", "revokeKey"} & {
        tool.mirrors for tool in TOOLS.values()
    }


def test_mcp_settings_from_the_environment(tmp_path: Any) -> None:
    from service.config import ConfigError, load_settings

    settings = load_settings(
        environ={
            "VECTORHIVE_MCP__ENABLED": "false",
            "VECTORHIVE_MCP__ALLOWED_HOSTS": '["vectors.example.com", "vectors.example.com:*"]',
            "VECTORHIVE_MCP__RESOURCE_URL": "https://vectors.example.com/mcp",
        },
        cwd=tmp_path,
    )
    assert settings.mcp.enabled is False
    assert settings.mcp.allowed_hosts == ["vectors.example.com", "vectors.example.com:*"]
    assert settings.mcp.resource_url == "https://vectors.example.com/mcp"
    with pytest.raises(ConfigError, match=r"mcp\.resource_url: must be an http:// or https:// URL"):
        load_settings(environ={"VECTORHIVE_MCP__RESOURCE_URL": "vectors.example.com"}, cwd=tmp_path)


async def test_configured_resource_url_and_authorization_servers(
    make_settings: MakeSettings,
) -> None:
    """Behind a proxy the public URL is configured; an OAuth authorization server, when one issues
    tokens this server accepts, is published for clients to find."""
    app = create_app(
        make_settings(
            mcp={
                "allowed_hosts": ["testserver.local"],
                "resource_url": "https://vectors.example.com/tenant-a/mcp",
                "authorization_servers": ["https://auth.example.com"],
            }
        )
    )
    async with AsyncTestClient(app) as client:
        document = await client.get("/.well-known/oauth-protected-resource/mcp")
        assert document.json() == {
            "resource": "https://vectors.example.com/tenant-a/mcp",
            "bearer_methods_supported": ["header"],
            "resource_name": "vectorhive MCP server",
            "authorization_servers": ["https://auth.example.com"],
        }
        challenge = (await client.post("/mcp", json=JSONRPC_LIST)).headers["www-authenticate"]
        assert (
            'resource_metadata="https://vectors.example.com/.well-known/oauth-protected-resource/tenant-a/mcp"'
            in challenge
        )

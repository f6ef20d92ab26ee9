"""MCP answer and context tools, and session tokens over MCP, through the official SDK client over
streamable HTTP against a live server: real retrieval with the real embedding model, the real
llama.cpp path on the tiny chat model (which always answers "The answer is in the sources [1]."),
real PostgreSQL; the same results, errors, metering as the REST routes; never across tenants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from service.db import Database
from tests.conftest import LiveServer, MakeSettings, MakeTenant, TenantKeys, bearer, run_live_server
from tests.support.tiny_chat_model import SENTENCE, build
from tests.test_documents import CORPUS
from tests.test_mcp import READ_TOOLS, call, connect, fails, make_collection, refusal, snapshot
from tests.test_mcp_documents import text_collection

QUESTION = "Where does the Danube flow?"
API = "/api/v1/collections"
SESSION_TOOLS = {"list_collections", "describe_collection", "search", "get_documents", "answer", "context"}


@pytest.fixture(scope="module")
def server(make_settings: MakeSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder: Path = tmp_path_factory.mktemp("mcp-rag-models")
    settings = make_settings(
        generation={
            "default_model": "tiny",
            # A byte-level vocabulary: the rules of the prompt alone take ~420 tokens.
            "models": {"tiny": {"path": str(build(folder / "tiny.gguf", context=2048)), "n_ctx": 2048}},
            "max_tokens": 32,
        },
        rate_limiting={"token_bucket_capacity": 1_000_000, "token_refill_per_second": 1000},
        usage={"flush_interval": 0.2},
    )
    with run_live_server(settings) as live:
        yield live


@pytest.fixture
async def rest(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        yield http


async def knowledge_base(rest: httpx.AsyncClient, tenant: TenantKeys, documents: dict[str, str]) -> None:
    """A text collection 'kb' holding the documents (through REST, as its ADMIN)."""
    await text_collection(rest, tenant, "kb")
    body = {"documents": [{"id": i, "text": t} for i, t in documents.items()]}
    added = await rest.post(f"{API}/kb/documents", json=body, headers=bearer(tenant.admin))
    assert added.status_code == 200, added.text


async def usage_of(db: Database, tenant_id: str) -> dict[tuple[str, str], int]:
    rows = await db.pool.fetch(
        "SELECT metric, operation, sum(quantity)::int AS q FROM usage_outbox WHERE tenant_id = $1 "
        "GROUP BY metric, operation",
        tenant_id,
    )
    return {(r["metric"], r["operation"]): r["q"] for r in rows}


async def test_answer_and_context_tools_are_the_rest_routes(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant, db: Database
) -> None:
    tenant: TenantKeys = await make_tenant("read_only")
    await knowledge_base(rest, tenant, CORPUS)
    ask = {"question": QUESTION, "top_k": 3, "include_context": True, "cache": False}
    async with connect(server, tenant.key("read_only")) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        # A read-only key: both listed, read-only; no write tool.
        assert set(tools) == READ_TOOLS
        for name in ("answer", "context"):
            annotations = tools[name].annotations
            assert annotations is not None and annotations.read_only_hint is True
        schema = tools["answer"].input_schema
        assert schema["required"] == ["collection"] and schema["additionalProperties"] is False
        assert {"question", "messages", "top_k", "filter", "mode", "cache"} <= set(schema["properties"])
        assert tools["context"].input_schema["required"] == ["question", "collection"]

        answer = await call(client, "answer", {"collection": "kb", **ask})
        assert answer["answer"] == SENTENCE and answer["model"] == "tiny" and answer["cached"] is False
        [citation] = answer["citations"]
        assert citation["number"] == 1 and citation["document_id"] == "rivers"
        assert "Danube" in citation["text"] and citation["id"] == answer["context"][0]["id"]
        assert answer["usage"]["completion_tokens"] == 7 and answer["usage"]["prompt_tokens"] > 0

        context = await call(client, "context", {"collection": "kb", "question": QUESTION, "top_k": 3})
        assert [p["number"] for p in context["passages"]] == [1, 2, 3]
        assert context["passages"][0]["document_id"] == "rivers" and context["model"] == "tiny"
        assert context["total_tokens"] == sum(p["tokens"] for p in context["passages"])

        # The semantic cache works through the tool as through REST: a miss stored, then a hit.
        first = await call(client, "answer", {"collection": "kb", "question": QUESTION})
        again = await call(client, "answer", {"collection": "kb", "question": QUESTION})
        assert first["cached"] is False and again["cached"] is True and again["answer"] == SENTENCE

    # The REST routes, for the same bodies, say the same.
    same = await rest.post(f"{API}/kb/answer", json=ask, headers=bearer(tenant.key("read_only")))
    assert same.status_code == 200, same.text
    assert same.json()["answer"] == answer["answer"]
    assert same.json()["citations"] == answer["citations"]
    assert same.json()["context"] == answer["context"]
    same_context = await rest.post(
        f"{API}/kb/context", json={"question": QUESTION, "top_k": 3}, headers=bearer(tenant.admin)
    )
    assert [(p["id"], p["tokens"]) for p in same_context.json()["passages"]] == [
        (p["id"], p["tokens"]) for p in context["passages"]
    ]

    # Metered like REST: requests by tool name, and the tokens read and generated (operation
    # answer, as GenerationService meters for the REST route); a cache hit generates nothing.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        usage = await usage_of(db, tenant.tenant_id)
        if usage.get(("requests", "mcp.answer")) == 3 and usage.get(("completion_tokens", "answer")) == 7 * 3:
            break
        assert asyncio.get_running_loop().time() < deadline, usage
        await asyncio.sleep(0.2)
    assert usage[("requests", "mcp.context")] == 1
    assert usage[("prompt_tokens", "answer")] > 0


async def test_answer_and_context_errors_are_rest_problems(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    await knowledge_base(rest, tenant, CORPUS)
    await make_collection(rest, tenant.admin, "plain")  # vectors only: no text to answer from
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("answer", "kb", {"question": QUESTION, "messages": [{"role": "user", "content": "hi"}]}),
        ("answer", "kb", {}),
        ("answer", "kb", {"question": QUESTION, "model": "no-such-model"}),
        ("answer", "plain", {"question": QUESTION}),
        ("answer", "missing", {"question": QUESTION}),
        ("context", "kb", {"question": QUESTION, "top_k": 0}),
        ("context", "plain", {"question": QUESTION}),
        ("context", "missing", {"question": QUESTION}),
    ]
    async with connect(server, tenant.key("mcp")) as client:
        for tool, name, body in cases:
            same = await rest.post(f"{API}/{name}/{tool}", json=body, headers=bearer(tenant.admin))
            assert same.status_code >= 400, (tool, name, body)
            code = same.json()["code"]
            problem = await fails(client, tool, {"collection": name, **body}, code)
            assert problem["status"] == same.status_code
            assert problem["detail"] == same.json()["detail"], (tool, name, body)
        # A tool answers once: streaming is refused clearly, not ignored.
        streamed = await fails(
            client, "answer", {"collection": "kb", "question": QUESTION, "stream": True}, "invalid_request"
        )
        assert streamed["errors"][0]["field"] == "stream"


async def test_other_tenants_collections_are_not_found_and_never_cited(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    a: TenantKeys = await make_tenant("mcp")
    b: TenantKeys = await make_tenant("mcp")
    await knowledge_base(rest, a, CORPUS)
    # B: the same collection name and a document of its own, and a collection A does not have.
    secret = "The Danube secretly flows into the Pacific according to tenant B."
    await knowledge_base(rest, b, {"rivers": secret})
    await text_collection(rest, b, "bonly")
    b_before = await rest.get(f"{API}/kb/documents", headers=bearer(b.admin))
    async with connect(server, a.key("mcp")) as client:
        for tool in ("answer", "context"):
            problem = await fails(client, tool, {"collection": "bonly", "question": QUESTION}, "not_found")
            assert problem["status"] == 404
            # Exactly what a collection that exists nowhere gets.
            nowhere = await fails(client, tool, {"collection": "nowhere", "question": QUESTION}, "not_found")
            assert problem["detail"].replace("bonly", "nowhere") == nowhere["detail"]
        # A's answer and context come from A's documents only, and A's cached answer...
        answer = await call(
            client, "answer", {"collection": "kb", "question": QUESTION, "include_context": True}
        )
        context = await call(client, "context", {"collection": "kb", "question": QUESTION})
    assert secret not in str(answer) and secret not in str(context)
    assert all(p["text"] in CORPUS.values() for p in answer["context"] + context["passages"])
    # ... is never B's: the same question on B's collection of the same name misses the cache.
    async with connect(server, b.key("mcp")) as client:
        theirs = await call(
            client, "answer", {"collection": "kb", "question": QUESTION, "include_context": True}
        )
    assert theirs["cached"] is False and [p["text"] for p in theirs["context"]] == [secret]
    after = await rest.get(f"{API}/kb/documents", headers=bearer(b.admin))
    assert after.json() == b_before.json()


# -- session tokens ----------------------------------------------------------------------------------


async def open_session(rest: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    response = await rest.post("/api/v1/sessions", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_session_token_reads_its_collections_only(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant()
    await knowledge_base(rest, tenant, CORPUS)
    await make_collection(rest, tenant.admin, "private")
    private_before = await snapshot(rest, tenant.admin, "private")
    session = await open_session(rest, tenant.admin, collections=["kb"], max_queries=4)
    token = session["token"]
    async with connect(server, token) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == SESSION_TOOLS  # no write tool
        listed = await call(client, "list_collections", {})
        assert [c["name"] for c in listed["items"]] == ["kb"]
        described = await call(client, "describe_collection", {"collection": "kb"})
        assert described["name"] == "kb"
        # The tenant's other collection: as if it did not exist.
        await fails(client, "describe_collection", {"collection": "private"}, "not_found")
        # A search is a query even when it finds no collection (REST counts it before the handler).
        await fails(client, "search", {"collection": "private", "vector": [1, 0, 0]}, "not_found")
        # Write tools: refused with REST's words for a session token, whatever the collection.
        for tool, arguments in (
            ("upsert_vectors", {"collection": "kb", "vectors": [{"id": "x", "vector": [0.0] * 384}]}),
            ("delete", {"collection": "private", "ids": ["v0"]}),
            ("add_documents", {"collection": "kb", "documents": [{"id": "n", "text": "new"}]}),
        ):
            problem = await fails(client, tool, arguments, "session_token_not_allowed")
            assert problem["status"] == 403
        # Three more queries (a search, an answer, a context) use max_queries up ...
        await call(client, "search", {"collection": "kb", "text": "bread", "top_k": 1})
        answer = await call(client, "answer", {"collection": "kb", "question": QUESTION})
        assert answer["answer"] == SENTENCE
        await call(client, "context", {"collection": "kb", "question": QUESTION})
        # ... and the fourth is a clear tool error, on any query tool.
        for tool, arguments in (
            ("search", {"collection": "kb", "text": "bread"}),
            ("answer", {"collection": "kb", "question": QUESTION}),
        ):
            exhausted = await fails(client, tool, arguments, "session_queries_exhausted")
            assert exhausted["status"] == 403 and "max_queries" in exhausted["detail"]
        # Reads that are not queries still work (as on REST).
        await call(client, "describe_collection", {"collection": "kb"})
    shown = await rest.get(f"/api/v1/sessions/{session['session_id']}", headers=bearer(tenant.admin))
    assert shown.json()["queries_used"] == 4
    assert await snapshot(rest, tenant.admin, "private") == private_before
    documents = await rest.get(f"{API}/kb/documents", headers=bearer(tenant.admin))
    assert sorted(d["id"] for d in documents.json()["items"]) == sorted(CORPUS)


async def test_deleted_session_is_refused(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant()
    await make_collection(rest, tenant.admin, "docs")
    session = await open_session(rest, tenant.admin, collections=["docs"])
    async with connect(server, session["token"]) as client:
        found = await call(client, "search", {"collection": "docs", "vector": [1, 0, 0.5], "top_k": 1})
        assert len(found["results"]) == 1
        gone = await rest.delete(f"/api/v1/sessions/{session['session_id']}", headers=bearer(tenant.admin))
        assert gone.status_code == 204, gone.text
        # Deletion reaches the verifier's cache at once on this replica (within a second on others).
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(MCPError) as refused:
            while True:
                await call(client, "search", {"collection": "docs", "vector": [1, 0, 0.5]})
                assert asyncio.get_running_loop().time() < deadline, "deleted session still accepted"
                await asyncio.sleep(0.1)
        assert refused.value.message == "The session was deleted."
        assert refused.value.data["code"] == "session_ended" and refused.value.data["status"] == 401
    again = await refusal(server, session["token"], "auto")
    assert again.data["code"] == "session_ended"


async def test_another_tenants_session_sees_nothing_of_this_tenant(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    a: TenantKeys = await make_tenant()
    b: TenantKeys = await make_tenant()
    await make_collection(rest, a.admin, "docs")
    await make_collection(rest, b.admin, "docs")
    await make_collection(rest, a.admin, "only-a")
    session = await open_session(rest, b.admin, collections=["docs"])
    async with connect(server, session["token"]) as client:
        listed = await call(client, "list_collections", {})
        assert [(c["name"], c["qualified_name"]) for c in listed["items"]] == [
            ("docs", f"{b.tenant_id}:docs")
        ]
        await fails(client, "describe_collection", {"collection": "only-a"}, "not_found")
        await fails(client, "answer", {"collection": "only-a", "question": QUESTION}, "not_found")


async def test_without_generation_answer_and_context_are_not_offered(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    with run_live_server(make_settings(generation={"enabled": False})) as live:
        tenant: TenantKeys = await make_tenant("read_only")
        async with connect(live, tenant.key("read_only")) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert tools == READ_TOOLS - {"answer", "context"}
            # Called anyway: REST's answer for the same route.
            problem = await fails(
                client, "answer", {"collection": "kb", "question": QUESTION}, "generation_disabled"
            )
            assert problem["status"] == 503 and problem["retry_after"] >= 1


async def test_a_collection_scoped_key_answers_from_its_collections_only(
    server: LiveServer, rest: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("mcp", collections=["kb"])
    await knowledge_base(rest, tenant, CORPUS)
    await text_collection(rest, tenant, "hidden")
    async with connect(server, tenant.key("mcp")) as client:
        assert (await call(client, "answer", {"collection": "kb", "question": QUESTION}))[
            "answer"
        ] == SENTENCE
        for tool in ("answer", "context"):
            problem = await fails(client, tool, {"collection": "hidden", "question": QUESTION}, "not_found")
            assert problem["detail"] == "Collection 'hidden' does not exist."

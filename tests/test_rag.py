"""Grounded answers (POST /collections/{name}/answer, /context): real retrieval with the real
embedding model, the real llama.cpp path on the tiny chat model (which always answers
"The answer is in the sources [1]."), the semantic cache in PostgreSQL; never across tenants."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.rag import store
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer
from tests.support.tiny_chat_model import SENTENCE, build
from tests.test_chat_api import _BreaksMidStream
from tests.test_documents import CORPUS, add, make_text_collection

API = "/api/v1/collections"
QUESTION = "Where does the Danube flow?"
PARAPHRASE = "Where is the Danube flowing?"  # cosine 0.98 with QUESTION (all-MiniLM-L6-v2)
UNRELATED = "Where does the Rhine flow?"  # cosine 0.67


@pytest.fixture(scope="module")
def flaky_remote() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BreaksMidStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
async def rag_client(
    make_settings: MakeSettings, tmp_path_factory: pytest.TempPathFactory, flaky_remote: str
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    folder: Path = tmp_path_factory.mktemp("rag-models")
    settings = make_settings(
        generation={
            "default_model": "tiny",
            "models": {
                # A byte-level vocabulary: the rules of the prompt alone take ~420 tokens.
                "tiny": {"path": str(build(folder / "tiny.gguf", context=2048)), "n_ctx": 2048},
                "flaky": {"url": flaky_remote},
            },
            "max_tokens": 32,
        },
        rate_limiting={"token_bucket_capacity": 1_000_000, "token_refill_per_second": 1000},
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def ask(client: Any, key: str, name: str = "kb", **body: Any) -> Any:
    return await client.post(f"{API}/{name}/answer", json=body, headers=bearer(key))


def lookups(result: str) -> float:
    return REGISTRY.get_sample_value("vectorhive_rag_cache_lookups_total", {"result": result}) or 0.0


def sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_answer_cites_the_chunks_that_were_retrieved(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    await make_text_collection(rag_client, tenant.admin)
    assert (await add(rag_client, tenant.admin, CORPUS)).status_code == 200
    response = await ask(
        rag_client, tenant.key("read_only"), question=QUESTION, top_k=3, include_context=True
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == "miss"
    body = response.json()
    assert body["answer"] == SENTENCE and body["cached"] is False and body["model"] == "tiny"
    context = body["context"]
    assert [p["number"] for p in context] == [1, 2, 3]
    assert context[0]["document_id"] == "rivers" and "Danube" in context[0]["text"]
    # The answer cites [1]: the citation is the first passage, the chunk that was retrieved first.
    [citation] = body["citations"]
    assert citation["number"] == 1
    assert citation["position"] == SENTENCE.index("[1]") and citation["positions"] == [SENTENCE.index("[1]")]
    for field in ("id", "document_id", "chunk_index", "score", "text"):
        assert citation[field] == context[0][field]
    assert citation["id"] == "rivers#0" and citation["chunk_index"] == 0
    usage = body["usage"]
    assert usage["completion_tokens"] == 7 and usage["prompt_tokens"] > 0
    assert usage["retrieval_ms"] > 0 and usage["generation_ms"] > 0
    # More passages make a longer prompt: they were given to the model.
    one = (await ask(rag_client, tenant.admin, question=QUESTION, top_k=1, cache=False)).json()
    assert one["usage"]["prompt_tokens"] < usage["prompt_tokens"]
    assert "context" not in one or one["context"] is None


async def test_streaming_gives_the_same_answer_and_citations(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    plain = (await ask(rag_client, tenant.admin, question=QUESTION, cache=False)).json()
    response = await ask(rag_client, tenant.admin, question=QUESTION, cache=False, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-cache"] == "miss"
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_end"
    assert names[1:-2] == ["content"] * 7 and names[-2] == "citation"
    assert "".join(data["delta"] for name, data in events if name == "content") == plain["answer"] == SENTENCE
    assert [data for name, data in events if name == "citation"] == plain["citations"]
    end = events[-1][1]
    assert end["finish_reason"] == "stop" and end["cached"] is False
    assert end["usage"]["completion_tokens"] == 7


async def test_semantic_cache_hits_paraphrases_and_nothing_else(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    hits_before = lookups("hit")
    first = await ask(rag_client, tenant.admin, question=QUESTION)
    assert first.headers["x-cache"] == "miss" and first.json()["cached"] is False
    # A paraphrase is answered from the cache: same answer and citations, nothing generated.
    again = await ask(rag_client, tenant.admin, question=PARAPHRASE)
    assert again.headers["x-cache"] == "hit", again.text
    cached = again.json()
    assert cached["cached"] is True
    assert (cached["answer"], cached["citations"]) == (first.json()["answer"], first.json()["citations"])
    assert lookups("hit") == hits_before + 1
    streamed = await ask(rag_client, tenant.admin, question=PARAPHRASE, stream=True)
    assert streamed.headers["x-cache"] == "hit"
    events = sse(streamed.text)
    assert events[0] == ("message_start", {"model": "tiny", "cached": True})
    assert events[1] == ("content", {"delta": SENTENCE})
    # An unrelated question misses; so does a request that opts out, and other parameters.
    assert (await ask(rag_client, tenant.admin, question=UNRELATED)).headers["x-cache"] == "miss"
    assert (await ask(rag_client, tenant.admin, question=QUESTION, cache=False)).headers["x-cache"] == "miss"
    assert (await ask(rag_client, tenant.admin, question=QUESTION, top_k=2)).headers["x-cache"] == "miss"
    assert (await ask(rag_client, tenant.admin, question=QUESTION)).headers["x-cache"] == "hit"
    # Any write to the collection invalidates its answers.
    await add(rag_client, tenant.admin, {"extra": "The Danube also flows through Vienna."})
    assert (await ask(rag_client, tenant.admin, question=QUESTION)).headers["x-cache"] == "miss"
    assert (await ask(rag_client, tenant.admin, question=QUESTION)).headers["x-cache"] == "hit"


async def test_cache_and_answers_never_cross_tenants(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    owner, other = await make_tenant(), await make_tenant()
    for tenant, secret in ((owner, "OWNER-SECRET"), (other, "OTHER-TEXT")):
        await make_text_collection(rag_client, tenant.admin)
        await add(rag_client, tenant.admin, {"rivers": f"The Danube flows to the Black Sea. {secret}"})
    assert (await ask(rag_client, owner.admin, question=QUESTION)).headers["x-cache"] == "miss"
    assert (await ask(rag_client, owner.admin, question=QUESTION)).headers["x-cache"] == "hit"
    # Same collection name, same question: the other tenant misses and sees only its own text.
    response = await ask(rag_client, other.admin, question=QUESTION, include_context=True)
    assert response.headers["x-cache"] == "miss"
    assert "OWNER-SECRET" not in response.text and "OTHER-TEXT" in response.text
    cached = await ask(rag_client, other.admin, question=QUESTION, include_context=True)
    assert cached.headers["x-cache"] == "hit"
    assert "OWNER-SECRET" not in cached.text and "OTHER-TEXT" in cached.text
    # A collection of another tenant is not found, for answers and for context alike.
    third = await make_tenant()
    assert_problem(await ask(rag_client, third.admin, question=QUESTION), 404, "not_found")
    context = await rag_client.post(
        f"{API}/kb/context", json={"question": QUESTION}, headers=bearer(third.admin)
    )
    assert_problem(context, 404, "not_found")
    usage = (await rag_client.get("/api/v1/usage", headers=bearer(third.admin))).json()["usage"]
    assert usage["prompt_tokens"] == usage["completion_tokens"] == 0


async def test_context_returns_passages_within_a_token_budget(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    url = f"{API}/kb/context"
    key = bearer(tenant.key("read_only"))
    full = await rag_client.post(url, json={"question": QUESTION, "top_k": 4}, headers=key)
    assert full.status_code == 200, full.text
    body = full.json()
    passages = body["passages"]
    assert len(passages) == 4 and body["dropped"] == 0 and body["model"] == "tiny"
    assert passages[0]["document_id"] == "rivers"
    assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
    assert body["total_tokens"] == sum(p["tokens"] for p in passages) > 0
    budget = passages[0]["tokens"] + passages[1]["tokens"]
    cut = (
        await rag_client.post(url, json={"question": QUESTION, "top_k": 4, "max_tokens": budget}, headers=key)
    ).json()
    assert [p["id"] for p in cut["passages"]] == [p["id"] for p in passages[:2]]
    assert cut["dropped"] == 2 and cut["total_tokens"] == budget


async def test_context_window_policy_drops_passages_then_turns_then_refuses(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(
        rag_client, tenant.admin, {f"d{i}": f"The Danube passes town number {i}. " * 12 for i in range(6)}
    )
    # The tiny model's window is 2048 tokens, 32 of them kept for the completion: of 6 passages of
    # ~430 tokens only the best fit.
    body = (
        await ask(rag_client, tenant.admin, question=QUESTION, top_k=6, include_context=True, cache=False)
    ).json()
    assert 0 < len(body["context"]) < 6
    assert body["usage"]["prompt_tokens"] <= 2048 - 32
    # A long conversation: the oldest turns go, the answer still comes.
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i} " + "blah " * 60}
        for i in range(10)
    ]
    messages = [*history, {"role": "user", "content": QUESTION}]
    response = await ask(rag_client, tenant.admin, messages=messages, top_k=1)
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == SENTENCE
    # A question that cannot fit at all is refused.
    long_question = {"question": "Danube " * 400}
    assert_problem(await ask(rag_client, tenant.admin, **long_question), 400, "context_too_long")


async def test_bad_requests_are_clear_problems(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    for bad in (
        {},
        {"question": QUESTION, "messages": [{"role": "user", "content": QUESTION}]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"question": ""},
        {"question": QUESTION, "top_k": 0},
        {"question": QUESTION, "mode": "keyword"},
        {"question": QUESTION, "nope": 1},
    ):
        assert_problem(await ask(rag_client, tenant.admin, **bad), 400)
    body = assert_problem(await ask(rag_client, tenant.admin, question=QUESTION, model="nope"), 400)
    assert body["code"] == "unknown_model"
    # A collection of plain vectors cannot answer questions.
    plain = await rag_client.post(API, json={"name": "plain", "dimension": 3}, headers=bearer(tenant.admin))
    assert plain.status_code == 201
    assert_problem(await ask(rag_client, tenant.admin, name="plain", question=QUESTION), 400)
    assert_problem(await ask(rag_client, tenant.admin, name="absent", question=QUESTION), 404)


async def test_a_stream_that_fails_after_it_began_ends_with_an_error_event(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    response = await ask(rag_client, tenant.admin, question=QUESTION, model="flaky", stream=True)
    assert response.status_code == 200
    events = sse(response.text)
    assert [name for name, _ in events] == ["message_start", "content", "error"]
    error = events[-1][1]
    assert error["status"] == 503 and error["code"] == "model_unavailable" and "broke off" in error["detail"]
    # Nothing was cached from the broken answer.
    assert (await ask(rag_client, tenant.admin, question=QUESTION, model="flaky")).status_code == 503


async def test_cache_is_bounded_per_tenant_and_entries_expire(
    rag_client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Any
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    await add(rag_client, tenant.admin, CORPUS)
    rag = rag_client.app.state.rag_service
    settings = rag.settings
    saved = (settings.cache_max_entries_per_tenant, settings.cache_ttl_seconds)

    async def entries() -> int:
        count: int = await db.pool.fetchval(
            "SELECT count(*) FROM rag_cache WHERE tenant_id = $1", tenant.tenant_id
        )
        return count

    try:
        settings.cache_max_entries_per_tenant = 2
        for question in (QUESTION, "Why does sourdough rise slowly?", "When are tax returns due?"):
            assert (await ask(rag_client, tenant.admin, question=question)).headers["x-cache"] == "miss"
        assert await entries() == 2  # the oldest went
        assert (await ask(rag_client, tenant.admin, question=QUESTION)).headers["x-cache"] == "miss"
        settings.cache_ttl_seconds = 0.001
        await ask(rag_client, tenant.admin, question=UNRELATED)
        assert (await ask(rag_client, tenant.admin, question=UNRELATED)).headers["x-cache"] == "miss"
        # The periodic prune (its SQL, on this test's own pool) leaves no expired entry.
        async with db.transaction() as conn:
            assert await store.prune_and_count(conn) >= 0
        expired = "SELECT count(*) FROM rag_cache WHERE tenant_id = $1 AND expires_at <= now()"
        assert await db.pool.fetchval(expired, tenant.tenant_id) == 0
    finally:
        settings.cache_max_entries_per_tenant, settings.cache_ttl_seconds = saved

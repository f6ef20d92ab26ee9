"""POST /api/v1/chat/completions on a live server, with the real `openai` client, on the tiny chat
model the tests build (exact text through the real llama.cpp path)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    LiveServer,
    MakeSettings,
    MakeTenant,
    assert_problem,
    bearer,
    run_live_server,
    set_quotas,
)
from tests.support.tiny_chat_model import SENTENCE, build


class _BreaksMidStream(BaseHTTPRequestHandler):
    """A remote chat server that sends one piece of an answer and then drops the connection."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        piece = {"choices": [{"index": 0, "delta": {"content": "Half"}, "finish_reason": None}]}
        self.wfile.write(b"data: " + json.dumps(piece).encode() + b"\n\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def breaking_remote() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BreaksMidStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def chat_server(
    make_settings: MakeSettings, tmp_path_factory: pytest.TempPathFactory, breaking_remote: str
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("chat-api-models")
    settings = make_settings(
        generation={
            "default_model": "tiny",
            "models": {
                "tiny": {"path": str(build(folder / "tiny.gguf")), "n_ctx": 512},
                # Room for grounded prompts (a byte-level vocabulary: the rules alone take ~420 tokens).
                "wide": {"path": str(build(folder / "wide.gguf", context=2048)), "n_ctx": 2048},
                "endless": {
                    "path": str(build(folder / "endless.gguf", context=4096, endless=True)),
                    "n_ctx": 4096,
                },
                "broken": {"path": str(folder / "absent.gguf")},
                "flaky": {"url": breaking_remote},
            },
            "queue_max_requests": 0,
        }
    )
    with run_live_server(settings) as server:
        yield server


@pytest.fixture
async def http(chat_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=chat_server.url, timeout=30) as client:
        yield client


def openai_client(server: LiveServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/api/v1", api_key=key, max_retries=0)


ASK = [{"role": "user", "content": "Where is the answer?"}]


async def usage_of(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await http.get("/api/v1/usage", headers=bearer(key))
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


async def test_openai_client_non_streaming_and_streaming_agree(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant("read_only")
    client = openai_client(chat_server, tenant.key("read_only"))  # READ_ONLY keys may ask
    answer = await client.chat.completions.create(model="tiny", messages=ASK)  # type: ignore[arg-type]
    assert answer.object == "chat.completion" and answer.model == "tiny"
    assert answer.choices[0].message.content == SENTENCE
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 7
    prompt_tokens = answer.usage.prompt_tokens
    assert prompt_tokens > 0 and answer.usage.total_tokens == prompt_tokens + 7

    stream = await client.chat.completions.create(
        model="tiny",
        messages=ASK,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == SENTENCE
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, 7)
    assert len({c.id for c in chunks}) == 1

    # max_tokens cuts the answer; the default model is used when none is named.
    cut = await client.chat.completions.create(model="", messages=ASK, max_tokens=3)  # type: ignore[arg-type]
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("The answer is", "length")

    # Metered per tenant: 3 generations; another tenant sees none of it.
    usage = await usage_of(http, tenant.admin)
    assert usage["prompt_tokens"] == 3 * prompt_tokens
    assert usage["completion_tokens"] == 7 + 7 + 3
    other = await make_tenant()
    assert (await usage_of(http, other.admin))["completion_tokens"] == 0


async def test_raw_sse_ends_with_done(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant()
    body = {"messages": ASK, "stream": True}
    async with http.stream("POST", "/api/v1/chat/completions", json=body, headers=bearer(tenant.admin)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in r.aiter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(
        (c["object"] == "chat.completion.chunk" and "usage" not in c) or c["usage"] is None for c in chunks
    )
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == SENTENCE


async def test_bad_requests_are_problems_and_cost_nothing(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    url = "/api/v1/chat/completions"
    for bad in (
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": ASK, "n": 2},
        {"messages": ASK, "temperature": 3},
        {"messages": ASK, "max_tokens": 0},
        {"messages": ASK, "stop": ["a", "b", "c", "d", "e"]},
    ):
        assert_problem(await http.post(url, json=bad, headers=key), 400, "invalid_request")
    body = assert_problem(await http.post(url, json={"messages": ASK, "model": "nope"}, headers=key), 400)
    assert body["code"] == "unknown_model" and "tiny" in body["detail"]
    long = {"messages": [{"role": "user", "content": "word " * 600}]}
    body = assert_problem(await http.post(url, json=long, headers=key), 400, "context_too_long")
    assert "generation.models.tiny.n_ctx" in body["detail"]
    assert_problem(await http.post(url, json={"messages": ASK}), 401)
    usage = await usage_of(http, tenant.admin)
    assert usage["prompt_tokens"] == usage["completion_tokens"] == 0


async def test_missing_model_is_a_503_naming_the_option(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant()
    response = await http.post(
        "/api/v1/chat/completions", json={"messages": ASK, "model": "broken"}, headers=bearer(tenant.admin)
    )
    body = assert_problem(response, 503, "model_unavailable")
    assert "generation.models.broken.path" in body["detail"]
    assert int(response.headers["retry-after"]) > 0


async def test_token_bucket_is_charged_for_prompt_and_max_tokens(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient, operator_key: str
) -> None:
    tenant = await make_tenant()
    await set_quotas(
        http, operator_key, tenant.tenant_id, token_bucket_capacity=5, token_refill_per_second=0.001
    )
    key = bearer(tenant.admin)
    url = "/api/v1/chat/completions"
    # 0.1 a completion token (default): 100 max_tokens cost 10 + the prompt, more than 5.
    response = await http.post(url, json={"messages": ASK, "max_tokens": 100}, headers=key)
    body = assert_problem(response, 429, "rate_limited")
    assert body["limit"] == "token_bucket" and int(response.headers["retry-after"]) >= 1
    # 10 max_tokens cost 1 + the prompt (0.01 a token): allowed, and the bucket shrinks.
    ok = await http.post(url, json={"messages": ASK, "max_tokens": 10}, headers=key)
    assert ok.status_code == 200, ok.text
    usage = await usage_of(http, tenant.admin)
    assert usage["completion_tokens"] == 7  # the refused request generated nothing


async def test_full_queue_is_a_503_and_a_client_that_leaves_frees_the_model(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    url = "/api/v1/chat/completions"
    short = {"model": "endless", "messages": ASK, "max_tokens": 5}
    long_run = {"model": "endless", "messages": ASK, "stream": True, "max_tokens": 4000}
    async with http.stream("POST", url, json=long_run, headers=key) as first:
        assert first.status_code == 200
        lines = first.aiter_lines()
        while "The" not in await anext(lines):
            pass
        # queue_max_requests 0: the model is busy with the first request; the second is refused.
        busy = await http.post(url, json=short, headers=key)
        assert_problem(busy, 503, "model_busy")
        assert int(busy.headers["retry-after"]) >= 1
    # The first client went away (connection closed mid-stream): the model is freed and serves.
    for _ in range(300):
        follow = await http.post(
            url, json={"model": "endless", "messages": ASK, "max_tokens": 5}, headers=key
        )
        if follow.status_code != 503:
            break
        await asyncio.sleep(0.02)
    assert follow.status_code == 200, follow.text
    assert follow.json()["choices"][0]["message"]["content"] == "The answer is in the"
    # The abandoned stream was metered for what it generated, far less than its 4000 tokens.
    usage = await usage_of(http, tenant.admin)
    assert 5 < usage["completion_tokens"] < 4000


async def test_a_stream_that_breaks_ends_with_an_error_event(
    chat_server: LiveServer, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    client = openai_client(chat_server, tenant.admin)
    stream = await client.chat.completions.create(model="flaky", messages=ASK, stream=True)  # type: ignore[arg-type]
    pieces = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "Half"
    assert "broke off" in str(caught.value.message)


async def test_grounded_on_collections_with_the_openai_client(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    from tests.test_documents import CORPUS, add, make_text_collection

    tenant = await make_tenant()
    await make_text_collection(http, tenant.admin, name="kb")
    await make_text_collection(http, tenant.admin, name="more")
    assert (await add(http, tenant.admin, CORPUS)).status_code == 200
    more = {"danube2": "The Danube delta is a wetland on the Black Sea coast."}
    assert (await add(http, tenant.admin, more, name="more")).status_code == 200
    client = openai_client(chat_server, tenant.admin)
    grounding = {"vectorhive": {"collections": ["kb", "more"], "top_k": 2}}
    question = [{"role": "user", "content": "Where does the Danube flow?"}]
    answer = await client.chat.completions.create(
        model="wide",
        messages=question,  # type: ignore[arg-type]
        extra_body=grounding,
        max_tokens=16,
    )
    assert answer.choices[0].message.content == SENTENCE
    citations = (answer.model_extra or {})["citations"]
    assert len(citations) == 1 and citations[0]["number"] == 1
    assert citations[0]["collection"] in ("kb", "more") and "Danube" in citations[0]["text"]
    stream = await client.chat.completions.create(
        model="wide",
        messages=question,  # type: ignore[arg-type]
        extra_body=grounding,
        max_tokens=16,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == SENTENCE
    assert (chunks[-1].model_extra or {})["citations"] == citations
    # Another tenant's collection is not found (404), and its own text never leaks.
    other = await make_tenant()
    response = await http.post(
        "/api/v1/chat/completions",
        json={"model": "wide", "messages": question, **grounding},
        headers=bearer(other.admin),
    )
    assert_problem(response, 404, "not_found")
    assert "Danube" not in response.text.replace("Where does the Danube flow?", "")


async def test_a_non_streaming_client_that_gives_up_frees_the_model(
    chat_server: LiveServer, make_tenant: MakeTenant, http: httpx.AsyncClient
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    url = "/api/v1/chat/completions"
    long_run = {"model": "endless", "messages": ASK, "max_tokens": 4000}
    async with httpx.AsyncClient(base_url=chat_server.url, timeout=1.0) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(url, json=long_run, headers=key)
    short = {"model": "endless", "messages": ASK, "max_tokens": 5}
    for _ in range(300):
        follow = await http.post(url, json=short, headers=key)
        if follow.status_code != 503:
            break
        await asyncio.sleep(0.02)
    assert follow.status_code == 200, follow.text
    # Metered for what it generated before the client left (perhaps nothing on a busy machine),
    # far less than its 4000 tokens.
    usage = await usage_of(http, tenant.admin)
    assert 5 <= usage["completion_tokens"] < 4000

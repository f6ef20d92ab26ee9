"""POST /api/v1/embeddings (OpenAI's shape, checked with the stock `openai` client), the seed's
/embeddings/generate alias and GET /models, on the real default model (all-MiniLM-L6-v2 converted
from its PyPI package by our own code) run by llama.cpp in the server."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import LiveServer, MakeSettings, MakeTenant, assert_problem, bearer

EMBED = "/api/v1/embeddings"
MODEL = "all-minilm-l6-v2"


async def wait_for_model(client: Any, key: str, model: str = MODEL, seconds: float = 120) -> dict[str, Any]:
    """The model's card once it has left `loading` (it loads in the background at startup)."""
    deadline = time.monotonic() + seconds
    while True:
        response = await client.get("/api/v1/models", headers=bearer(key))
        assert response.status_code == 200, response.text
        card: dict[str, Any] = next(m for m in response.json()["data"] if m["id"] == model)
        if card["status"] != "loading" or time.monotonic() > deadline:
            return card
        await asyncio.sleep(0.1)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_models_are_listed_with_their_state(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    card = await wait_for_model(client, tenant.key("read_only"))
    assert card == {
        "id": MODEL,
        "object": "model",
        "created": 0,
        "owned_by": "vectorhive (default)",
        "kind": "embedding",
        "backend": "local",
        "dimension": 384,
        "max_tokens": 256,
        "status": "ready",
    }
    # Chat models follow (the `model` of /chat/completions), with their context window.
    listed = (await client.get("/api/v1/models", headers=bearer(tenant.key("read_only")))).json()["data"]
    chat = [m for m in listed if m["kind"] == "chat"]
    assert chat and all(m["dimension"] is None and m["max_tokens"] >= 64 for m in chat), listed
    assert [m["id"] for m in listed if m["owned_by"].endswith("(default)")] == [MODEL, chat[0]["id"]]


async def test_embeddings_in_openai_shape_float_and_base64(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    key = bearer(tenant.key("read_only"))
    await wait_for_model(client, tenant.key("read_only"))
    texts = ["A man is playing guitar", "Someone plays a guitar", "The stock market fell today"]
    response = await client.post(EMBED, json={"model": MODEL, "input": texts}, headers=key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cos(vectors[0], vectors[1]) > 0.7 > 0.2 > _cos(vectors[0], vectors[2])
    # [CLS] a man is playing guitar [SEP] = 7, [CLS] someone plays a guitar [SEP] = 6, ...
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] >= 7 + 6

    encoded = await client.post(
        "/api/v1/embeddings/generate",
        json={"input": texts[0], "encoding_format": "base64"},
        headers=key,
    )
    assert encoded.status_code == 200, encoded.text
    (item,) = encoded.json()["data"]
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert np.abs(decoded - vectors[0]).max() <= 1e-5  # alone or in a batch: the same vector


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"input": ""}, "input[0]", "invalid_request"),
        ({"input": ["fine", "   "]}, "input[1]", "invalid_request"),
        ({"input": []}, "input", "invalid_request"),
        ({"input": [[101, 2023]]}, "input", "invalid_request"),
        ({"input": "a\u0000b"}, "input[0]", "invalid_request"),
        ({"input": "x", "model": "gpt-17"}, "model", "unknown_model"),
        ({"input": "x", "dimensions": 128}, "dimensions", "invalid_request"),
        ({"input": ["short", "word " * 400]}, "input[1]", "text_too_long"),
        ({"input": "y" * 40_000}, "input[0]", "text_too_large"),
        ({"input": ["t"] * 257}, "input", "invalid_request"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_request"),
    ],
)
async def test_bad_input_is_a_clear_400(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, body: dict[str, Any], field: str, code: str
) -> None:
    tenant = await make_tenant()
    await wait_for_model(client, tenant.admin)
    problem = assert_problem(await client.post(EMBED, json=body, headers=bearer(tenant.admin)), 400, code)
    assert problem["errors"][0]["field"] == field, problem
    assert problem["detail"].startswith(field) or code == "unknown_model", problem
    if code == "unknown_model":
        assert "'gpt-17'" in problem["detail"] and MODEL in problem["detail"], problem


async def test_invalid_utf8_and_lone_surrogates_are_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await wait_for_model(client, tenant.admin)
    headers = {**bearer(tenant.admin), "Content-Type": "application/json"}
    for body, words in (
        (b'{"input": "bad \\ud800 text"}', "surrogate"),
        (b'{"input": "bad \xff text"}', "utf-8"),
    ):
        problem = assert_problem(await client.post(EMBED, content=body, headers=headers), 400)
        assert words in problem["detail"].lower(), problem


async def test_mcp_keys_and_missing_keys_are_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("mcp")
    assert_problem(await client.post(EMBED, json={"input": "x"}), 401)
    assert_problem(await client.post(EMBED, json={"input": "x"}, headers=bearer(tenant.key("mcp"))), 403)


@pytest.fixture(scope="module")
async def broken_client(
    make_settings: MakeSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A server whose only model points at a file that is not there."""
    missing = tmp_path_factory.mktemp("models") / "gone.gguf"
    settings = make_settings(
        embeddings={
            "default_model": "broken",
            "models": {"broken": {"path": str(missing), "dimension": 384}},
        }
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


async def test_a_model_that_cannot_load_answers_503_and_the_rest_works(
    broken_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    card = await wait_for_model(broken_client, tenant.admin, "broken")
    assert card["status"] == "failed" and "gone.gguf" in card["error"]
    response = await broken_client.post(EMBED, json={"input": "x"}, headers=bearer(tenant.admin))
    problem = assert_problem(response, 503, "model_unavailable")
    assert "'broken'" in problem["detail"] and "embeddings.models.broken.path" in problem["detail"]
    assert int(response.headers["retry-after"]) > 0
    # A text collection cannot be made on it either, with the same answer; plain collections can.
    made = await broken_client.post(
        "/api/v1/collections", json={"name": "plain", "dimension": 3}, headers=bearer(tenant.admin)
    )
    assert made.status_code == 201, made.text
    listed = await broken_client.get("/api/v1/collections", headers=bearer(tenant.admin))
    assert [c["name"] for c in listed.json()["items"]] == ["plain"]


async def test_the_openai_client_works_against_the_server(
    live_server: LiveServer, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        await wait_for_model(http, key)
    client = openai.AsyncOpenAI(base_url=f"{live_server.url}/api/v1", api_key=key, max_retries=0)
    # The client asks for base64 by default and decodes it itself.
    result = await client.embeddings.create(
        model=MODEL, input=["A man is playing guitar", "Someone plays a guitar"]
    )
    assert result.model == MODEL and len(result.data) == 2
    a, b = (np.array(item.embedding) for item in result.data)
    assert a.shape == (384,) and _cos(a, b) > 0.7
    as_floats = await client.embeddings.create(
        model=MODEL, input="A man is playing guitar", encoding_format="float"
    )
    assert np.abs(np.array(as_floats.data[0].embedding) - a).max() <= 1e-5
    assert result.usage.prompt_tokens > 0
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="no-such-model", input="x")
    assert caught.value.status_code == 400 and "There is no model 'no-such-model'" in str(caught.value)
    assert caught.value.code == "unknown_model" and caught.value.param == "model"


async def test_sixteen_concurrent_requests_are_all_served(
    live_server: LiveServer, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as http:
        await wait_for_model(http, tenant.admin)
        bodies = [{"input": [f"request {r} sentence {i} about rivers" for i in range(8)]} for r in range(16)]
        responses = await asyncio.gather(
            *(http.post(EMBED, json=b, headers=bearer(tenant.admin)) for b in bodies)
        )
        assert [r.status_code for r in responses] == [200] * 16
        again = await http.post(EMBED, json=bodies[5], headers=bearer(tenant.admin))
    first = np.array([d["embedding"] for d in responses[5].json()["data"]])
    assert np.abs(first - np.array([d["embedding"] for d in again.json()["data"]])).max() <= 1e-5


@pytest.fixture(scope="module")
async def small_queue_client(
    make_settings: MakeSettings,
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = make_settings(embeddings={"queue_max_texts": 8})
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


async def test_a_full_queue_answers_503_with_retry_after_and_metrics_show_the_model(
    small_queue_client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    await wait_for_model(small_queue_client, tenant.admin)
    key = bearer(tenant.admin)
    fits = await small_queue_client.post(EMBED, json={"input": ["a text"] * 8}, headers=key)
    assert fits.status_code == 200, fits.text
    response = await small_queue_client.post(EMBED, json={"input": ["a text"] * 9}, headers=key)
    problem = assert_problem(response, 503, "model_busy")
    assert "embeddings.queue_max_texts" in problem["detail"] and int(response.headers["retry-after"]) >= 1
    metrics = (await small_queue_client.get("/metrics", headers=bearer(operator_key))).text
    assert f'vectorhive_model_rejected_total{{model="{MODEL}",reason="queue_full"}}' in metrics
    assert f'vectorhive_model_queue_texts{{model="{MODEL}"}} 0.0' in metrics
    assert f'vectorhive_model_embeddings_total{{model="{MODEL}"}}' in metrics

"""A session token on the RAG endpoints of its collection: context and answers work, count
towards max_queries, and other collections stay invisible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer
from tests.support.tiny_chat_model import build
from tests.test_documents import CORPUS, add, make_text_collection

QUESTION = "Where does the Danube flow?"


@pytest.fixture(scope="module")
async def rag_client(
    make_settings: MakeSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    folder: Path = tmp_path_factory.mktemp("session-rag-models")
    settings = make_settings(
        generation={
            "default_model": "tiny",
            "models": {"tiny": {"path": str(build(folder / "tiny.gguf", context=2048)), "n_ctx": 2048}},
            "max_tokens": 16,
        },
        rate_limiting={"token_bucket_capacity": 1_000_000, "token_refill_per_second": 1000},
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def test_a_session_token_retrieves_context_and_answers_within_max_queries(
    rag_client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(rag_client, tenant.admin)
    added = await add(rag_client, tenant.admin, CORPUS)
    assert added.status_code in (200, 201), added.text
    await make_text_collection(rag_client, tenant.admin, "private")
    created = await rag_client.post(
        "/api/v1/sessions", json={"collections": ["kb"], "max_queries": 2}, headers=bearer(tenant.admin)
    )
    assert created.status_code == 201, created.text
    token = bearer(created.json()["token"])

    context = await rag_client.post(
        "/api/v1/collections/kb/context", json={"question": QUESTION}, headers=token
    )
    assert context.status_code == 200, context.text
    assert context.json()["passages"], context.text
    answer = await rag_client.post(
        "/api/v1/collections/kb/answer", json={"question": QUESTION}, headers=token
    )
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["answer"], str) and "citations" in answer.json()
    # Two queries used: the third is refused, and another collection is not found.
    third = await rag_client.post(
        "/api/v1/collections/kb/context", json={"question": QUESTION}, headers=token
    )
    assert_problem(third, 403, "session_queries_exhausted")
    shown = await rag_client.get(
        f"/api/v1/sessions/{created.json()['session_id']}", headers=bearer(tenant.admin)
    )
    assert shown.json()["queries_used"] == 2
    other = await rag_client.post(
        "/api/v1/sessions", json={"collections": ["kb"]}, headers=bearer(tenant.admin)
    )
    hidden = await rag_client.post(
        "/api/v1/collections/private/context",
        json={"question": QUESTION},
        headers=bearer(other.json()["token"]),
    )
    assert_problem(hidden, 404, "not_found")

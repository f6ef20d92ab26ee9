"""Text collections: documents split in the model's tokens, embedded by the real default model,
stored all or nothing, found by text, by keywords and by both fused; never across tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer
from tests.test_embeddings_api import MODEL, wait_for_model

API = "/api/v1/collections"

CORPUS = {
    "rivers": "The Danube flows through ten countries before it reaches the Black Sea.",
    "guitar": "Learning to play the guitar takes patience and daily practice of chords.",
    "bread": "Sourdough bread rises slowly because wild yeast ferments the dough overnight.",
    "taxes": "Tax returns must be filed by the end of April in most years.",
}

# Four orders whose numbers differ by a letter or a digit: a paraphrase-minded vector search puts
# the wrong one first for this query; the exact keyword decides it.
ORDERS = {
    "k": "Order ZQX-4471 shipped on Tuesday.",
    "a": "Order ZQX-4417 shipped on Tuesday morning.",
    "b": "Order ZQX-4771 shipped on Tuesday evening.",
    "c": "Order ZXQ-4471 shipped on a Tuesday.",
}
ORDER_QUERY = "order ZQX-4471 shipped on a Tuesday"


def paragraphs(n: int) -> str:
    """A long text of varied sentences in paragraphs (about 60 tokens a paragraph)."""
    topics = ["harbour", "mountain", "library", "orchard", "railway", "glacier", "market", "theatre"]
    out = []
    for p in range(n):
        topic = topics[p % len(topics)]
        out.append(
            f"Paragraph {p} is about the {topic}. The {topic} was busy in the morning and quiet at night. "
            f"Visitors to the {topic} often wrote letters describing the light, the weather and the people. "
            f"Some stayed for weeks; others left after an hour, promising to return to the {topic} soon."
        )
    return "\n\n".join(out)


async def make_text_collection(client: Any, key: str, name: str = "kb", **embedding: Any) -> dict[str, Any]:
    await wait_for_model(client, key)
    response = await client.post(
        API, json={"name": name, "embedding": {"model": MODEL, **embedding}}, headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def add(client: Any, key: str, documents: dict[str, str], name: str = "kb", **metadata: Any) -> Any:
    body = {
        "documents": [{"id": i, "text": t, "metadata": {"doc": i, **metadata}} for i, t in documents.items()]
    }
    return await client.post(f"{API}/{name}/documents", json=body, headers=bearer(key))


async def search(client: Any, key: str, name: str = "kb", **query: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/{name}/search", json=query, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_text_collection_takes_its_dimension_from_the_model(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    made = await make_text_collection(client, tenant.admin)
    assert made["dimension"] == 384 and made["metric"] == "cosine"
    assert made["embedding"] == {
        "model": MODEL,
        "chunk_tokens": 256,
        "chunk_overlap": 32,
        "text_search_config": "english",
    }
    key = bearer(tenant.admin)
    for body, field, code in [
        ({"name": "x", "dimension": 768, "embedding": {"model": MODEL}}, "dimension", "invalid_request"),
        ({"name": "x", "embedding": {"model": "nope"}}, "model", "unknown_model"),
        ({"name": "x", "embedding": {"model": MODEL, "chunk_tokens": 300}}, "embedding.chunk_tokens", None),
        ({"name": "x", "embedding": {"model": MODEL, "chunk_overlap": 200}}, "embedding.chunk_overlap", None),
        (
            {"name": "x", "embedding": {"model": MODEL, "text_search_config": "klingon"}},
            "embedding.text_search_config",
            None,
        ),
        ({"name": "x"}, "dimension", None),
    ]:
        problem = assert_problem(await client.post(API, json=body, headers=key), 400, code)
        assert problem["errors"][0]["field"] == field, problem
    listed = (await client.get(API, headers=key)).json()
    assert [c["name"] for c in listed["items"]] == ["kb"]


async def test_documents_are_found_by_text_with_their_chunk_and_document(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    await make_text_collection(client, tenant.admin)
    stored = await add(client, tenant.admin, CORPUS)
    assert stored.status_code == 200, stored.text
    assert stored.json() | {"tokens": 0} == {"documents": 4, "chunks": 4, "tokens": 0, "replaced_chunks": 0}
    reader = tenant.key("read_only")
    for question, expected in [
        ("how long does a river run across europe", "rivers"),
        ("making bread with natural yeast", "bread"),
        ("when is the deadline for my taxes", "taxes"),
        ("practising an instrument", "guitar"),
    ]:
        found = await search(client, reader, text=question, top_k=2)
        best = found["results"][0]
        assert best["document_id"] == expected, found
        assert best["id"] == f"{expected}#0" and best["chunk_index"] == 0
        assert best["text"] == CORPUS[expected] and best["metadata"] == {"doc": expected}
        assert found["strategy"] == "exact"
    # Batch search takes texts too, embedded together.
    batch = await client.post(
        f"{API}/kb/search/batch",
        json={"queries": [{"text": "sourdough"}, {"vector": [0.01] * 384, "top_k": 1}]},
        headers=bearer(reader),
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0][0]["document_id"] == "bread"

    document = (await client.get(f"{API}/kb/documents/rivers", headers=bearer(reader))).json()
    assert document["text"] == CORPUS["rivers"] and document["metadata"] == {"doc": "rivers"}
    assert document["chunks"] == [{"id": "rivers#0", "index": 0, "start": 0, "end": len(CORPUS["rivers"])}]
    page = (await client.get(f"{API}/kb/documents?limit=3", headers=bearer(reader))).json()
    assert [d["id"] for d in page["items"]] == ["bread", "guitar", "rivers"]
    rest = await client.get(
        f"{API}/kb/documents?limit=3&cursor={page['next_cursor']}", headers=bearer(reader)
    )
    assert [d["id"] for d in rest.json()["items"]] == ["taxes"] and rest.json()["next_cursor"] is None
    assert page["items"][0] | {"updated_at": None} == {
        "id": "bread", "metadata": {"doc": "bread"}, "characters": len(CORPUS["bread"]), "chunks": 1,
        "updated_at": None,
    }  # fmt: skip


async def test_a_long_document_is_split_in_the_models_tokens_with_overlap(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin, chunk_tokens=128, chunk_overlap=24)
    text = paragraphs(24) + "\n\n" + "supercalifragilistic" * 200  # and one word far over a chunk
    stored = await add(client, tenant.admin, {"long": text})
    assert stored.status_code == 200, stored.text
    document = (await client.get(f"{API}/kb/documents/long", headers=bearer(tenant.admin))).json()
    chunks = document["chunks"]
    assert len(chunks) == stored.json()["chunks"] > 10
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    # Every character is in some chunk, chunks go forward, and neighbours share text.
    covered = [False] * len(text)
    for chunk in chunks:
        for i in range(chunk["start"], chunk["end"]):
            covered[i] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    assert all(a["start"] < b["start"] for a, b in pairwise(chunks))
    assert sum(b["start"] < a["end"] for a, b in pairwise(chunks)) >= len(chunks) // 2
    # No chunk exceeds the collection's size in the model's own tokens (specials included).
    model = client.app.state.embedding_service.model(MODEL)
    counts = await model.count_tokens([text[c["start"] : c["end"]] for c in chunks])
    assert max(counts) <= 128 and max(counts) > 64
    collection = (await client.get(f"{API}/kb", headers=bearer(tenant.admin))).json()
    assert collection["vector_count"] == len(chunks)
    # A search finds the paragraph that talks about it, with its text.
    hit = (await search(client, tenant.admin, text="letters about the glacier, paragraph 13", top_k=1))[
        "results"
    ][0]
    assert "glacier" in hit["text"] and hit["document_id"] == "long"


async def test_sending_a_document_again_replaces_it_whole(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin, chunk_tokens=64, chunk_overlap=8)
    first = await add(client, tenant.admin, {"doc": paragraphs(6), "other": CORPUS["bread"]})
    old_chunks = first.json()["chunks"] - 1
    assert old_chunks > 3
    again = await add(client, tenant.admin, {"doc": CORPUS["guitar"]}, version=2)
    assert again.json() == {
        "documents": 1,
        "chunks": 1,
        "tokens": again.json()["tokens"],
        "replaced_chunks": old_chunks,
    }
    key = bearer(tenant.admin)
    assert (await client.get(f"{API}/kb", headers=key)).json()["vector_count"] == 2
    assert (await client.get(f"{API}/kb/vectors/doc%231", headers=key)).status_code == 404
    document = (await client.get(f"{API}/kb/documents/doc", headers=key)).json()
    assert document["text"] == CORPUS["guitar"] and document["metadata"] == {"doc": "doc", "version": 2}
    hits = (await search(client, tenant.admin, text="harbour visitors letters", top_k=5))["results"]
    assert all("harbour" not in h["text"] for h in hits)


async def test_bad_documents_are_refused_and_nothing_is_written(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin)
    key = bearer(tenant.admin)
    cases = [
        (
            {"documents": [{"id": "a", "text": "fine"}, {"id": "b", "text": "nul \u0000 inside"}]},
            "documents[1].text",
        ),
        ({"documents": [{"id": "a", "text": "fine"}, {"id": "b", "text": "   \n "}]}, "documents[1].text"),
        ({"documents": [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}]}, "documents[1].id"),
        ({"documents": [{"id": "a/b", "text": "slash"}]}, "documents[0].id"),
        ({"documents": []}, "documents"),
        ({"documents": [{"id": "a", "text": "x", "extra": 1}]}, "documents[0].extra"),
    ]
    for body, field in cases:
        problem = assert_problem(await client.post(f"{API}/kb/documents", json=body, headers=key), 400)
        assert problem["errors"][0]["field"] == field, problem
    assert (await client.get(f"{API}/kb", headers=key)).json()["vector_count"] == 0
    assert (await client.get(f"{API}/kb/documents", headers=key)).json()["items"] == []
    # Raw vectors may live in a text collection, but '#' ids are the chunks'.
    raw = {"vectors": [{"id": "doc#0", "vector": [0.1] * 384}]}
    problem = assert_problem(await client.put(f"{API}/kb/vectors", json=raw, headers=key), 400)
    assert problem["errors"][0]["field"] == "vectors[0].id"
    # Which of vector and text each mode takes.
    for query, field in [
        ({"text": "a", "vector": [0.1] * 384}, "vector"),
        ({}, "vector"),
        ({"mode": "keyword", "text": "a", "vector": [0.1] * 384}, "vector"),
        ({"mode": "hybrid"}, "text"),
        ({"text": ""}, "text"),
    ]:
        response = await client.post(f"{API}/kb/search", json=query, headers=key)
        assert assert_problem(response, 400)["errors"][0]["field"] == field, response.text
    # A plain collection has no documents and no texts.
    assert (await client.post(API, json={"name": "plain", "dimension": 3}, headers=key)).status_code == 201
    assert_problem(await add(client, tenant.admin, {"a": "text"}, name="plain"), 400, "not_a_text_collection")
    for query in [
        {"text": "hello"},
        {"text": "hello", "mode": "keyword"},
        {"text": "hi", "vector": [1, 0, 0], "mode": "hybrid"},
    ]:
        response = await client.post(f"{API}/plain/search", json=query, headers=key)
        assert_problem(response, 400, "not_a_text_collection")


@pytest.fixture(scope="module")
async def small_limits(make_settings: MakeSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = make_settings(documents={"max_document_bytes": 2000, "max_chunks_per_request": 3})
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


async def test_limits_name_themselves(
    small_limits: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(small_limits, tenant.admin, chunk_tokens=32, chunk_overlap=0)
    too_big = await add(small_limits, tenant.admin, {"a": "word " * 500})
    problem = assert_problem(too_big, 400, "text_too_large")
    assert problem["errors"][0]["field"] == "documents[0].text" and "2000" in problem["detail"]
    too_many = await add(small_limits, tenant.admin, {"a": paragraphs(2)})
    problem = assert_problem(too_many, 400)
    assert "documents.max_chunks_per_request" in problem["detail"]
    assert (await small_limits.get(f"{API}/kb", headers=bearer(tenant.admin))).json()["vector_count"] == 0


async def test_hybrid_search_finds_the_exact_keyword_that_vector_search_misses(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin)
    assert (await add(client, tenant.admin, ORDERS | CORPUS)).status_code == 200
    vector = await search(client, tenant.admin, text=ORDER_QUERY, top_k=4)
    assert vector["results"][0]["document_id"] != "k"  # a near-identical order number wins
    keyword = await search(client, tenant.admin, text=ORDER_QUERY, mode="keyword", top_k=4)
    assert [h["document_id"] for h in keyword["results"]] == ["k"] and keyword["strategy"] == "keyword"
    hybrid = await search(client, tenant.admin, text=ORDER_QUERY, mode="hybrid", top_k=4)
    assert hybrid["results"][0]["document_id"] == "k" and hybrid["strategy"] == "hybrid+exact"
    assert hybrid["results"][0]["score"] == pytest.approx(1 / 61 + 1 / 62)  # rank 2 by vector, 1 by keyword
    # Both halves obey the filter.
    filtered = await search(
        client, tenant.admin, text=ORDER_QUERY, mode="hybrid", filter={"doc": {"$in": ["a", "b"]}}
    )
    assert {h["document_id"] for h in filtered["results"]} == {"a", "b"}
    # websearch syntax: a quoted phrase, or a word left out.
    phrase = await search(client, tenant.admin, text='"wild yeast" -guitar', mode="keyword")
    assert [h["document_id"] for h in phrase["results"]] == ["bread"]


async def test_deleting_documents_and_their_chunks(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin)
    key = bearer(tenant.admin)
    assert (await add(client, tenant.admin, CORPUS)).status_code == 200
    assert (await client.delete(f"{API}/kb/documents/bread", headers=key)).status_code == 204
    assert_problem(await client.delete(f"{API}/kb/documents/bread", headers=key), 404)
    assert_problem(await client.get(f"{API}/kb/documents/bread", headers=key), 404)
    assert (await client.get(f"{API}/kb", headers=key)).json()["vector_count"] == 3
    # Chunks deleted as vectors take their documents with them once none is left.
    gone = await client.post(f"{API}/kb/vectors/delete", json={"filter": {"doc": "taxes"}}, headers=key)
    assert gone.json() == {"deleted": 1}
    listed = (await client.get(f"{API}/kb/documents", headers=key)).json()["items"]
    assert [d["id"] for d in listed] == ["guitar", "rivers"]


async def test_documents_never_cross_tenants(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    alice, bob = await make_tenant(), await make_tenant("read_only")
    await make_text_collection(client, alice.admin)
    await make_text_collection(client, bob.admin)
    secret = {"secret": "The vault code of Alice's company is ZQX-4471 and only Alice knows it."}
    assert (await add(client, alice.admin, secret | CORPUS)).status_code == 200
    assert (
        await add(client, bob.admin, {"bob": "Bob keeps notes about gardening and tomatoes."})
    ).status_code == 200
    before = (await client.get(f"{API}/kb/documents/secret", headers=bearer(alice.admin))).json()

    for key in (bob.admin, bob.key("read_only")):
        headers = bearer(key)
        assert_problem(await client.get(f"{API}/kb/documents/secret", headers=headers), 404)
        listed = (await client.get(f"{API}/kb/documents", headers=headers)).json()["items"]
        assert [d["id"] for d in listed] == ["bob"]
        for mode in ("vector", "keyword", "hybrid"):
            found = await search(client, key, text="vault code ZQX-4471 Alice", mode=mode, top_k=50)
            assert all(h["document_id"] == "bob" and "Alice" not in h["text"] for h in found["results"]), (
                found
            )
    assert_problem(await client.delete(f"{API}/kb/documents/secret", headers=bearer(bob.admin)), 404)
    resent = await add(client, bob.admin, {"secret": "overwritten by bob"})
    assert resent.status_code == 200  # Bob's own document of that id, in Bob's own collection
    # A collection only Alice has is not found for Bob, whatever he does with it.
    await make_text_collection(client, alice.admin, name="alice-only")
    assert_problem(await add(client, bob.admin, {"x": "text"}, name="alice-only"), 404)
    assert_problem(await client.get(f"{API}/alice-only/documents", headers=bearer(bob.admin)), 404)
    after = (await client.get(f"{API}/kb/documents/secret", headers=bearer(alice.admin))).json()
    assert after == before


async def test_read_only_keys_search_but_do_not_write(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    await make_text_collection(client, tenant.admin)
    reader = tenant.key("read_only")
    assert_problem(await add(client, reader, CORPUS), 403, "insufficient_permission")
    assert_problem(await client.delete(f"{API}/kb/documents/x", headers=bearer(reader)), 403)
    assert (await search(client, reader, text="anything"))["results"] == []


async def test_embedding_work_is_metered(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin)
    stored = (await add(client, tenant.admin, CORPUS)).json()
    await search(client, tenant.admin, text="bread")
    usage = (await client.get("/api/v1/usage", headers=bearer(tenant.admin))).json()["usage"]
    assert usage["texts_embedded"] == 4 + 1
    assert usage["embedding_tokens"] == stored["tokens"] + 3  # [CLS] bread [SEP]
    assert usage["vectors_written"] == 4 and usage["searches"] == 1

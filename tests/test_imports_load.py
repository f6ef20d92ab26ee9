"""Imports from S5 that load: every vector of an SDK database (JSON and CBOR, plain and encrypted)
into a new or an existing collection, answered from the cache when nothing changed, invisible to
searches until their one commit, and counted in the metrics."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.conftest import bearer
from tests.support.imports import KEY, KEY_HEX, Imports, metric
from tests.support.imports import import_server_fixture as import_server_fixture  # the fixtures
from tests.support.imports import imports_fixture as imports_fixture


@pytest.mark.parametrize("encoding", ["json", "cbor"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
async def test_import_loads_every_vector_into_a_new_collection(
    imports: Imports,
    encoding: str,
    key: bytes | None,
) -> None:
    tenant = await imports.tenant("read_write")
    source = imports.published(n=250, dimensions=8, chunk_size=100, encoding=encoding, key=key)
    loaded_before = metric("s5_vectors_loaded_total")
    body = {"encryption_key": KEY_HEX} if key else {}
    status = await imports.import_and_wait(tenant.key("read_write"), "docs", source, **body)

    assert status["status"] == "loaded", status
    assert (status["chunks_done"], status["chunks_total"], status["vectors_loaded"]) == (3, 3, 250)
    assert status["cached"] is False and status["error"] is None
    assert status["duration_ms"] > 0 and status["started_at"] and status["finished_at"]
    assert metric("s5_vectors_loaded_total") - loaded_before == 250

    collection = (await imports.http.get("/api/v1/collections/docs", headers=bearer(tenant.admin))).json()
    assert (collection["dimension"], collection["metric"], collection["vector_count"]) == (8, "cosine", 250)
    vectors = await imports.all_vectors(tenant.admin, "docs")
    assert sorted(vectors) == sorted(f"doc-{i}" for i in range(250))
    for i in (0, 123, 249):
        vector, metadata = vectors[f"doc-{i}"]
        assert np.allclose(vector, source.vectors[i], atol=1e-6)
        assert metadata == {"i": i, "source": "s5"}
    # Searchable at once: the vector itself is its own nearest neighbour.
    response = await imports.http.post(
        "/api/v1/collections/docs/search",
        json={"vector": source.vectors[42].tolist(), "top_k": 1},
        headers=bearer(tenant.admin),
    )
    assert response.json()["results"][0]["id"] == "doc-42"

    # The key is never stored or returned.
    row = await imports.db.pool.fetchrow("SELECT * FROM imports WHERE id = $1::uuid", status["import_id"])
    assert KEY_HEX not in str(dict(row)) and KEY_HEX not in str(status)


async def test_import_into_an_existing_collection_merges_and_later_ids_win(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    await imports.collection(
        tenant.admin,
        "kb",
        [{"id": "keep", "vector": [1, 1, 1, 1]}, {"id": "doc-0", "vector": [9, 9, 9, 9]}],
        dimension=4,
        metric="l2",
    )
    source = imports.database(n=30, dimensions=4, chunk_size=10)
    # A later chunk repeats an id of an earlier one: the SDK's last write wins.
    from tests.s5_fixtures import encode

    chunk2 = {
        "chunkId": 2,
        "vectors": [
            {"id": f"doc-{i}", "vector": source.vectors[i].tolist(), "metadata": {"i": i}}
            for i in range(20, 29)
        ]
        + [{"id": "doc-5", "vector": [0.5, 0.5, 0.5, 0.5], "metadata": {"again": True}}],
    }
    source.files[f"{source.folder}/chunk-2.json"] = encode(chunk2, "json", None)
    imports.publish(source)

    status = await imports.import_and_wait(tenant.admin, "kb", source, create_collection=False)
    assert status["status"] == "loaded", status
    assert status["vectors_loaded"] == 29  # distinct ids: 30 vectors in the source, doc-5 twice
    vectors = await imports.all_vectors(tenant.admin, "kb")
    assert len(vectors) == 30  # 29 distinct imported ids + "keep"
    assert vectors["keep"][0] == [1, 1, 1, 1]
    assert np.allclose(vectors["doc-0"][0], source.vectors[0])  # the import replaced the old doc-0
    assert vectors["doc-5"] == ([0.5, 0.5, 0.5, 0.5], {"again": True})
    collection = (await imports.http.get("/api/v1/collections/kb", headers=bearer(tenant.admin))).json()
    assert collection["vector_count"] == 30 and collection["metric"] == "l2"


async def test_unchanged_manifest_into_unchanged_collection_is_cached(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=200, chunk_size=100, key=KEY)
    first = await imports.import_and_wait(tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert first["status"] == "loaded" and first["cached"] is False
    hits = metric("vector_index_cache_hits_total")
    requests_before = len(imports.portal.requests)

    second = await imports.import_and_wait(tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert second["status"] == "loaded" and second["cached"] is True
    assert second["vectors_loaded"] == 200 and second["chunks_done"] == second["chunks_total"] == 2
    assert imports.portal.requests[requests_before:] == [f"/s5/fs/{source.manifest_path}"]  # no chunk fetched
    assert metric("vector_index_cache_hits_total") == hits + 1

    # The wrong key cannot ride on the cache.
    wrong = await imports.import_and_wait(tenant.admin, "c", source, encryption_key="00" * 32)
    assert wrong["error"]["code"] == "decryption_failed"

    # A write to the collection since then: the import runs again.
    await imports.http.delete("/api/v1/collections/c/vectors/doc-3", headers=bearer(tenant.admin))
    third = await imports.import_and_wait(tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert third["status"] == "loaded" and third["cached"] is False
    assert len(await imports.all_vectors(tenant.admin, "c")) == 200


async def test_searches_during_an_import_see_the_last_commit(
    imports: Imports,
) -> None:
    """Not a 409 and not a half import: the collection as it was, until the import commits."""
    tenant = await imports.tenant()
    await imports.collection(tenant.admin, "c", [{"id": "old", "vector": [1.0] * 8}], dimension=8)
    source = imports.published(n=300, chunk_size=100)
    imports.portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:0.8"]
    accepted = await imports.submit(tenant.admin, "c", source)
    deadline = time.monotonic() + 30
    while (await imports.wait_for(tenant.admin, accepted["import_id"], until=("loading",)))[
        "chunks_done"
    ] < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    search = {"vector": source.vectors[0].tolist(), "top_k": 5}
    during = await imports.http.post(
        "/api/v1/collections/c/search", json=search, headers=bearer(tenant.admin)
    )
    assert during.status_code == 200
    assert [hit["id"] for hit in during.json()["results"]] == ["old"]
    assert (await imports.wait_for(tenant.admin, accepted["import_id"]))["status"] == "loaded"
    after = await imports.http.post("/api/v1/collections/c/search", json=search, headers=bearer(tenant.admin))
    assert after.json()["results"][0]["id"] == "doc-0"


async def test_import_metrics_are_served_on_the_metrics_endpoint(
    imports: Imports,
    operator_key: str,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=10, chunk_size=10)
    assert (await imports.import_and_wait(tenant.admin, "c", source))["status"] == "loaded"
    text = (await imports.http.get("/metrics", headers=bearer(operator_key))).text
    for name in (
        "s5_download_duration_seconds_bucket",
        "s5_vectors_loaded_total",
        "vector_index_cache_misses_total",
        "vector_index_cache_hits_total",
        "vectorhive_imports_total",
    ):
        assert name in text, name
    assert 's5_download_duration_seconds_count{kind="chunk"}' in text

"""Imports from S5, end to end: a real HTTP portal on 127.0.0.1 serving SDK-style databases (JSON
and CBOR, plain and encrypted, with scripted faults), the real server and its real database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.config import Settings
from service.db import Database
from tests.conftest import TenantKeys, assert_problem, bearer, set_quotas
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import OWNER, S5Database, build

KEY = bytes(range(32))
KEY_HEX = KEY.hex()


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


@pytest.fixture(scope="module")
async def import_app(make_settings: Callable[..., Settings], portal: FakePortal) -> Litestar:
    return create_app(
        make_settings(
            s5={"portal_url": portal.url, "download_timeout_seconds": 1.0, "download_retries": 2},
            collections={"index_threshold": 100_000},
        )
    )


@pytest.fixture(scope="module")
async def ic(import_app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(import_app, raise_server_exceptions=False) as test_client:
        yield test_client


def publish(portal: FakePortal, db: S5Database) -> S5Database:
    portal.files.update(db.files)
    return db


def unique_db(unique_id: Callable[[str], str], **kwargs: Any) -> S5Database:
    return build(name=unique_id("db"), **kwargs)


async def submit(
    ic: AsyncTestClient[Litestar], key: str, collection: str, db: S5Database, **body: Any
) -> dict[str, Any]:
    payload = {"source": "s5", "manifest_path": db.manifest_path, "user_address": db.user_address, **body}
    response = await ic.post(f"/api/v1/collections/{collection}/imports", json=payload, headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    assert response.headers["location"] == f"/api/v1/imports/{response.json()['import_id']}"
    result: dict[str, Any] = response.json()
    return result


async def wait_for(
    ic: AsyncTestClient[Litestar],
    key: str,
    import_id: str,
    until: tuple[str, ...] = ("loaded", "error", "cancelled"),
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        response = await ic.get(f"/api/v1/imports/{import_id}", headers=bearer(key))
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        if status["status"] in until:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def import_and_wait(
    ic: AsyncTestClient[Litestar], key: str, collection: str, db: S5Database, **body: Any
) -> dict[str, Any]:
    accepted = await submit(ic, key, collection, db, **body)
    return await wait_for(ic, key, accepted["import_id"])


async def all_vectors(ic: AsyncTestClient[Litestar], key: str, collection: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, "include_vector": "true"}
        if cursor:
            params["cursor"] = cursor
        response = await ic.get(
            f"/api/v1/collections/{collection}/vectors", params=params, headers=bearer(key)
        )
        if response.status_code == 404:
            return {}
        page = response.json()
        for item in page["items"]:
            found[item["id"]] = (item["vector"], item["metadata"])
        cursor = page["next_cursor"]
        if not cursor:
            return found


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("encoding", ["json", "cbor"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
async def test_import_loads_every_vector_into_a_new_collection(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    db: Database,
    encoding: str,
    key: bytes | None,
) -> None:
    tenant: TenantKeys = await make_tenant("read_write")
    source = publish(
        portal, unique_db(unique_id, n=250, dimensions=8, chunk_size=100, encoding=encoding, key=key)
    )
    loaded_before = metric("s5_vectors_loaded_total")
    body = {"encryption_key": KEY_HEX} if key else {}
    status = await import_and_wait(ic, tenant.key("read_write"), "docs", source, **body)

    assert status["status"] == "loaded", status
    assert (status["chunks_done"], status["chunks_total"], status["vectors_loaded"]) == (3, 3, 250)
    assert status["cached"] is False and status["error"] is None
    assert status["duration_ms"] > 0 and status["started_at"] and status["finished_at"]
    assert metric("s5_vectors_loaded_total") - loaded_before == 250

    collection = (await ic.get("/api/v1/collections/docs", headers=bearer(tenant.admin))).json()
    assert (collection["dimension"], collection["metric"], collection["vector_count"]) == (8, "cosine", 250)
    vectors = await all_vectors(ic, tenant.admin, "docs")
    assert sorted(vectors) == sorted(f"doc-{i}" for i in range(250))
    for i in (0, 123, 249):
        vector, metadata = vectors[f"doc-{i}"]
        assert np.allclose(vector, source.vectors[i], atol=1e-6)
        assert metadata == {"i": i, "source": "s5"}
    # Searchable at once: the vector itself is its own nearest neighbour.
    response = await ic.post(
        "/api/v1/collections/docs/search",
        json={"vector": source.vectors[42].tolist(), "top_k": 1},
        headers=bearer(tenant.admin),
    )
    assert response.json()["results"][0]["id"] == "doc-42"

    # The key is never stored or returned.
    row = await db.pool.fetchrow("SELECT * FROM imports WHERE id = $1::uuid", status["import_id"])
    assert KEY_HEX not in str(dict(row)) and KEY_HEX not in str(status)


async def test_import_into_an_existing_collection_merges_and_later_ids_win(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    await ic.post(
        "/api/v1/collections",
        json={"name": "kb", "dimension": 4, "metric": "l2"},
        headers=bearer(tenant.admin),
    )
    await ic.put(
        "/api/v1/collections/kb/vectors",
        json={"vectors": [{"id": "keep", "vector": [1, 1, 1, 1]}, {"id": "doc-0", "vector": [9, 9, 9, 9]}]},
        headers=bearer(tenant.admin),
    )
    source = unique_db(unique_id, n=30, dimensions=4, chunk_size=10)
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
    publish(portal, source)

    status = await import_and_wait(ic, tenant.admin, "kb", source, create_collection=False)
    assert status["status"] == "loaded", status
    assert status["vectors_loaded"] == 29  # distinct ids: 30 vectors in the source, doc-5 twice
    vectors = await all_vectors(ic, tenant.admin, "kb")
    assert len(vectors) == 30  # 29 distinct imported ids + "keep"
    assert vectors["keep"][0] == [1, 1, 1, 1]
    assert np.allclose(vectors["doc-0"][0], source.vectors[0])  # the import replaced the old doc-0
    assert vectors["doc-5"] == ([0.5, 0.5, 0.5, 0.5], {"again": True})
    collection = (await ic.get("/api/v1/collections/kb", headers=bearer(tenant.admin))).json()
    assert collection["vector_count"] == 30 and collection["metric"] == "l2"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("missing_manifest", "manifest_not_found"),
        ("wrong_key", "decryption_failed"),
        ("tampered_chunk", "decryption_failed"),
        ("owner_mismatch", "owner_mismatch"),
        ("vector_count_mismatch", "invalid_manifest"),
        ("chunk_ids_gap", "invalid_manifest"),
        ("deleted", "invalid_manifest"),
        ("dimension_mismatch", "dimension_mismatch"),
        ("short_vector", "dimension_mismatch"),
        ("chunk_missing", "download_failed"),
        ("chunk_always_500", "download_failed"),
        ("chunk_always_slow", "timeout"),
        ("nan_vector", "invalid_manifest"),
    ],
)
async def test_a_failed_import_leaves_the_collection_exactly_as_it_was(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    fault: str,
    code: str,
) -> None:
    """Each failure ends as error with its code; no vector of it is committed, even when earlier
    chunks were fine (they are staged, never merged)."""
    from tests.s5_fixtures import encode

    tenant: TenantKeys = await make_tenant()
    await ic.post("/api/v1/collections", json={"name": "c", "dimension": 8}, headers=bearer(tenant.admin))
    await ic.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "doc-1", "vector": [1.0] * 8, "metadata": {"mine": True}}]},
        headers=bearer(tenant.admin),
    )
    before = await all_vectors(ic, tenant.admin, "c")
    overrides: dict[str, Any] = {
        "owner_mismatch": {"owner": "0x" + "cd" * 20},
        "vector_count_mismatch": {"vectorCount": 999},
        "deleted": {"deleted": True},
        "dimension_mismatch": {"dimensions": 16},
    }
    source = unique_db(
        unique_id, n=300, dimensions=8, chunk_size=100, key=KEY, manifest_overrides=overrides.get(fault)
    )
    last_chunk = f"{source.folder}/chunk-2.json"
    if fault == "missing_manifest":
        del source.files[source.manifest_path]
    elif fault == "chunk_ids_gap":
        from service.imports.formats import parse_manifest

        manifest = parse_manifest(source.files[source.manifest_path], KEY)
        doc = {
            "name": manifest.name,
            "owner": manifest.owner,
            "dimensions": 8,
            "vectorCount": 300,
            "chunkCount": 3,
            "chunks": [{"chunkId": i * 2, "cid": "x", "vectorCount": 100} for i in range(3)],
        }
        source.files[source.manifest_path] = encode(doc, "json", KEY)
    elif fault == "tampered_chunk":
        blob = bytearray(source.files[last_chunk])
        blob[40] ^= 0x01
        source.files[last_chunk] = bytes(blob)
    elif fault in ("short_vector", "nan_vector"):
        vectors = [{"id": f"doc-{i}", "vector": [0.1] * 8} for i in range(200, 300)]
        vectors[50]["vector"] = [0.1] * 7 if fault == "short_vector" else [float("nan")] + [0.1] * 7
        raw = encode({"chunkId": 2, "vectors": vectors}, "cbor", KEY)  # CBOR carries NaN; JSON cannot
        source.files[last_chunk] = raw
    elif fault == "chunk_missing":
        del source.files[last_chunk]
    elif fault == "chunk_always_500":
        portal.faults[last_chunk] = ["500"] * 10
    elif fault == "chunk_always_slow":
        portal.faults[last_chunk] = ["slow:1.5"] * 3
    publish(portal, source)

    body = {"encryption_key": KEY_HEX if fault != "wrong_key" else "ff" * 32}
    status = await import_and_wait(ic, tenant.admin, "c", source, **body)
    assert status["status"] == "error", status
    assert status["error"]["code"] == code, status
    assert status["error"]["message"] and KEY_HEX not in status["error"]["message"]
    assert status["finished_at"] is not None
    assert await all_vectors(ic, tenant.admin, "c") == before
    collection = (await ic.get("/api/v1/collections/c", headers=bearer(tenant.admin))).json()
    assert collection["vector_count"] == 1


async def test_a_failed_import_does_not_create_the_collection(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=300, chunk_size=100))
    del portal.files[f"{source.folder}/chunk-1.json"]
    status = await import_and_wait(ic, tenant.admin, "fresh", source)
    assert status["error"]["code"] == "download_failed"
    assert_problem(await ic.get("/api/v1/collections/fresh", headers=bearer(tenant.admin)), 404, "not_found")


async def test_transient_faults_are_retried(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    """A 500 then success, a truncated body, and one answer slower than the per-request timeout."""
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=300, chunk_size=100, key=KEY))
    portal.faults[f"{source.folder}/chunk-0.json"] = ["500"]
    portal.faults[f"{source.folder}/chunk-1.json"] = ["truncate"]
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:1.5"]
    errors_before = sum(
        metric("s5_download_errors_total", reason=r) for r in ("http_5xx", "transport", "timeout")
    )
    status = await import_and_wait(ic, tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert status["status"] == "loaded", status
    assert status["vectors_loaded"] == 300
    errors = sum(metric("s5_download_errors_total", reason=r) for r in ("http_5xx", "transport", "timeout"))
    assert errors - errors_before == 3


async def test_cancel_while_loading_changes_nothing(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=300, chunk_size=100))
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:0.9", "slow:0.9", "slow:0.9"]
    accepted = await submit(ic, tenant.admin, "c", source)
    await wait_for(ic, tenant.admin, accepted["import_id"], until=("loading",))
    response = await ic.delete(f"/api/v1/imports/{accepted['import_id']}", headers=bearer(tenant.admin))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["code"] == "cancelled"
    await asyncio.sleep(1.0)  # the runner notices and stops
    final = await wait_for(ic, tenant.admin, accepted["import_id"])
    assert final["status"] == "cancelled"
    assert_problem(await ic.get("/api/v1/collections/c", headers=bearer(tenant.admin)), 404)
    again = await ic.delete(f"/api/v1/imports/{accepted['import_id']}", headers=bearer(tenant.admin))
    assert_problem(again, 409, "import_finished")


async def test_cancelling_a_loaded_import_is_refused(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=10, chunk_size=10))
    status = await import_and_wait(ic, tenant.admin, "c", source)
    response = await ic.delete(f"/api/v1/imports/{status['import_id']}", headers=bearer(tenant.admin))
    body = assert_problem(response, 409, "import_finished")
    assert "loaded" in body["detail"]


async def test_unchanged_manifest_into_unchanged_collection_is_cached(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=200, chunk_size=100, key=KEY))
    first = await import_and_wait(ic, tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert first["status"] == "loaded" and first["cached"] is False
    hits = metric("vector_index_cache_hits_total")
    requests_before = len(portal.requests)

    second = await import_and_wait(ic, tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert second["status"] == "loaded" and second["cached"] is True
    assert second["vectors_loaded"] == 200 and second["chunks_done"] == second["chunks_total"] == 2
    assert portal.requests[requests_before:] == [f"/s5/fs/{source.manifest_path}"]  # no chunk fetched
    assert metric("vector_index_cache_hits_total") == hits + 1

    # The wrong key cannot ride on the cache.
    wrong = await import_and_wait(ic, tenant.admin, "c", source, encryption_key="00" * 32)
    assert wrong["error"]["code"] == "decryption_failed"

    # A write to the collection since then: the import runs again.
    await ic.delete("/api/v1/collections/c/vectors/doc-3", headers=bearer(tenant.admin))
    third = await import_and_wait(ic, tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert third["status"] == "loaded" and third["cached"] is False
    assert len(await all_vectors(ic, tenant.admin, "c")) == 200


async def test_imports_are_invisible_to_other_tenants(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    a: TenantKeys = await make_tenant()
    b: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=10, chunk_size=10))
    status = await import_and_wait(ic, a.admin, "shared-name", source)
    import_id = status["import_id"]
    for method in ("get", "delete"):
        response = await getattr(ic, method)(f"/api/v1/imports/{import_id}", headers=bearer(b.admin))
        body = assert_problem(response, 404, "not_found")
        never = await getattr(ic, method)(
            f"/api/v1/imports/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=bearer(b.admin)
        )
        assert body["detail"].replace(import_id, "X") == assert_problem(never, 404)["detail"].replace(
            f"{'0' * 8}-0000-0000-0000-{'0' * 12}", "X"
        )
    assert (await ic.get("/api/v1/imports", headers=bearer(b.admin))).json()["items"] == []
    listed = (await ic.get("/api/v1/imports", headers=bearer(a.admin))).json()["items"]
    assert [i["import_id"] for i in listed] == [import_id]
    # B importing into the same name gets a collection of its own.
    mine = await import_and_wait(ic, b.admin, "shared-name", source)
    assert mine["status"] == "loaded"
    assert len(await all_vectors(ic, a.admin, "shared-name")) == 10
    assert (await ic.get(f"/api/v1/imports/{import_id}", headers=bearer(a.admin))).json()[
        "status"
    ] == "loaded"


async def test_list_pages_newest_first(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=5, chunk_size=5))
    ids = [(await import_and_wait(ic, tenant.admin, f"c{i}", source))["import_id"] for i in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await ic.get("/api/v1/imports", params=params, headers=bearer(tenant.admin))).json()
        seen += [item["import_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert_problem(
        await ic.get("/api/v1/imports", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=bearer(tenant.admin)),
        400,
    )


async def test_bad_requests_are_refused_and_change_nothing(
    ic: AsyncTestClient[Litestar],
    client: AsyncTestClient[Litestar],
    make_tenant: Callable[..., Any],
    db: Database,
) -> None:
    tenant: TenantKeys = await make_tenant("read_only", "read_write")
    good = {"source": "s5", "manifest_path": "home/vector-databases/x/y/manifest.json", "user_address": OWNER}
    count = await db.pool.fetchval("SELECT count(*) FROM imports WHERE tenant_id = $1", tenant.tenant_id)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "source": "ipfs"}, "source"),
        ({**good, "user_address": "0x123"}, "user_address"),
        ({**good, "manifest_path": "home/../../etc/passwd"}, "manifest_path"),
        ({**good, "encryption_key": "c2VjcmV0LWJ1dC10b28tc2hvcnQ="}, "encryption_key"),
        ({**good, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        response = await ic.post("/api/v1/collections/c/imports", json=body, headers=bearer(tenant.admin))
        problem = assert_problem(response, 400)
        assert field in response.text, response.text
        assert "c2VjcmV0" not in response.text  # the key is never echoed
        del problem
    missing = await ic.post(
        "/api/v1/collections/nope/imports",
        json={**good, "create_collection": False},
        headers=bearer(tenant.admin),
    )
    assert_problem(missing, 404, "not_found")
    read_only = await ic.post(
        "/api/v1/collections/c/imports", json=good, headers=bearer(tenant.key("read_only"))
    )
    assert_problem(read_only, 403)
    # The session's server has no portal configured: imports are off there, and say so.
    off = await client.post("/api/v1/collections/c/imports", json=good, headers=bearer(tenant.admin))
    assert_problem(off, 503, "imports_not_configured")
    assert (
        await db.pool.fetchval("SELECT count(*) FROM imports WHERE tenant_id = $1", tenant.tenant_id) == count
    )


async def test_collection_scoped_keys_see_only_their_collections(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant("read_write", collections=["mine"])
    source = publish(portal, unique_db(unique_id, n=5, chunk_size=5))
    other = await import_and_wait(ic, tenant.admin, "other", source)
    mine = await import_and_wait(ic, tenant.key("read_write"), "mine", source)
    assert mine["status"] == "loaded"
    scoped = bearer(tenant.key("read_write"))
    assert_problem(await ic.get(f"/api/v1/imports/{other['import_id']}", headers=scoped), 404)
    listed = (await ic.get("/api/v1/imports", headers=scoped)).json()["items"]
    assert [i["import_id"] for i in listed] == [mine["import_id"]]
    refused = await ic.post(
        "/api/v1/collections/other/imports",
        json={"source": "s5", "manifest_path": source.manifest_path, "user_address": OWNER},
        headers=scoped,
    )
    assert_problem(refused, 404)


async def test_a_tenant_has_a_bounded_number_of_active_imports(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    other: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=5, chunk_size=5))
    portal.faults[source.manifest_path] = ["slow:0.8"] * 4
    accepted = [await submit(ic, tenant.admin, f"c{i}", source) for i in range(4)]
    payload = {"source": "s5", "manifest_path": source.manifest_path, "user_address": OWNER}
    refused = await ic.post("/api/v1/collections/c9/imports", json=payload, headers=bearer(tenant.admin))
    assert_problem(refused, 409, "too_many_active_imports")
    # Another tenant is not affected.
    assert (await submit(ic, other.admin, "c", source))["status"] == "pending"
    for item in accepted:
        await wait_for(ic, tenant.admin, item["import_id"])
    assert (await submit(ic, tenant.admin, "c9", source))["status"] == "pending"


async def test_searches_during_an_import_see_the_last_commit(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    """Not a 409 and not a half import: the collection as it was, until the import commits."""
    tenant: TenantKeys = await make_tenant()
    await ic.post("/api/v1/collections", json={"name": "c", "dimension": 8}, headers=bearer(tenant.admin))
    await ic.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "old", "vector": [1.0] * 8}]},
        headers=bearer(tenant.admin),
    )
    source = publish(portal, unique_db(unique_id, n=300, chunk_size=100))
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:0.8"]
    accepted = await submit(ic, tenant.admin, "c", source)
    deadline = time.monotonic() + 30
    while (await wait_for(ic, tenant.admin, accepted["import_id"], until=("loading",)))["chunks_done"] < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    search = {"vector": source.vectors[0].tolist(), "top_k": 5}
    during = await ic.post("/api/v1/collections/c/search", json=search, headers=bearer(tenant.admin))
    assert during.status_code == 200
    assert [hit["id"] for hit in during.json()["results"]] == ["old"]
    assert (await wait_for(ic, tenant.admin, accepted["import_id"]))["status"] == "loaded"
    after = await ic.post("/api/v1/collections/c/search", json=search, headers=bearer(tenant.admin))
    assert after.json()["results"][0]["id"] == "doc-0"


async def test_storage_quota_fails_the_import_and_changes_nothing(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    operator_key: str,
) -> None:
    tenant: TenantKeys = await make_tenant()
    await set_quotas(ic, operator_key, tenant.tenant_id, max_vectors=250)
    too_big = publish(portal, unique_db(unique_id, n=300, chunk_size=100))
    status = await import_and_wait(ic, tenant.admin, "c", too_big)
    assert status["status"] == "error" and status["error"]["code"] == "quota_exceeded", status
    assert "250" in status["error"]["message"]
    assert_problem(await ic.get("/api/v1/collections/c", headers=bearer(tenant.admin)), 404)

    fits = publish(portal, unique_db(unique_id, n=200, chunk_size=100))
    assert (await import_and_wait(ic, tenant.admin, "c", fits))["status"] == "loaded"
    usage = (await ic.get("/api/v1/usage", headers=bearer(tenant.admin))).json()
    assert usage["usage"]["vectors_imported"] == 200, usage
    # Re-importing the same ids adds nothing new, so it is within the quota.
    fits.files[fits.manifest_path] = build(
        name=fits.name, n=200, chunk_size=100, manifest_overrides={"updated": 2}
    ).files[fits.manifest_path]
    publish(portal, fits)
    assert (await import_and_wait(ic, tenant.admin, "c", fits))["status"] == "loaded"


async def test_an_import_is_paced_by_the_tenants_token_bucket(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    operator_key: str,
) -> None:
    """300 vectors at 0.001 tokens each need 0.3 tokens; a bucket of 0.1 refilled at 0.2/s makes the
    import wait about a second for them instead of failing."""
    tenant: TenantKeys = await make_tenant()
    await set_quotas(
        ic, operator_key, tenant.tenant_id, token_bucket_capacity=0.1, token_refill_per_second=0.2
    )
    source = publish(portal, unique_db(unique_id, n=300, chunk_size=100))
    status = await import_and_wait(ic, tenant.admin, "c", source)
    assert status["status"] == "loaded", status
    assert status["duration_ms"] >= 900, status


async def test_an_import_refused_on_storage_bytes_leaves_room_for_what_fits(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    operator_key: str,
    db: Database,
) -> None:
    """The storage check comes before the merge writes anything: a refused import leaves no pages
    behind that would count against the tenant afterwards."""
    tenant: TenantKeys = await make_tenant()
    await ic.post("/api/v1/collections", json={"name": "c", "dimension": 8}, headers=bearer(tenant.admin))
    await ic.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "a", "vector": [1.0] * 8}]},
        headers=bearer(tenant.admin),
    )
    size = await db.pool.fetchval(
        """SELECT sum(pg_total_relation_size(to_regclass('vectors_' || id)))
           FROM collections WHERE tenant_id = $1""",
        tenant.tenant_id,
    )
    await set_quotas(ic, operator_key, tenant.tenant_id, max_storage_bytes=int(size) + 20_000)
    big = publish(portal, unique_db(unique_id, n=2000, chunk_size=1000))
    status = await import_and_wait(ic, tenant.admin, "c", big)
    assert status["error"]["code"] == "quota_exceeded", status
    after = await db.pool.fetchval(
        """SELECT sum(pg_total_relation_size(to_regclass('vectors_' || id)))
           FROM collections WHERE tenant_id = $1""",
        tenant.tenant_id,
    )
    assert after == size
    small = await ic.put(
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "b", "vector": [0.5] * 8}]},
        headers=bearer(tenant.admin),
    )
    assert small.status_code == 200, small.text


async def test_an_import_that_can_never_afford_a_vector_fails_at_once(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    operator_key: str,
) -> None:
    tenant: TenantKeys = await make_tenant()
    await set_quotas(
        ic, operator_key, tenant.tenant_id, token_bucket_capacity=0.0005
    )  # one imported vector costs 0.001
    source = publish(portal, unique_db(unique_id, n=10, chunk_size=10))
    status = await import_and_wait(ic, tenant.admin, "c", source)
    assert status["error"]["code"] == "quota_exceeded", status
    assert "token bucket" in status["error"]["message"]


async def test_import_metrics_are_served_on_the_metrics_endpoint(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    operator_key: str,
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=10, chunk_size=10))
    assert (await import_and_wait(ic, tenant.admin, "c", source))["status"] == "loaded"
    text = (await ic.get("/metrics", headers=bearer(operator_key))).text
    for name in (
        "s5_download_duration_seconds_bucket",
        "s5_vectors_loaded_total",
        "vector_index_cache_misses_total",
        "vector_index_cache_hits_total",
        "vectorhive_imports_total",
    ):
        assert name in text, name
    assert 's5_download_duration_seconds_count{kind="chunk"}' in text


async def test_unscoped_queries_on_imports_see_only_the_tenants_own_rows(
    ic: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    db: Database,
) -> None:
    """Row-level security on the imports table: a query that forgets its WHERE cannot reach another
    tenant's imports (their manifest paths and owner addresses)."""
    a: TenantKeys = await make_tenant()
    b: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=5, chunk_size=5))
    await import_and_wait(ic, a.admin, "c", source)
    b_import = await import_and_wait(ic, b.admin, "c", source)

    class Undo(Exception):
        pass

    with pytest.raises(Undo):  # rolls the transaction back
        async with db.tenant_transaction(a.tenant_id) as conn:
            tenants = {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM imports")}
            assert tenants == {a.tenant_id}
            assert await conn.execute("UPDATE imports SET status = 'error'") == "UPDATE 1"
            raise Undo
    row = await db.pool.fetchrow("SELECT status FROM imports WHERE id = $1::uuid", b_import["import_id"])
    assert row["status"] == "loaded"


async def test_a_graceful_shutdown_ends_running_and_waiting_imports_as_interrupted(
    make_settings: Callable[..., Settings],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    db: Database,
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = publish(portal, unique_db(unique_id, n=20, chunk_size=10))
    portal.faults[f"{source.folder}/chunk-1.json"] = ["slow:3"]
    settings = make_settings(s5={"portal_url": portal.url, "max_concurrent_imports": 1})
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as short_lived:
        running = await submit(short_lived, tenant.admin, "a", source)
        waiting = await submit(short_lived, tenant.admin, "b", source)
        await wait_for(short_lived, tenant.admin, running["import_id"], until=("loading",))
        assert await wait_for(short_lived, tenant.admin, waiting["import_id"], until=("pending",))
    rows = await db.pool.fetch(
        "SELECT status, error_code FROM imports WHERE id = ANY($1::uuid[])",
        [running["import_id"], waiting["import_id"]],
    )
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "interrupted")] * 2


async def test_imports_into_a_text_collection_leave_its_documents_alone(
    ic: AsyncTestClient[Litestar], portal: FakePortal, make_tenant: Any, unique_id: Callable[[str], str]
) -> None:
    from tests.test_embeddings_api import MODEL, wait_for_model

    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await wait_for_model(ic, tenant.admin)
    made = await ic.post(
        "/api/v1/collections", json={"name": "kb", "embedding": {"model": MODEL}}, headers=key
    )
    assert made.status_code == 201, made.text
    stored = await ic.post(
        "/api/v1/collections/kb/documents",
        json={"documents": [{"id": "doc", "text": "Sourdough rises slowly overnight."}]},
        headers=key,
    )
    assert stored.status_code == 200, stored.text
    before = await all_vectors(ic, tenant.admin, "kb")
    # Ids shaped like chunk ids would overwrite the document's chunks: refused, nothing written.
    chunk_like = publish(portal, unique_db(unique_id, n=20, dimensions=384, id_format="doc#{i}"))
    failed = await import_and_wait(ic, tenant.admin, "kb", chunk_like)
    assert failed["status"] == "error" and failed["error"]["code"] == "invalid_manifest", failed
    assert await all_vectors(ic, tenant.admin, "kb") == before
    # Plain vectors live beside the chunks; text search still finds the document.
    plain = publish(portal, unique_db(unique_id, n=20, dimensions=384))
    assert (await import_and_wait(ic, tenant.admin, "kb", plain))["status"] == "loaded"
    assert (await ic.get("/api/v1/collections/kb", headers=key)).json()["vector_count"] == 21
    found = await ic.post(
        "/api/v1/collections/kb/search", json={"text": "bread dough", "top_k": 1}, headers=key
    )
    assert found.json()["results"][0]["document_id"] == "doc"

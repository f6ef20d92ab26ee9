"""Sessions backed by an S5 vector database: loaded through the import pipeline from a real HTTP
portal on 127.0.0.1 into a temporary collection, searched with the session's token, and dropped
when the session is deleted, expires, or its import fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from tests.conftest import Api, MakeApi, MakeSettings, UniqueId, assert_problem, bearer
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import S5Database, build

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


@pytest.fixture(scope="module")
async def s5_client(
    make_settings: MakeSettings, portal: FakePortal
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app: Litestar = create_app(
        make_settings(
            s5={"portal_url": portal.url, "download_timeout_seconds": 2.0, "download_retries": 0},
            sessions={"min_ttl_seconds": 1, "sweep_interval_seconds": 0.3},
        )
    )
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def s5(make_api: MakeApi, s5_client: AsyncTestClient[Litestar]) -> Api:
    """The fixtures these tests take, over this module's app."""
    return make_api(s5_client)


def published(portal: FakePortal, unique_id: UniqueId, **kwargs: Any) -> S5Database:
    db = build(name=unique_id("db"), n=120, dimensions=4, chunk_size=50, **kwargs)
    portal.files.update(db.files)
    return db


def source(db: S5Database, **extra: Any) -> dict[str, Any]:
    return {"type": "s5", "manifest_path": db.manifest_path, "user_address": db.user_address, **extra}


async def wait_status(client: Any, key: str, session_id: str, until: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        shown: dict[str, Any] = (
            await client.get(f"/api/v1/sessions/{session_id}", headers=bearer(key))
        ).json()
        if shown["status"] in until:
            return shown
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.05)


async def collection_exists(db: Database, tenant_id: str, name: str) -> bool:
    found = await db.pool.fetchval(
        "SELECT count(*) FROM collections WHERE tenant_id = $1 AND name = $2", tenant_id, name
    )
    return bool(found)


async def test_an_s5_session_loads_then_serves_then_leaves_nothing(s5: Api, portal: FakePortal) -> None:
    tenant = await s5.make_tenant()
    s5db = published(portal, s5.unique_id, key=KEY)
    # The first chunk is slow: the session is seen loading, and searches are told to wait.
    portal.faults[f"{s5db.folder}/chunk-0.json"] = ["slow:1.5"]
    created = await s5.client.post(
        "/api/v1/sessions",
        json={"source": source(s5db, encryption_key=KEY.hex()), "ttl_seconds": 600},
        headers=bearer(tenant.admin),
    )
    assert created.status_code == 201, created.text
    session = created.json()
    sid, token = session["session_id"], bearer(session["token"])
    (name,) = session["collections"]
    assert session["source"] == "s5" and name.startswith("s5-")
    assert session["status"] == "loading" and session["load"]["status"] in ("pending", "loading")
    early = await s5.client.post(
        f"/api/v1/sessions/{sid}/search", json={"vector": [1, 0, 0, 0]}, headers=token
    )
    body = assert_problem(early, 409, "session_loading")
    assert early.headers["retry-after"] == "1" and body["detail"]

    ready = await wait_status(s5.client, tenant.admin, sid, {"ready", "error"})
    assert ready["status"] == "ready" and ready["load"]["vectors_loaded"] == 120, ready
    query = s5db.vectors[7].tolist()
    found = await s5.client.post(
        f"/api/v1/sessions/{sid}/search", json={"vector": query, "top_k": 1}, headers=token
    )
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["score"] > 0.999
    direct = await s5.client.post(f"/api/v1/collections/{name}/search", json={"vector": query}, headers=token)
    assert direct.status_code == 200
    assert await collection_exists(s5.db, tenant.tenant_id, name)

    # A second session of the same database is ready at once: the import's cache answers (after
    # checking the key on the manifest), and the two share the collection.
    second = await s5.client.post(
        "/api/v1/sessions",
        json={"source": source(s5db, encryption_key=KEY.hex())},
        headers=bearer(tenant.admin),
    )
    assert second.status_code == 201, second.text
    assert second.json()["collections"] == [name]
    other = await wait_status(s5.client, tenant.admin, second.json()["session_id"], {"ready", "error"})
    assert other["status"] == "ready" and other["load"]["cached"] is True, other
    # The wrong key gets nothing from the loaded copy.
    wrong = await s5.client.post(
        "/api/v1/sessions",
        json={"source": source(s5db, encryption_key=bytes(32).hex())},
        headers=bearer(tenant.admin),
    )
    failed = await wait_status(s5.client, tenant.admin, wrong.json()["session_id"], {"error", "ended"})
    assert failed["load"]["error"]["code"] == "decryption_failed", failed

    # Deleting one session keeps the collection for the other; deleting the last drops it.
    assert (
        await s5.client.delete(f"/api/v1/sessions/{sid}", headers=bearer(tenant.admin))
    ).status_code == 204
    assert await collection_exists(s5.db, tenant.tenant_id, name)
    gone = await s5.client.post(f"/api/v1/collections/{name}/search", json={"vector": query}, headers=token)
    assert_problem(gone, 401)
    still = bearer(second.json()["token"])
    kept = await s5.client.post(f"/api/v1/collections/{name}/search", json={"vector": query}, headers=still)
    assert kept.status_code == 200, kept.text
    last = second.json()["session_id"]
    assert (
        await s5.client.delete(f"/api/v1/sessions/{last}", headers=bearer(tenant.admin))
    ).status_code == 204
    # (the failed session counts until the sweep has ended it; then the last release drops it)
    deadline = time.monotonic() + 10
    while await collection_exists(s5.db, tenant.tenant_id, name):
        assert time.monotonic() < deadline, "the shared collection outlived its last session"
        await asyncio.sleep(0.1)
    assert await s5.db.pool.fetchval(
        "SELECT bool_and(dropped_at IS NOT NULL) FROM sessions WHERE id = ANY($1)", [sid, last]
    )


async def test_a_failed_load_ends_the_session_and_an_expired_one_is_dropped(
    s5: Api, portal: FakePortal
) -> None:
    tenant = await s5.make_tenant()
    s5db = published(portal, s5.unique_id, key=KEY)
    wrong = bytes(32).hex()
    created = await s5.client.post(
        "/api/v1/sessions", json={"source": source(s5db, encryption_key=wrong)}, headers=bearer(tenant.admin)
    )
    assert created.status_code == 201, created.text
    sid, name = created.json()["session_id"], created.json()["collections"][0]
    failed = await wait_status(s5.client, tenant.admin, sid, {"error", "ended"})
    if failed["status"] == "error":
        assert failed["load"]["error"]["code"] == "decryption_failed"
        search = await s5.client.post(
            f"/api/v1/sessions/{sid}/search", json={"vector": [1, 0, 0, 0]}, headers=bearer(tenant.admin)
        )
        assert_problem(search, 409, "session_failed")
    ended = await wait_status(s5.client, tenant.admin, sid, {"ended"})
    assert ended["end_reason"] == "failed" and ended["load"]["error"]["code"] == "decryption_failed"
    deadline = time.monotonic() + 10
    while not await s5.db.pool.fetchval("SELECT dropped_at IS NOT NULL FROM sessions WHERE id = $1", sid):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert not await collection_exists(s5.db, tenant.tenant_id, name)

    # A short session: loaded, then expired, then its collection is gone.
    plain = published(portal, s5.unique_id)
    short = await s5.client.post(
        "/api/v1/sessions", json={"source": source(plain), "ttl_seconds": 3}, headers=bearer(tenant.admin)
    )
    assert short.status_code == 201, short.text
    sid, name = short.json()["session_id"], short.json()["collections"][0]
    await wait_status(s5.client, tenant.admin, sid, {"ready", "ended"})
    deadline = time.monotonic() + 15
    while not await s5.db.pool.fetchval("SELECT dropped_at IS NOT NULL FROM sessions WHERE id = $1", sid):
        assert time.monotonic() < deadline, "the expired session's collection was not dropped"
        await asyncio.sleep(0.1)
    assert not await collection_exists(s5.db, tenant.tenant_id, name)
    assert await s5.db.pool.fetchval("SELECT end_reason FROM sessions WHERE id = $1", sid) == "expired"


async def test_who_may_load_and_bad_input_changes_nothing(s5: Api, portal: FakePortal) -> None:
    tenant = await s5.make_tenant("read_only", "read_write")
    s5db = published(portal, s5.unique_id)
    before = await s5.db.pool.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = $1", tenant.tenant_id)
    refused = await s5.client.post(
        "/api/v1/sessions", json={"source": source(s5db)}, headers=bearer(tenant.key("read_only"))
    )
    assert_problem(refused, 403, "insufficient_permission")
    both = await s5.client.post(
        "/api/v1/sessions", json={"source": source(s5db), "collections": ["x"]}, headers=bearer(tenant.admin)
    )
    assert_problem(both, 400)
    bad_key = await s5.client.post(
        "/api/v1/sessions",
        json={"source": source(s5db, encryption_key="not-a-key")},
        headers=bearer(tenant.admin),
    )
    assert_problem(bad_key, 400)
    bad_owner = await s5.client.post(
        "/api/v1/sessions",
        json={"source": {**source(s5db), "user_address": "0x12"}},
        headers=bearer(tenant.admin),
    )
    assert_problem(bad_owner, 400)
    after = await s5.db.pool.fetchval("SELECT count(*) FROM sessions WHERE tenant_id = $1", tenant.tenant_id)
    assert after == before
    # READ_WRITE may, and another tenant sees nothing of it.
    made = await s5.client.post(
        "/api/v1/sessions", json={"source": source(s5db)}, headers=bearer(tenant.key("read_write"))
    )
    assert made.status_code == 201, made.text
    other = await s5.make_tenant()
    sid, name = made.json()["session_id"], made.json()["collections"][0]
    assert_problem(await s5.client.get(f"/api/v1/sessions/{sid}", headers=bearer(other.admin)), 404)
    assert_problem(await s5.client.get(f"/api/v1/collections/{name}", headers=bearer(other.admin)), 404)
    # The other tenant's session of the same database gets a collection of its own.
    theirs = await s5.client.post(
        "/api/v1/sessions", json={"source": source(s5db)}, headers=bearer(other.admin)
    )
    assert theirs.status_code == 201 and theirs.json()["collections"] != [name], theirs.text

"""Shared fixtures: one real embedded PostgreSQL (18 + pgvector) per test session, migrated with
Alembic by the app itself; isolation between tests comes from fresh tenants, not fresh databases."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth.models import CreateKeyRequest
from service.auth.principal import Permission
from service.auth.service import KeyService
from service.config import Settings, load_settings
from service.db import Database
from service.db.embedded import EmbeddedPostgres
from service.inference.minilm import prepare_default
from service.tenants.service import TenantService
from tests.support.server import end_all

# The default embedding model, prepared once per machine and shared by every test and every server
# process the tests start (their environment carries the folder).
MODEL_CACHE = Path(
    os.environ.get("VECTORHIVE_TEST_MODEL_CACHE", Path.home() / ".cache" / "vectorhive-test-models")
)
os.environ["VECTORHIVE_EMBEDDINGS__CACHE_DIR"] = str(MODEL_CACHE)
# Likewise the default chat model (SmolLM2), for the server processes tests start with the default
# configuration; apps made with make_settings answer with the tiny test model instead.
os.environ["VECTORHIVE_GENERATION__CACHE_DIR"] = str(MODEL_CACHE)


class MakeSettings(Protocol):
    """The make_settings fixture: Settings on the test database, with keyword overrides per
    section, e.g. make_settings(s5={"portal_url": url}, collections={"index_threshold": 10})."""

    def __call__(self, **sections: dict[str, Any]) -> Settings: ...


class UniqueId(Protocol):
    """The unique_id fixture: a fresh id with the given prefix ("t-3f9c...")."""

    def __call__(self, prefix: str = "t") -> str: ...


class MakeTenant(Protocol):
    """The make_tenant fixture: a fresh tenant with one key per requested permission (ADMIN
    always); keys other than ADMIN are limited to `collections` when given."""

    async def __call__(self, *permissions: str, collections: list[str] | None = None) -> TenantKeys: ...


@pytest.fixture(scope="session", autouse=True)
def default_embedding_model() -> Path:
    """Prepared before any server starts, so that servers never race to download it."""
    return prepare_default(MODEL_CACHE)


@pytest.fixture(scope="session", autouse=True)
def default_chat_model() -> Path:
    """The same for the default chat model."""
    from service.inference.smollm2 import prepare_default as prepare_default_chat

    return prepare_default_chat(MODEL_CACHE)


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind() -> Iterator[None]:
    """`vectorhive serve` processes a failed test did not stop end with the session (SIGTERM, then
    SIGKILL), never outlive it."""
    yield
    end_all()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    data_dir = embedded_home() / "postgres"
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def embedded_home(prefix: str = "vectorhive-test-") -> Path:
    """A fresh folder for an embedded PostgreSQL's data, outside pytest's tmp_path (delete it after).

    Under root the wheel runs PostgreSQL as its own OS user and opens the folders above the data
    folder to it; but any pytest session that starts on the machine resets /tmp/pytest-of-<user>
    to 0700, locking that user out mid-test (initdb, or `pg_ctl stop`: "Permission denied", after
    which the wheel kills the server and leaves its postmaster.pid). On a shared machine, data
    folders under tmp_path fail at random; tests put them here instead."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def make_settings(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> MakeSettings:
    """Settings on the test database; keyword overrides as {"section": {"key": value}}."""

    from tests.support.tiny_chat_model import build

    tiny_chat_model = build(tmp_path_factory.mktemp("models") / "tiny-chat.gguf")

    def make(**sections: dict[str, Any]) -> Settings:
        settings = load_settings(environ={}, cwd=tmp_path_factory.mktemp("cwd"))
        data = msgspec.to_builtins(settings)
        data["database"].update(url=pg_url, pool_min_size=1, pool_max_size=5)
        data["embeddings"]["cache_dir"] = str(MODEL_CACHE)
        data["server"]["access_log"] = True
        # The suite exercises the service with rate limits in force (as in cluster mode, where they
        # are on by default): limits, charges and 429s are part of what is tested. A test of the
        # default passes rate_limiting={"enabled": None}.
        data["rate_limiting"]["enabled"] = True
        # Chat: the tiny deterministic model (tests/support/tiny_chat_model.py) answers, fast and
        # exactly; a test that wants the real default model asks for it (prepared once per machine).
        data["generation"]["cache_dir"] = str(MODEL_CACHE)
        data["generation"]["default_model"] = "tiny"
        data["generation"]["models"] = {"tiny": {"path": str(tiny_chat_model), "n_ctx": 512}}
        for section, values in sections.items():
            data[section].update(values)
        return msgspec.convert(data, Settings)

    return make


@pytest.fixture(scope="session")
async def db(make_settings: MakeSettings) -> AsyncIterator[Database]:
    """A pool in the tests' own event loop, for setting up and checking rows directly."""
    database = Database(make_settings().database)
    await database.start(migrate=True)
    try:
        yield database
    finally:
        await database.stop()


@pytest.fixture(scope="session")
async def app(make_settings: MakeSettings) -> Litestar:
    return create_app(make_settings())


@pytest.fixture(scope="session")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass
class LiveServer:
    url: str
    app: Litestar


@contextmanager
def run_live_server(settings: Settings) -> Iterator[LiveServer]:
    """A real uvicorn server in a background thread: for tests that need truly concurrent requests
    (the test client's requests go through a blocking portal one at a time)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(
        # As `vectorhive serve`: X-Forwarded-For is the app's to judge (server.trusted_proxies).
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False)
    )
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "live server did not start"
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    # Imports are on, from a portal address where nothing listens: they fail fast (download_failed).
    settings = make_settings(s5={"portal_url": "http://127.0.0.1:9", "download_retries": 0})
    with run_live_server(settings) as server:
        yield server


@pytest.fixture(scope="session")
async def operator_key(db: Database) -> str:
    return (await KeyService(db).create(None, CreateKeyRequest(permission=Permission.ADMIN))).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class TenantKeys:
    tenant_id: str
    admin: str
    keys: dict[str, str]

    def key(self, permission: str) -> str:
        return self.keys[permission]


@pytest.fixture
def unique_id() -> UniqueId:
    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
async def make_tenant(db: Database, unique_id: UniqueId) -> MakeTenant:
    """A fresh tenant with one key per requested permission (ADMIN always)."""

    async def make(*permissions: str, collections: list[str] | None = None) -> TenantKeys:
        tenant_id = unique_id("t")
        await TenantService(db).create(tenant_id)
        keys = KeyService(db)
        made: dict[str, str] = {}
        for permission in {"admin", *permissions}:
            created = await keys.create(
                tenant_id,
                CreateKeyRequest(
                    permission=Permission(permission),
                    collections=collections if permission != "admin" else None,
                ),
            )
            made[permission] = created.key
        return TenantKeys(tenant_id=tenant_id, admin=made["admin"], keys=made)

    return make


@dataclass(frozen=True)
class Api:
    """The fixtures API tests take together, as one: a test client, the database, an operator key
    and the factories of tenants and ids. `api` is over the shared app's client; `make_api(client)`
    makes one over a module's own app (e.g. one with S5 or cluster settings)."""

    client: AsyncTestClient[Litestar]
    db: Database
    operator_key: str
    make_tenant: MakeTenant
    unique_id: UniqueId
    make_settings: MakeSettings


class MakeApi(Protocol):
    def __call__(self, client: AsyncTestClient[Litestar]) -> Api: ...


@pytest.fixture
def make_api(
    db: Database,
    operator_key: str,
    make_tenant: MakeTenant,
    unique_id: UniqueId,
    make_settings: MakeSettings,
) -> MakeApi:
    def make(client: AsyncTestClient[Litestar]) -> Api:
        return Api(
            client=client,
            db=db,
            operator_key=operator_key,
            make_tenant=make_tenant,
            unique_id=unique_id,
            make_settings=make_settings,
        )

    return make


@pytest.fixture
def api(client: AsyncTestClient[Litestar], make_api: MakeApi) -> Api:
    return make_api(client)


async def set_quotas(client: Any, operator_key: str, tenant_id: str, **values: Any) -> dict[str, Any]:
    """An operator sets a tenant's quota overrides (PUT /api/v1/admin/tenants/{id}/quotas)."""
    response = await client.put(
        f"/api/v1/admin/tenants/{tenant_id}/quotas", json=values, headers=bearer(operator_key)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape (RFC 9457), with our extension members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:vectorhive:problem:")
    assert body["type"] == "urn:vectorhive:problem:" + body["code"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["code"] == code, body
    return body

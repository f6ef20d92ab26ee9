"""What the end-to-end import tests share: a real HTTP portal on 127.0.0.1 serving SDK-style
databases (tests/fake_s5.py, with scripted faults), a server whose imports read from it, and
`imports`, the one fixture a test asks for (tenants, published databases, submitting and waiting).

A test module takes the fixtures by importing them (pytest finds them in the module's namespace;
the redundant alias marks the import as deliberate):
    from tests.support.imports import import_server_fixture as import_server_fixture
    from tests.support.imports import imports_fixture as imports_fixture
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.db import Database
from service.imports.models import FINISHED
from service.imports.spool import PREFIX as SPOOL_PREFIX
from tests.conftest import MakeSettings, MakeTenant, TenantKeys, UniqueId, bearer
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import S5Database, build

KEY = bytes(range(32))
KEY_HEX = KEY.hex()

Client = AsyncTestClient[Litestar]


def spool_folders(import_id: str) -> list[Path]:
    """The folders an import's downloaded chunks were spooled to (service/imports/pipeline.py)."""
    return list(Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}{import_id}-*"))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def submit(http: Client, key: str, collection: str, source: S5Database, **body: Any) -> dict[str, Any]:
    payload = {
        "source": "s5",
        "manifest_path": source.manifest_path,
        "user_address": source.user_address,
        **body,
    }
    response = await http.post(f"/api/v1/collections/{collection}/imports", json=payload, headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    assert response.headers["location"] == f"/api/v1/imports/{response.json()['import_id']}"
    result: dict[str, Any] = response.json()
    return result


async def wait_for(
    http: Client, key: str, import_id: str, until: tuple[str, ...] = FINISHED
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        response = await http.get(f"/api/v1/imports/{import_id}", headers=bearer(key))
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        if status["status"] in until:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


@dataclass
class Imports:
    """The import tests' world: the server (`http`), its portal, fresh tenants and databases."""

    http: Client
    portal: FakePortal
    db: Database
    make_tenant: MakeTenant
    unique_id: UniqueId

    async def tenant(self, *permissions: str, collections: list[str] | None = None) -> TenantKeys:
        return await self.make_tenant(*permissions, collections=collections)

    def database(self, **kwargs: Any) -> S5Database:
        """An SDK database of a name no other test uses (s5_fixtures.build's arguments), not yet served."""
        return build(name=self.unique_id("db"), **kwargs)

    def publish(self, source: S5Database) -> S5Database:
        """Serve the database's files (again, after a test changed them)."""
        self.portal.files.update(source.files)
        return source

    def published(self, **kwargs: Any) -> S5Database:
        return self.publish(self.database(**kwargs))

    async def collection(self, key: str, name: str, vectors: list[dict[str, Any]], **spec: Any) -> None:
        """A collection (`spec`: dimension, metric...) holding `vectors`, made through the API."""
        made = await self.http.post("/api/v1/collections", json={"name": name, **spec}, headers=bearer(key))
        assert made.status_code == 201, made.text
        put = await self.http.put(
            f"/api/v1/collections/{name}/vectors", json={"vectors": vectors}, headers=bearer(key)
        )
        assert put.status_code == 200, put.text

    async def submit(self, key: str, collection: str, source: S5Database, **body: Any) -> dict[str, Any]:
        return await submit(self.http, key, collection, source, **body)

    async def wait_for(self, key: str, import_id: str, until: tuple[str, ...] = FINISHED) -> dict[str, Any]:
        return await wait_for(self.http, key, import_id, until)

    async def import_and_wait(
        self, key: str, collection: str, source: S5Database, **body: Any
    ) -> dict[str, Any]:
        accepted = await self.submit(key, collection, source, **body)
        return await self.wait_for(key, accepted["import_id"])

    async def all_vectors(self, key: str, collection: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000, "include_vector": "true"}
            if cursor:
                params["cursor"] = cursor
            response = await self.http.get(
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


@dataclass
class ImportServer:
    http: Client
    portal: FakePortal


@pytest.fixture(scope="module", name="import_server")
async def import_server_fixture(make_settings: MakeSettings) -> AsyncIterator[ImportServer]:
    """The portal and a server reading from it, one pair per test module."""
    with serve(FakePortal()) as portal:
        app = create_app(
            make_settings(
                s5={"portal_url": portal.url, "download_timeout_seconds": 1.0, "download_retries": 2},
                collections={"index_threshold": 100_000},
            )
        )
        async with AsyncTestClient(app, raise_server_exceptions=False) as http:
            yield ImportServer(http, portal)


@pytest.fixture(name="imports")
def imports_fixture(
    import_server: ImportServer,
    db: Database,
    make_tenant: MakeTenant,
    unique_id: UniqueId,
) -> Imports:
    return Imports(import_server.http, import_server.portal, db, make_tenant, unique_id)

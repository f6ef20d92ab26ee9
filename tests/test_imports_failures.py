"""Imports from S5 that do not load: every failure, cancellation and shutdown leaves the collection
exactly as it was; transient portal faults are retried instead."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import assert_problem, bearer
from tests.support.imports import KEY, KEY_HEX, Imports, metric, spool_folders, submit, wait_for
from tests.support.imports import import_server_fixture as import_server_fixture  # the fixtures
from tests.support.imports import imports_fixture as imports_fixture


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
    imports: Imports,
    fault: str,
    code: str,
) -> None:
    """Each failure ends as error with its code; no vector of it is committed, even when earlier
    chunks were fine (they are staged, never merged)."""
    from tests.s5_fixtures import encode

    tenant = await imports.tenant()
    await imports.collection(
        tenant.admin, "c", [{"id": "doc-1", "vector": [1.0] * 8, "metadata": {"mine": True}}], dimension=8
    )
    before = await imports.all_vectors(tenant.admin, "c")
    overrides: dict[str, Any] = {
        "owner_mismatch": {"owner": "0x" + "cd" * 20},
        "vector_count_mismatch": {"vectorCount": 999},
        "deleted": {"deleted": True},
        "dimension_mismatch": {"dimensions": 16},
    }
    source = imports.database(
        n=300, dimensions=8, chunk_size=100, key=KEY, manifest_overrides=overrides.get(fault)
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
        imports.portal.faults[last_chunk] = ["500"] * 10
    elif fault == "chunk_always_slow":
        imports.portal.faults[last_chunk] = ["slow:1.5"] * 3
    imports.publish(source)

    body = {"encryption_key": KEY_HEX if fault != "wrong_key" else "ff" * 32}
    status = await imports.import_and_wait(tenant.admin, "c", source, **body)
    assert status["status"] == "error", status
    assert status["error"]["code"] == code, status
    assert status["error"]["message"] and KEY_HEX not in status["error"]["message"]
    assert status["finished_at"] is not None
    assert await imports.all_vectors(tenant.admin, "c") == before
    collection = (await imports.http.get("/api/v1/collections/c", headers=bearer(tenant.admin))).json()
    assert collection["vector_count"] == 1
    # The chunks it downloaded went into a folder of its own, gone with it.
    assert not spool_folders(status["import_id"])


async def test_no_room_for_downloads_on_the_server_is_a_clear_failure(
    imports: Imports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks are spooled to the system's temporary directory: when it cannot be used, the
    import says so (not an internal error), and nothing is created."""
    tenant = await imports.tenant()
    source = imports.published(n=30, dimensions=8, chunk_size=10, key=KEY)
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/vectorhive-tmp")
    status = await imports.import_and_wait(tenant.admin, "nowhere", source, encryption_key=KEY_HEX)
    assert status["status"] == "error", status
    assert status["error"]["code"] == "download_failed"
    assert "could not make a folder for the downloads" in status["error"]["message"]
    missing = await imports.http.get("/api/v1/collections/nowhere", headers=bearer(tenant.admin))
    assert missing.status_code == 404


async def test_a_failed_import_does_not_create_the_collection(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=300, chunk_size=100)
    del imports.portal.files[f"{source.folder}/chunk-1.json"]
    status = await imports.import_and_wait(tenant.admin, "fresh", source)
    assert status["error"]["code"] == "download_failed"
    assert_problem(
        await imports.http.get("/api/v1/collections/fresh", headers=bearer(tenant.admin)), 404, "not_found"
    )


async def test_transient_faults_are_retried(
    imports: Imports,
) -> None:
    """A 500 then success, a truncated body, and one answer slower than the per-request timeout."""
    tenant = await imports.tenant()
    source = imports.published(n=300, chunk_size=100, key=KEY)
    imports.portal.faults[f"{source.folder}/chunk-0.json"] = ["500"]
    imports.portal.faults[f"{source.folder}/chunk-1.json"] = ["truncate"]
    imports.portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:1.5"]
    errors_before = sum(
        metric("s5_download_errors_total", reason=r) for r in ("http_5xx", "transport", "timeout")
    )
    status = await imports.import_and_wait(tenant.admin, "c", source, encryption_key=KEY_HEX)
    assert status["status"] == "loaded", status
    assert status["vectors_loaded"] == 300
    errors = sum(metric("s5_download_errors_total", reason=r) for r in ("http_5xx", "transport", "timeout"))
    assert errors - errors_before == 3


async def test_cancel_while_loading_changes_nothing(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=300, chunk_size=100)
    imports.portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:0.9", "slow:0.9", "slow:0.9"]
    accepted = await imports.submit(tenant.admin, "c", source)
    await imports.wait_for(tenant.admin, accepted["import_id"], until=("loading",))
    response = await imports.http.delete(
        f"/api/v1/imports/{accepted['import_id']}", headers=bearer(tenant.admin)
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["code"] == "cancelled"
    await asyncio.sleep(1.0)  # the runner notices and stops
    final = await imports.wait_for(tenant.admin, accepted["import_id"])
    assert final["status"] == "cancelled"
    assert_problem(await imports.http.get("/api/v1/collections/c", headers=bearer(tenant.admin)), 404)
    again = await imports.http.delete(
        f"/api/v1/imports/{accepted['import_id']}", headers=bearer(tenant.admin)
    )
    assert_problem(again, 409, "import_finished")


async def test_cancelling_a_loaded_import_is_refused(
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=10, chunk_size=10)
    status = await imports.import_and_wait(tenant.admin, "c", source)
    response = await imports.http.delete(
        f"/api/v1/imports/{status['import_id']}", headers=bearer(tenant.admin)
    )
    body = assert_problem(response, 409, "import_finished")
    assert "loaded" in body["detail"]


async def test_a_graceful_shutdown_ends_running_and_waiting_imports_as_interrupted(
    make_settings: Callable[..., Settings],
    imports: Imports,
) -> None:
    tenant = await imports.tenant()
    source = imports.published(n=20, chunk_size=10)
    imports.portal.faults[f"{source.folder}/chunk-1.json"] = ["slow:3"]
    settings = make_settings(s5={"portal_url": imports.portal.url, "max_concurrent_imports": 1})
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as short_lived:
        running = await submit(short_lived, tenant.admin, "a", source)
        waiting = await submit(short_lived, tenant.admin, "b", source)
        await wait_for(short_lived, tenant.admin, running["import_id"], until=("loading",))
        assert await wait_for(short_lived, tenant.admin, waiting["import_id"], until=("pending",))
    rows = await imports.db.pool.fetch(
        "SELECT status, error_code FROM imports WHERE id = ANY($1::uuid[])",
        [running["import_id"], waiting["import_id"]],
    )
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "interrupted")] * 2

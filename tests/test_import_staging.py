"""One chunk file -> binary COPY rows (service/imports/staging.py), read back field by field, for
every encoding an SDK writes; and, end to end on the real server and database, what the faster
merge and index paths must keep: the later of repeated ids wins in a new collection too, and an
imported collection's HNSW index is built without waiting for a quiet period."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.collections.indexer import IndexBuilder
from service.config import Settings
from service.db import Database
from service.imports import formats, staging
from service.imports.formats import ChunkInfo, ImportFailure
from service.imports.staging import COPY_HEADER, GROUP_VECTORS, TargetSpec, stage_chunk, stage_chunk_file
from tests.conftest import TenantKeys, bearer
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import build, encode
from tests.support.imports import spool_folders

KEY = bytes(range(32))
SPEC = TargetSpec(dimension=8, storage="float32", metric="cosine", max_metadata_bytes=4096)


def read_copy(data: bytes) -> list[tuple[int, str, np.ndarray, Any]]:
    """Parse a binary COPY stream of (ord bigint, id text, embedding vector, metadata jsonb)."""
    assert data.startswith(COPY_HEADER)
    rows = []
    at = len(COPY_HEADER)
    while True:
        (fields,) = struct.unpack_from(">h", data, at)
        at += 2
        if fields == -1:
            assert at == len(data)
            return rows
        assert fields == 4
        values = []
        for _ in range(4):
            (length,) = struct.unpack_from(">i", data, at)
            values.append(data[at + 4 : at + 4 + length])
            at += 4 + length
        ord_, id_, embedding, metadata = values
        dim, unused = struct.unpack_from(">hh", embedding)
        assert unused == 0 and len(embedding) == 4 + 4 * dim
        assert metadata[0] == 1  # jsonb version
        rows.append(
            (
                struct.unpack(">q", ord_)[0],
                id_.decode(),
                np.frombuffer(embedding[4:], dtype=">f4"),
                msgspec.json.decode(metadata[1:]),
            )
        )


def staged_from(where: str, raw: bytes, key: bytes | None, info: ChunkInfo, tmp_path: Path) -> Any:
    """stage_chunk on the bytes, or stage_chunk_file on them written to a file (as imports run)."""
    if where == "memory":
        return stage_chunk(raw, key, info, SPEC)
    path = tmp_path / f"chunk-{info.chunk_id}"
    path.write_bytes(raw)
    return stage_chunk_file(str(path), key, info, SPEC)


@pytest.mark.parametrize("where", ["memory", "file"])
@pytest.mark.parametrize("encoding", ["json", "cbor"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_a_chunk_becomes_copy_rows_of_its_float32_vectors(
    encoding: str, key: bytes | None, where: str, tmp_path: Path
) -> None:
    # More vectors than one decoding group, so that the groups' seams are crossed.
    n = GROUP_VECTORS * 2 + 7
    db = build(n=n, dimensions=8, chunk_size=n, encoding=encoding, key=key)
    info = ChunkInfo(chunk_id=0, cid="x", vector_count=n)
    staged = staged_from(where, db.files[f"{db.folder}/chunk-0.json"], key, info, tmp_path)
    rows = read_copy(staged.copy_data)
    assert staged.count == n == len(rows)
    assert [r[0] for r in rows] == list(range(n))
    assert [r[1] for r in rows] == [f"doc-{i}" for i in range(n)]
    # Bit for bit the float32 values the database was written from.
    assert np.array_equal(np.stack([r[2] for r in rows]), db.vectors)
    assert rows[5][3] == {"i": 5, "source": "s5"}
    digests = staged.id_digests
    assert len(digests) == 8 * n and len({digests[i : i + 8] for i in range(0, len(digests), 8)}) == n


@pytest.mark.parametrize(("tag", "dtype"), [(85, "<f4"), (81, ">f4"), (86, "<f8"), (82, ">f8")])
def test_cbor_typed_arrays_go_into_the_matrix_as_they_are(tag: int, dtype: str) -> None:
    vectors = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    document = {
        "chunkId": 4,
        "vectors": [
            {"id": i, "vector": cbor2.CBORTag(tag, vectors[i].astype(dtype).tobytes()), "metadata": None}
            for i in range(3)
        ],
    }
    info = ChunkInfo(chunk_id=4, cid="x", vector_count=3)
    rows = read_copy(stage_chunk(cbor2.dumps(document), None, info, SPEC).copy_data)
    assert [r[1] for r in rows] == ["0", "1", "2"]
    assert [r[0] for r in rows] == [40_000, 40_001, 40_002]  # chunk id, then position
    assert np.array_equal(np.stack([r[2] for r in rows]), vectors)
    assert rows[0][3] == {}


def _failure(document: dict[str, Any], encoding: str = "json") -> ImportFailure:
    raw = encode(document, encoding, None)
    info = ChunkInfo(chunk_id=0, cid="x", vector_count=len(document["vectors"]))
    with pytest.raises(ImportFailure) as excinfo:
        stage_chunk(raw, None, info, SPEC)
    return excinfo.value


def _vectors(count: int) -> list[dict[str, Any]]:
    return [{"id": f"v{i}", "vector": [float(i + 1)] * 8} for i in range(count)]


@pytest.mark.parametrize("encoding", ["json", "cbor"])
def test_a_bad_vector_is_named_with_its_position(encoding: str) -> None:
    vectors = _vectors(GROUP_VECTORS + 10)
    vectors[GROUP_VECTORS + 3]["vector"] = [1.0] * 7  # in the second group
    failure = _failure({"chunkId": 0, "vectors": vectors}, encoding)
    assert failure.code == "dimension_mismatch"
    assert f"vector {GROUP_VECTORS + 3} ('v{GROUP_VECTORS + 3}') has 7 values, not 8" in failure.message

    vectors = _vectors(20)
    vectors[11]["vector"] = [1.0] * 7 + ["x"]
    failure = _failure({"chunkId": 0, "vectors": vectors}, encoding)
    assert failure.code == "invalid_manifest"
    assert "vectors[11].vector" in failure.message

    vectors = _vectors(20)
    vectors[2]["vector"] = [1.0] * 7 + [True]  # a boolean is not a number, in either encoding
    assert _failure({"chunkId": 0, "vectors": vectors}, encoding).code == "invalid_manifest"

    vectors = _vectors(20)
    vectors[6]["vector"] = {"not": "a list"}
    failure = _failure({"chunkId": 0, "vectors": vectors}, encoding)
    assert failure.code == "invalid_manifest" and "vectors[6].vector" in failure.message


def test_values_out_of_float32_range_are_refused_not_stored_as_infinity() -> None:
    vectors = _vectors(5)
    vectors[3]["vector"] = [1e39] + [1.0] * 7
    failure = _failure({"chunkId": 0, "vectors": vectors})
    assert failure.code == "invalid_manifest" and "vector 3 ('v3')" in failure.message


def test_a_file_is_decrypted_in_pieces_exactly_and_refused_when_altered_or_short(tmp_path: Path) -> None:
    vectors = _vectors(3)
    plain = b" \n\t " + msgspec.json.encode({"chunkId": 0, "vectors": vectors})  # JSON after whitespace
    info = ChunkInfo(chunk_id=0, cid="x", vector_count=3)
    path = tmp_path / "chunk-0"
    # A file of several decryption pieces, whose last piece is not whole.
    text = os.urandom(3 * formats.DECRYPT_PIECE_BYTES + 12_345)
    nonce = os.urandom(12)
    big = nonce + AESGCM(KEY).encrypt(nonce, text, None)
    with open(path, "wb") as file:
        file.write(big)
    with open(path, "rb") as file:
        decrypted = formats.decrypt_file(file, len(big), KEY)
    assert decrypted == text
    with open(path, "rb") as file, pytest.raises(ImportFailure) as short:
        formats.decrypt_file(file, len(big) + 1000, KEY)  # the file shrank after it was measured
    assert short.value.code == "download_failed"

    nonce = os.urandom(12)
    sealed = nonce + AESGCM(KEY).encrypt(nonce, plain, None)
    path.write_bytes(sealed)
    assert [r[1] for r in read_copy(stage_chunk_file(str(path), KEY, info, SPEC).copy_data)] == [
        "v0",
        "v1",
        "v2",
    ]
    for damaged, code in [
        (sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:], "decryption_failed"),  # one bit of the text
        (sealed[:-1] + bytes([sealed[-1] ^ 1]), "decryption_failed"),  # one bit of the tag
        (sealed[:27], "decryption_failed"),  # shorter than a nonce and a tag
    ]:
        path.write_bytes(damaged)
        with pytest.raises(ImportFailure) as excinfo:
            stage_chunk_file(str(path), KEY, info, SPEC)
        assert excinfo.value.code == code
    path.write_bytes(sealed)
    with pytest.raises(ImportFailure) as excinfo:
        stage_chunk_file(str(path), bytes(32), info, SPEC)  # the wrong key
    assert excinfo.value.code == "decryption_failed" and "wrong key" in excinfo.value.message


def test_the_decode_workers_load_no_web_stack() -> None:
    """Each decode worker is a process of its own for the server's life, and spawning imports the
    server's main module into it (service.cli, under `vectorhive` or `python -m service.cli`): what
    those modules import is memory each worker holds (with litestar and asyncpg, a worker's idle
    RSS was 59 MiB; without, 37). A real pool of the stager, from a process whose main module is
    service.cli, reports what its worker loaded."""
    code = (
        "import sys, service.cli\n"
        "sys.modules['__main__'] = service.cli  # as when the server runs\n"
        "from service.config import S5Settings\n"
        "from service.imports.pipeline import ChunkStager\n"
        "from tests.support.worker_probe import web_stack_loaded\n"
        "stager = ChunkStager(S5Settings(), None)\n"
        "print(stager._pool().submit(web_stack_loaded).result(timeout=60))\n"
        "stager.close()\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_a_json_chunk_of_plain_numbers_never_reaches_the_reference_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """simdjson reads them (json_vectors.py); msgspec's row decoder is only for vectors at fault."""

    def refuse(_: bytes) -> None:
        raise AssertionError("the reference decoder was used for plain vectors")

    monkeypatch.setattr(staging, "_decode_rows", refuse)
    n = GROUP_VECTORS + 5
    db = build(n=n, dimensions=8, chunk_size=n, encoding="json", key=None)
    staged = stage_chunk(
        db.files[f"{db.folder}/chunk-0.json"], None, ChunkInfo(chunk_id=0, cid="x", vector_count=n), SPEC
    )
    assert np.array_equal(np.stack([r[2] for r in read_copy(staged.copy_data)]), db.vectors)


# -- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


@pytest.fixture(scope="module")
async def client(
    make_settings: Callable[..., Settings], portal: FakePortal
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(
        make_settings(
            s5={"portal_url": portal.url},
            # A quiet period far longer than the test waits: an imported collection's index is
            # built at once or the test fails.
            collections={"index_threshold": 200, "index_build_quiet_seconds": 600},
            index_builds={"parallel_workers": 1},
        )
    )
    async with AsyncTestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


async def _import(client: AsyncTestClient[Litestar], key: str, collection: str, db: Any) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/collections/{collection}/imports",
        json={"source": "s5", "manifest_path": db.manifest_path, "user_address": db.user_address},
        headers=bearer(key),
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while True:
        status: dict[str, Any] = (
            await client.get(f"/api/v1/imports/{response.json()['import_id']}", headers=bearer(key))
        ).json()
        if status["status"] not in ("pending", "loading"):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def test_a_new_collection_gets_the_later_of_repeated_ids(
    client: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = build(n=30, dimensions=4, chunk_size=10, name=unique_id("db"))
    again = {
        "chunkId": 2,
        "vectors": [
            {"id": f"doc-{i}", "vector": source.vectors[i].tolist(), "metadata": {"i": i}}
            for i in range(20, 29)
        ]
        + [{"id": "doc-5", "vector": [0.5, 0.5, 0.5, 0.5], "metadata": {"again": True}}],
    }
    source.files[f"{source.folder}/chunk-2.json"] = encode(again, "json", None)
    portal.files.update(source.files)

    status = await _import(client, tenant.admin, "fresh", source)
    assert status["status"] == "loaded" and status["vectors_loaded"] == 29, status
    got = (await client.get("/api/v1/collections/fresh/vectors/doc-5", headers=bearer(tenant.admin))).json()
    assert (got["vector"], got["metadata"]) == ([0.5, 0.5, 0.5, 0.5], {"again": True})
    info = (await client.get("/api/v1/collections/fresh", headers=bearer(tenant.admin))).json()
    assert info["vector_count"] == 29
    # Its chunks were spooled to a folder of its own, gone with it.
    assert not spool_folders(status["import_id"])
    # Another tenant sees neither the import nor the collection.
    other: TenantKeys = await make_tenant()
    missing = await client.get(f"/api/v1/imports/{status['import_id']}", headers=bearer(other.admin))
    assert missing.status_code == 404
    assert (await client.get("/api/v1/collections/fresh", headers=bearer(other.admin))).status_code == 404


async def test_an_imported_collection_is_indexed_without_a_quiet_period(
    client: AsyncTestClient[Litestar],
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = build(n=500, dimensions=8, chunk_size=200, name=unique_id("db"))
    portal.files.update(source.files)
    status = await _import(client, tenant.admin, "indexed", source)
    assert status["status"] == "loaded", status
    deadline = time.monotonic() + 60  # far below the 600 s quiet period
    while True:
        info = (await client.get("/api/v1/collections/indexed", headers=bearer(tenant.admin))).json()
        if info["index"]["status"] != "none" and info["index"]["status"] != "building":
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.1)
    assert info["index"]["status"] == "ready", info
    found = await client.post(
        "/api/v1/collections/indexed/search",
        json={"vector": source.vectors[321].tolist(), "top_k": 1},
        headers=bearer(tenant.admin),
    )
    assert found.json()["results"][0]["id"] == "doc-321"


async def test_parallel_maintenance_workers_follow_the_setting_and_the_cores(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    assert IndexBuilder(db, settings.collections, parallel_workers=3)._maintenance_workers() == 3
    automatic = IndexBuilder(db, settings.collections)._maintenance_workers()
    if db.embedded is not None:  # the embedded database shares this machine's cores
        assert automatic == max(2, (os.cpu_count() or 1) - 1)
    else:  # an external server keeps its operator's setting
        assert automatic is None

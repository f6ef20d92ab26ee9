"""The S5 portal client against a real HTTP portal on 127.0.0.1, with faults."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.imports.formats import ChunkInfo, ImportFailure, check_manifest, parse_chunk, parse_manifest
from service.imports.portal import S5Portal
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import OWNER, build

KEY = bytes(range(32))


@pytest.fixture
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


def client(portal: FakePortal, **options: float) -> S5Portal:
    return S5Portal(portal.url, timeout=options.get("timeout", 2.0), retries=3, backoff=0.01)


async def test_downloads_a_whole_encrypted_database(portal: FakePortal) -> None:
    db = build(n=250, chunk_size=100, encoding="cbor", key=KEY)
    portal.files.update(db.files)
    s5 = client(portal)
    try:
        manifest = parse_manifest(await s5.fetch_path(db.manifest_path, missing="manifest_not_found"), KEY)
        check_manifest(manifest, user_address=OWNER, dimension=8)
        total = 0
        for info in manifest.chunks:
            with tempfile.TemporaryFile() as file:
                await s5.fetch_chunk(db.folder, info, file)
                file.seek(0)
                total += len(parse_chunk(file.read(), KEY, info.chunk_id).vectors)
        assert total == 250
    finally:
        await s5.close()


async def test_missing_manifest_is_manifest_not_found_without_retries(portal: FakePortal) -> None:
    s5 = client(portal)
    with pytest.raises(ImportFailure) as excinfo:
        await s5.fetch_path("home/vector-databases/x/y/manifest.json", missing="manifest_not_found")
    assert excinfo.value.code == "manifest_not_found"
    assert s5.attempts == 1  # 4xx: never retried
    await s5.close()


async def test_server_errors_are_retried_then_succeed(portal: FakePortal) -> None:
    portal.files["a/b.json"] = b'{"x": 1}'
    portal.faults["a/b.json"] = ["500", "500"]
    s5 = client(portal)
    assert await s5.fetch_path("a/b.json") == b'{"x": 1}'
    assert s5.attempts == 3
    await s5.close()


async def test_persistent_server_errors_give_up(portal: FakePortal) -> None:
    portal.files["a/b.json"] = b"{}"
    portal.faults["a/b.json"] = ["500"] * 10
    s5 = client(portal)
    with pytest.raises(ImportFailure) as excinfo:
        await s5.fetch_path("a/b.json")
    assert excinfo.value.code == "download_failed" and "HTTP 500 after 4 tries" in excinfo.value.message
    assert s5.attempts == 4
    await s5.close()


async def test_truncated_body_is_retried(portal: FakePortal) -> None:
    portal.files["a/b.json"] = b'{"payload": "' + b"x" * 5000 + b'"}'
    portal.faults["a/b.json"] = ["truncate"]
    s5 = client(portal)
    assert (await s5.fetch_path("a/b.json")).endswith(b'"}')
    assert s5.attempts == 2
    await s5.close()


async def test_a_chunk_spooled_to_a_file_after_a_truncated_answer_is_the_whole_chunk(
    portal: FakePortal,
) -> None:
    """The import spools chunks to files: a retry must overwrite the broken attempt, not append."""
    whole = b'{"chunkId": 3, "vectors": [' + b"0," * 20_000 + b"0]}"
    portal.files["u/d/chunk-3.json"] = whole
    portal.faults["u/d/chunk-3.json"] = ["truncate", "500"]
    s5 = client(portal)
    with tempfile.TemporaryFile() as file:
        file.write(b"left over from before " * 10_000)
        await s5.fetch_chunk("u/d", ChunkInfo(chunk_id=3, cid="", vector_count=0), file)
        file.seek(0)
        assert file.read() == whole
    assert s5.attempts == 3
    await s5.close()


async def test_a_chunk_larger_than_the_limit_is_refused_while_it_arrives(portal: FakePortal) -> None:
    portal.files["u/d/chunk-0.json"] = b"x" * 300_000
    s5 = S5Portal(portal.url, timeout=2.0, retries=3, backoff=0.01, max_file_bytes=100_000)
    with tempfile.TemporaryFile() as file, pytest.raises(ImportFailure) as excinfo:
        await s5.fetch_chunk("u/d", ChunkInfo(chunk_id=0, cid="", vector_count=0), file)
    assert excinfo.value.code == "invalid_manifest" and "larger than 100,000 bytes" in excinfo.value.message
    assert s5.attempts == 1
    await s5.close()


@pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs Linux's /dev/full (a disk that is always full)"
)
async def test_a_full_disk_on_the_server_is_a_clear_failure_not_a_crash(portal: FakePortal) -> None:
    portal.files["u/d/chunk-0.json"] = b"x" * 200_000
    s5 = client(portal)
    with open("/dev/full", "wb") as full, pytest.raises(ImportFailure) as excinfo:  # noqa: ASYNC230
        await s5.fetch_chunk("u/d", ChunkInfo(chunk_id=0, cid="", vector_count=0), full)
    assert excinfo.value.code == "download_failed"
    assert "could not keep the download" in excinfo.value.message
    assert s5.attempts == 1  # the portal is not at fault: no retries
    await s5.close()


async def test_slow_answers_time_out(portal: FakePortal) -> None:
    portal.files["a/b.json"] = b"{}"
    portal.faults["a/b.json"] = ["slow:0.6"] * 4
    s5 = S5Portal(portal.url, timeout=0.2, retries=1, backoff=0.01)
    with pytest.raises(ImportFailure) as excinfo:
        await s5.fetch_path("a/b.json")
    assert excinfo.value.code == "timeout"
    portal.faults["a/b.json"] = ["slow:0.6"]
    assert await s5.fetch_path("a/b.json") == b"{}"  # one slow answer, then a retry in time
    await s5.close()


async def test_chunk_by_cid_falls_back_to_the_blob_endpoint(portal: FakePortal) -> None:
    portal.blobs["z6Mkabc123"] = b'{"chunkId": 0, "vectors": []}'
    s5 = client(portal)
    with tempfile.TemporaryFile() as file:
        await s5.fetch_chunk(
            "home/vector-databases/u/d", ChunkInfo(chunk_id=0, cid="z6Mkabc123", vector_count=0), file
        )
        file.seek(0)
        assert file.read() == b'{"chunkId": 0, "vectors": []}'
    assert portal.requests == ["/s5/fs/home/vector-databases/u/d/chunk-0.json", "/s5/blob/z6Mkabc123"]
    await s5.close()


async def test_paths_cannot_escape(portal: FakePortal) -> None:
    s5 = client(portal)
    for path in ("../secret", "a/../../b", "", "a//b", "/"):
        with pytest.raises(ImportFailure):
            await s5.fetch_path(path)
    for cid in ("a/b", "", "ü"):
        with pytest.raises(ImportFailure):
            await s5.fetch_blob(cid)
    assert portal.requests == []
    await s5.close()

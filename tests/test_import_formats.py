"""The S5 vector-database format: JSON and CBOR, plain and encrypted, and the validation rules."""

from __future__ import annotations

import base64
import os
from typing import Any

import cbor2
import numpy as np
import pytest

from service.imports.formats import (
    ImportFailure,
    check_chunk,
    check_manifest,
    parse_chunk,
    parse_encryption_key,
    parse_manifest,
)
from tests.s5_fixtures import OWNER, build

KEY = bytes(range(32))


@pytest.mark.parametrize("encoding", ["json", "cbor"])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_reads_what_the_sdk_writes(encoding: str, key: bytes | None) -> None:
    db = build(n=250, dimensions=8, chunk_size=100, encoding=encoding, key=key)
    manifest = parse_manifest(db.files[db.manifest_path], key)
    check_manifest(manifest, user_address=OWNER.upper().replace("0X", "0x"), dimension=8)  # owner: any case
    assert (manifest.name, manifest.dimensions, manifest.vector_count, manifest.chunk_count) == (
        "notes",
        8,
        250,
        3,
    )
    loaded = []
    for info in manifest.chunks:
        chunk = parse_chunk(db.files[info.cid], key, info.chunk_id)
        check_chunk(chunk, info, manifest.dimensions)
        loaded += chunk.vectors
    assert [v.id for v in loaded] == [f"doc-{i}" for i in range(250)]
    assert np.allclose([v.vector for v in loaded], db.vectors)
    assert loaded[7].metadata == {"i": 7, "source": "s5"}


def test_cbor_typed_float_arrays() -> None:
    """JavaScript CBOR encoders write Float32Array as an RFC 8746 typed array (tag 85)."""
    values = np.array([0.25, -1.5, 3.0], dtype="<f4")
    raw = cbor2.dumps({"chunkId": 0, "vectors": [{"id": 1, "vector": cbor2.CBORTag(85, values.tobytes())}]})
    chunk = parse_chunk(raw, None, 0)
    assert chunk.vectors[0].vector == [0.25, -1.5, 3.0]
    assert chunk.vectors[0].id == 1


def test_wrong_key_and_tampered_ciphertext() -> None:
    db = build(key=KEY)
    raw = db.files[db.manifest_path]
    for bad in (
        parse_manifest_with(raw, bytes(32)),
        parse_manifest_with(raw[:-1] + bytes([raw[-1] ^ 1]), KEY),
        parse_manifest_with(raw[:20], KEY),
    ):
        assert bad == "decryption_failed"
    # An encrypted file read as plain data is neither JSON nor CBOR worth the name.
    assert parse_manifest_with(raw, None) == "invalid_manifest"


def parse_manifest_with(raw: bytes, key: bytes | None) -> str:
    with pytest.raises(ImportFailure) as excinfo:
        parse_manifest(raw, key)
    return excinfo.value.code


@pytest.mark.parametrize(
    ("overrides", "user", "dimension", "code"),
    [
        ({}, "0x" + "cd" * 20, 8, "owner_mismatch"),
        ({}, "not-an-address", 8, "owner_mismatch"),
        ({}, OWNER, 16, "dimension_mismatch"),
        ({"deleted": True}, OWNER, 8, "invalid_manifest"),
        ({"dimensions": 0}, OWNER, None, "invalid_manifest"),
        ({"chunkCount": 5}, OWNER, 8, "invalid_manifest"),
        ({"vectorCount": 999}, OWNER, 8, "invalid_manifest"),
    ],
)
def test_manifest_rules(overrides: dict[str, Any], user: str, dimension: int | None, code: str) -> None:
    db = build(manifest_overrides=overrides)
    manifest = parse_manifest(db.files[db.manifest_path], None)
    with pytest.raises(ImportFailure) as excinfo:
        check_manifest(manifest, user_address=user, dimension=dimension)
    assert excinfo.value.code == code


def test_chunk_ids_must_be_a_sequence() -> None:
    db = build(n=250, chunk_size=100)
    manifest = parse_manifest(db.files[db.manifest_path], None)
    manifest.chunks[2].chunk_id = 7
    with pytest.raises(ImportFailure, match="chunk ids"):
        check_manifest(manifest, user_address=OWNER, dimension=8)


def test_chunk_rules() -> None:
    db = build(n=100, chunk_size=100, dimensions=8)
    manifest = parse_manifest(db.files[db.manifest_path], None)
    info = manifest.chunks[0]
    chunk = parse_chunk(db.files[info.cid], None, 0)
    chunk.vectors[3].vector = chunk.vectors[3].vector[:7]
    with pytest.raises(ImportFailure) as excinfo:
        check_chunk(chunk, info, 8)
    assert excinfo.value.code == "dimension_mismatch" and "doc-3" in excinfo.value.message
    chunk.vectors = chunk.vectors[:50]
    with pytest.raises(ImportFailure, match="holds 50 vectors"):
        check_chunk(chunk, info, 8)
    with pytest.raises(ImportFailure) as excinfo:
        parse_chunk(b'{"chunkId": 0, "vectors": [{"vector": [1]}]}', None, 0)
    assert excinfo.value.code == "invalid_manifest"


def test_encryption_key_forms() -> None:
    key = os.urandom(32)
    for text in (
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
    ):
        assert parse_encryption_key(text) == key
    for bad in ("", "abcd", key.hex()[:-2], base64.b64encode(key[:16]).decode(), "z" * 64):
        with pytest.raises(ValueError, match="32 bytes"):
            parse_encryption_key(bad)

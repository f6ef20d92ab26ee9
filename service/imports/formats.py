"""The S5 vector-database format: manifest and chunks, JSON or CBOR, optionally AES-256-GCM.

    home/vector-databases/{user_address}/{db_name}/manifest.json
    home/vector-databases/{user_address}/{db_name}/chunk-{chunkId}.json

Both kinds of file end in .json whatever their encoding, so the encoding is detected from the
bytes: JSON starts with '{' (after optional whitespace), anything else is read as CBOR. Encrypted
files are what the Web Crypto API produces for AES-GCM: a 12-byte nonce, then the ciphertext with
its 16-byte tag at the end, no additional data, under a 32-byte key the client supplies.
"""

from __future__ import annotations

import base64
import binascii
import re
from io import BufferedReader
from typing import Any

import cbor2
import msgspec
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.collections.validation import dimension_problem

NONCE_BYTES = 12
TAG_BYTES = 16
MAX_VECTORS_PER_CHUNK = 10_000
OWNER_RE = re.compile(r"0x[0-9a-fA-F]{40}")


class ImportFailure(Exception):
    """An import cannot go on; `code` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ImportFailure], tuple[str, str]]:
        # Raised in worker processes too (see staging.py): it must survive pickling.
        return ImportFailure, (self.code, self.message)


class ChunkInfo(msgspec.Struct, rename="camel", kw_only=True):
    chunk_id: int
    cid: str
    vector_count: int
    size_bytes: int | None = None
    updated_at: Any = None


class Manifest(msgspec.Struct, rename="camel", kw_only=True):
    """Unknown fields are ignored: newer SDKs may add some."""

    name: str
    owner: str
    dimensions: int
    vector_count: int
    chunks: list[ChunkInfo]
    chunk_count: int
    description: str | None = None
    storage_size_bytes: int | None = None
    created: Any = None
    last_accessed: Any = None
    updated: Any = None
    folder_paths: list[str] | None = None
    deleted: bool | None = None


class StoredVector(msgspec.Struct, kw_only=True):
    id: str | int
    vector: list[float]
    metadata: dict[str, Any] | None = None


class Chunk(msgspec.Struct, rename="camel", kw_only=True):
    chunk_id: int
    vectors: list[StoredVector]


def parse_encryption_key(text: str) -> bytes:
    """A 32-byte key as 64 hex digits or as base64 (standard or URL-safe). ValueError otherwise."""
    value = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    try:
        key = base64.b64decode(
            value + "=" * (-len(value) % 4),
            altchars=b"-_" if "-" in value or "_" in value else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("encryption_key must be 32 bytes, written as 64 hex digits or as base64")
    return key


def decrypt(blob: bytes, key: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ImportFailure("decryption_failed", "the file is too short to be AES-GCM encrypted")
    try:
        # A view, not a slice: a slice of a 76 MB chunk would copy it once more before decrypting.
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], memoryview(blob)[NONCE_BYTES:], None)
    except InvalidTag:
        raise ImportFailure(
            "decryption_failed", "the file could not be decrypted: wrong key, or the data was altered"
        ) from None


# A file is decrypted this many bytes at a time (decrypt_file).
DECRYPT_PIECE_BYTES = 4 << 20
_AES_BLOCK_BYTES = 16


def decrypt_file(file: BufferedReader, size: int, key: bytes) -> memoryview:
    """An encrypted file of `size` bytes (nonce, ciphertext, tag), read and decrypted a piece at a
    time into one buffer: the ciphertext is never whole in memory beside the plaintext. GCM can
    decrypt before it sees the tag at the end; the plaintext is returned only once the tag has
    verified all of it, so nothing unauthenticated leaves this function."""
    if size < NONCE_BYTES + TAG_BYTES:
        raise ImportFailure("decryption_failed", "the file is too short to be AES-GCM encrypted")
    nonce = file.read(NONCE_BYTES)
    length = size - NONCE_BYTES - TAG_BYTES
    # update_into wants room for a block more than it is given (cryptography's rule).
    plain = memoryview(bytearray(length + _AES_BLOCK_BYTES - 1))
    piece = memoryview(bytearray(min(DECRYPT_PIECE_BYTES, length) or 1))
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
    done = 0
    while done < length:
        read = file.readinto(piece[: min(len(piece), length - done)])
        if not read:
            raise ImportFailure("download_failed", "the downloaded file is shorter than it was")
        done += decryptor.update_into(piece[:read], plain[done:])
    try:
        decryptor.finalize_with_tag(file.read(TAG_BYTES))
    except (InvalidTag, ValueError):  # ValueError: a tag cut short
        raise ImportFailure(
            "decryption_failed", "the file could not be decrypted: wrong key, or the data was altered"
        ) from None
    return plain[:length]


# RFC 8746 typed arrays that JavaScript CBOR encoders emit for Float32Array / Float64Array.
_TYPED_FLOAT_ARRAYS = {81: ">f4", 82: ">f8", 85: "<f4", 86: "<f8"}


def _cbor_tag(*args: Any) -> Any:
    # cbor2 >= 6 calls hook(tag, immutable); older releases called hook(decoder, tag).
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    dtype = _TYPED_FLOAT_ARRAYS.get(tag.tag)
    if dtype is not None and isinstance(tag.value, bytes):
        return np.frombuffer(tag.value, dtype=dtype).astype(float).tolist()
    return tag


_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def looks_like_json(raw: bytes | memoryview) -> bool:
    """JSON starts with '{' after JSON's whitespace; anything else is read as CBOR. Found without
    copying the file (bytes.lstrip would copy a 76 MB chunk to look at its first byte)."""
    start = _LEADING_SPACE.match(raw)
    offset = start.end() if start else 0
    return bytes(raw[offset : offset + 1]) == b"{"


def _decode(raw: bytes, what: str) -> Any:
    """JSON or CBOR, detected from the bytes."""
    if looks_like_json(raw):
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ImportFailure("invalid_manifest", f"{what} is not valid JSON: {exc}") from None
    try:
        return cbor2.loads(raw, tag_hook=_cbor_tag)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise ImportFailure("invalid_manifest", f"{what} is neither JSON nor valid CBOR: {exc}") from None


def read_document(raw: bytes, key: bytes | None, what: str) -> Any:
    return _decode(decrypt(raw, key) if key is not None else raw, what)


def parse_manifest(raw: bytes, key: bytes | None) -> Manifest:
    try:
        return msgspec.convert(read_document(raw, key, "the manifest"), Manifest, strict=False)
    except msgspec.ValidationError as exc:
        raise ImportFailure(
            "invalid_manifest", f"the manifest does not have the expected shape: {exc}"
        ) from None


def parse_chunk(raw: bytes, key: bytes | None, chunk_id: int) -> Chunk:
    try:
        return msgspec.convert(read_document(raw, key, f"chunk {chunk_id}"), Chunk, strict=False)
    except msgspec.ValidationError as exc:
        raise ImportFailure(
            "invalid_manifest", f"chunk {chunk_id} does not have the expected shape: {exc}"
        ) from None


def check_manifest(manifest: Manifest, *, user_address: str, dimension: int | None) -> None:
    """The rules an import checks before downloading any chunk."""
    if not OWNER_RE.fullmatch(user_address):
        raise ImportFailure("owner_mismatch", "user_address must be 0x followed by 40 hex digits")
    if manifest.owner.lower() != user_address.lower():
        raise ImportFailure("owner_mismatch", "the manifest belongs to another owner than user_address")
    if manifest.deleted:
        raise ImportFailure("invalid_manifest", "the vector database is marked deleted")
    if manifest.dimensions <= 0:
        raise ImportFailure("invalid_manifest", f"dimensions must be positive, not {manifest.dimensions}")
    if dimension is not None and manifest.dimensions != dimension:
        raise ImportFailure(
            "dimension_mismatch",
            f"the database has {manifest.dimensions} dimensions; the collection has {dimension}",
        )
    if manifest.chunk_count != len(manifest.chunks):
        raise ImportFailure(
            "invalid_manifest",
            f"chunkCount is {manifest.chunk_count} but {len(manifest.chunks)} chunks are listed",
        )
    ids = sorted(c.chunk_id for c in manifest.chunks)
    if ids != list(range(len(ids))):
        raise ImportFailure("invalid_manifest", "chunk ids must be 0 .. chunkCount-1, each once")
    for chunk in manifest.chunks:
        if not 0 <= chunk.vector_count <= MAX_VECTORS_PER_CHUNK:
            raise ImportFailure(
                "invalid_manifest", f"chunk {chunk.chunk_id} claims {chunk.vector_count} vectors (0..10000)"
            )
    total = sum(c.vector_count for c in manifest.chunks)
    if total != manifest.vector_count:
        raise ImportFailure(
            "invalid_manifest", f"vectorCount is {manifest.vector_count} but the chunks add up to {total}"
        )


def check_chunk(chunk: Chunk, info: ChunkInfo, dimension: int) -> None:
    if chunk.chunk_id != info.chunk_id:
        raise ImportFailure(
            "invalid_manifest", f"chunk file {info.chunk_id} says it is chunk {chunk.chunk_id}"
        )
    if len(chunk.vectors) != info.vector_count:
        raise ImportFailure(
            "invalid_manifest",
            f"chunk {info.chunk_id} holds {len(chunk.vectors)} vectors; "
            f"the manifest says {info.vector_count}",
        )
    for i, stored in enumerate(chunk.vectors):
        problem = dimension_problem(len(stored.vector), dimension)
        if problem is not None:
            raise ImportFailure(
                "dimension_mismatch", f"chunk {info.chunk_id}, vector {i} ('{stored.id}') {problem}"
            )

"""One chunk file -> rows for PostgreSQL's binary COPY, ready to stream into an import's staging table.

This is the CPU-heavy part of an import (decrypting, decoding 10,000 x d floats, checking them), so
the runner calls it in worker processes: the server's event loop keeps answering other requests
while an import decodes. Everything here is a pure function of its arguments, safe to pickle.

Staging rows are (ord, id, embedding, metadata). `ord` orders the vectors as the database lists
them (chunk id, then position), so that when an id occurs twice the later one wins, as it would
have for the SDK that wrote them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from service.imports.formats import (
    MAX_VECTORS_PER_CHUNK,
    ChunkInfo,
    ImportFailure,
    decrypt,
    parse_chunk,
)

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
MAX_ID_LENGTH = 256  # as for vectors written through the API


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What the collection accepts."""

    dimension: int
    storage: str  # float32 | float16
    metric: str  # cosine | l2 | inner_product
    max_metadata_bytes: int


@dataclass(frozen=True, slots=True)
class StagedChunk:
    chunk_id: int
    count: int
    copy_data: bytes  # a whole binary COPY stream: header, rows, trailer


class _JsonVector(msgspec.Struct):
    id: str | int
    vector: list[float]
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class _JsonChunk(msgspec.Struct, rename="camel"):
    chunk_id: int
    vectors: list[_JsonVector]


_encode_json = msgspec.json.Encoder().encode


def _decode(raw: bytes, info: ChunkInfo) -> tuple[list[str | int], list[Any], list[bytes]]:
    """ids, vectors and metadata JSON; JSON chunks take a fast typed path (no dicts per vector)."""
    if raw.lstrip()[:1] == b"{":
        try:
            chunk = msgspec.json.decode(raw, type=_JsonChunk)
        except msgspec.ValidationError as exc:
            raise ImportFailure(
                "invalid_manifest", f"chunk {info.chunk_id} does not have the expected shape: {exc}"
            ) from None
        except msgspec.DecodeError as exc:
            raise ImportFailure(
                "invalid_manifest", f"chunk {info.chunk_id} is not valid JSON: {exc}"
            ) from None
        _check_counts(chunk.chunk_id, len(chunk.vectors), info)
        metadata = [bytes(v.metadata) for v in chunk.vectors]
        for i, text in enumerate(metadata):
            start = text.lstrip()[:1]
            if start == b"n" and text.strip() == b"null":
                metadata[i] = b"{}"
            elif start != b"{":
                raise ImportFailure(
                    "invalid_manifest", f"chunk {info.chunk_id}, vector {i}: metadata must be an object"
                )
        return [v.id for v in chunk.vectors], [v.vector for v in chunk.vectors], metadata
    parsed = parse_chunk(raw, None, info.chunk_id)  # CBOR (already decrypted)
    _check_counts(parsed.chunk_id, len(parsed.vectors), info)
    return (
        [v.id for v in parsed.vectors],
        [v.vector for v in parsed.vectors],
        [_encode_json(v.metadata or {}) for v in parsed.vectors],
    )


def _check_counts(chunk_id: int, count: int, info: ChunkInfo) -> None:
    if chunk_id != info.chunk_id:
        raise ImportFailure("invalid_manifest", f"chunk file {info.chunk_id} says it is chunk {chunk_id}")
    if count != info.vector_count:
        raise ImportFailure(
            "invalid_manifest",
            f"chunk {info.chunk_id} holds {count} vectors; the manifest says {info.vector_count}",
        )
    if count > MAX_VECTORS_PER_CHUNK:
        raise ImportFailure("invalid_manifest", f"chunk {info.chunk_id} holds more than 10,000 vectors")


def _matrix(vectors: list[Any], info: ChunkInfo, ids: list[str], spec: TargetSpec) -> Any:
    for i, values in enumerate(vectors):
        if len(values) != spec.dimension:
            raise ImportFailure(
                "dimension_mismatch",
                f"chunk {info.chunk_id}, vector {i} ('{ids[i]}') has {len(values)} values, "
                f"not {spec.dimension}",
            )
    with np.errstate(over="ignore"):
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), spec.dimension)
    limit = 65504 if spec.storage == "float16" else None
    bad = ~np.isfinite(matrix).all(axis=1)
    if limit is not None:
        bad |= (np.abs(matrix) > limit).any(axis=1)
    if spec.metric == "cosine":
        bad |= ~np.any(matrix != 0, axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ImportFailure(
            "invalid_manifest",
            f"chunk {info.chunk_id}, vector {i} ('{ids[i]}') cannot be stored: NaN, Infinity, a value "
            f"out of {spec.storage} range, or all zeros under cosine",
        )
    return matrix


def _ids(raw_ids: list[str | int], info: ChunkInfo) -> list[str]:
    ids = [str(v) for v in raw_ids]
    for i, text in enumerate(ids):
        if not 1 <= len(text) <= MAX_ID_LENGTH or "/" in text or any(ord(c) < 32 for c in text):
            raise ImportFailure(
                "invalid_manifest",
                f"chunk {info.chunk_id}, vector {i}: id must be 1-256 characters without '/' or control "
                "characters",
            )
    return ids


def stage_chunk(raw: bytes, key: bytes | None, info: ChunkInfo, spec: TargetSpec) -> StagedChunk:
    """Decrypt, decode, check and encode one chunk; raises ImportFailure with the documented code."""
    plain = decrypt(raw, key) if key is not None else raw
    raw_ids, vectors, metadata = _decode(plain, info)
    ids = _ids(raw_ids, info)
    matrix = _matrix(vectors, info, ids, spec)
    del vectors
    for i, text in enumerate(metadata):
        if len(text) > spec.max_metadata_bytes:
            raise ImportFailure(
                "invalid_manifest",
                f"chunk {info.chunk_id}, vector {i} ('{ids[i]}'): metadata is {len(text)} bytes of JSON; "
                f"at most {spec.max_metadata_bytes}",
            )
        if b"\\u0000" in text:
            raise ImportFailure(
                "invalid_manifest",
                f"chunk {info.chunk_id}, vector {i} ('{ids[i]}'): metadata contains a NUL character",
            )

    # Binary COPY rows: int16 field count, then each field as int32 length + bytes.
    # vector/halfvec: int16 dim, int16 unused (0), then the values big-endian. jsonb: version 1 + text.
    dtype = ">f2" if spec.storage == "float16" else ">f4"
    values = matrix.astype(dtype)
    vector_head = struct.pack(">ihh", 4 + values.itemsize * spec.dimension, spec.dimension, 0)
    base = info.chunk_id * MAX_VECTORS_PER_CHUNK
    pack_row = struct.Struct(">hiqi").pack
    parts = [COPY_HEADER]
    for i, vector_id in enumerate(ids):
        encoded_id = vector_id.encode()
        parts.append(pack_row(4, 8, base + i, len(encoded_id)))
        parts.append(encoded_id)
        parts.append(vector_head)
        parts.append(values[i].tobytes())
        parts.append(struct.pack(">ib", len(metadata[i]) + 1, 1))
        parts.append(metadata[i])
    parts.append(COPY_TRAILER)
    return StagedChunk(chunk_id=info.chunk_id, count=len(ids), copy_data=b"".join(parts))

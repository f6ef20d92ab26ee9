"""One chunk file -> rows for PostgreSQL's binary COPY, ready to stream into an import's staging table.

This is the CPU-heavy part of an import (decrypting, decoding 10,000 x d floats, checking them), so
the runner calls it in worker processes: the server's event loop keeps answering other requests
while an import decodes. Everything here is a pure function of its arguments, safe to pickle.

Staging rows are (ord, id, embedding, metadata). `ord` orders the vectors as the database lists
them (chunk id, then position), so that when an id occurs twice the later one wins, as it would
have for the SDK that wrote them.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
import msgspec
import numpy as np

from service.collections.json_vectors import json_arrays_matrix
from service.collections.validation import (
    VECTOR_ID_RULE,
    dimension_problem,
    first_unstorable,
    is_vector_id,
)
from service.imports.formats import (
    _TYPED_FLOAT_ARRAYS,
    MAX_VECTORS_PER_CHUNK,
    ChunkInfo,
    ImportFailure,
    decrypt,
    decrypt_file,
    looks_like_json,
)

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


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
    # 8 bytes of BLAKE2b per id: the runner proves an import's ids distinct with these (distinct
    # digests, distinct ids) and then merges without deduplicating (see store.merge_staged).
    id_digests: bytes = b""


class _JsonVector(msgspec.Struct):
    id: str | int
    # Kept as raw JSON text: the values are decoded a group at a time straight into the chunk's
    # float32 matrix (see _json_matrix), never as one Python float object per value for the chunk.
    vector: msgspec.Raw
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class _JsonChunk(msgspec.Struct, rename="camel"):
    chunk_id: int
    vectors: list[_JsonVector]


_encode_json = msgspec.json.Encoder().encode
_decode_rows = msgspec.json.Decoder(list[list[float]]).decode
_decode_row = msgspec.json.Decoder(list[float]).decode
# Vectors decoded together: their Python floats (32 bytes each) are all that exists beside the
# matrix, about 3 MB at 384 dimensions, instead of ~125 MB for a whole chunk's lists.
GROUP_VECTORS = 256


def _shape_error(info: ChunkInfo, i: int, exc: Exception) -> ImportFailure:
    where = f"`$.vectors[{i}].vector"
    detail = str(exc).replace("`$", where) if "`$" in str(exc) else f"{exc} - at {where}`"
    return ImportFailure(
        "invalid_manifest", f"chunk {info.chunk_id} does not have the expected shape: {detail}"
    )


def _dimension_error(
    info: ChunkInfo, i: int, vector_id: str | int, count: int, dimension: int
) -> ImportFailure:
    return ImportFailure(
        "dimension_mismatch",
        f"chunk {info.chunk_id}, vector {i} ('{vector_id}') {dimension_problem(count, dimension)}",
    )


def _json_matrix(vectors: list[_JsonVector], info: ChunkInfo, dimension: int) -> np.ndarray[Any, Any]:
    """The vectors' raw JSON arrays -> one (n, dimension) float32 matrix.

    simdjson reads them when they are all plainly `dimension` numbers (json_arrays_matrix);
    otherwise msgspec decodes them, a group at a time, and names the vector at fault."""
    matrix = json_arrays_matrix([v.vector for v in vectors], dimension)
    if matrix is not None:
        return matrix
    matrix = np.empty((len(vectors), dimension), dtype=np.float32)
    for start in range(0, len(vectors), GROUP_VECTORS):
        group = vectors[start : start + GROUP_VECTORS]
        try:
            rows = _decode_rows(b"[" + b",".join(v.vector for v in group) + b"]")
        except msgspec.ValidationError:
            for i, v in enumerate(group, start):  # which vector, for the message
                try:
                    _decode_row(v.vector)
                except msgspec.ValidationError as exc:
                    raise _shape_error(info, i, exc) from None
            raise
        for i, values in enumerate(rows, start):
            if len(values) != dimension:
                raise _dimension_error(info, i, vectors[i].id, len(values), dimension)
        with np.errstate(over="ignore"):
            matrix[start : start + len(rows)] = rows
    return matrix


def _cbor_tag(*args: Any) -> Any:
    """RFC 8746 typed float arrays (what JavaScript encoders write for Float32Array) stay arrays."""
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    dtype = _TYPED_FLOAT_ARRAYS.get(tag.tag)
    if dtype is not None and isinstance(tag.value, bytes):
        return np.frombuffer(tag.value, dtype=dtype)
    return tag


def _cbor_matrix(vectors: list[Any], info: ChunkInfo, dimension: int) -> np.ndarray[Any, Any]:
    matrix = np.empty((len(vectors), dimension), dtype=np.float32)
    for i, item in enumerate(vectors):
        values = item.get("vector")
        if isinstance(values, np.ndarray):
            if values.shape != (dimension,):
                raise _dimension_error(info, i, item.get("id"), values.size, dimension)
        elif isinstance(values, list):
            if len(values) != dimension:
                raise _dimension_error(info, i, item.get("id"), len(values), dimension)
            if not all(type(v) is float or type(v) is int for v in values):
                raise _shape_error(info, i, ValueError("Expected `array` of numbers"))
        else:
            raise _shape_error(info, i, ValueError(f"Expected `array`, got `{type(values).__name__}`"))
        try:
            with np.errstate(over="ignore"):
                matrix[i] = values
        except (OverflowError, ValueError, TypeError) as exc:
            raise _shape_error(info, i, exc) from None
    return matrix


class _CborVector(msgspec.Struct):
    id: str | int
    metadata: dict[str, Any] | None = None


class _CborChunk(msgspec.Struct, rename="camel"):
    chunk_id: int
    vectors: list[_CborVector]


def _decode(
    raw: bytes | memoryview, info: ChunkInfo, dimension: int
) -> tuple[list[str | int], np.ndarray[Any, Any], list[bytes]]:
    """ids, the float32 matrix and metadata JSON; no Python list per vector in either encoding."""
    if looks_like_json(raw):
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
        matrix = _json_matrix(chunk.vectors, info, dimension)
        return [v.id for v in chunk.vectors], matrix, metadata
    # CBOR (already decrypted): floats are binary there, so cbor2 yields them without parsing text,
    # and typed arrays come out as numpy views of the file's bytes.
    try:
        document = cbor2.loads(raw, tag_hook=_cbor_tag)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise ImportFailure(
            "invalid_manifest", f"chunk {info.chunk_id} is neither JSON nor valid CBOR: {exc}"
        ) from None
    try:
        parsed = msgspec.convert(document, _CborChunk, strict=False)
    except msgspec.ValidationError as exc:
        raise ImportFailure(
            "invalid_manifest", f"chunk {info.chunk_id} does not have the expected shape: {exc}"
        ) from None
    _check_counts(parsed.chunk_id, len(parsed.vectors), info)
    matrix = _cbor_matrix(document["vectors"], info, dimension)
    return (
        [v.id for v in parsed.vectors],
        matrix,
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


def _check_values(matrix: np.ndarray[Any, Any], info: ChunkInfo, ids: list[str], spec: TargetSpec) -> None:
    problem = first_unstorable(matrix, metric=spec.metric, storage=spec.storage)
    if problem is not None:
        i, message = problem
        raise ImportFailure(
            "invalid_manifest",
            f"chunk {info.chunk_id}, vector {i} ('{ids[i]}') cannot be stored: it {message}",
        )


def _ids(raw_ids: list[str | int], info: ChunkInfo) -> list[str]:
    ids = [str(v) for v in raw_ids]
    for i, text in enumerate(ids):
        if not is_vector_id(text):
            raise ImportFailure(
                "invalid_manifest", f"chunk {info.chunk_id}, vector {i}: id must be {VECTOR_ID_RULE}"
            )
    return ids


def stage_chunk(raw: bytes, key: bytes | None, info: ChunkInfo, spec: TargetSpec) -> StagedChunk:
    """Decrypt, decode, check and encode one chunk already in memory (imports run
    stage_chunk_file); raises ImportFailure with the documented code."""
    box: list[bytes | memoryview] = [decrypt(raw, key) if key is not None else raw]
    return _stage_plain(box, info, spec)


def stage_chunk_file(path: str, key: bytes | None, info: ChunkInfo, spec: TargetSpec) -> StagedChunk:
    """stage_chunk for a chunk the server spooled to a file (how imports run): the worker reads
    the file itself, decrypting it a piece at a time, so the chunk crosses no pipe between
    processes and only its plaintext is ever whole in memory."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        box: list[bytes | memoryview] = [decrypt_file(file, size, key) if key is not None else file.read()]
    return _stage_plain(box, info, spec)


def _stage_plain(box: list[bytes | memoryview], info: ChunkInfo, spec: TargetSpec) -> StagedChunk:
    """The decrypted chunk, in a list this function empties: no caller keeps it alive meanwhile."""
    plain = box.pop()
    if isinstance(plain, memoryview) and not looks_like_json(plain):
        # cbor2 copies anything but bytes into a BytesIO it keeps for the whole parse; copied
        # here instead, the decrypted buffer is freed at once and the copy is the only one.
        plain = plain.tobytes()
    raw_ids, matrix, metadata = _decode(plain, info, spec.dimension)
    del plain  # the chunk's text is the largest thing here: gone before the COPY rows are made
    ids = _ids(raw_ids, info)
    _check_values(matrix, info, ids, spec)
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
    digests = b"".join(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in ids)
    return StagedChunk(chunk_id=info.chunk_id, count=len(ids), copy_data=b"".join(parts), id_digests=digests)

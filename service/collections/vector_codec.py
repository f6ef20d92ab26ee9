"""Vectors of an upsert as one float32 matrix: JSON number lists, or base64 of little-endian float32.

`"vector": [0.1, ...]` costs a Python float per value (msgspec builds the list, numpy copies it);
`"vector_b64": "<base64>"` is the same vector as the base64 (RFC 4648, with padding) of its values
as little-endian IEEE 754 float32, dimension x 4 bytes, which goes from the request body into the
matrix through one base64 decode and numpy.frombuffer, with no Python number in between. An item
carries exactly one of them; one batch may mix both. The values then pass the same checks as JSON
ones (finite, not all zeros under cosine, the float16 range, a length whose scores fit float32).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from service.collections.validation import dimension_problem
from service.errors import InvalidRequest

LITTLE_ENDIAN_FLOAT32 = np.dtype("<f4")

B64_DESCRIPTION = (
    "The vector as base64 (RFC 4648, padded) of its values as little-endian float32, dimension x 4 "
    "bytes: instead of `vector`, much cheaper to send and to decode for large batches. In Python: "
    "base64.b64encode(numpy.asarray(v, dtype='<f4').tobytes()).decode()."
)


class EncodedItem(Protocol):
    @property
    def vector(self) -> list[float] | None: ...

    @property
    def vector_b64(self) -> str | None: ...


def _problem(field: str, message: str) -> InvalidRequest:
    return InvalidRequest.field(field, message, f"{field}: {message}")


def decode_b64(text: str, dimension: int, field: str) -> bytes:
    """One vector's bytes (dimension x 4 of them), or a 400 naming the field."""
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _problem(field, "is not valid base64 (RFC 4648 alphabet, with padding)") from None
    if len(raw) != dimension * 4:
        values = f"{len(raw) / 4:g} float32 values" if len(raw) % 4 else f"{len(raw) // 4} float32 values"
        raise _problem(
            field,
            f"decodes to {len(raw)} bytes ({values}); the collection's dimension is {dimension}, "
            f"so {dimension * 4} bytes of little-endian float32",
        )
    return raw


def check_forms(items: Sequence[EncodedItem], field: str = "vectors") -> bool:
    """Each item carries exactly one of vector and vector_b64 (else 400); True if any is base64."""
    encoded = False
    for i, item in enumerate(items):
        if item.vector_b64 is None:
            if item.vector is None:
                raise _problem(f"{field}[{i}].vector", "is missing: give `vector` (numbers) or `vector_b64`")
        elif item.vector is not None:
            raise _problem(f"{field}[{i}].vector_b64", "is given with `vector`: give one of the two")
        else:
            encoded = True
    return encoded


def items_matrix(items: Sequence[EncodedItem], dimension: int, field: str = "vectors") -> Any:
    """The items' vectors: the JSON lists as they are when no item is base64 (the caller checks them
    as before), else one (n, dimension) float32 matrix. Each item must carry exactly one form."""
    if not check_forms(items, field):
        return [item.vector for item in items]
    chunks: list[bytes] = []
    lists: list[tuple[int, list[float]]] = []
    for i, item in enumerate(items):
        if item.vector_b64 is not None:
            chunks.append(decode_b64(item.vector_b64, dimension, f"{field}[{i}].vector_b64"))
        else:
            assert item.vector is not None  # check_forms: one of the two
            problem = dimension_problem(len(item.vector), dimension)
            if problem is not None:
                raise _problem(f"{field}[{i}].vector", problem)
            chunks.append(b"\0" * (dimension * 4))  # its place, filled below
            lists.append((i, item.vector))
    matrix = np.frombuffer(b"".join(chunks), dtype=LITTLE_ENDIAN_FLOAT32).reshape(len(items), dimension)
    if lists or matrix.dtype != np.float32:  # a copy: writable, in this machine's byte order
        matrix = matrix.astype(np.float32)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused by the checks
            for i, values in lists:
                matrix[i] = np.asarray(values, dtype=np.float32)
    return matrix

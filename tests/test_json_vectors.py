"""service.collections.json_vectors.json_arrays_matrix: vectors' JSON arrays parsed by simdjson.

It must give exactly the float32 values msgspec (the reference decoder) gives, and step aside
(None) for anything that is not plainly `dimension` numbers, so that the reference decoder names
the problem. Both halves are checked here against msgspec itself, not against figures written down.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from service.collections.json_vectors import JSON_GROUP_VECTORS, json_arrays_matrix

_reference_rows = msgspec.json.Decoder(list[list[float]]).decode


def reference(arrays: list[bytes]) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(_reference_rows(b"[" + b",".join(arrays) + b"]"), dtype=np.float32)


def test_random_vectors_as_a_javascript_sdk_writes_them_match_msgspec_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    # More vectors than one group, and a last group that is not full.
    values = rng.standard_normal((JSON_GROUP_VECTORS * 2 + 17, 24)).astype(np.float32)
    # JSON.stringify(Array.from(Float32Array)) writes each float32 widened to a double, shortest form.
    arrays = [json.dumps(row).encode() for row in values.astype(np.float64).tolist()]
    matrix = json_arrays_matrix(arrays, 24)
    assert matrix is not None and matrix.dtype == np.float32
    assert np.array_equal(matrix, values)
    assert np.array_equal(matrix, reference(arrays))


@pytest.mark.parametrize(
    "text",
    [
        b"[0, 1, -1, 2]",  # integers
        b"[1e-400, -0.0, 5e-324, 1]",  # underflow to zero, a negative zero, the smallest subnormal
        b"[1e39, -1e39, 3.4028235e38, 1]",  # beyond float32 (inf, refused later) and its largest
        b"[18446744073709551615, 9223372036854775807, 1E+2, 0.1]",  # the largest 64-bit integers
        b"[ 0.30000000000000004 ,\n\t1.0000000000000002e-7, 123456789.123456789, 1 ]",  # whitespace
    ],
)
def test_edge_numbers_read_as_msgspec_reads_them(text: bytes) -> None:
    matrix = json_arrays_matrix([text, b"[1,2,3,4]"], 4)
    assert matrix is not None
    expected = reference([text, b"[1,2,3,4]"])
    assert np.array_equal(matrix, expected, equal_nan=True)
    assert np.array_equal(np.signbit(matrix), np.signbit(expected))  # -0.0 stays negative


@pytest.mark.parametrize(
    "text",
    [
        b"[1, 2, 3]",  # too short
        b"[1, 2, 3, 4, 5]",  # too long
        b"[1, 2, 3, [4]]",  # nested: simdjson alone would flatten it into four numbers
        b"[1, 2, [3, 4]]",
        b'[1, 2, 3, "4"]',
        b"[1, 2, 3, true]",
        b"[1, 2, 3, null]",
        b"[1, 2, 3, {}]",
        b"[1, 2, 3, 1e400]",  # beyond float64: simdjson refuses it, msgspec says what it makes of it
        b"[1, 2, 3, -9223372036854775809]",  # beyond 64-bit integers
        b'"[1, 2, 3, 4]"',  # a string, not an array
        b"null",
        b"{}",
    ],
)
def test_anything_but_plain_numbers_is_left_to_the_reference_decoder(text: bytes) -> None:
    assert json_arrays_matrix([b"[1,2,3,4]", text], 4) is None


def test_an_item_in_a_later_group_decides_for_the_whole_batch() -> None:
    arrays = [b"[1,2]"] * (JSON_GROUP_VECTORS + 3)
    arrays[JSON_GROUP_VECTORS + 1] = b"[1,[2]]"
    assert json_arrays_matrix(arrays, 2) is None
    arrays[JSON_GROUP_VECTORS + 1] = b"[1,2]"
    matrix = json_arrays_matrix(arrays, 2)
    assert matrix is not None and matrix.shape == (JSON_GROUP_VECTORS + 3, 2)

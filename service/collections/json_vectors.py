"""Vectors given as JSON arrays, parsed by simdjson straight into one float32 matrix.

Kept free of the web stack's imports: the import decode workers (separate processes) load this
module, and every module they import costs each of them memory for the whole server's life.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import simdjson

# Vectors parsed together by json_arrays_matrix: small enough that simdjson's working copy of them
# (its tape, about 16 bytes per number) stays near 1.5 MB at 384 dimensions whatever the batch.
JSON_GROUP_VECTORS = 256


def json_arrays_matrix(arrays: Sequence[bytes], dimension: int) -> np.ndarray[Any, Any] | None:
    """Vectors given as the raw text of their JSON arrays (msgspec.Raw keeps them so) -> one
    (n, dimension) float32 matrix, or None when any of them is not plainly `dimension` numbers.

    simdjson parses the numbers (correctly rounded to float64, as msgspec does) straight into a
    buffer, with no Python float per value: about half of msgspec's cost per number, measured in
    docs/benchmarks.md, and a third of it counting msgspec's lists into numpy. None is not an
    answer: the caller then decodes the vectors the reference way (msgspec), which accepts the
    same vectors and names the first problem of any other, so what is refused, and how, does not
    depend on this path. simdjson's flattening would read [1, [2]] as two numbers; the count of
    brackets excludes every nested array first."""
    matrix = np.empty((len(arrays), dimension), dtype=np.float32)
    for start in range(0, len(arrays), JSON_GROUP_VECTORS):
        group = arrays[start : start + JSON_GROUP_VECTORS]
        text = b"[" + b",".join(group) + b"]"
        if text.count(b"[") != len(group) + 1:
            return None  # a nested array, or an item that is not an array (a string may hold "[")
        try:
            document = simdjson.Parser().parse(text)
            if not isinstance(document, simdjson.Array) or not all(
                isinstance(row, simdjson.Array) and len(row) == dimension for row in document
            ):
                return None
            values = np.frombuffer(document.as_buffer(of_type="d"), dtype=np.float64)
        except (ValueError, TypeError, RuntimeError):  # not numbers, beyond float64, malformed
            return None
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by the vectors' checks
            matrix[start : start + len(group)] = values.reshape(len(group), dimension)
    return matrix

"""What a vector must be for a collection to store and score it, and what its id may be: the one
copy of these rules, used by upserts, documents, search queries and S5 imports alike.

Pure functions of numpy arrays and strings (no I/O, nothing of the service imported): the import
pipeline runs them in worker processes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

VECTOR_ID_MAX_LENGTH = 256
VECTOR_ID_PATTERN = r"^[^/\x00-\x1f]+$"
VECTOR_ID_RULE = "1 to 256 characters, without '/' or control characters"
_VECTOR_ID = re.compile(VECTOR_ID_PATTERN)

# A text collection keeps ids with this character for its documents' chunks (<document id>#<index>).
CHUNK_ID_SEPARATOR = "#"

FLOAT16_MAX = 65504.0
# Squared lengths pgvector can add up in float32 without losing them: above FLT_MIN (so no
# underflow to zero), and at most FLT_MAX / 4 (so |a - b|^2 <= 2|a|^2 + 2|b|^2 stays finite).
_MIN_SQUARED_LENGTH = float(np.finfo(np.float32).tiny)
_MAX_SQUARED_LENGTH = float(np.finfo(np.float32).max) / 4


def is_vector_id(text: str) -> bool:
    return len(text) <= VECTOR_ID_MAX_LENGTH and _VECTOR_ID.fullmatch(text) is not None


def dimension_problem(count: int, dimension: int) -> str | None:
    """Why a vector of `count` values does not fit a collection of `dimension` (None: it does)."""
    if count == dimension:
        return None
    return f"has {count} values, not {dimension} (the collection's dimension)"


def first_unstorable(matrix: np.ndarray[Any, Any], *, metric: str, storage: str) -> tuple[int, str] | None:
    """The first row of a float32 matrix (one vector per row, of the collection's dimension) that
    the collection cannot store and score, and why; None if every row is fine.

    metric and storage as the collection states them (cosine | l2 | inner_product, float32 |
    float16). Rules are checked one after the other over all rows, so the problem reported is
    the first row breaking the first rule that any row breaks."""
    if _all_storable(matrix, cosine=metric == "cosine", half=storage == "float16"):
        return None
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        return _first(~finite), "contains NaN or Infinity (or a value too large for float32)"
    cosine = metric == "cosine"
    if cosine:
        zero = ~np.any(matrix != 0, axis=1)
        if zero.any():
            return _first(zero), "is all zeros: it has no cosine similarity"
    half = storage == "float16"
    if half:
        too_large = (np.abs(matrix) > FLOAT16_MAX).any(axis=1)
        if too_large.any():
            return _first(too_large), "has a value too large for float16 storage (|x| > 65504)"
    # pgvector sums squares and products in float32 over the stored values (float16 ones are
    # rounded first): a length that underflows to zero gives cosine NaN, one that overflows
    # gives inf or NaN for every metric. Scores are numbers, so such vectors are refused.
    stored = (matrix.astype(np.float16) if half else matrix).astype(np.float64)
    squares = np.einsum("ij,ij->i", stored, stored)
    too_long = squares > _MAX_SQUARED_LENGTH
    if too_long.any():
        return _first(too_long), (
            "is too long: its scores would overflow float32; scale it down (length at most 9.2e18)"
        )
    if cosine:
        tiny = squares < _MIN_SQUARED_LENGTH
        if tiny.any():
            where = " in float16 storage" if half else ""
            return _first(tiny), (
                f"is too close to zero{where} (its squared length underflows float32): "
                "it has no cosine similarity; scale it up"
            )
    return None


def _all_storable(matrix: np.ndarray[Any, Any], *, cosine: bool, half: bool) -> bool:
    """Every rule at once, in one pass, for the common case where all rows pass (a search's query
    vector, a batch of good vectors): the squared lengths in float64 of the stored values are NaN
    or inf for a row with NaN or inf (float16 overflow included), 0 for an all-zero row, and
    out of range for rows too long or too short. Any doubt: the rules one by one find the row."""
    if half and not np.abs(matrix).max(initial=0.0) <= FLOAT16_MAX:  # 65504 < |x| < 65520 rounds down
        return False
    stored = (matrix.astype(np.float16) if half else matrix).astype(np.float64)
    squares = np.einsum("ij,ij->i", stored, stored)
    low = _MIN_SQUARED_LENGTH if cosine else 0.0
    # NaN fails both comparisons; inf fails the second.
    return bool(((squares >= low) & (squares <= _MAX_SQUARED_LENGTH)).all())


def _first(mask: np.ndarray[Any, Any]) -> int:
    return int(np.flatnonzero(mask)[0])

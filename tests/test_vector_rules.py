"""The vector rules of service.collections.validation at their edges: the one-pass check for the
common case (every row fine) must let through exactly what the rules one by one let through."""

from __future__ import annotations

import numpy as np
import pytest

from service.collections.validation import FLOAT16_MAX, first_unstorable

F32_MAX = float(np.finfo(np.float32).max)


def rows(*values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.mark.parametrize(
    ("matrix", "metric", "storage", "expected"),
    [
        (rows([1, 2], [3, 4]), "cosine", "float32", None),
        (rows([0, 0], [1, 0]), "l2", "float32", None),  # zero vectors have an l2 distance
        (rows([1, 0], [0, 0]), "cosine", "float32", (1, "is all zeros")),
        (rows([1, 0], [np.nan, 0]), "l2", "float32", (1, "contains NaN")),
        (rows([np.inf, 0], [1, 0]), "inner_product", "float32", (0, "contains NaN")),
        (rows([1, 0], [FLOAT16_MAX, 0]), "l2", "float16", None),
        # Rounds to 65504 in float16, yet beyond the rule's bound: refused like any larger value.
        (rows([1, 0], [65510, 0]), "l2", "float16", (1, "too large for float16")),
        (rows([1, 0], [1e6, 0]), "l2", "float16", (1, "too large for float16")),
        (rows([1, 0], [F32_MAX, 0]), "l2", "float32", (1, "is too long")),
        (rows([1e-30, 0], [1, 0]), "cosine", "float32", (0, "too close to zero")),
        (rows([1e-30, 0], [1, 0]), "l2", "float32", None),
        (rows([1e-8, 0], [1, 0]), "cosine", "float16", (0, "too close to zero in float16")),
        # The first rule any row breaks is reported, at its first row.
        (rows([0, 0], [np.nan, 1], [F32_MAX, 0]), "cosine", "float32", (1, "contains NaN")),
    ],
)
def test_rules_at_their_edges(
    matrix: np.ndarray, metric: str, storage: str, expected: tuple[int, str] | None
) -> None:
    with np.errstate(over="ignore"):
        found = first_unstorable(matrix, metric=metric, storage=storage)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found[0] == expected[0] and expected[1] in found[1], found

"""Quantiles with and without groups equal a plain Python computation, value for value; text is read
as numbers by Arrow's casts exactly as the language's regular expressions read it.

``quantile(q, f)`` (and ``median``) interpolates linearly between the closest ranks, as numpy does
by default, over the field's numbers: nulls, text that is not a number and NaN are left out, and a
group without a number answers null. The grouped path (``pipes._list_quantiles``) ranks each group
with ``np.partition``; these checks pin it to sorting a Python list, over random groups holding
whole numbers (some past 2^53, where float64 would round), fractions, NaN, nulls and junk text.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pyarrow as pa
import pytest

from helios.query.filters import _cast_numbers, by_expressions, numeric
from helios.query.parser import parse
from helios.query.pipes import apply


def _reference(values: list[Any], q: float) -> float | None:
    present = sorted(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not present:
        return None
    position = q * (len(present) - 1)
    low = math.floor(position)
    high = min(low + 1, len(present) - 1)
    return float(present[low] + (present[high] - present[low]) * (position - low))


def _rows(rng: random.Random) -> tuple[list[str | None], list[str | None]]:
    n = rng.choice([0, 1, 2, 5, 40, 400])
    huge = rng.random() < 0.3  # whole numbers past 2^53: exact in Python, rounded in float64
    fractional = rng.random() < 0.4
    groups = [rng.choice(["a", "b", "c", None, "d"]) for _ in range(n)]

    def value() -> str | None:
        roll = rng.random()
        if roll < 0.08:
            return None
        if roll < 0.12:
            return "junk"
        if fractional and roll < 0.16:
            return "NaN"
        if huge:
            return str(rng.randint(-(1 << 62), 1 << 62))
        if fractional:
            return f"{rng.uniform(-1e6, 1e6):.6f}"
        return str(rng.randint(-50, 50))

    return groups, [value() for _ in range(n)]


@pytest.mark.parametrize("seed", range(60))
def test_quantiles_equal_a_python_sort(seed: int) -> None:
    rng = random.Random(seed)
    groups, texts = _rows(rng)
    table = pa.table({"g": pa.array(groups, pa.string()), "v": pa.array(texts, pa.string())})
    numbers = numeric(table.column("v")).to_pylist()  # the field's text read as the language reads it
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0, rng.random()):
        grouped = apply(parse(f"* | stats quantile({q!r}, v) as x by (g)").pipes[0], table)
        expected = {g: _reference([v for gg, v in zip(groups, numbers) if gg == g], q) for g in set(groups)}
        got = dict(zip(grouped.column("g").to_pylist(), grouped.column("x").to_pylist()))
        assert got.keys() == expected.keys()
        for key, want in expected.items():
            assert (got[key] is None and want is None) or got[key] == want, (q, key, got[key], want)
        whole = apply(parse(f"* | stats quantile({q!r}, v) as x").pipes[0], table).column("x")[0].as_py()
        want = _reference(numbers, q)
        assert (whole is None and want is None) or whole == want, (q, whole, want)


def test_median_by_group_and_a_group_without_numbers() -> None:
    table = pa.table({"g": ["x", "x", "x", "y", "y", "z"], "v": ["1", "5", "3", "10", None, "junk"]})
    out = apply(parse("* | stats median(v) as m by (g)").pipes[0], table)
    assert dict(zip(out.column("g").to_pylist(), out.column("m").to_pylist())) == {"x": 3.0, "y": 10.0, "z": None}


_PIECES = ["0", "7", "12", "5", "00", "-", "+", ".", "e", "E", "e-", " ", "\t", "x", "0x1F", "nan", "NaN",
           "inf", "-inf", "Infinity", "1e400", "١٢", "²", "junk", "", "1234567890", "12345678901234567890"]


def _text(rng: random.Random, style: str) -> str | None:
    if rng.random() < 0.05:
        return None
    if style == "whole":
        return str(rng.randint(0, 10 ** rng.randint(1, 19)))
    if style == "signed":
        return f"{rng.choice('+-')}{rng.randint(0, 10 ** 6)}"
    if style == "fraction":
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}"
    if style == "exponent":
        return f"{rng.uniform(-9, 9):.3f}e{rng.randint(-30, 30)}"
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 4)))


def test_numbers_read_by_casts_equal_the_expressions() -> None:
    rng = random.Random(7)
    decided = 0
    for _ in range(600):
        styles = rng.sample(["whole", "signed", "fraction", "exponent", "mixed"], rng.randint(1, 2))
        column = pa.array([_text(rng, rng.choice(styles)) for _ in range(rng.randint(0, 30))], pa.string())
        fast, slow = numeric(column), by_expressions(column)
        decided += _cast_numbers(column) is not None
        assert fast.type == slow.type, (column.to_pylist(), fast.type, slow.type)
        same = [a == b or (a != a and b != b) for a, b in zip(fast.to_pylist(), slow.to_pylist())]
        assert all(same), (column.to_pylist(), fast.to_pylist(), slow.to_pylist())
    assert decided > 150  # the casts decided a good share of the columns, not only the expressions

"""Sums of whole numbers that may pass int64 (``pipes``: whole tables, parts, and parts joined).

Arrow's int64 sum wraps past 2^63. Numbers whose largest magnitude times
their count reaches ``EXACT_SUM`` are summed in int64 and in float64 both (a
``w<j>`` beside the ``<x><j>`` column). The int64 sum is exact modulo 2^64,
so however rows fall into parts, the joined int64 sums are the true sums
while those fit int64; the float64 sums tell whether they do, with room for
their rounding: a group's int64 sum is the answer while every group's float64
sum is within 2^62, else every group's float64 sum is.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["EXACT_SUM", "add_wide", "exact_or_wide", "floats_where_mixed", "wide", "wide_part_sums",
           "with_wide_sums"]

EXACT_SUM = 1 << 62  # a sum of whole numbers this large (or past int64) is given as float64


def wide(values: Any) -> Any | None:
    """Whole numbers whose sum might pass int64 (their largest magnitude times their count does) as
    float64, else None."""
    if not pa.types.is_integer(values.type) or values.null_count == len(values):
        return None
    bounds = pc.min_max(values)
    largest = max(abs(bounds["min"].as_py()), abs(bounds["max"].as_py()))
    count = len(values) - values.null_count
    return pc.cast(values, pa.float64(), safe=False) if largest * count >= EXACT_SUM else None


def add_wide(work: dict[str, Any], specs: list[Any], name: str, values: Any) -> None:
    """Sum ``values`` (column ``name``, ``<x><j>``) as float64 too, as ``w<j>``, if they may need it."""
    floats = wide(values)
    if floats is not None:
        work[f"w{name[1:]}"] = floats
        specs.append((f"w{name[1:]}", "sum"))


def exact_or_wide(out: pa.Table, source: str) -> Any:
    """The group sums ``source`` (``<x><j>_sum``): int64 while every group's float64 sum
    (``w<j>_sum``, if there is one) is within ``EXACT_SUM``, else the float64 sums."""
    name = f"w{source[1:]}"
    if name not in out.column_names:
        return out.column(source)
    floats = out.column(name)
    if len(floats) and (pc.max(pc.abs(floats)).as_py() or 0) >= EXACT_SUM:
        return floats
    return out.column(source)


def wide_part_sums(table: pa.Table, j: int, specs: list[Any]) -> pa.Table:
    """The parts' sums ``s<j>`` summed in float64 too (``w<j>``) when a part did so or their total
    might pass int64: a part's float64 sums where it has them, its sums as float64 elsewhere."""
    name = f"w{j}"
    if name not in table.column_names and wide(table.column(f"s{j}")) is None:
        return table
    floats = _floats(table, f"s{j}")
    if name in table.column_names:
        table = table.drop_columns([name])
    specs.append((name, "sum"))
    return table.append_column(name, floats)


def _floats(table: pa.Table, name: str) -> Any:
    """Column ``name`` (``<x><j>``) as float64, rounded past 2^53; where the table has float64 sums
    of it (``w<j>``), those (a sum that may have wrapped)."""
    floats = pc.cast(table.column(name), pa.float64(), safe=False)
    wide_name = f"w{name[1:]}"
    return pc.coalesce(table.column(wide_name), floats) if wide_name in table.column_names else floats


def with_wide_sums(out: pa.Table) -> pa.Table:
    """The joined sums ``s<j>_sum`` as ``exact_or_wide`` gives them, without the float64 copies."""
    for name in [name for name in out.column_names if name.startswith("w")]:
        source = f"s{name[1:]}"
        out = out.set_column(out.schema.get_field_index(source), source, exact_or_wide(out, source))
        out = out.drop_columns([name])
    return out


def floats_where_mixed(parts: list[pa.Table], name: str) -> list[pa.Table]:
    """The parts with column ``name`` as float64 in every part if it is float64 in one and whole
    numbers in another (else as they are): rounded past 2^53, and a part's sums that may have
    wrapped taken from its float64 sums (``w<j>``)."""
    kinds = [part.schema.field(name).type for part in parts]
    floating, whole = any(map(pa.types.is_floating, kinds)), any(map(pa.types.is_integer, kinds))
    if not (floating and whole):
        return parts
    out = []
    for part, kind in zip(parts, kinds):
        if pa.types.is_integer(kind):
            part = part.set_column(part.schema.get_field_index(name), name, _floats(part, name))
        out.append(part)
    return out

"""The memtable: acknowledged rows not yet in a block, grouped by partition."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil

__all__ = ["Memtable", "PartKey", "drop_null_columns", "split_by_day"]

PartKey = tuple[str, int]  # (dataset, UTC day number)


@dataclass
class MemPart:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    min_time: int | None = None
    max_time: int | None = None


def split_by_day(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """Split a normalised table into ``(day, rows)`` pieces."""
    if table.num_rows == 0:
        return []
    ns = table.column("_time").cast(pa.int64())
    days = timeutil.floor_div(ns, timeutil.DAY_NS)
    distinct = pc.unique(days).to_pylist()
    if len(distinct) == 1:
        return [(distinct[0], table)]
    return [(day, table.filter(pc.equal(days, day))) for day in sorted(distinct)]


def drop_null_columns(table: pa.Table) -> pa.Table:
    """Without the fields no row of ``table`` has (a day's slice of a request often lacks some):
    an absent field reads as null everywhere, and an all-null column costs 4 bytes a row."""
    empty = [name for name, column in zip(table.column_names, table.columns)
             if name not in ("_time", "_msg") and column.null_count == len(column)]
    return table.drop_columns(empty) if empty else table


class Memtable:
    def __init__(self) -> None:
        self.parts: dict[PartKey, MemPart] = {}
        self.rows = 0
        self.nbytes = 0

    def add(self, dataset: str, table: pa.Table) -> None:
        for day, piece in split_by_day(table):
            self.add_piece((dataset, day), piece)

    def add_piece(self, key: PartKey, piece: pa.Table) -> None:
        piece = drop_null_columns(piece)
        part = self.parts.setdefault(key, MemPart())
        bounds = pc.min_max(piece.column("_time").cast(pa.int64()))
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        part.tables.append(piece)
        part.rows += piece.num_rows
        part.min_time = low if part.min_time is None else min(part.min_time, low)
        part.max_time = high if part.max_time is None else max(part.max_time, high)
        self.rows += piece.num_rows
        self.nbytes += piece.nbytes

    def __bool__(self) -> bool:
        return self.rows > 0

"""The memtable: acknowledged rows not yet in a block, grouped by partition.

Adding rows is cheap and done on the event loop (the WAL committer applies
every commit); the Arrow work it needs (split by day, drop all-null columns,
time bounds) is done first by ``slices``, which an ingest runs in a worker
thread before its WAL append.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil

__all__ = ["Memtable", "PartKey", "Slice", "drop_null_columns", "slice_of", "slices", "split_by_day"]

PartKey = tuple[str, int]  # (dataset, UTC day number)


@dataclass
class MemPart:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    min_time: int | None = None
    max_time: int | None = None


def split_by_day(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """Split a normalised table into ``(day, rows)`` pieces."""
    if table.num_rows == 0:
        return []
    ns = table.column("_time").cast(pa.int64())
    bounds = pc.min_max(ns)
    first = bounds["min"].as_py() // timeutil.DAY_NS
    if bounds["max"].as_py() // timeutil.DAY_NS == first:  # usual: one day, no per-row work
        return [(first, table)]
    days = timeutil.floor_div(ns, timeutil.DAY_NS)
    return [(day, table.filter(pc.equal(days, day))) for day in sorted(pc.unique(days).to_pylist())]


def drop_null_columns(table: pa.Table) -> pa.Table:
    """Without the fields no row of ``table`` has (a day's slice of a request often lacks some):
    an absent field reads as null everywhere, and an all-null column costs 4 bytes a row."""
    empty = [name for name, column in zip(table.column_names, table.columns)
             if name not in ("_time", "_msg") and column.null_count == len(column)]
    return table.drop_columns(empty) if empty else table


@dataclass(frozen=True)
class Slice:
    """One partition's rows of a table, ready to add: no all-null column, time bounds known."""

    key: PartKey
    table: pa.Table
    min_time: int
    max_time: int
    nbytes: int


def slice_of(key: PartKey, rows: pa.Table) -> Slice:
    rows = drop_null_columns(rows)
    bounds = pc.min_max(rows.column("_time").cast(pa.int64()))
    return Slice(key, rows, bounds["min"].as_py(), bounds["max"].as_py(), rows.nbytes)


def slices(dataset: str, table: pa.Table) -> list[Slice]:
    """A normalised table as the slices ``Memtable.add_slices`` takes (CPU: a worker thread's work)."""
    return [slice_of((dataset, day), rows) for day, rows in split_by_day(table)]


class Memtable:
    def __init__(self) -> None:
        self.parts: dict[PartKey, MemPart] = {}
        self.rows = 0
        self.nbytes = 0

    def add(self, dataset: str, table: pa.Table) -> None:
        self.add_slices(slices(dataset, table))

    def add_piece(self, key: PartKey, piece: pa.Table) -> None:
        self.add_slices([slice_of(key, piece)])

    def add_slices(self, prepared: list[Slice]) -> None:
        """Append prepared slices: no Arrow work, cheap enough for the event loop."""
        for piece in prepared:
            part = self.parts.setdefault(piece.key, MemPart())
            part.tables.append(piece.table)
            part.rows += piece.table.num_rows
            part.nbytes += piece.nbytes
            part.min_time = piece.min_time if part.min_time is None else min(part.min_time, piece.min_time)
            part.max_time = piece.max_time if part.max_time is None else max(part.max_time, piece.max_time)
            self.rows += piece.table.num_rows
            self.nbytes += piece.nbytes

    def remove(self, key: PartKey) -> MemPart:
        """Take a partition's rows out (they are in a block now)."""
        part = self.parts.pop(key)
        self.rows -= part.rows
        self.nbytes -= part.nbytes
        return part

    def __bool__(self) -> bool:
        return self.rows > 0

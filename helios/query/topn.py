"""The first rows of a ``sort``, kept by parts: ``* | sort by (size desc) | limit 10`` over 10 M.

The executor gathers a query's rows in parts (``executor.PART_ROWS``). When its first pipe is
``sort`` and the others only ``fields`` and ``limit``, each part keeps just the rows that can still
be among the first ``count`` (``TopRows.add``), and the answer is those rows sorted (``result``):
memory and time follow ``count``, not the matches (10 M rows: 16–22 s and GBs before).

Until then only the keys and ``_time`` are read, each row with where it came from (``SOURCE``,
``ROW``); ``whole_rows`` then reads every other column for the first rows alone, from the row
groups that hold them (``BlockCache.rows``): ``* | sort by (size desc) | limit 10`` over 10 M
rows no longer decodes every message (2.7 → 0.7 s over HTTP, peak RSS 1.5 → 0.5 GB).

Exact: the answer is the one the whole gathered table gives. That order is the sort keys, then
``_time`` newest first, then the order rows were gathered in (every sort is stable), a total order
that each part's order agrees with, so the first ``count`` of all are among the first ``count`` of
their part. Two things about the whole are known only at the end:

- Whether a key sorts as numbers (``pipes._sort_column``: text sorts as numbers when every value
  is one). Until a part shows a value that is not, a part keeps the first rows under both
  orders (every combination of the undecided keys, ``MAX_ORDERS`` at most; past that, or on a
  part whose whole numbers pass 2^53 — int64 and float64 order those differently — it keeps
  every row).
- Whether those numbers are whole (int64) or not (float64): float64 once any part reads a key
  so; up to 2^53 both order alike.
"""

from __future__ import annotations

import math
import threading
from itertools import product
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helios.ingest.normalise import MAX_FIELD_NAME
from helios.query import ast
from helios.query.blockscan import Fetch, Gone, locator
from helios.query.filters import numeric
from helios.query.pipes import key_column, sort
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

__all__ = ["KEPT_BYTES", "MAX_ORDERS", "ROW", "SOURCE", "KeptBytes", "TopRows", "key_names",
           "top_of", "whole_rows"]

MAX_ORDERS = 4  # orders a part's first rows are kept under, at most (two keys undecided)
KEPT_BYTES = 64 << 20  # streamed blocks' bytes one leading sort keeps for its late reads, at most
# (HELIOS_MAX_CONCURRENT_QUERIES of them at once: 256 MiB by default)
_EXACT = 1 << 53  # whole numbers up to this order the same as int64 and as float64


# Where a kept row came from, while only its sort keys are read: the position of its source in the
# executor's list, and its row there. Longer than any field name can be, so no field is hidden.
SOURCE = "source:" + "-" * MAX_FIELD_NAME
ROW = "row:" + "-" * MAX_FIELD_NAME


def key_names(pipe: ast.Sort) -> list[str]:
    """The columns a leading sort reads until its first rows are known: its keys and ``_time``."""
    return ["_time", *(name for name, _ in pipe.keys)]


def whole_rows(table: pa.Table, sources: list[Source], memory: dict[int, pa.Table],
               cache: BlockCache, fetch: Fetch | None,
               dataset: Callable[[pa.Table, Source], pa.Table]) -> tuple[pa.Table, int]:
    """The kept rows of ``table`` (keys and locators, in the answer's order) with every column,
    read for those rows alone: from their block's columns (``cache``, fetched as a scan would), or
    from ``memory`` (a memtable source's matching rows, every column). (rows, blocks whose bytes
    could not be had: their rows are left out and the answer is partial.)"""
    at = table.column(SOURCE).to_numpy()
    rows = table.column(ROW).to_numpy()
    pieces, places, missing = [], [], 0
    for position in np.unique(at):
        mine = np.flatnonzero(at == position)
        source = sources[int(position)]
        if source.block is None:
            whole = memory[int(position)].take(pa.array(rows[mine]))
        else:
            try:
                whole = cache.rows(locator(source, fetch), source.block, rows[mine])
            except Gone:
                missing += 1
                continue
        pieces.append(dataset(whole, source))
        places.append(mine)
    if not pieces:
        return table.slice(0, 0).drop_columns([SOURCE, ROW]), missing
    joined = pa.concat_tables(pieces, promote_options="default")
    return joined.take(pa.array(np.argsort(np.concatenate(places), kind="stable"))), missing


class KeptBytes:
    """A leading sort's ``fetch``: the bytes of a block the store streamed (not kept on the local
    disk: ``HELIOS_LOCAL_CACHE_BYTES`` or no room) are kept while the block may hold one of the
    first rows, so ``whole_rows`` reads its other columns from them instead of downloading it again
    (and a store that failed meanwhile does not lose those rows). ``keep_only`` drops the others;
    at most ``KEPT_BYTES`` are kept (past that a block is fetched again, as before). A local file's
    path is not kept: it is asked for again, as every read does."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.kept: dict[str, bytes] = {}
        self.size = 0
        self._lock = threading.Lock()  # the scan threads fetch too

    def __call__(self, source: Source) -> Path | bytes | None:
        assert source.block is not None
        with self._lock:
            data = self.kept.get(source.block.id)
        if data is not None:
            return data
        got = self.fetch(source)
        if got is not None and not isinstance(got, Path):
            with self._lock:
                if source.block.id not in self.kept and self.size + len(got) <= KEPT_BYTES:
                    self.kept[source.block.id] = got
                    self.size += len(got)
        return got

    def keep_only(self, block_ids: set[str]) -> None:
        with self._lock:
            for block_id in [b for b in self.kept if b not in block_ids]:
                self.size -= len(self.kept.pop(block_id))


def top_of(pipes: tuple[ast.Pipe, ...], limit: int) -> int | None:
    """How many rows a query whose pipes start with ``sort`` needs from it (``limit`` + 1 tells
    whether the answer is truncated), or None when the pipes need every row."""
    if not pipes or not isinstance(pipes[0], ast.Sort):
        return None
    count = limit + 1
    for pipe in pipes[1:]:
        if isinstance(pipe, ast.Limit):
            count = min(count, pipe.count)
        elif not isinstance(pipe, ast.Fields):
            return None
    return count


class TopRows:
    """The rows of one query that can still be among the first ``count`` of its sort."""

    def __init__(self, pipe: ast.Sort, count: int) -> None:
        self.keys = pipe.keys
        self.count = count
        self.text = [False] * len(pipe.keys)  # a value that is not a number was seen: sorts as text
        self.fractions = [False] * len(pipe.keys)  # a number read as float64 was seen
        self.kept: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        """One gathered part (with its ``_time``): keep its rows that may be among the first."""
        choices: list[list[Any]] = []
        whole = table.num_rows <= self.count  # every row is kept; what it shows is still noted
        for i, (name, _) in enumerate(self.keys):
            column = key_column(table, name)
            if not pa.types.is_string(column.type) or self.text[i]:  # text once: text for good
                choices.append([column])
                continue
            numbers = numeric(column)
            if numbers.null_count != column.null_count:
                self.text[i] = True
            self.fractions[i] = self.fractions[i] or pa.types.is_floating(numbers.type)
            # int64 and float64 would order whole numbers past 2^53 differently: keep every row
            whole = whole or (pa.types.is_integer(numbers.type) and _past_exact(numbers))
            choices.append([column] if self.text[i] else [column, numbers])
        # Counted before any is made: n undecided keys have 2^n orders (30 would never finish).
        if whole or math.prod(len(choice) for choice in choices) > MAX_ORDERS:
            self.kept.append(table)
            return
        orders = list(product(*choices))
        times = table.column("_time")
        rows: Any = None
        for order in orders:
            first = _first_rows(order, self.keys, times, self.count)
            rows = first if rows is None else pc.unique(pa.concat_arrays([rows, first]))
        self.kept.append(table.take(rows.take(pc.sort_indices(rows))))  # in gathered order again

    def sources(self) -> set[int]:
        """The positions (in the executor's list) of the sources the kept rows came from."""
        return {int(at) for part in self.kept for at in pc.unique(part.column(SOURCE)).to_pylist()}

    def result(self) -> pa.Table:
        """The first ``count`` kept rows (at least one part was added), sorted as the whole would
        be: newest first, then by the keys. Parts keep up to ``count`` rows each (under every
        reading), so only these are the answer's: the rest is not read whole (``whole_rows``)."""
        table = pa.concat_tables(self.kept, promote_options="default")
        self.kept = []
        table = table.take(pc.sort_indices(table, sort_keys=[("_time", "descending")]))
        return sort(table, self.keys, read=self._reading).slice(0, self.count)

    def _reading(self, i: int, column: Any) -> Any:
        """What key ``i`` sorts by, as the whole decides it (not the kept rows alone)."""
        if not pa.types.is_string(column.type) or self.text[i]:
            return column
        numbers = numeric(column)
        return pc.cast(numbers, pa.float64(), safe=False) if self.fractions[i] else numbers


def _past_exact(numbers: Any) -> bool:
    bounds = pc.min_max(numbers)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low is not None and (low <= -_EXACT or high >= _EXACT)


def _first_rows(order: tuple[Any, ...], keys: tuple[tuple[str, bool], ...], times: Any,
                count: int) -> pa.Array:
    """The part's row numbers of its first ``count`` rows under one reading of the keys: the keys,
    then ``_time`` newest first, then row order (a stable sort).

    Only the rows whose first key is at least as far up as the ``count``-th value of it (found by
    ``select_k``, which sorts nothing) are sorted: the first rows are among them, ties included.
    """
    work = {f"k{i}": column for i, column in enumerate(order)}
    work["t"] = times
    table = pa.table(work)
    sort_keys = [(f"k{i}", "descending" if descending else "ascending", "at_end")
                 for i, (_, descending) in enumerate(keys)]
    sort_keys.append(("t", "descending", "at_end"))
    rows = _candidates(table.column("k0"), keys[0][1], count)
    if rows is None:
        return pc.sort_indices(table, sort_keys=sort_keys).slice(0, count)
    ranked = pc.sort_indices(table.take(rows), sort_keys=sort_keys).slice(0, count)
    return rows.take(ranked)


def _candidates(first: Any, descending: bool, count: int) -> pa.Array | None:
    """Row numbers whose ``first`` key value is at least as far up as the ``count``-th, or None when
    that does not narrow the rows (few rows, fewer than ``count`` values, NaN: sorted whole)."""
    values = first.combine_chunks() if isinstance(first, pa.ChunkedArray) else first
    present = len(values) - values.null_count
    if len(values) <= 4 * count or present < count:
        return None
    if pa.types.is_floating(values.type) and pc.any(pc.is_nan(values)).as_py():
        return None
    known = pc.drop_null(values)
    picked = pc.select_k_unstable(pa.table({"v": known}), k=count,
                                  sort_keys=[("v", "descending" if descending else "ascending")])
    edge = (pc.min if descending else pc.max)(known.take(picked))
    inside = (pc.greater_equal if descending else pc.less_equal)(values, edge)
    return pc.indices_nonzero(pc.fill_null(inside, False))

"""``* | stats count() [by (field)]`` and ``* | timechart <step> count()`` without reading rows where a block's index already knows.

A block wholly inside the time range counts its rows from its manifest entry; grouped by a field its
token index holds (a low-cardinality string field), the counts are the lengths of the value postings
(rows without the field count under a null key). Other sources — memtables, blocks cut by the time
range, fields the index does not hold — count the field's column. The partial counts are summed, and
the answer has the shape ``pipes.stats`` gives (keys sorted the same way). A timechart reads the time
column only, counted in buckets as runs (a block's rows are in time order).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil
from helios.query import ast
from helios.query.blockscan import Gone, locator
from helios.query.cancel import Check
from helios.query.pipes import sort
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

__all__ = ["count_by", "countable"]

Fetch = Callable[[Source], Path | bytes | None]


def countable(query: ast.Query) -> bool:
    """Whether the query is ``*`` followed only by ``stats count() … [by (one field)]`` or by
    ``timechart <step> count() …`` (no ``by``)."""
    if not isinstance(query.filter, ast.All) or len(query.pipes) != 1:
        return False
    pipe = query.pipes[0]
    counts_only = all(agg.func == "count" and agg.field is None for agg in getattr(pipe, "aggs", ()))
    return counts_only and ((isinstance(pipe, ast.Stats) and len(pipe.by) <= 1)
                            or (isinstance(pipe, ast.Timechart) and not pipe.by))


def _counters() -> dict[str, Any]:
    return {"rows_scanned": 0, "blocks_scanned": 0, "blocks_indexed": 0, "blocks_pruned": 0, "blocks_missing": 0}


def _in_range(sources: list[Source], low: int, high: int, stats: dict[str, Any], check: Check) -> Iterator[Source]:
    """The sources that overlap ``[low, high)`` (the others are counted as pruned blocks), checking between them."""
    for source in sources:
        check()
        if source.max_time < low or source.min_time >= high:
            stats["blocks_pruned"] += source.block is not None
            continue
        yield source


def _bucket_counts(times: pa.Array | pa.ChunkedArray, step: int, *, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
    """(bucket starts, rows in each) of a time column. ``ordered`` (a block: sorted by time): each
    chunk is cut at the bucket edges by binary search, a few hundred probes instead of passes over
    every row; else bucket numbers are counted."""
    chunks = times.chunks if isinstance(times, pa.ChunkedArray) else [times]
    found, counted = [], []
    for chunk in chunks:
        values = chunk.cast(pa.int64()).to_numpy(zero_copy_only=False)
        if len(values) == 0:
            continue
        first, last = int(values[0]) // step, int(values[-1]) // step
        if ordered and last - first < len(values):
            edges = np.arange(first, last + 2, dtype=np.int64) * step
            sizes = np.diff(np.searchsorted(values, edges))
            keep = sizes > 0
            found.append(edges[:-1][keep])
            counted.append(sizes[keep])
            continue
        buckets = np.floor_divide(values, step)
        numbers, sizes = np.unique(buckets, return_counts=True)
        found.append(numbers * step)
        counted.append(sizes)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found), np.concatenate(counted)


def time_counts(query: ast.Query, sources: list[Source], cache: BlockCache, fetch: Fetch | None, *,
                low: int, high: int, check: Check) -> tuple[pa.Table, dict[str, Any]]:
    """``* | timechart <step> count()``: each source's time column counted in buckets, no other column."""
    pipe = query.pipes[0]
    assert isinstance(pipe, ast.Timechart)
    began = time.perf_counter()
    stats = _counters()
    buckets: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for source in _in_range(sources, low, high, stats, check):
        if source.block is not None:
            try:
                times = cache.columns(locator(source, fetch), source.block, ["_time"]).column("_time")
            except Gone:
                stats["blocks_missing"] += 1
                continue
            stats["blocks_scanned"] += 1
        else:
            assert source.table is not None
            times = source.table.column("_time")
        if not (source.min_time >= low and source.max_time < high):
            ns = times.cast(pa.int64())
            times = times.filter(pc.and_(pc.greater_equal(ns, low), pc.less(ns, high)))
        stats["rows_scanned"] += len(times)
        found, counted = _bucket_counts(times, pipe.step_ns, ordered=source.block is not None)
        buckets.append(found)
        counts.append(counted)
    joined = pa.table({"t": pa.array(np.concatenate(buckets) if buckets else np.zeros(0, np.int64), pa.int64()),
                       "n": pa.array(np.concatenate(counts) if counts else np.zeros(0, np.int64), pa.int64())})
    summed = joined.group_by("t", use_threads=False).aggregate([("n", "sum")])
    columns = {"_time": summed.column("t").cast(timeutil.TIME_TYPE)}
    for agg in pipe.aggs:
        columns[agg.name] = summed.column("n_sum")
    result = sort(pa.table(columns), (("_time", False),))
    stats["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 3)
    return result, stats


def _column_counts(column: Any) -> tuple[pa.Array, np.ndarray]:
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    counted = pc.value_counts(column)
    values, counts = counted.field("values"), counted.field("counts").to_numpy()
    present = pc.is_valid(values).to_numpy(zero_copy_only=False)  # a null value, if any, is counted below
    nulls = column.null_count
    values, counts = values.filter(pa.array(present)), counts[present]
    if nulls:
        values = pa.concat_arrays([values, pa.nulls(1, pa.string())])
        counts = np.append(counts, nulls)
    return values, counts


def count_by(query: ast.Query, sources: list[Source], cache: BlockCache, fetch: Fetch | None, *,
             low: int, high: int, check: Check) -> tuple[pa.Table, dict[str, Any]]:
    pipe = query.pipes[0]
    if isinstance(pipe, ast.Timechart):
        return time_counts(query, sources, cache, fetch, low=low, high=high, check=check)
    assert isinstance(pipe, ast.Stats)
    began = time.perf_counter()
    field = pipe.by[0] if pipe.by else None
    stats = _counters()
    values: list[pa.Array] = []
    counts: list[np.ndarray] = []
    for source in _in_range(sources, low, high, stats, check):
        inside = source.min_time >= low and source.max_time < high
        entry = source.block
        if entry is not None and inside and field is None:
            values.append(pa.nulls(1, pa.string()))
            counts.append(np.array([entry.rows]))  # its manifest entry knows
            continue
        if entry is not None:
            where = locator(source, fetch)  # fetched only if the index or a column is not in memory
            try:
                index = cache.index(where, entry)
            except Gone:
                stats["blocks_missing"] += 1
                continue
            stats["blocks_scanned"] += 1
            if inside and index.tokens is not None and (field in index.tokens.fields or field not in index.columns):
                stats["blocks_indexed"] += 1
                if field in index.tokens.fields:
                    got, per_value = index.tokens.value_counts(field)  # type: ignore[arg-type]
                    nulls = entry.rows - int(per_value.sum())
                else:
                    got, per_value, nulls = pa.array([], pa.string()), np.zeros(0, np.int64), entry.rows
                values.append(pa.concat_arrays([got, pa.nulls(1, pa.string())]))
                counts.append(np.append(per_value, nulls))
                continue
            try:
                table = cache.columns(where, entry, ["_time", *([field] if field else [])])
            except Gone:
                stats["blocks_missing"] += 1
                continue
        else:
            assert source.table is not None
            table = source.table
        if not inside:
            times = table.column("_time").cast(pa.int64())
            table = table.filter(pc.and_(pc.greater_equal(times, low), pc.less(times, high)))
        stats["rows_scanned"] += table.num_rows
        if field is None or field not in table.column_names:
            values.append(pa.nulls(1, pa.string()))
            counts.append(np.array([table.num_rows]))
        else:
            got, per_value = _column_counts(table.column(field).combine_chunks())
            values.append(got)
            counts.append(per_value)
    joined = pa.table({"k": pa.concat_arrays(values) if values else pa.array([], pa.string()),
                       "n": pa.array(np.concatenate(counts) if counts else np.zeros(0, np.int64), pa.int64())})
    if field is None:
        total = pc.sum(joined.column("n")).as_py() or 0
        result = pa.table({agg.name: pa.array([total], pa.int64()) for agg in pipe.aggs})
    else:
        summed = joined.filter(pc.greater(joined.column("n"), 0)).group_by("k", use_threads=False).aggregate(
            [("n", "sum")])
        columns = {field: summed.column("k").cast(pa.string())}
        for agg in pipe.aggs:
            columns[agg.name] = summed.column("n_sum")
        result = sort(pa.table(columns), ((field, False),))
    stats["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 3)
    return result, stats

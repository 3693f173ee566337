"""Run a parsed query over a snapshot of sources: prune, scan, filter, pipe.

Runs in a worker thread (pyarrow releases the GIL); it touches no trio state.
It can be stopped: ``check`` (a ``CancelToken.check``) is called before each
source, before each filter term and before each pipe, and raises
``QueryCancelled`` once the query's deadline has passed, its client has gone
or the node is shutting down. Sources are visited newest first. A plain search (only ``fields``/``limit``
pipes) keeps just the newest ``limit`` rows seen so far and skips every
source that ends before the oldest of them, so ``error | limit 10`` over a
year of data reads the last blocks only.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil
from helios.query import ast
from helios.query.cancel import Check, never
from helios.query.blockscan import BlockPart, from_memory, scan_block
from helios.query.counts import count_by, countable
from helios.query.filters import mask, may_match
from helios.query.pipes import apply, by_parts, combine, partial
from helios.query.topn import ROW, SOURCE, KeptBytes, TopRows, key_names, top_of, whole_rows
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

__all__ = ["ROWS_PER_CHUNK", "QueryResult", "encode_rows", "execute", "needed_columns", "to_rows"]

ROWS_PER_CHUNK = 2000  # rows turned into Python objects at once while encoding an answer…
CELLS_PER_CHUNK = 200_000  # …and fewer when rows are wide (20,000 rows of 998 fields once cost 900 MB)

_AGGREGATING = (ast.Stats, ast.Timechart, ast.Top)
SCAN_WORKERS = max(2, min(4, os.cpu_count() or 2))  # blocks of one query scanned at once
# An aggregation that goes by parts (pipes.by_parts) aggregates its gathered rows each time they reach
# this many, and keeps only the groups: its memory follows this and the groups, not the matches.
PART_ROWS = 1 << 20
TOP_PART_ROWS = 1 << 18  # rows (every column) gathered before a leading sort keeps its first


@dataclass
class QueryResult:
    table: pa.Table
    aggregated: bool
    stats: dict[str, Any] = field(default_factory=dict)


def needed_columns(query: ast.Query) -> list[str] | None:
    """Columns the pipes read after filtering (None: every column)."""
    if not query.pipes:
        return None
    first = query.pipes[0]
    if isinstance(first, ast.Fields):
        return ["_time", *first.names]
    if isinstance(first, (ast.Stats, ast.Timechart)):
        cols = [*first.by, *(agg.field for agg in first.aggs if agg.field)]
        return ["_time", *cols] if isinstance(first, ast.Timechart) else cols
    if isinstance(first, ast.Top):
        return [first.field]
    return None


_SCANNERS = ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="helios-scan")


def _scan_ahead(ahead: dict[str, Future[BlockPart | bool | None]], query: ast.Query, sources: list[Source],
                cache: BlockCache, fetch: Any, *, needed: list[str] | None, low: int, high: int,
                check: Check) -> None:
    """Start scanning the next ``SCAN_WORKERS`` blocks on the scan threads (pyarrow releases the GIL)."""
    for source in sources:
        if len(ahead) >= SCAN_WORKERS:
            return
        if source.block is None or source.block.id in ahead or source.max_time < low or source.min_time >= high:
            continue
        ahead[source.block.id] = _SCANNERS.submit(scan_block, query, source, cache, fetch, needed=needed,
                                                  low=low, high=high, keep_last=None, check=check)


def _with_dataset(part: pa.Table, source: Source) -> pa.Table:
    return part.append_column("dataset", pa.repeat(source.dataset, part.num_rows))


def _joined(pieces: list[pa.Table]) -> pa.Table:
    """The pieces as one table (a lone piece as it is); a column some lack is null in their rows."""
    return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces, promote_options="default")


def _newest(table: pa.Table, count: int) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[("_time", "descending")])
    return table.take(order[:count]) if count < table.num_rows else table.take(order)


def execute(query: ast.Query, sources: list[Source], cache: BlockCache, *,
            start_ns: int | None, end_ns: int | None, limit: int, check: Check = never,
            fetch: Callable[[Source], Path | bytes | None] | None = None) -> QueryResult:
    """Run ``query``; ``fetch(source)`` gives a block's file or bytes, or None when it cannot be had
    (then the answer says ``partial``); without it blocks are read from their local files. ``check``
    raises once the query is cancelled (called between pieces of work)."""
    began = time.perf_counter()
    aggregated = any(isinstance(p, _AGGREGATING) for p in query.pipes)
    plain = all(isinstance(p, (ast.Fields, ast.Limit)) for p in query.pipes)
    cap = limit
    if plain:
        for pipe in query.pipes:
            if isinstance(pipe, ast.Limit):
                cap = min(cap, pipe.count)
    needed = needed_columns(query)
    low = -(1 << 63) if start_ns is None else start_ns
    high = (1 << 63) - 1 if end_ns is None else end_ns
    if countable(query):  # counts the block indexes know, without reading rows
        table, counters = count_by(query, sources, cache, fetch, low=low, high=high, check=check)
        counters["truncated"] = table.num_rows > limit
        counters["partial"] = counters["blocks_missing"] > 0
        return QueryResult(table.slice(0, limit), True, counters)
    counters = {"rows_scanned": 0, "blocks_scanned": 0, "blocks_indexed": 0, "blocks_pruned": 0,
                "blocks_missing": 0}
    pieces: list[pa.Table] = []
    in_parts = bool(query.pipes) and by_parts(query.pipes[0])
    top = top_of(query.pipes, limit)
    ranked = TopRows(query.pipes[0], top) if top is not None else None  # type: ignore[arg-type]
    # A leading sort reads its keys only; the other columns are read for its first rows at the end.
    reading = needed if ranked is None else key_names(query.pipes[0])  # type: ignore[arg-type]
    kept_bytes = KeptBytes(fetch) if ranked is not None and fetch is not None else None
    fetch = kept_bytes or fetch
    memory: dict[int, pa.Table] = {}  # a leading sort's memtable rows, every column (whole_rows)
    parts: list[pa.Table] = []  # the first pipe's part of each batch of gathered rows (``pipes.partial``)
    kept = 0
    boundary: int | None = None
    newest: pa.Table | None = None  # a plain search's rows kept so far, newest first

    ordered = sorted(sources, key=lambda s: s.max_time, reverse=True)
    ahead: dict[str, Future[BlockPart | bool | None]] = {}
    more = False  # a plain search left matching rows out (its answer is truncated)
    for at, source in enumerate(ordered):
        check()
        is_block = source.block is not None
        outside = source.max_time < low or source.min_time >= high
        passed = plain and boundary is not None and kept >= cap and source.max_time < boundary
        more = more or (passed and source.rows > 0)  # older rows not read: more may match
        if outside or passed or (plain and cap == 0):
            counters["blocks_pruned"] += is_block
            continue
        if is_block:
            got = None if plain or source.block.id in ahead else from_memory(
                query, source, cache, needed=reading, low=low, high=high, check=check)
            if got is None and not plain and source.block.id not in ahead:  # scan the next blocks in parallel
                _scan_ahead(ahead, query, ordered[at:], cache, fetch, needed=reading, low=low,
                            high=high, check=check)
            if got is None:
                got = ahead.pop(source.block.id).result() if source.block.id in ahead else scan_block(
                    query, source, cache, fetch, needed=reading, low=low, high=high,
                    keep_last=cap if plain else None, check=check)
            if got is None:  # neither local nor fetchable before the deadline: the answer is partial
                counters["blocks_missing"] += 1
                continue
            if got is False:
                counters["blocks_pruned"] += 1
                continue
            assert isinstance(got, BlockPart)
            counters["blocks_scanned"] += 1
            counters["blocks_indexed"] += got.indexed
            counters["rows_scanned"] += got.rows_scanned
            more = more or got.more
            part, chosen = got.table, got.chosen
        elif not may_match(query.filter, None, source.dataset):
            continue
        else:
            table = source.table
            counters["rows_scanned"] += table.num_rows
            rows = mask(query.filter, table, source.dataset, check)
            if source.min_time < low or source.max_time >= high:
                times = table.column("_time").cast(pa.int64())
                rows = pc.and_(rows, pc.and_(pc.greater_equal(times, low), pc.less(times, high)))
            part, chosen = table.filter(rows), None
            if ranked is not None:
                memory[at] = part
            if reading is not None:
                part = part.select([n for n in dict.fromkeys(reading) if n in part.column_names])
        if part.num_rows == 0:
            continue
        part = _with_dataset(part, source)
        if ranked is not None:
            part = part.append_column(SOURCE, pa.repeat(at, part.num_rows)).append_column(
                ROW, pa.array(np.arange(part.num_rows) if chosen is None else chosen, pa.int64()))
        pieces.append(part)
        kept += part.num_rows
        if in_parts and kept >= PART_ROWS:  # aggregate what is gathered; only its groups are kept
            parts.append(partial(query.pipes[0], _joined(pieces)))
            pieces, kept = [], 0
            continue
        if ranked is not None and kept >= TOP_PART_ROWS:  # keep the rows that may come first
            ranked.add(_joined(pieces))
            pieces, kept = [], 0
            if kept_bytes is not None:  # the blocks of rows no longer kept will not be read again
                kept_bytes.keep_only({ordered[i].block.id for i in ranked.sources()
                                      if ordered[i].block is not None} | set(ahead))
            continue
        if plain and kept >= cap and "_time" in part.column_names:
            more = more or kept > cap
            merged = _newest(_joined(pieces), cap)
            pieces, kept, newest = [merged], merged.num_rows, merged
            boundary = merged.column("_time").cast(pa.int64())[-1].as_py() if kept else None

    for future in ahead.values():  # a block scanned ahead whose answer was not needed
        future.cancel()
    pipes = query.pipes
    in_order = False  # the rows are in the order the pipes give already
    if parts:
        if pieces:
            parts.append(partial(query.pipes[0], _joined(pieces)))
        table, pipes = combine(query.pipes[0], parts), query.pipes[1:]
    elif ranked is not None and (pieces or ranked.kept):
        if pieces:
            ranked.add(_joined(pieces))
        table, lost = whole_rows(ranked.result(), ordered, memory, cache, fetch, _with_dataset)
        counters["blocks_missing"] += lost
        pipes, in_order = query.pipes[1:], True
    elif pieces:
        in_order = len(pieces) == 1 and pieces[0] is newest  # sorted when they were kept
        table = _joined(pieces)
    else:
        table = pa.table({"_time": pa.array([], timeutil.TIME_TYPE), "_msg": pa.array([], pa.string()),
                          "dataset": pa.array([], pa.string())})
        if needed is not None:
            table = pa.table({name: pa.array([], timeutil.TIME_TYPE if name == "_time" else pa.string())
                              for name in dict.fromkeys([*needed, "dataset"])})
    if (not parts and not in_order and "_time" in table.column_names
            and not (pipes and isinstance(pipes[0], _AGGREGATING))):
        table = _newest(table, table.num_rows)  # an aggregation does not need its rows in order
    for pipe in pipes:
        check()
        table = apply(pipe, table, check)
    truncated = table.num_rows > limit or (plain and more and table.num_rows >= cap)
    table = table.slice(0, limit)
    counters["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 3)
    counters["truncated"] = truncated
    counters["partial"] = counters["blocks_missing"] > 0
    return QueryResult(table, aggregated, counters)


_FIRST = {"_time": 0, "_msg": 1, "dataset": 2}


def encode_rows(result: QueryResult, check: Check = never,
                rows_per_chunk: int = ROWS_PER_CHUNK) -> Iterator[bytes]:
    """The result's rows as JSON objects, comma-separated, ``rows_per_chunk`` rows per piece.

    Joining the pieces with ``,`` gives the inside of a JSON array. Only one
    piece's rows exist as Python objects at a time; times are RFC 3339 text;
    a row's nulls (fields it lacks) are left out unless the result is an
    aggregation, whose rows keep every column. Wide rows make smaller pieces:
    at most ``CELLS_PER_CHUNK`` values are Python objects at once.
    """
    for rows in _row_pieces(result, check, rows_per_chunk):
        yield b",".join(orjson.dumps(row) for row in rows)


def to_rows(result: QueryResult) -> list[dict[str, Any]]:
    """The result's rows as dicts, in the query row shape: for small results (tail, monitors) only."""
    return [row for rows in _row_pieces(result, never, ROWS_PER_CHUNK) for row in rows]


def _row_pieces(result: QueryResult, check: Check, rows_per_chunk: int) -> Iterator[list[dict[str, Any]]]:
    table = result.table
    rows_per_chunk = max(1, min(rows_per_chunk, CELLS_PER_CHUNK // max(1, table.num_columns)))
    if not result.aggregated:
        table = table.select(sorted(table.column_names, key=lambda name: (_FIRST.get(name, 3), name)))
    times = [i for i, column in enumerate(table.columns) if pa.types.is_timestamp(column.type)]
    for start in range(0, table.num_rows, rows_per_chunk):
        check()
        piece = table.slice(start, rows_per_chunk)
        for i in times:
            piece = piece.set_column(i, piece.column_names[i], timeutil.format_column(piece.column(i)))
        rows = piece.to_pylist()
        if not result.aggregated:  # a row's nulls are fields it lacks: left out
            holes = [name for name, column in zip(piece.column_names, piece.columns)
                     if column.null_count]
            for name in holes:
                for row in rows:
                    if row[name] is None:
                        del row[name]
        yield rows

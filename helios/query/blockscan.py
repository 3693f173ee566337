"""One block's part of a query: its token index picks the rows, a scan checks what the index cannot
answer, and only then are the columns the pipes need read, for the chosen rows only.

- An exact hit (a word, a prefix, ``field:value`` and their AND/OR/NOT) reads no message at all: only
  the block's non-ASCII rows (``TokenIndex.unsure``) are checked by scanning.
- A candidate hit (phrases, words with separators, a filter mixing indexed and other terms) is checked
  by scanning the candidate rows only.
- No hit (the index cannot narrow the filter, or a format 1 block without an index): the filter's
  columns are scanned whole, with the prefilters of ``filters.mask``.
- A plain search keeps only the newest ``keep_last`` matching rows of the block (rows are in time
  order within a block) before it reads the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helios.query import ast
from helios.query.cancel import Check, never
from helios.query.filters import mask, may_match
from helios.query.lookup import Hit, filter_columns, hits
from helios.storage.blocks import BlockIndex
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

__all__ = ["BlockPart", "Gone", "from_memory", "locator", "scan_block"]

Fetch = Callable[[Source], Path | bytes | None]


@dataclass
class BlockPart:
    table: pa.Table  # the matching rows, with the needed columns (all when ``needed`` is None)
    rows_scanned: int  # rows whose values a scan checked
    indexed: bool  # the token index chose the rows
    more: bool = False  # a plain search left older matching rows of this block out
    chosen: np.ndarray | None = None  # the block's row numbers of the rows (None: all, in order)


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    if table.num_columns == 0:  # only a count is needed: a table of no columns still has rows
        return pa.table({"_": pa.nulls(len(rows))}).drop_columns(["_"])
    return table.take(pa.array(rows))


class Gone(Exception):
    """The block's bytes cannot be had (not local, and the store did not give them in time)."""


def _row_span(times: pa.Array, low: int, high: int) -> tuple[int, int]:
    values = times.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return int(np.searchsorted(values, low, "left")), int(np.searchsorted(values, high, "left"))


def scan_block(query: ast.Query, source: Source, cache: BlockCache, fetch: Fetch | None, *,
               needed: list[str] | None, low: int, high: int, keep_last: int | None,
               check: Check) -> BlockPart | bool | None:
    """The block's matching rows; False if its index rules it out; None if its bytes cannot be had."""
    entry = source.block
    assert entry is not None
    index = cache.known_index(entry.id)
    if index is not None and not may_match(query.filter, index, source.dataset):
        return False
    try:
        return _scan(query, source, cache, locator(source, fetch), index, needed=needed, low=low, high=high,
                     keep_last=keep_last, check=check)
    except Gone:
        return None


def from_memory(query: ast.Query, source: Source, cache: BlockCache, *, needed: list[str] | None, low: int,
                high: int, check: Check = never) -> BlockPart | bool | None:
    """The block's answer when nothing but lookups is needed: its index is in memory and answers the
    filter exactly, no row of the block is unsure, the query's time range holds the whole block, and
    the columns the pipes need are in memory. None otherwise (``scan_block`` then does the work).

    Cheap enough (well under a millisecond) to run on the query's own thread: handing it to a scan
    thread costs more, in thread switches, than the lookup itself."""
    entry = source.block
    assert entry is not None
    index = cache.known_index(entry.id)
    if index is None or index.tokens is None or len(index.tokens.unsure):
        return None
    if not may_match(query.filter, index, source.dataset):
        return False
    if source.min_time < low or source.max_time >= high:
        return None
    table = cache.cached_columns(entry, None if needed is None else [*dict.fromkeys(needed)])
    if table is None:
        return None
    hit = hits(query.filter, index.tokens, source.dataset, check)
    if hit is None or not hit.exact:
        return None
    chosen = None if hit.rows is None or len(hit.rows) == entry.rows else hit.rows
    if chosen is not None:
        table = _take(table, chosen)
    return BlockPart(table, 0, True, chosen=chosen)


def locator(source: Source, fetch: Fetch | None) -> Callable[[], Path | bytes]:
    """Where the block's bytes are, asked for only when a column or index is not in memory."""
    found: list[Path | bytes] = []

    def where() -> Path | bytes:
        if not found:
            got = source.path if fetch is None else fetch(source)
            if got is None:
                raise Gone()
            found.append(got)
        return found[0]
    return where


def _scan(query: ast.Query, source: Source, cache: BlockCache, where: Callable[[], Path | bytes],
          index: BlockIndex | None, *, needed: list[str] | None, low: int, high: int, keep_last: int | None,
          check: Check) -> BlockPart | bool:
    entry = source.block
    assert entry is not None
    if index is None:
        index = cache.index(where, entry)
        if not may_match(query.filter, index, source.dataset):
            return False
    wanted = None if needed is None else [*dict.fromkeys(needed)]
    inside = source.min_time >= low and source.max_time < high
    hit = None if index.tokens is None else hits(query.filter, index.tokens, source.dataset, check)
    if hit is None:  # scan the filter's columns whole, then read the other columns for the matches only
        table = cache.columns(where, entry, filter_columns(query.filter) | ({"_time"} if not inside else set()))
        rows = mask(query.filter, table, source.dataset, check)
        if not inside:
            times = table.column("_time").cast(pa.int64())
            rows = pc.and_(rows, pc.and_(pc.greater_equal(times, low), pc.less(times, high)))
        scanned, chosen, indexed = table.num_rows, pc.indices_nonzero(rows).to_numpy(), False
    else:
        scanned, chosen = _from_index(query, source, cache, where, hit, index.tokens.unsure, check)
        indexed = True
        if not inside:
            first, last = _row_span(cache.columns(where, entry, ["_time"]).column("_time"), low, high)
            chosen = np.arange(first, last) if chosen is None else chosen[(chosen >= first) & (chosen < last)]
    more = False
    if keep_last is not None:
        if chosen is None:
            chosen = np.arange(entry.rows)
        more = len(chosen) > keep_last
        chosen = chosen[len(chosen) - min(keep_last, len(chosen)):]
    table = cache.columns(where, entry, wanted)
    if chosen is not None and len(chosen) == entry.rows:
        chosen = None
    if chosen is not None:
        table = _take(table, chosen)
    return BlockPart(table, scanned, indexed, more, chosen)


def _from_index(query: ast.Query, source: Source, cache: BlockCache, where: Callable[[], Path | bytes],
                hit: Hit, unsure: np.ndarray, check: Check) -> tuple[int, np.ndarray | None]:
    """(rows scanned, the matching rows or None for all): the index's answer, its ``unsure`` rows or
    its candidates checked by a scan."""
    entry = source.block
    assert entry is not None
    chosen = hit.rows
    if not hit.exact:
        candidates = np.arange(entry.rows) if chosen is None else np.union1d(chosen, unsure)
        return len(candidates), _check_rows(query, source, cache, where, entry, candidates, check)
    if not len(unsure):
        return 0, chosen
    extra = _check_rows(query, source, cache, where, entry, unsure, check)
    sure = np.setdiff1d(np.arange(entry.rows) if chosen is None else chosen, unsure, assume_unique=True)
    return len(unsure), np.union1d(sure, extra)


def _check_rows(query: ast.Query, source: Source, cache: BlockCache, where: Callable[[], Path | bytes], entry,
                rows: np.ndarray, check: Check) -> np.ndarray:
    """The rows among ``rows`` that the filter matches, by scanning them."""
    if len(rows) == 0:
        return rows
    table = cache.columns(where, entry, filter_columns(query.filter))
    subset = _take(table, rows) if len(rows) != entry.rows else table
    matched = mask(query.filter, subset, source.dataset, check)
    return rows[np.asarray(matched.to_numpy(zero_copy_only=False), dtype=bool)]

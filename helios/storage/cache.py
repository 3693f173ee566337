"""A byte-bounded LRU of decoded block columns and block indexes (memory), shared by query threads.

A block's bytes are hashed against its manifest entry the first time its rows are used in this
process; later reads of its columns rely on that check and on the Parquet page checksums (format 2)
instead of hashing the whole file again, so a query's cost follows the columns it reads. Token indexes
are checked on their own (``load_index``). Both kinds of entry share the one byte bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helios.storage.blocks import BlockEntry, BlockIndex, CorruptBlock, load_index, parquet_part, verify

__all__ = ["BlockCache", "Where"]

Where = Path | bytes | Callable[[], Path | bytes]


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._columns: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._indexes: OrderedDict[str, BlockIndex] = OrderedDict()
        self._verified: set[str] = set()
        self._bytes = 0
        self.index_bytes = 0  # of the indexes kept (part of the one bound)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached_columns(self, entry: BlockEntry, names: Iterable[str] | None, *, use: bool = True
                       ) -> pa.Table | None:
        """The block's columns ``names`` that exist (``None``: all) if its index and all of them are in
        memory (no I/O, no hashing), else None. ``use=False`` only looks: no hit counted, no LRU move."""
        with self._lock:
            index = self._indexes.get(entry.id)
            if index is None:
                return None
            wanted = sorted(index.columns if names is None else set(names) & index.columns, key=_column_order)
            found = [self._columns.get((entry.id, name)) for name in wanted]
            if any(f is None for f in found):
                return None
            if use:
                for name in wanted:
                    self._columns.move_to_end((entry.id, name))
                self.hits += 1
        if not wanted:
            return pa.table({"_": pa.nulls(entry.rows)}).drop_columns(["_"])
        return pa.table({name: f[0] for name, f in zip(wanted, found)})  # type: ignore[index]

    def known_index(self, block_id: str) -> BlockIndex | None:
        """The block's index if it was read before (no I/O): pruning without the block's bytes."""
        with self._lock:
            return self._indexes.get(block_id)

    def table(self, where: Where, entry: BlockEntry) -> pa.Table:
        """Every column of the block."""
        return self.columns(where, entry, None)

    def columns(self, where: Where, entry: BlockEntry, names: Iterable[str] | None) -> pa.Table:
        """The block's columns ``names`` that exist (``None``: all), decoded once and kept while they fit.

        ``where`` is the block's file or bytes, or a function giving them, called only when something
        is not in memory."""
        index = self.index(where, entry)
        wanted = sorted(index.columns if names is None else set(names) & index.columns, key=_column_order)
        with self._lock:
            found = {name: self._columns.get((entry.id, name)) for name in wanted}
            for name, got in found.items():
                if got is not None:
                    self._columns.move_to_end((entry.id, name))
            missing = [name for name, got in found.items() if got is None]
            if missing:
                self.misses += 1
            else:
                self.hits += 1
        read: dict[str, Any] = {}
        if missing:
            where = self._checked(where, entry)
            try:
                file = pq.ParquetFile(parquet_part(where, entry), page_checksum_verification=True)
                # A column at a time, on one thread, joined into one chunk before the next is read.
                # Parquet's threads decoded every row group of every column at once (each string
                # builder doubling as it grows), then the joins copied them all: a 1 M-row block's
                # 190 MiB of columns took 673 MiB at the peak under jemalloc; this way 338 MiB, and
                # the first decode 0.55-0.60 s instead of 0.43-0.51 s (later reads are from memory).
                for name in missing:
                    read[name] = file.read(columns=[name], use_threads=False).column(name).combine_chunks()
            except (OSError, pa.ArrowException) as exc:
                raise _undecodable(entry, where, exc) from exc
            self._keep(entry.id, read)
        columns = {name: (read[name] if name in read else found[name][0]) for name in wanted}  # type: ignore[index]
        if not columns:
            return pa.table({"_": pa.nulls(entry.rows)}).drop_columns(["_"])
        return pa.table(columns)

    def rows(self, where: Where, entry: BlockEntry, rows: np.ndarray) -> pa.Table:
        """Every column of the block, for ``rows`` (row numbers, in the order wanted) alone: from
        memory when all its columns are there, else decoded from the row groups holding them only,
        and not kept (ten rows of a block must not push whole columns out of memory): the first rows
        of a sort (``topn.whole_rows``)."""
        cached = self.cached_columns(entry, None)
        if cached is not None:
            return cached.take(pa.array(rows))
        path = self._checked(where, entry)
        try:
            file = pq.ParquetFile(parquet_part(path, entry), page_checksum_verification=True)
            sizes = np.array([file.metadata.row_group(i).num_rows
                              for i in range(file.num_row_groups)])
            starts = np.concatenate([[0], np.cumsum(sizes)])
            group = np.searchsorted(starts, rows, side="right") - 1
            groups = np.unique(group)
            table = file.read_row_groups(groups.tolist())
        except (OSError, pa.ArrowException) as exc:
            raise _undecodable(entry, path, exc) from exc
        at = np.zeros(len(sizes), dtype=np.int64)  # where each group read starts in ``table``
        at[groups] = np.concatenate([[0], np.cumsum(sizes[groups])[:-1]])
        table = table.select(sorted(table.column_names, key=_column_order))
        return table.take(pa.array(rows - starts[group] + at[group]))

    def _checked(self, where: Where, entry: BlockEntry) -> Path | bytes:
        """The block's bytes, hashed against its entry the first time this process reads rows."""
        where = _resolve(where)
        if entry.id not in self._verified:
            verify(where, entry)
            with self._lock:
                self._verified.add(entry.id)
        return where

    def _keep(self, block_id: str, columns: dict[str, Any]) -> None:
        with self._lock:
            for name, column in columns.items():
                size = column.nbytes
                if (block_id, name) in self._columns or size > self.capacity_bytes // 2:
                    continue
                self._columns[(block_id, name)] = (column, size)
                self._bytes += size
            self._trim()

    def _trim(self) -> None:
        while self._bytes > self.capacity_bytes and self._columns:
            _, (_, dropped) = self._columns.popitem(last=False)
            self._bytes -= dropped

    def index(self, where: Where, entry: BlockEntry) -> BlockIndex:
        with self._lock:
            cached = self._indexes.get(entry.id)
            if cached is not None:
                self._indexes.move_to_end(entry.id)
                return cached
        index = load_index(_resolve(where), entry)
        if not entry.index_bytes:  # format 1: its whole bytes were just checked
            with self._lock:
                self._verified.add(entry.id)
        self.remember_index(entry, index)
        return index

    def remember_index(self, entry: BlockEntry, index: BlockIndex) -> None:
        """Keep a block's index read and verified elsewhere (``load_index_section`` of a ranged read)."""
        with self._lock:
            if entry.id not in self._indexes:
                self._indexes[entry.id] = index
                self._bytes += index.nbytes
                self.index_bytes += index.nbytes
            while len(self._indexes) > 100_000:
                _, dropped = self._indexes.popitem(last=False)
                self._bytes -= dropped.nbytes
                self.index_bytes -= dropped.nbytes
            self._trim()

    def forget(self, block_id: str) -> None:
        with self._lock:
            for key in [k for k in self._columns if k[0] == block_id]:
                self._bytes -= self._columns.pop(key)[1]
            dropped = self._indexes.pop(block_id, None)
            if dropped is not None:
                self._bytes -= dropped.nbytes
                self.index_bytes -= dropped.nbytes
            self._verified.discard(block_id)


def _undecodable(entry: BlockEntry, where: Path | bytes, exc: Exception) -> CorruptBlock:
    return CorruptBlock(f"block {entry.id} cannot be decoded: {exc}",
                        None if isinstance(where, bytes) else where)


def _resolve(where: Where) -> Path | bytes:
    return where() if callable(where) else where


def _column_order(name: str) -> tuple[int, str]:
    return ({"_time": 0, "_msg": 1}.get(name, 2), name)

"""A byte-bounded LRU of decoded blocks and block indexes, shared by query threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa

from helios.storage.blocks import BlockEntry, BlockIndex, load_block, load_index

__all__ = ["BlockCache"]


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._tables: OrderedDict[str, tuple[pa.Table, int]] = OrderedDict()
        self._indexes: OrderedDict[str, BlockIndex] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached_table(self, block_id: str, *, count_hit: bool = False) -> pa.Table | None:
        """The decoded block if it is in memory (no I/O)."""
        with self._lock:
            cached = self._tables.get(block_id)
            if cached is None:
                return None
            if count_hit:
                self._tables.move_to_end(block_id)
                self.hits += 1
            return cached[0]

    def known_index(self, block_id: str) -> BlockIndex | None:
        """The block's index if it was read before (no I/O): pruning without the block's bytes."""
        with self._lock:
            return self._indexes.get(block_id)

    def table(self, path: Path | bytes, entry: BlockEntry) -> pa.Table:
        with self._lock:
            cached = self._tables.get(entry.id)
            if cached is not None:
                self._tables.move_to_end(entry.id)
                self.hits += 1
                return cached[0]
            self.misses += 1
        table = load_block(path, entry)
        size = table.nbytes
        with self._lock:
            if entry.id not in self._tables and size <= self.capacity_bytes // 2:
                self._tables[entry.id] = (table, size)
                self._bytes += size
                while self._bytes > self.capacity_bytes and self._tables:
                    _, (_, dropped) = self._tables.popitem(last=False)
                    self._bytes -= dropped
        return table

    def index(self, path: Path | bytes, entry: BlockEntry) -> BlockIndex:
        with self._lock:
            cached = self._indexes.get(entry.id)
            if cached is not None:
                self._indexes.move_to_end(entry.id)
                return cached
        index = load_index(path, entry)
        with self._lock:
            self._indexes[entry.id] = index
            while len(self._indexes) > 100_000:
                self._indexes.popitem(last=False)
        return index

    def forget(self, block_id: str) -> None:
        with self._lock:
            dropped = self._tables.pop(block_id, None)
            if dropped is not None:
                self._bytes -= dropped[1]
            self._indexes.pop(block_id, None)

"""Immutable blocks: one Parquet (zstd) file of one partition's rows.

A block is self-describing: its footer carries the format version, the
partition, the row count, the time bounds and the Bloom filter of its terms.
It is checksummed: the manifest entry holds the SHA-256 of the whole file,
checked on every load. A block's name never changes and its bytes never do.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from helios import timeutil
from helios.storage.bloom import Bloom, block_terms
from helios.storage.fsutil import write_atomic

__all__ = ["BlockEntry", "BlockIndex", "CorruptBlock", "build_block", "is_compacted", "load_block", "load_index",
           "new_block_id"]

FORMAT = 1
_META_INFO = b"helios.block"
_META_BLOOM = b"helios.bloom"


class CorruptBlock(Exception):
    """A block's bytes do not match its manifest entry."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def new_block_id(created_ns: int, node: str, *, compacted: bool = False,
                 token_hex: Callable[[int], str] = secrets.token_hex) -> str:
    """``<created ns, hex>-<node>-<8 random hex>``; a compaction output's last part starts with ``c``.

    ``token_hex`` is the randomness (a seam: the fuzzer passes a seeded one)."""
    return f"{created_ns:x}-{node}-{'c' if compacted else ''}{token_hex(4)}"


def is_compacted(block_id: str) -> bool:
    """Whether a block is a compaction output (its rows were all in earlier blocks)."""
    last = block_id.rsplit("-", 1)[-1]
    return len(last) == 9 and last[0] == "c"


@dataclass(frozen=True)
class BlockEntry:
    id: str
    rows: int
    bytes: int
    min_time: int
    max_time: int
    sha256: str
    node: str
    created_ns: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BlockEntry:
        return cls(**{name: doc[name] for name in cls.__dataclass_fields__})

    @property
    def filename(self) -> str:
        return f"{self.id}.parquet"


@dataclass(frozen=True)
class BlockIndex:
    """What pruning needs without reading the rows: the columns and the term filter."""

    columns: frozenset[str]
    bloom: Bloom | None


def _arrange(tables: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    fields = sorted(name for name in table.column_names if name not in ("_time", "_msg"))
    table = table.select(["_time", "_msg", *fields])
    order = pc.sort_indices(table, sort_keys=[("_time", "ascending")])
    return table.take(order).combine_chunks()


def build_block(directory: Path, block_id: str, tables: list[pa.Table], *, dataset: str,
                day: int, node: str, created_ns: int) -> BlockEntry:
    """Write the rows of ``tables`` as block ``block_id`` under ``directory``, durably."""
    table = _arrange(tables)
    terms = block_terms(table)
    bloom = Bloom.build(terms, len(terms))
    times = table.column("_time").cast(pa.int64())
    bounds = pc.min_max(times)
    info = {"format": FORMAT, "dataset": dataset, "day": timeutil.day_name(day),
            "rows": table.num_rows, "min_time": bounds["min"].as_py(), "max_time": bounds["max"].as_py()}
    table = table.replace_schema_metadata({_META_INFO: orjson.dumps(info), _META_BLOOM: bloom.to_bytes()})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3, row_group_size=256 * 1024)
    data = sink.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    entry = BlockEntry(id=block_id, rows=table.num_rows, bytes=len(data), min_time=info["min_time"],
                       max_time=info["max_time"], sha256=hashlib.sha256(data).hexdigest(),
                       node=node, created_ns=created_ns)
    write_atomic(directory / entry.filename, data)
    return entry


def _verified(where: Path | bytes, entry: BlockEntry) -> bytes:
    data = where if isinstance(where, bytes) else where.read_bytes()
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        place = "fetched" if isinstance(where, bytes) else f"at {where}"
        raise CorruptBlock(f"block {entry.id} {place} does not match its checksum",
                           None if isinstance(where, bytes) else where)
    return data


def load_block(where: Path | bytes, entry: BlockEntry) -> pa.Table:
    """Read a whole block (its file, or its bytes fetched from the store), verifying its checksum."""
    return pq.read_table(pa.BufferReader(_verified(where, entry)))


def load_index(where: Path | bytes, entry: BlockEntry) -> BlockIndex:
    """The block's columns and term filter, read only from bytes that match the manifest's checksum.

    A flipped bit in the filter could otherwise prune a block that matches
    and silently drop rows. (The cost, one read and hash of the block, is paid
    once per block while its index stays in the cache.)
    """
    schema = pq.read_schema(pa.BufferReader(_verified(where, entry)))
    raw = (schema.metadata or {}).get(_META_BLOOM)
    return BlockIndex(columns=frozenset(schema.names), bloom=Bloom.from_bytes(raw) if raw else None)

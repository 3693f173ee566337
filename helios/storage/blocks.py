"""Immutable blocks: one Parquet (zstd) file of one partition's rows.

A block is self-describing: its footer carries the format version, the
partition, the row count, the time bounds and the Bloom filter of its terms.
It is checksummed: the manifest entry holds the SHA-256 of the whole file,
checked before its rows are first used. A block's name never changes and its bytes never do.

Format 2 blocks end with their token index (``helios/storage/tokens.py``) after the Parquet bytes:
the entry's ``index_bytes`` is its size and ``index_sha256`` its own checksum, so the index can be
read and verified alone (it replaces the Bloom filter of format 1 blocks, which still load). Their
Parquet pages carry CRC checksums, verified whenever a column is read. A flush writes its block
without an index (``index="later"``: ``index_bytes`` 0, answered by scanning); the first compaction
that rewrites it builds one (``merge_blocks``), so ingest does not pay for tokenising.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from helios import timeutil
from helios.niceness import pace
from helios.storage.bloom import Bloom, block_terms
from helios.storage.fsutil import write_atomic
from helios.storage.tokens import TokenIndex, build_index, merge_sections

__all__ = ["BlockEntry", "BlockIndex", "CorruptBlock", "build_block", "is_compacted", "load_block", "load_index",
           "load_index_section", "merge_blocks", "new_block_id", "parquet_part", "verify"]

FORMAT = 2
ROW_GROUP_ROWS = 256 * 1024
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
    index_bytes: int = 0  # format 2: the token index's size, at the end of the file (0: no index)
    index_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BlockEntry:
        optional = {"index_bytes": 0, "index_sha256": ""}
        return cls(**{name: doc[name] if name not in optional else doc.get(name, optional[name])
                      for name in cls.__dataclass_fields__})

    @property
    def parquet_bytes(self) -> int:
        return self.bytes - self.index_bytes

    @property
    def filename(self) -> str:
        return f"{self.id}.parquet"


@dataclass(frozen=True)
class BlockIndex:
    """What pruning needs without reading the rows: the columns, and the token index (format 2) or the
    term filter (format 1)."""

    columns: frozenset[str]
    bloom: Bloom | None
    tokens: TokenIndex | None = None

    @property
    def nbytes(self) -> int:
        return 256 + (self.tokens.nbytes if self.tokens is not None else 0) + (
            len(self.bloom.bits) if self.bloom is not None else 0)


def _arrange(tables: list[pa.Table]) -> pa.Table:
    """The rows of ``tables`` in block order (by ``_time``).

    Rows in order are not copied: the Parquet writer and the index take the chunks as they are. Nor
    are tables that are each in order and only arrive out of turn (two shippers' requests, each a
    time range of its own): they are put in turn. Anything else is sorted."""
    if len(tables) > 1:
        tables = _in_turn(tables)
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    fields = sorted(name for name in table.column_names if name not in ("_time", "_msg"))
    table = table.select(["_time", "_msg", *fields])
    times = table.column("_time").cast(pa.int64()).to_numpy()
    if len(times) < 2 or bool(np.all(times[1:] >= times[:-1])):
        return table
    order = pc.sort_indices(table, sort_keys=[("_time", "ascending")])
    return table.take(order).combine_chunks()


def _in_turn(tables: list[pa.Table]) -> list[pa.Table]:
    """``tables`` put in turn if that sorts their rows: each is in order and each one's last time is
    before the next one's first (strictly, so that rows of equal times keep their arrival order, as
    the stable sort gives them). Otherwise as they are."""
    if not all(table.num_rows for table in tables):
        return tables
    times = [table.column("_time").cast(pa.int64()).to_numpy() for table in tables]
    order = sorted(range(len(tables)), key=lambda i: int(times[i][0]))
    if order == list(range(len(tables))) or not all(bool(np.all(t[1:] >= t[:-1])) for t in times):
        return tables
    if any(times[a][-1] >= times[b][0] for a, b in zip(order, order[1:])):
        return tables
    return [tables[i] for i in order]


def build_block(directory: Path, block_id: str, tables: list[pa.Table], *, dataset: str,
                day: int, node: str, created_ns: int, index: str = "tokens") -> BlockEntry:
    """Write the rows of ``tables`` as block ``block_id`` under ``directory``, durably.

    ``index``: ``"tokens"`` builds the token index; ``"later"`` (a flush) writes none and compresses
    lightly, since compaction rewrites the block with its index; ``"bloom"`` writes a format 1 block (a
    Bloom filter in the footer): what older nodes wrote, kept so tests can prove such blocks answer."""
    if index not in ("tokens", "later", "bloom"):
        raise ValueError(f"unknown index kind {index!r}")
    table = _arrange(tables)
    section = build_index(table) if index == "tokens" else b""
    times = table.column("_time").cast(pa.int64())
    bounds = pc.min_max(times)
    info = {"format": FORMAT, "dataset": dataset, "day": timeutil.day_name(day),
            "rows": table.num_rows, "min_time": bounds["min"].as_py(), "max_time": bounds["max"].as_py()}
    metadata = {_META_INFO: orjson.dumps(info)}
    if index == "bloom":
        terms = block_terms(table)
        metadata = {_META_INFO: orjson.dumps({**info, "format": 1}),
                    _META_BLOOM: Bloom.build(terms, len(terms)).to_bytes()}
    table = table.replace_schema_metadata(metadata)
    sink = io.BytesIO()
    pq.write_table(table, sink, **_parquet_options(table.schema, light=index == "later"),
                   row_group_size=ROW_GROUP_ROWS)
    return _written(directory, block_id, sink, section, info, node, created_ns)


def _parquet_options(schema: pa.Schema, *, light: bool = False) -> dict[str, Any]:
    """How blocks are written: zstd level 3, or LZ4 for a flush's block, which compaction rewrites
    with its index (on the bench's rows 0.29 against zstd 1's 0.41 us a row to write, for 26
    against 15.5 B a row, until it is rewritten: a flush is a fifth of an ingesting node's CPU), page
    checksums, ``_time`` delta-coded (rows are in time order: on the bench's rows 0.01 against
    3.9 B a row with a dictionary the writer gave up on, and written and read four times faster),
    and dictionary pages for every other column but ``_msg`` (messages rarely repeat within a
    block: the writer would build a dictionary only to give it up, and the block comes out larger).
    Column statistics (min and max a page) only for ``_time``: nothing reads the others (the
    manifest and the token index prune), and those of ``_msg`` cost a quarter of a flush's write."""
    codec = {"compression": "lz4"} if light else {"compression": "zstd", "compression_level": 3}
    return {**codec, "write_page_checksum": True,
            "use_dictionary": [name for name in schema.names if name not in ("_msg", "_time")],
            "column_encoding": {"_time": "DELTA_BINARY_PACKED"} if "_time" in schema.names else None,
            "write_statistics": ["_time"]}


def _written(directory: Path, block_id: str, sink: io.BytesIO, index: bytes, info: dict[str, Any],
             node: str, created_ns: int) -> BlockEntry:
    sink.write(index)
    data = sink.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    entry = BlockEntry(id=block_id, rows=info["rows"], bytes=len(data), min_time=info["min_time"],
                       max_time=info["max_time"], sha256=hashlib.sha256(data).hexdigest(),
                       node=node, created_ns=created_ns, index_bytes=len(index),
                       index_sha256=hashlib.sha256(index).hexdigest() if index else "")
    write_atomic(directory / entry.filename, data)
    return entry


def merge_blocks(directory: Path, block_id: str, inputs: list[tuple[bytes, BlockEntry]], *, dataset: str,
                 day: int, node: str, created_ns: int) -> BlockEntry:
    """Write the rows of several blocks (their bytes, verified here) as one block: a compaction.

    When the inputs' time ranges follow one another (the usual case), the rows keep their order: they
    are copied a row group at a time (memory: one row group and the string fields, not the whole
    output) and the index is merged from the inputs' indexes (``tokens.merge_sections``); an input
    without one (a flush's block, or format 1) has its messages tokenised, one input at a time.
    Otherwise the rows are loaded, sorted and indexed (``build_block``)."""
    files = [(pq.ParquetFile(pa.BufferReader(pa.py_buffer(_verified(data, entry))[: entry.parquet_bytes])), entry)
             for data, entry in inputs]
    in_order = all(a.max_time <= b.min_time for (_, a), (_, b) in zip(files, files[1:]))
    if not in_order:
        try:
            tables = [file.read() for file, _ in files]  # verified above
        except (OSError, pa.ArrowException) as exc:
            raise CorruptBlock(f"blocks {', '.join(e.id for _, e in files)} cannot be decoded: {exc}") from exc
        return build_block(directory, block_id, tables, dataset=dataset, day=day, node=node,
                           created_ns=created_ns)
    try:
        schema = pa.unify_schemas([f.schema_arrow.remove_metadata() for f, _ in files], promote_options="default")
        names = ["_time", "_msg", *sorted(n for n in schema.names if n not in ("_time", "_msg"))]
        schema = pa.schema([schema.field(n) for n in names])
        strings = [f.name for f in schema if pa.types.is_string(f.type) and f.name not in ("_time", "_msg")]
        fields = pa.concat_tables([_conform(f.read(columns=[n for n in strings if n in f.schema_arrow.names]),
                                            pa.schema([schema.field(n) for n in strings])) for f, _ in files])
        # An input's index section, or (a flush's block, or format 1) its messages to tokenise: read
        # as the merge reaches it, so only one input's messages are held at a time.
        sections = (data[entry.parquet_bytes :] if entry.index_bytes else _messages(file)
                    for (data, entry), (file, _) in zip(inputs, files))
        index = merge_sections(sections, fields, columns=names, rows=sum(e.rows for _, e in files))
        del fields
        info = {"format": FORMAT, "dataset": dataset, "day": timeutil.day_name(day),
                "rows": sum(e.rows for _, e in files), "min_time": min(e.min_time for _, e in files),
                "max_time": max(e.max_time for _, e in files)}
        sink = io.BytesIO()
        with pq.ParquetWriter(sink, schema.with_metadata({_META_INFO: orjson.dumps(info)}),
                              **_parquet_options(schema)) as writer:
            for file, _ in files:
                for group in range(file.num_row_groups):
                    writer.write_table(_conform(file.read_row_group(group), schema), row_group_size=ROW_GROUP_ROWS)
                    pace()  # a compaction yields to a busy ingest (niceness.Pacer)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise CorruptBlock(f"blocks {', '.join(e.id for _, e in files)} cannot be merged: {exc}") from exc
    return _written(directory, block_id, sink, index, info, node, created_ns)


def _messages(file: pq.ParquetFile) -> pa.ChunkedArray:
    """A block's ``_msg`` column (empty messages if it has none)."""
    if "_msg" not in file.schema_arrow.names:
        return pa.chunked_array([pa.array([""] * file.metadata.num_rows, pa.string())])
    return file.read(columns=["_msg"]).column("_msg")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns as ``schema`` has them: in its order, absent ones null, null-typed ones cast."""
    n = table.num_rows
    return pa.table([table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
                     for f in schema], schema=schema)


def _verified(where: Path | bytes, entry: BlockEntry) -> bytes:
    data = where if isinstance(where, bytes) else where.read_bytes()
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        place = "fetched" if isinstance(where, bytes) else f"at {where}"
        raise CorruptBlock(f"block {entry.id} {place} does not match its checksum",
                           None if isinstance(where, bytes) else where)
    return data


def verify(where: Path | bytes, entry: BlockEntry) -> None:
    """Raise ``CorruptBlock`` unless the block's bytes match its manifest entry."""
    _verified(where, entry)


def parquet_part(where: Path | bytes, entry: BlockEntry) -> pa.NativeFile:
    """The block's Parquet bytes as a readable file (a local file is memory-mapped, not read)."""
    if isinstance(where, bytes):
        return pa.BufferReader(pa.py_buffer(where)[: entry.parquet_bytes])
    try:
        mapped = pa.memory_map(str(where))
        if mapped.size() != entry.bytes:
            raise CorruptBlock(f"block {entry.id} at {where} has {mapped.size()} bytes, not {entry.bytes}", where)
        return pa.BufferReader(mapped.read_buffer()[: entry.parquet_bytes])
    except OSError as exc:
        raise CorruptBlock(f"block {entry.id} at {where} cannot be read: {exc}", where) from exc


def load_block(where: Path | bytes, entry: BlockEntry) -> pa.Table:
    """Read a whole block (its file, or its bytes fetched from the store), verifying its checksum."""
    data = _verified(where, entry)
    try:
        return pq.read_table(pa.BufferReader(pa.py_buffer(data)[: entry.parquet_bytes]))
    except (OSError, pa.ArrowException) as exc:
        raise CorruptBlock(f"block {entry.id} cannot be decoded: {exc}",
                           None if isinstance(where, bytes) else where) from exc


def _index_section(where: Path | bytes, entry: BlockEntry) -> bytes:
    start = entry.parquet_bytes
    if isinstance(where, bytes):
        section = where[start:]
    else:
        with open(where, "rb") as file:
            file.seek(start)
            section = file.read(entry.index_bytes + 1)
    return _checked_section(section, entry, None if isinstance(where, bytes) else where)


def _checked_section(section: bytes, entry: BlockEntry, path: Path | None) -> bytes:
    if len(section) != entry.index_bytes or hashlib.sha256(section).hexdigest() != entry.index_sha256:
        place = "fetched" if path is None else f"at {path}"
        raise CorruptBlock(f"the token index of block {entry.id} {place} does not match its checksum", path)
    return section


def load_index_section(section: bytes, entry: BlockEntry) -> BlockIndex:
    """A format 2 block's index from its index section alone (a ranged read of the store's copy: the
    file's last ``index_bytes``), checked against the entry's ``index_sha256`` as ``load_index`` does."""
    if not entry.index_bytes:
        raise ValueError(f"block {entry.id} has no index section (format 1)")
    return _parsed(_checked_section(section, entry, None), entry, None)


def _parsed(section: bytes, entry: BlockEntry, path: Path | None) -> BlockIndex:
    try:
        tokens = TokenIndex(section)
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as exc:  # checksummed, yet not ours
        raise CorruptBlock(f"the token index of block {entry.id} cannot be read: {exc}", path) from exc
    return BlockIndex(columns=tokens.columns, bloom=None, tokens=tokens)


def load_index(where: Path | bytes, entry: BlockEntry) -> BlockIndex:
    """What prunes a block, read only from bytes that match their checksum.

    Format 2: the token index section alone, checked against the entry's ``index_sha256``.
    Format 1: the Bloom filter in the Parquet footer, after the whole block was read and hashed (a
    flipped bit in a filter could otherwise prune a block that matches and silently drop rows).
    """
    if entry.index_bytes:
        return _parsed(_index_section(where, entry), entry, None if isinstance(where, bytes) else where)
    schema = pq.read_schema(pa.BufferReader(_verified(where, entry)))
    raw = (schema.metadata or {}).get(_META_BLOOM)
    return BlockIndex(columns=frozenset(schema.names), bloom=Bloom.from_bytes(raw) if raw else None)

"""The token index of a block: each lower-cased ``_msg`` token, and each value of a low-cardinality
field, with the sorted ids of the rows that hold it.

Built when a block is built (flush and compaction), vectorised (numpy over the Arrow buffers; no
per-row Python). Stored after the block's Parquet bytes, as one section whose SHA-256 and size are in
the block's manifest entry, so it is covered by the block's checksum and can be read (and verified)
on its own. Layout of the section::

    b"HLXI" · u32 header length · header (JSON) · blobs (each zstd-compressed)

    header: format, rows, columns, fields (the indexed ones), terms, postings, frame,
            blobs {name: [offset, length]}, frames [[offset, length]]
    blobs:  (offsets from the end of the header)
            term_offsets (int32) + term_data: the sorted terms, as an Arrow string array's buffers
            starts (uint32, terms + 1): postings of term i are postings[starts[i]:starts[i+1]]
            postings, in frames of ``FRAME`` values: row ids, delta-coded within each term
            unsure (uint32): rows whose ``_msg`` is not ASCII

Terms: a ``_msg`` token is a maximal run of ``[a-z0-9_]`` in the ASCII-lower-cased message — on ASCII
text exactly DESIGN section 7's tokens. Rows whose message holds any non-ASCII character are listed as
*unsure* and left out of the token postings: a query always checks them by scanning, so Unicode case
folding can never make the index disagree with a scan. A field value's term is ``\\0field\\0value``
(exact, case-sensitive), sorting before every token.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from helios.niceness import pace

__all__ = ["FIELD_MAX_VALUES", "FRAME", "MAGIC", "TokenIndex", "build_index", "field_term", "merge_sections"]

MAGIC = b"HLXI"
FORMAT = 1
FRAME = 1 << 16  # postings per compressed frame: a lookup decodes only the frames it needs
CHUNK_ROWS = 1 << 16  # messages tokenised at once: the build's memory is a chunk's, not the block's
FIELD_MAX_VALUES = 4096  # a string field with more distinct values in a block is not indexed
_HEAD = struct.Struct("<4sI")


_TO_TOKEN_BYTES = bytes(c if (97 <= c <= 122 or 48 <= c <= 57 or c == 95) else c + 32 if 65 <= c <= 90 else 32
                        for c in range(256))  # a-z 0-9 _ kept, A-Z lowered, anything else a space
_TOKEN_LUT = np.frombuffer(_TO_TOKEN_BYTES, dtype=np.uint8)


def field_term(name: str, value: str) -> str:
    return f"\x00{name}\x00{value}"


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, data as uint8) of a string array without nulls."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1,
                            offset=array.offset * 4).astype(np.int64)
    data = array.buffers()[2]
    return offsets, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))


def _tokens(msg: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(the tokens of the ASCII rows as one string array, the row of each token, unsure rows).

    One ``bytes.translate`` of the rows' bytes lower-cases letters and turns every other byte that is
    not ``[a-z0-9_]`` into a space; Arrow then splits on the spaces."""
    msg = pc.fill_null(msg, "")
    if isinstance(msg, pa.ChunkedArray):
        msg = msg.combine_chunks()
    ascii_rows = pc.string_is_ascii(msg).to_numpy(zero_copy_only=False)
    unsure = np.flatnonzero(~ascii_rows).astype(np.uint32)
    if len(unsure):
        msg = pc.if_else(pa.array(ascii_rows), msg, "")
    if len(msg) == 0:
        return pa.array([], pa.string()), np.zeros(0, np.uint32), unsure
    offsets, data = _string_buffers(msg)
    base, end = int(offsets[0]), int(offsets[-1])
    # A table lookup of every byte: as fast as bytes.translate, but numpy lets go of the GIL (a
    # compaction's tokenising held it ~6 ms a chunk, while the ingest's threads waited for it).
    text = _TOKEN_LUT[data[base:end]]
    spaced = pa.StringArray.from_buffers(len(msg), pa.py_buffer((offsets - base).astype(np.int32).tobytes()),
                                         pa.py_buffer(text))
    lists = pc.ascii_split_whitespace(spaced)
    tokens = pc.list_flatten(lists)
    starts = np.frombuffer(lists.buffers()[1], dtype=np.int32, count=len(lists) + 1, offset=lists.offset * 4)
    rows = np.repeat(np.arange(len(lists), dtype=np.uint32), np.diff(starts))  # (list_parent_indices is slower)
    empty = pc.equal(pc.binary_length(tokens), 0)  # a row of separators only splits into one ""
    if pc.any(empty).as_py():
        keep = pc.invert(empty)
        tokens, rows = tokens.filter(keep), rows[keep.to_numpy(zero_copy_only=False)]
    return tokens, rows, unsure


def _group(ids: np.ndarray, rows: np.ndarray, size: int, row_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, postings): for each id < ``size`` its sorted distinct rows (rows < 2 ** ``row_bits``,
    in order: ``rows`` never decreases).

    Up to 65,536 ids (a chunk's distinct tokens, usually), a stable sort of the ids alone: numpy
    sorts 16-bit keys by radix, and rows keep their order within an id (21 against 53 ms for
    1.6 M keys, a comparison sort's). Otherwise one sort of (id, row) keys, in 32 bits when both fit
    (a chunk's rows fit 16)."""
    if len(ids) == 0:
        return np.zeros(size + 1, np.uint32), np.zeros(0, np.uint32)
    if size <= 1 << 16:
        order = np.argsort(ids.astype(np.uint16), kind="stable")
        ids, rows = ids[order], rows[order]
        keep = np.empty(len(ids), dtype=bool)
        keep[0] = True
        np.not_equal(ids[1:], ids[:-1], out=keep[1:])
        keep[1:] |= rows[1:] != rows[:-1]  # a token twice in a row: one posting
        counts = np.bincount(ids[keep], minlength=size)
        starts = np.zeros(size + 1, np.uint32)
        np.cumsum(counts, out=starts[1:])
        return starts, rows[keep].astype(np.uint32)
    kind = np.uint64 if row_bits + max(1, (size - 1).bit_length()) > 32 else np.uint32
    keys = (ids.astype(kind) << kind(row_bits)) | rows.astype(kind)
    keys.sort()
    keep = np.empty(len(keys), dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    keys = keys[keep]
    postings = (keys & kind((1 << row_bits) - 1)).astype(np.uint32)
    counts = np.bincount((keys >> kind(row_bits)).astype(np.int64), minlength=size)
    starts = np.zeros(size + 1, np.uint32)
    np.cumsum(counts, out=starts[1:])
    return starts, postings


def _ranked(encoded: pa.DictionaryArray) -> tuple[pa.Array, np.ndarray]:
    """(the dictionary sorted, each entry's rank in it)."""
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return encoded.dictionary.take(pa.array(order)), rank


Part = tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]  # sorted terms, starts, postings, unsure rows
# A merged token part: its postings as arrays to be read one after the other (made as they are read).
Merged = tuple[pa.Array, np.ndarray, Iterable[np.ndarray], np.ndarray]


def _token_chunk(msg: pa.Array, first_row: int) -> Part:
    """The token part of the messages of rows ``first_row`` … (at most ``CHUNK_ROWS`` of them)."""
    pieces, rows, unsure = _tokens(msg)
    unsure = unsure + np.uint32(first_row)
    if len(pieces) == 0:
        return pa.array([], pa.string()), np.zeros(1, np.uint32), np.zeros(0, np.uint32), unsure
    encoded = pc.dictionary_encode(pieces)
    terms, rank = _ranked(encoded)
    starts, postings = _group(rank[encoded.indices.to_numpy()], rows, len(terms), max(1, (len(msg) - 1).bit_length()))
    return terms, starts, postings + np.uint32(first_row), unsure


MERGE_BATCH = 1 << 20  # postings a merge places at once: its scratch memory


def _merge(parts: list[Part]) -> Merged:
    """One index of several parts (rows of a later part are greater: a term's postings concatenate
    sorted). Its postings are made a batch of terms at a time (``_placed``)."""
    if len(parts) == 1:
        terms, starts, postings, unsure = parts[0]
        return terms, starts, [postings], unsure
    encoded = pc.dictionary_encode(pa.concat_arrays([p[0] for p in parts]))
    terms, rank = _ranked(encoded)
    part_rank = rank[encoded.indices.to_numpy()]  # the merged term of each part's terms
    sizes = [np.diff(p[1].astype(np.int64)) for p in parts]
    starts = np.zeros(len(terms) + 1, np.int64)
    starts[1:] = np.cumsum(np.bincount(part_rank, weights=np.concatenate(sizes), minlength=len(terms)).astype(np.int64))
    ranks, at = [], 0
    for part in parts:
        ranks.append(part_rank[at : at + len(part[0])])
        at += len(part[0])
    unsure = np.concatenate([p[3] for p in parts])
    return terms, starts.astype(np.uint32), _placed(parts, ranks, sizes, starts), unsure


def _placed(parts: list[Part], ranks: list[np.ndarray], sizes: list[np.ndarray], starts: np.ndarray
            ) -> Iterator[np.ndarray]:
    """The merged postings, about ``MERGE_BATCH`` at a time: for each batch of merged terms, each
    part's postings of those terms (a contiguous range of it: its terms are sorted too) scattered to
    their places, part after part so that a term's rows stay sorted."""
    total = int(starts[-1])
    bounds = np.unique(np.searchsorted(starts, np.arange(0, total, MERGE_BATCH), side="right") - 1)
    bounds = [*bounds.tolist(), len(starts) - 1]
    for a, b in zip(bounds, bounds[1:]):
        base = int(starts[a])
        out = np.empty(int(starts[b]) - base, np.uint32)
        free = starts[a:b] - base  # where the next part's postings of each term go
        for (_, part_starts, part_postings, _), part_ranks, size in zip(parts, ranks, sizes):
            lo, hi = np.searchsorted(part_ranks, [a, b])
            if lo == hi:
                continue
            r = part_ranks[lo:hi] - a
            first = int(part_starts[lo])
            places = np.repeat(free[r] - (part_starts[lo:hi].astype(np.int64) - first), size[lo:hi])
            places += np.arange(len(places))
            out[places] = part_postings[first : int(part_starts[hi])]
            free[r] += size[lo:hi]  # a part's terms are distinct: no index repeats
        yield out


def _token_part(msg: pa.Array | pa.ChunkedArray) -> Merged:
    """The token terms of a block, built ``CHUNK_ROWS`` rows at a time (bounded memory) and merged."""
    return _merge(_chunk_parts(msg, 0))


def _chunk_parts(msg: pa.Array | pa.ChunkedArray, first_row: int) -> list[Part]:
    """The token parts of ``msg``, ``CHUNK_ROWS`` rows each, its rows counted from ``first_row``."""
    parts = []
    for at in range(0, max(1, len(msg)), CHUNK_ROWS):
        chunk = msg.slice(at, CHUNK_ROWS)
        if isinstance(chunk, pa.ChunkedArray):  # a chunk's copy, never the whole column's
            chunk = chunk.combine_chunks() if chunk.num_chunks else pa.array([], chunk.type)
        parts.append(_token_chunk(chunk.cast(pa.string()), first_row + at))
        pace()  # a compaction yields to a busy ingest (niceness.Pacer)
    return parts


def _field_part(table: pa.Table) -> tuple[list[str], list[pa.Array], list[np.ndarray], list[np.ndarray]]:
    """Per indexed field (in ``field_term`` order): its terms, starts and postings.

    A row holds one value of a field, and rows come in order: a stable sort of the rows by value rank
    (a radix sort, ranks fit 16 bits) groups them with each value's rows still sorted."""
    fields, terms, starts, postings = [], [], [], []
    for name in sorted(table.column_names, key=lambda n: field_term(n, "")):
        column = table.column(name)
        if name in ("_time", "_msg") or not pa.types.is_string(column.type):
            continue
        encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
        if len(encoded.dictionary) > FIELD_MAX_VALUES:
            continue
        values, rank = _ranked(encoded)
        valid = pc.is_valid(encoded.indices).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid).astype(np.uint32)
        ranks = rank[encoded.indices.to_numpy(zero_copy_only=False)[valid].astype(np.int64)].astype(np.uint16)
        s = np.zeros(len(values) + 1, np.uint32)
        np.cumsum(np.bincount(ranks, minlength=len(values)), out=s[1:])
        fields.append(name)
        terms.append(pc.binary_join_element_wise(f"\x00{name}", values, "\x00"))
        starts.append(s)
        postings.append(rows[np.argsort(ranks, kind="stable")])
    return fields, terms, starts, postings


def _concat_frames(index: TokenIndex) -> np.ndarray:
    """Every posting of an index, delta-coded as stored (uint32)."""
    return np.concatenate([np.frombuffer(index._blob(at), np.uint32) for at in index._frames_at]
                          or [np.zeros(0, np.uint32)])


def _token_part_of(index: TokenIndex, first_row: int) -> Part:
    """The token part of a block's index (its field terms left out), rows moved by ``first_row``."""
    first = index._lower_bound("\x01")  # field terms start with "\0", tokens with [0-9_a-z]
    deltas = _concat_frames(index)
    starts = index.starts
    lo = int(starts[first])
    # Delta decoding in uint32: each term's rows are below 2 ** 32, so the wrapping sums are exact.
    postings = deltas[lo:].copy() if lo else deltas
    del deltas
    np.cumsum(postings, dtype=np.uint32, out=postings)
    local = (starts[first:] - lo).astype(np.int64)
    before = np.where(local[:-1] > 0, postings[np.maximum(local[:-1] - 1, 0)], 0).astype(np.uint32)
    postings -= np.repeat(before - np.uint32(first_row), np.diff(local))  # and rows moved by first_row
    return (index.terms.slice(first), local.astype(np.uint32), postings,
            (index.unsure + first_row).astype(np.uint32))


def _cut(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The values of ``arrays`` one after the other, ``size`` at a time (no copy of them all)."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        offset = 0
        while offset < len(array):
            take = min(size - count, len(array) - offset)
            pending.append(array[offset : offset + take])
            count, offset = count + take, offset + take
            if count == size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if pending:
        yield np.concatenate(pending)


def _delta_frames(arrays: Iterable[np.ndarray], starts: np.ndarray) -> Iterator[np.ndarray]:
    """The postings (``arrays`` one after the other) in frames of ``FRAME`` values, delta-coded within
    each term (a term's first row as it is)."""
    firsts = starts[:-1][starts[:-1] < starts[1:]].astype(np.int64)  # where a term's postings begin
    at, previous = 0, np.uint32(0)
    for raw in _cut(arrays, FRAME):
        frame = raw.copy()
        frame[1:] -= raw[:-1]
        frame[:1] -= previous  # (wraps where a term begins: replaced below)
        begin = firsts[np.searchsorted(firsts, at) : np.searchsorted(firsts, at + len(raw))] - at
        frame[begin] = raw[begin]
        yield frame
        at, previous = at + len(raw), raw[-1]


def _section(table: pa.Table, tokens: Merged, columns: list[str] | None = None, rows: int | None = None) -> bytes:
    """The section of a block whose rows are ``table`` (``columns`` and ``rows``: the block's, when
    ``table`` holds only its string fields, if any), with its token part already built."""
    n = table.num_rows if rows is None else rows
    terms, token_starts, token_postings, unsure = tokens
    fields, field_terms, field_starts, field_postings = _field_part(table)
    all_terms = pa.concat_arrays([*(t.cast(pa.string()) for t in field_terms), terms.cast(pa.string())])
    starts_parts, shift = [np.zeros(1, np.uint64)], 0
    for s in [*field_starts, token_starts]:
        starts_parts.append(s[1:].astype(np.uint64) + shift)
        shift += int(s[-1])
    starts = np.concatenate(starts_parts).astype(np.uint32)
    compressor = zstandard.ZstdCompressor(level=3)
    term_offsets, term_data = _string_buffers(all_terms)
    blobs = {"term_offsets": (term_offsets - term_offsets[0]).astype(np.int32).tobytes(),
             "term_data": term_data[int(term_offsets[0]) : int(term_offsets[-1])].tobytes(),
             "starts": starts.tobytes(), "unsure": unsure.astype(np.uint32).tobytes()}
    body, placed = bytearray(), {}
    for name, raw in blobs.items():
        packed = compressor.compress(raw)
        placed[name] = [len(body), len(packed)]
        body += packed
    frames = []
    for frame in _delta_frames(chain(field_postings, token_postings), starts):
        packed = compressor.compress(frame.tobytes())
        frames.append([len(body), len(packed)])
        body += packed
    header = orjson.dumps({"format": FORMAT, "rows": n, "columns": columns or table.column_names, "fields": fields,
                           "terms": len(all_terms), "postings": int(starts[-1]), "frame": FRAME,
                           "blobs": placed, "frames": frames})
    return _HEAD.pack(MAGIC, len(header)) + header + bytes(body)


def build_index(table: pa.Table) -> bytes:
    """The index section of a block whose rows are ``table`` (already in block order)."""
    if "_msg" in table.column_names:
        tokens = _token_part(table.column("_msg"))
    else:
        tokens: Merged = (pa.array([], pa.string()), np.zeros(1, np.uint32), [], np.zeros(0, np.uint32))
    return _section(table, tokens)


def merge_sections(sections: Iterable[bytes | pa.ChunkedArray], table: pa.Table, *,
                   columns: list[str] | None = None, rows: int | None = None) -> bytes:
    """The index of a block whose rows are those of blocks with these index sections, one after the
    other in this order (a compaction that did not reorder rows): the inputs' token postings merged,
    not the messages tokenised again; the field terms built from ``table`` (the block's rows, or only
    its string fields; then ``columns`` names all of the block's columns and ``rows`` counts its rows).
    An input without an index is given as its messages instead, tokenised ``CHUNK_ROWS`` at a time."""
    parts, first_row = [], 0
    for section in sections:
        if isinstance(section, pa.ChunkedArray):
            parts.extend(_chunk_parts(section, first_row))
            first_row += len(section)
            continue
        index = TokenIndex(section)
        parts.append(_token_part_of(index, first_row))
        first_row += index.rows
    rows = table.num_rows if rows is None else rows
    if first_row != rows or (table.num_columns and table.num_rows != rows):
        raise ValueError(f"the sections hold {first_row} rows, the block {rows} and its fields {table.num_rows}")
    return _section(table, _merge(parts), columns, rows)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Frames:
    """Decoded posting frames, a few kept (a lookup of a common term touches the same frames again)."""

    cache: OrderedDict[int, np.ndarray]
    lock: threading.Lock


class TokenIndex:
    """A parsed index section: binary search over the sorted terms, postings decoded on demand."""

    def __init__(self, section: bytes) -> None:
        magic, size = _HEAD.unpack_from(section)
        if magic != MAGIC:
            raise ValueError("not a token index section")
        head = orjson.loads(section[_HEAD.size : _HEAD.size + size])
        if head.get("format") != FORMAT:
            raise ValueError(f"unknown token index format {head.get('format')!r}")
        self.rows: int = head["rows"]
        self.columns: frozenset[str] = frozenset(head["columns"])
        self.fields: frozenset[str] = frozenset(head["fields"])
        self._frame_size: int = head["frame"]
        self._section = memoryview(section)[_HEAD.size + size :]
        self._frames_at: list[list[int]] = head["frames"]
        blobs = {name: self._blob(where) for name, where in head["blobs"].items()}
        terms = head["terms"]
        offsets = np.frombuffer(blobs["term_offsets"], dtype=np.int32)
        if len(offsets) != terms + 1:
            raise ValueError("token index terms do not match their count")
        self.terms = pa.StringArray.from_buffers(terms, pa.py_buffer(offsets.tobytes()),
                                                 pa.py_buffer(blobs["term_data"]))
        self.starts = np.frombuffer(blobs["starts"], dtype=np.uint32).astype(np.int64)
        self.unsure = np.frombuffer(blobs["unsure"], dtype=np.uint32).astype(np.int64)
        if len(self.starts) != terms + 1 or int(self.starts[-1]) != head["postings"]:
            raise ValueError("token index postings do not match their count")
        self.nbytes = len(section) + self.terms.nbytes + self.starts.nbytes + self.unsure.nbytes
        self._frames = _Frames(OrderedDict(), threading.Lock())

    def _blob(self, where: list[int]) -> bytes:
        at, size = where
        return zstandard.ZstdDecompressor().decompress(self._section[at : at + size])  # type: ignore[arg-type]

    def _frame(self, number: int) -> np.ndarray:
        with self._frames.lock:
            found = self._frames.cache.get(number)
            if found is not None:
                self._frames.cache.move_to_end(number)
                return found
        values = np.frombuffer(self._blob(self._frames_at[number]), dtype=np.uint32).astype(np.int64)
        with self._frames.lock:
            self._frames.cache[number] = values
            while len(self._frames.cache) > 8:
                self._frames.cache.popitem(last=False)
        return values

    def _deltas(self, lo: int, hi: int) -> np.ndarray:
        if lo >= hi:
            return np.zeros(0, np.int64)
        first, last = lo // self._frame_size, (hi - 1) // self._frame_size
        parts = [self._frame(i) for i in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        base = first * self._frame_size
        return joined[lo - base : hi - base]

    def _lower_bound(self, term: str) -> int:
        lo, hi = 0, len(self.terms)
        terms = self.terms
        while lo < hi:
            mid = (lo + hi) // 2
            if terms[mid].as_py() < term:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _rows_of_terms(self, first: int, last: int) -> np.ndarray:
        """The sorted distinct rows of terms ``first`` … ``last - 1`` (contiguous postings)."""
        if first >= last:
            return np.zeros(0, np.int64)
        lo, hi = int(self.starts[first]), int(self.starts[last])
        sums = np.cumsum(self._deltas(lo, hi))
        if last - first == 1:
            return sums
        begins = self.starts[first:last] - lo
        lengths = np.diff(self.starts[first : last + 1])
        before = np.where(begins > 0, sums[np.maximum(begins - 1, 0)], 0)
        return np.unique(sums - np.repeat(before, lengths))

    def term(self, term: str) -> np.ndarray:
        """Rows holding exactly ``term`` (a token, or a ``field_term``)."""
        at = self._lower_bound(term)
        if at < len(self.terms) and self.terms[at].as_py() == term:
            return self._rows_of_terms(at, at + 1)
        return np.zeros(0, np.int64)

    def has_term(self, term: str) -> bool:
        at = self._lower_bound(term)
        return at < len(self.terms) and self.terms[at].as_py() == term

    def has_prefix(self, text: str) -> bool:
        at = self._lower_bound(text)
        return at < len(self.terms) and self.terms[at].as_py().startswith(text)

    def prefix(self, text: str) -> np.ndarray:
        """Rows holding a token that starts with ``text``."""
        first = self._lower_bound(text)
        lo, hi = first, len(self.terms)
        while lo < hi:  # the first term past ``first`` that does not start with ``text``
            mid = (lo + hi) // 2
            if self.terms[mid].as_py().startswith(text):
                lo = mid + 1
            else:
                hi = mid
        return self._rows_of_terms(first, lo)

    def value_counts(self, name: str) -> tuple[pa.Array, np.ndarray]:
        """(values, rows holding each) of an indexed field."""
        head = f"\x00{name}\x00"
        first = self._lower_bound(head)
        last = self._lower_bound(f"\x00{name}\x01")
        values = pc.utf8_slice_codeunits(self.terms.slice(first, last - first), len(head))
        return values, np.diff(self.starts[first : last + 1])

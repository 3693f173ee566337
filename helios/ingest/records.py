"""Request bodies to normalised record tables (``normalise.py``), within the request's limits.

NDJSON is read in bounded steps, so that no step can blow up: an Arrow table
has a cell for every field in every row, and a few KB of hostile JSON (many
rows, each with other keys) would otherwise become GBs. Bytes that a parser
reads without a schema (the sample, every piece) first pass the nesting guard
(``limits.check_json_nesting``): pyarrow crashes on JSON nested ten thousand
deep when it infers. A span is read with a schema learnt from guarded bytes,
and pyarrow then stops at the first value deeper than the schema (a type
mismatch, or an unknown key): it is not guarded, which saves a pass over
every byte (a tenth of the ingest's CPU), and a line too deep still gets its
400 from the pieces that read what the span could not.

- **Spans** (up to ``SPAN_BYTES`` of whole lines): once the request's fields
  are known (from a sample of 64 lines spread over the body, itself as
  bounded as a piece), ``pyarrow.json`` reads a span with that schema given
  and any other field an error, in 1 MiB blocks on all cores. Its size is
  then known before it is read (rows x fields), and the span is cut to keep
  it bounded.
- **Pieces** (``pieces.py``): where no schema is known yet, and after a span
  the known schema does not fit (a new field, a changed type, a line that is
  not an object, a number the fast path would not write exactly), the body
  is read piece by piece until a piece shows new fields, each piece small
  enough that even unknown fields keep it bounded; each takes the vectorised
  path or, if that cannot represent it exactly, the per-line path. What
  pieces show extends the known schema.

After every step the request's exact size as one table (its parts plus the
null cells that joining them adds) is checked against ``max_parsed_bytes``
(413) and its fields against ``max_fields`` (400), and the rows still to come
(every line that starts with ``{``) are counted in: a request that must end
too large stops at once. Everything made is charged to the request's memory
``Meter`` (its share of the node's ingest budget) as it is made.
"""

from __future__ import annotations

import io
import re
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from helios.errors import IngestError, InvalidInput, PayloadTooLarge
from helios.ingest.budget import FREE, Meter
from helios.ingest.flat import infer_schema, is_utf8, read_flat
from helios.ingest.limits import DEFAULT_LIMITS, IngestLimits, check_json_nesting
from helios.ingest.normalise import (RESERVED, Fallback, check_exact_numbers, check_utf8, empty_table, fast_fields,
                                     from_columns, ingest_times, line_of_row, normalise_fast, parse_exact)
from helios.ingest.pieces import MAX_COLONS, Piece, cut_after, pieces

__all__ = ["RESERVED", "empty_table", "from_columns", "parse_ndjson", "parse_text"]

NULL_CELL_BITS = 33  # a null string cell: a 32-bit offset and a validity bit
RAW_CELL_BYTES = 9  # what pyarrow.json spends per cell at most (int64/double and a validity bit)
LEARN_BYTES = 256 << 10  # read by pieces at most, before spans are tried (again)
SPAN_BYTES = 8 << 20  # whole lines read at once with the known schema
SAMPLE_LINES = 64  # lines spread over a body whose fields are learnt before anything is read
SAMPLE_LINE_BYTES = 8 << 10  # (64 x 64 x 8 KiB = ROWS_X_BYTES: a sample is as safe as a piece)
SPAN_RAW_BYTES = 64 << 20  # rows x known fields x RAW_CELL_BYTES of one span, at most
SPAN_FAILURES = 3  # spans the known schema did not fit before spans are given up for this body
GROUP_BYTES = 32 << 20  # raw parts of one schema normalised together, at most about this much
MAX_CHUNKS = 1  # a table in more chunks a column is copied into one (~0.1 ms a MB; see finish)
EXACT_BYTES_PER_KEY = 256  # orjson's memory per parsed key (measured: ~245 B)
TEXT_CHUNK_BYTES = 4 << 20

Body = bytes | bytearray


def _parsed_too_large(limits: IngestLimits) -> str:
    return (f"the request is larger than {limits.max_parsed_bytes} bytes once parsed "
            "(HELIOS_MAX_PARSED_BYTES; every field of a request is a column for every row): "
            "send fewer rows or fewer distinct fields per request")


# -- text ---------------------------------------------------------------------------


def parse_text(body: Body, now_ns: int, limits: IngestLimits = DEFAULT_LIMITS,
               meter: Meter | None = None) -> pa.Table:
    """``text/plain``: every non-blank line is one record's ``_msg`` (one trailing CR dropped).

    Read in chunks of whole lines (``TEXT_CHUNK_BYTES``), so the per-line
    Python objects of one chunk at a time are alive, whatever the body's size.
    """
    meter = meter or FREE
    if len(body) + 12 * (body.count(b"\n") + 1) > limits.max_parsed_bytes:  # text, offsets, times
        raise PayloadTooLarge(_parsed_too_large(limits))
    arrays: list[pa.Array] = []
    position, line = 0, 1
    while position < len(body):
        end = cut_after(body, position, TEXT_CHUNK_BYTES)
        chunk = body[position:end]
        raw = [part[:-1] if part.endswith(b"\r") else part for part in chunk.split(b"\n")]
        array = pa.array([part for part in raw if part.strip()], pa.binary())
        try:
            arrays.append(array.cast(pa.string()))
        except pa.ArrowInvalid:
            check_utf8(chunk, line)
            raise
        meter.charge(arrays[-1].nbytes)
        position, line = end, line + chunk.count(b"\n")
    msgs = pa.chunked_array(arrays, pa.string())  # one chunk per 4 MiB: no copy to join them
    return pa.table({"_time": ingest_times(now_ns, len(msgs)), "_msg": msgs})


# -- NDJSON -------------------------------------------------------------------------

# A line that does not start an object (the first line is checked apart: a pattern that begins
# with a literal newline is searched at memchr speed, ~3 GB/s; `(?:^|\n)` is 30 times slower).
_FIRST_IS_OBJECT = re.compile(rb"[ \t\r\n]*\{")
_LATER_NOT_OBJECT = re.compile(rb"\n[ \t\r]*[^{ \t\r\n]")


def _later_not_object(data: Body) -> bool:
    """Whether a line after the first starts (past blanks) with anything but ``{``. Usually every
    newline but a last one is followed by ``{``: numpy tells (0.7 ms for a 1.3 MB body, without the
    GIL; two ``bytes.count`` took 2 ms), and the regular expression (5x slower) looks only otherwise."""
    codes = np.frombuffer(data, dtype=np.uint8)
    after = np.flatnonzero(codes[:-1] == 0x0A) + 1  # the byte after each newline but a last one
    if (codes[after] == 0x7B).all():
        return False
    return _LATER_NOT_OBJECT.search(data) is not None
_BLANK = re.compile(rb"[ \t\r\n\x0b\x0c]*")


def parse_ndjson(body: Body, now_ns: int, limits: IngestLimits = DEFAULT_LIMITS,
                 meter: Meter | None = None) -> pa.Table:
    """NDJSON: one JSON object per line; blank lines are skipped.

    The request's fields are learnt from a sample of lines spread over the
    body (``_sample_schema``; else from pieces), then the body is read in
    spans of up to ``SPAN_BYTES`` with that schema given: a typical body is
    two ``pyarrow.json`` reads. A span the schema does not fit (pyarrow stops
    at the first misfit, so little is lost) is read by pieces until they show
    a new field, then spans are tried again, at most ``SPAN_FAILURES`` times
    a body.
    """
    if _BLANK.fullmatch(body):
        return empty_table()
    builder = _Builder(body, now_ns, limits, meter or FREE)
    sample = _sample_schema(body, limits.max_nesting_depth)
    if sample is not None:
        builder.learn(sample)
    # line: the number of the line at position; None after a span (counted again only if needed)
    position, line, failures = 0, 1, 0
    while position < len(body):
        if builder.schema is not None and failures < SPAN_FAILURES:
            end = _span_end(body, position, builder.schema)
            raw = _read_span(body, position, end, builder)
            if raw is not None:
                builder.add_raw(position, end, raw)
                position, line = end, None
                continue
            failures += 1
        # Pieces until one shows fields the schema lacks (a span may fit again), at most
        # LEARN_BYTES; once spans are given up, to the end.
        stop = len(body) if failures >= SPAN_FAILURES else cut_after(body, position, LEARN_BYTES)
        for piece in pieces(body, position, stop, line_at(body, position) if line is None else line):
            before = builder.schema
            builder.add_piece(piece)
            position, line = piece.end, piece.first_line + piece.rows
            if builder.schema is not None and (before is None or not builder.schema.equals(before)):
                break
    return builder.finish()


def _sample_schema(body: Body, max_depth: int) -> pa.Schema | None:
    """The fields of ``SAMPLE_LINES`` lines spread over the body (the first among them), or None.

    Records of several sources in one body (a field only some have) would
    otherwise each make a span fail first. Only learnt from, never stored; a
    sample that pieces would not read on the fast path is not used (nor one
    nested deeper than ``max_depth``: the pieces name its line), and lines
    over ``SAMPLE_LINE_BYTES`` are left out, so it stays small (rows x bytes
    within ``pieces.ROWS_X_BYTES``).
    """
    picked: list[bytes] = []
    start, step = 0, max(1, len(body) // SAMPLE_LINES)
    while start < len(body) and len(picked) < SAMPLE_LINES:
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end + 1
        if end - start <= SAMPLE_LINE_BYTES:
            picked.append(bytes(body[start:end]).rstrip(b"\n") + b"\n")
        start = max(end, body.find(b"\n", end + step - 1) + 1 or len(body))
    data = b"".join(picked)
    if (not _FIRST_IS_OBJECT.match(data) or _later_not_object(data)
            or data.count(b":") > MAX_COLONS or _BLANK.fullmatch(data)):
        return None
    try:
        data.decode("utf-8")
        inferred = infer_schema(data)  # flat lines, in C (flat.py); None: pyarrow infers
        if inferred is not None:
            fast_fields(inferred)
            return inferred
        check_json_nesting(data, max_depth)  # before pyarrow infers its types
        raw = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(
            use_threads=False, block_size=max(1 << 16, len(data) + 1)))
        fast_fields(raw.schema)
    except (UnicodeDecodeError, IngestError, pa.ArrowInvalid, pa.ArrowNotImplementedError, Fallback):
        return None
    return raw.schema


def _span_end(body: Body, start: int, schema: pa.Schema) -> int:
    """End of the span from ``start``: whole lines, at most ``SPAN_BYTES``, and few enough that
    rows x known fields x ``RAW_CELL_BYTES`` stays within ``SPAN_RAW_BYTES`` (down to one line).

    A record takes at least 3 bytes (``{}`` and a newline), so a span of B
    bytes has at most B / 3 rows; only if that bound is too loose are its
    newlines counted.
    """
    fields = max(1, _leaves(schema))
    size = min(SPAN_BYTES, 3 * SPAN_RAW_BYTES // (fields * RAW_CELL_BYTES))
    end = cut_after(body, start, size)
    if end == len(body) or end - start >= size or size == SPAN_BYTES:
        return end  # the rest of the body, one line longer than size, or the bound was not the limit
    end = cut_after(body, start, SPAN_BYTES)
    newlines = body.count(b"\n", start, end)
    while newlines > 1 and newlines * fields * RAW_CELL_BYTES > SPAN_RAW_BYTES:
        end = cut_after(body, start, (end - start) // 2)
        newlines = body.count(b"\n", start, end)
    return end


def line_at(body: Body, offset: int) -> int:
    """The 1-based number of the line that starts at ``offset`` (counted only when needed)."""
    return 1 + body.count(b"\n", 0, offset)


def _leaves(schema: pa.Schema) -> int:
    count, stack = 0, [field.type for field in schema]
    while stack:
        kind = stack.pop()
        if pa.types.is_struct(kind):
            stack.extend(child.type for child in kind)
        else:
            count += 1
    return count


def _read_span(body: Body, start: int, end: int, builder: _Builder) -> pa.Table | None:
    """A span read with the known schema (no other field can appear), or None if it does not fit.

    Not guarded for nesting: the schema was learnt from guarded bytes, and pyarrow stops at the
    first value deeper than it (measured up to a million levels: arrays or objects in a string,
    number, null, list or struct field, at the top, or under an unknown key; a millisecond)."""
    # A body read in one span is not copied (bytes cannot change under the reader).
    data = body if start == 0 and end == len(body) and isinstance(body, bytes) else body[start:end]
    if not is_utf8(data):  # checked in place (flat.is_utf8), not decoded into a string
        return None  # the pieces name the line
    # Flat objects in C (flat.py), numbers and bools already as the text they are stored as (no
    # double to check, nothing to cast); None: not sure, pyarrow reads.
    raw = read_flat(data, builder.schema, text=True)
    if raw is not None:
        return raw.select(sorted(raw.column_names))
    if not _FIRST_IS_OBJECT.match(data) or _later_not_object(data):
        return None
    try:
        # One block: one chunk a column (no copy to join chunks later; as fast as 1 MiB blocks on
        # two threads, and the other core is busy with another request under load).
        options = pajson.ReadOptions(block_size=len(data) + 1)
        raw = pajson.read_json(io.BytesIO(data), read_options=options,
                               parse_options=pajson.ParseOptions(explicit_schema=builder.schema,
                                                                 unexpected_field_behavior="error"))
        check_exact_numbers(raw)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, Fallback):
        return None  # the pieces read it (each on the path that represents it exactly)
    return raw.select(sorted(raw.column_names))


class _Builder:
    """The parts of one request, normalised, with its exact size as one table kept within limits."""

    def __init__(self, body: Body, now_ns: int, limits: IngestLimits, meter: Meter) -> None:
        self.body = body
        self.now_ns = now_ns
        self.limits = limits
        self.meter = meter
        self._records_at_least: int | None = None
        self.schema: pa.Schema | None = None  # the raw fields seen so far (what spans are read with)
        self.tables: list[pa.Table] = []
        self.names: dict[str, None] = {}
        self.rows = 0
        self.nbytes = 0  # of the normalised parts, as they are
        self.present_cells = 0  # sum of rows x columns over the normalised parts
        self.group: list[tuple[int, int, pa.Table]] = []  # raw parts of one schema (start, end, table)
        self.group_bytes = 0

    # -- reading ------------------------------------------------------------------

    def add_piece(self, piece: Piece) -> None:
        data = self.body[piece.start : piece.end]
        if _BLANK.fullmatch(data):
            return
        check_utf8(data, piece.first_line)
        check_json_nesting(data, self.limits.max_nesting_depth, piece.first_line)  # before any parser
        if piece.wide or not _FIRST_IS_OBJECT.match(data) or _later_not_object(data):
            # One line with very many keys (pyarrow would build a column per key), or a line that
            # is not an object: the exact path names it. pyarrow must not see it: it reads a `null`
            # line as an empty record, and a body that starts with one crashes it (pyarrow 26:
            # segmentation fault, found by tests/test_input_fuzz.py).
            self.add_exact(data, piece)
            return
        try:
            raw = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(
                use_threads=False, block_size=max(1 << 16, len(data) + 1)))
            # Sorted, so parts whose keys come in another order share a schema (and a group).
            raw = raw.select(sorted(raw.column_names))
            if self.schema is None or not raw.schema.equals(self.schema):
                self.note_fields(fast_fields(raw.schema))
            check_exact_numbers(raw)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, Fallback):
            self.add_exact(data, piece)
            return
        self.learn(raw.schema)
        self.add_raw(piece.start, piece.end, raw)

    def learn(self, schema: pa.Schema) -> None:
        """Extend the known fields (what spans are read with) by ``schema``'s, where types agree."""
        if self.schema is None:
            self.schema = schema
        elif not schema.equals(self.schema):
            try:
                merged = pa.unify_schemas([self.schema, schema])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return  # a field whose type changes: spans will not fit; pieces read the rest
            self.schema = merged.remove_metadata()
            self.schema = pa.schema(sorted(self.schema, key=lambda field: field.name))

    def add_raw(self, start: int, end: int, raw: pa.Table) -> None:
        """A fast-path part (``body[start:end]``); consecutive parts of one schema are normalised together."""
        if self.group and (self.group_bytes >= GROUP_BYTES or not raw.schema.equals(self.group[0][2].schema)):
            self._flush_group()
        nbytes = raw.nbytes
        self.meter.charge(nbytes)  # returned once the group is normalised
        self.group.append((start, end, raw))
        self.group_bytes += nbytes

    def _flush_group(self) -> None:
        start, end = self.group[0][0], self.group[-1][1]
        raw = pa.concat_tables([table for _, _, table in self.group]) if len(self.group) > 1 else self.group[0][2]
        raw_bytes, self.group, self.group_bytes = self.group_bytes, [], 0
        body = self.body
        table = normalise_fast(raw, self.now_ns + self.rows,  # line numbers are counted only for an error
                               lambda row: line_at(body, start) - 1 + line_of_row(body[start:end], row))
        del raw
        self.meter.refund(raw_bytes)
        self._add(table)

    def add_exact(self, data: Body, piece: Piece) -> None:
        if self.group:
            self._flush_group()  # rows stay in body order
        transient = EXACT_BYTES_PER_KEY * data.count(b":") + 2 * len(data)
        if transient > self.limits.max_parsed_bytes:
            raise PayloadTooLarge(f"line {piece.first_line}: {_parsed_too_large(self.limits)}")
        self.meter.charge(transient)
        try:
            table = parse_exact(data, piece.first_line, self.now_ns + self.rows, self.limits.max_fields)
        finally:
            self.meter.refund(transient)
        self._add(table)

    # -- limits -------------------------------------------------------------------

    def note_fields(self, names: Iterable[str]) -> None:
        """Fields the request has; stop early (400 or 413) once they make it too large."""
        self.names.update(dict.fromkeys(names))
        if len(self.names) > self.limits.max_fields:
            raise InvalidInput(f"a request may carry at most {self.limits.max_fields} distinct fields "
                               "(HELIOS_MAX_FIELDS)")
        # Every record still to come will have a cell (if only a null) for every field seen so far.
        row_bytes = len(self.names) * NULL_CELL_BITS // 8
        if self.size_bytes() + (len(self.body) // 3 + 1) * row_bytes <= self.limits.max_parsed_bytes:
            return  # even as many rows as the body could hold would fit: no need to count them
        rows_to_come = max(0, self.records_at_least() - self.rows)
        if self.size_bytes() + rows_to_come * row_bytes > self.limits.max_parsed_bytes:
            raise PayloadTooLarge(_parsed_too_large(self.limits))

    def records_at_least(self) -> int:
        """Lines that start with ``{``: each is a record (or the request fails). Counted once."""
        if self._records_at_least is None:
            self._records_at_least = self.body.count(b"\n{") + (self.body[:1] == b"{")
        return self._records_at_least

    def size_bytes(self) -> int:
        """The request so far as one table: its parts plus the null cells that joining them adds."""
        missing = len(self.names) * self.rows - self.present_cells
        return self.nbytes + missing * NULL_CELL_BITS // 8

    def _add(self, table: pa.Table) -> None:
        self.meter.charge(table.nbytes)
        self.tables.append(table)
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        self.present_cells += table.num_rows * table.num_columns
        self.note_fields(table.column_names)

    def finish(self) -> pa.Table:
        if self.group:
            self._flush_group()
        if not self.tables:
            return empty_table()
        self.meter.charge(self.size_bytes() - self.nbytes)  # the null cells joining the parts adds
        table = pa.concat_tables(self.tables, promote_options="default") if len(self.tables) > 1 else self.tables[0]
        self.tables = []
        # Joining parts puts the fields only later parts have last: back to _time, _msg, then by name.
        table = table.select(["_time", "_msg", *sorted(set(table.column_names) - {"_time", "_msg"})])
        if max(column.num_chunks for column in table.columns) > MAX_CHUNKS:
            # One chunk a column: the WAL compresses each chunk's buffers apart (a zstd context
            # each, ~30 us), and the memtable and blocks read one chunk faster.
            self.meter.charge(self.size_bytes())  # a copy, then the parts are gone
            table = table.combine_chunks()
            self.meter.refund(self.nbytes)
        return table

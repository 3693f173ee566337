"""What one ingest request may be and become: the limits, and the guards that enforce them.

Every ingest path (the NDJSON and text endpoint, OTLP, Loki, Elasticsearch bulk,
forward) goes through these guards before a parser that infers sees a body:

    limit                       setting (flag / variable)                        exceeded
    decoded body size           --max-decoded-bytes  HELIOS_MAX_DECODED_BYTES    413, decoding stops there
    JSON nesting depth          --max-nesting-depth  HELIOS_MAX_NESTING_DEPTH    400 naming the line
    distinct fields             --max-fields         HELIOS_MAX_FIELDS           400
    parsed (Arrow) size         --max-parsed-bytes   HELIOS_MAX_PARSED_BYTES     413, parsing stops there
    memory of all requests      --ingest-memory-bytes HELIOS_INGEST_MEMORY_BYTES 503 (retry), see budget.py
    ``_time``                   fixed: [1970-01-01T00:00:00Z, 2200-01-01T00:00:00Z)   400 naming the line

``check_json_nesting`` is the depth guard. pyarrow's JSON reader crashes the
process (segmentation fault) on arrays or objects nested some ten thousand
deep, and is slow well before that, when it infers types; the guard rejects
such bytes after one pass at C speed, in bounded memory, without a per-byte
Python loop. Every parser that infers (pyarrow without a schema, orjson) sees
only guarded bytes; pyarrow reading with an explicit schema learnt from guarded
bytes stops at the first value the schema does not have (an array or object
where a string, number or struct field is, or an unknown key), so it never
goes deeper than the schema (``records.py``; ``tests/test_hostile_ingest.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil
from helios.errors import IngestError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_TIME_NS",
    "MIN_TIME_NS",
    "TIME_RANGE",
    "IngestLimits",
    "check_json_nesting",
    "check_time_range",
]

MIN_TIME_NS = 0  # 1970-01-01T00:00:00Z, inclusive
MAX_TIME_NS = 7_258_118_400_000_000_000  # 2200-01-01T00:00:00Z, exclusive
TIME_RANGE = "from 1970-01-01T00:00:00Z (inclusive) to 2200-01-01T00:00:00Z (exclusive)"


@dataclass(frozen=True)
class IngestLimits:
    """The per-request limits; ``from_config`` reads them from the node's settings."""

    max_decoded_bytes: int = 256 << 20
    max_parsed_bytes: int = 256 << 20
    max_fields: int = 1000
    max_nesting_depth: int = 32

    @classmethod
    def from_config(cls, config: Any) -> IngestLimits:
        return cls(max_decoded_bytes=config.max_decoded_bytes, max_parsed_bytes=config.max_parsed_bytes,
                   max_fields=config.max_fields, max_nesting_depth=config.max_nesting_depth)


DEFAULT_LIMITS = IngestLimits()

# -- nesting depth ------------------------------------------------------------------

_SCAN_CHUNK_BYTES = 4 << 20
_FEW_ESCAPED_QUOTES = 4096  # runs of backslashes per chunk found one by one; more: one regex pass
_ESCAPE_PAIR = re.compile(rb'\\[\\"]')  # an escaped backslash or quote
_BACKSLASHES = re.compile(rb"\\+")
_STRING = re.compile(rb'"[^"\n]*"')  # a string and what it holds, on one line (escaped quotes are gone)
_KEEP = b'"{}[]\n'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
# byte -> depth step: +1 for { and [, -1 for } and ], else 0; byte -> 1 for a quote
_STEP = pa.array([1 if b in b"{[" else -1 if b in b"}]" else 0 for b in range(256)], pa.int64())
_QUOTE = pa.array([1 if b == 34 else 0 for b in range(256)], pa.int32())


@dataclass
class _ScanState:
    depth: int = 0  # running sum of the steps outside strings
    low: int = 0  # lowest running sum so far (a parser may start afresh at any line)
    in_string: int = 0  # 1 when the current line is inside a string
    lines: int = 0  # newlines seen before this chunk
    backslash: bytes = b""  # one pending backslash from the end of the previous chunk


def check_json_nesting(body: bytes | bytearray | memoryview, max_depth: int, first_line: int = 1) -> None:
    """Raise ``IngestError`` (400, naming the line) if JSON in ``body`` nests deeper than ``max_depth``.

    ``first_line``: the number of ``body``'s first line in the request (a piece of a body is checked
    on its own: a parser that starts at the piece's start is bounded the same way).

    Depth counts open objects and arrays: ``{"a": [1]}`` is 2 deep. The body is
    read in chunks of a few MiB, so memory stays bounded whatever its size.

    Per chunk, at C speed: escaped quotes are dropped (a quote after an odd run
    of backslashes), so every remaining quote is a real one; every byte but
    ``" { } [ ] newline`` is deleted (``bytes.translate``); adjacent quote pairs
    are deleted (this keeps the quote parity before every other byte, so no
    bracket changes sides; ordinary keys and values vanish here), then every
    string that ends on its line with what it holds (a regular expression; again
    the parity of the rest is kept). What remains,
    a few bytes a line, is scanned with pyarrow.compute: quotes toggle "inside a
    string" (reset at each newline: a raw newline cannot be inside a valid
    string), brackets outside strings step a running depth ``D``. The bound
    checked is ``D(p) - min(D before p)``: a parser that starts at a line start
    (pyarrow parses blocks cut at newlines, orjson one line at a time) and stops
    at its first error is ``D(p) - D(start) <= D(p) - min D`` deep at ``p``. So
    the guard never under-counts, and on valid NDJSON it is exact. The usual
    remainder, one ``{}`` a line (flat records), is recognised without a scan.
    """
    view = memoryview(body).cast("B")
    state = _ScanState(lines=first_line - 1)
    for start in range(0, len(view), _SCAN_CHUNK_BYTES):
        chunk = state.backslash + bytes(view[start : start + _SCAN_CHUNK_BYTES])
        trailing = len(chunk) - len(chunk.rstrip(b"\\"))
        # A run of backslashes at the end continues in the next chunk: carry its parity.
        state.backslash = b"\\" if trailing % 2 else b""
        if trailing:
            chunk = chunk[: len(chunk) - trailing]
        if b"\\" in chunk:
            chunk = _unescape_quotes(chunk)
        compact = chunk.translate(None, _DROP).replace(b'""', b"")
        if not state.in_string and b'"' in compact:
            compact = _STRING.sub(b"", compact)  # strings ending on their line, and their brackets
        if state.in_string or b'"' in compact:
            _scan(compact, state, max_depth)
        elif not _flat(compact, state, max_depth) and not _scan_brackets(compact, state, max_depth):
            _scan(compact, state, max_depth)  # over the limit: the exact scan names the line
        state.lines += compact.count(b"\n")


def _unescape_quotes(chunk: bytes) -> bytes | bytearray:
    """Drop every escaped quote (only quotes matter; other escapes vanish with the backslashes).

    Runs of backslashes are found with ``bytes.find`` (memchr speed; a few per
    log line at most) and a quote after an odd run becomes a space; an
    escape-heavy chunk instead loses its ``\\\\`` and ``\\"`` pairs, left to
    right as JSON pairs them, in one regular-expression pass.
    """
    marks: list[int] = []
    size = len(chunk)
    position = chunk.find(b"\\")
    for _ in range(_FEW_ESCAPED_QUOTES):
        if position < 0:
            break
        end = _BACKSLASHES.match(chunk, position).end()  # type: ignore[union-attr]  # the whole run
        if end < size and chunk[end] == 0x22 and (end - position) % 2:
            marks.append(end)
        position = chunk.find(b"\\", end)
    else:
        return _ESCAPE_PAIR.sub(b"", chunk)
    if not marks:
        return chunk
    out = bytearray(chunk)
    for mark in marks:
        out[mark] = 0x20  # a space: deleted with the other bytes
    return out


def _codes(compact: bytes | bytearray) -> pa.Array:
    return pa.Array.from_buffers(pa.uint8(), len(compact), [None, pa.py_buffer(compact)])


def _flat(compact: bytes, state: _ScanState, max_depth: int) -> bool:
    """No quotes left, and every bracket in an innermost ``{}`` pair: the depth only rises by one and
    falls back (``state`` unchanged). False if that is not so, or if that one level is too deep."""
    if compact.replace(b"{}", b"").replace(b"\n", b""):
        return False
    return b"{" not in compact or state.depth + 1 - state.low <= max_depth


def _scan_brackets(compact: bytes, state: _ScanState, max_depth: int) -> bool:
    """No quotes left in the chunk: every bracket counts. False (state untouched) if too deep."""
    if not compact:
        return True
    depth = pc.cumulative_sum(pc.take(_STEP, _codes(compact)), start=state.depth)
    lows = pc.min_element_wise(pc.cumulative_min(depth), state.low)
    if pc.max(pc.subtract(depth, lows)).as_py() > max_depth:
        return False
    state.depth, state.low = depth[len(depth) - 1].as_py(), lows[len(lows) - 1].as_py()
    return True


def _scan(compact: bytes, state: _ScanState, max_depth: int) -> None:
    """The general scan: quotes toggle strings (reset at newlines); raises naming the line."""
    if not compact:
        return
    codes = _codes(compact)
    quote = pc.take(_QUOTE, codes)
    # Quotes before each position, counted from the start of its line (the first line of the
    # chunk continues the previous chunk's line: its parity comes in as in_string).
    before = pc.subtract(pc.cumulative_sum(quote, start=state.in_string), quote)
    at_line_start = pc.fill_null(pc.fill_null_forward(pc.if_else(pc.equal(codes, 10), before, None)), 0)
    inside = pc.bit_wise_and(pc.subtract(before, at_line_start), 1).cast(pa.bool_())
    steps = pc.if_else(inside, 0, pc.take(_STEP, codes))
    depth = pc.cumulative_sum(steps, start=state.depth)
    lows = pc.min_element_wise(pc.cumulative_min(depth), state.low)
    excess = pc.subtract(depth, lows)
    if pc.max(excess).as_py() > max_depth:
        first = pc.index(pc.greater(excess, max_depth), True).as_py()
        line = state.lines + compact.count(b"\n", 0, first) + 1
        raise IngestError(f"JSON nested deeper than {max_depth} levels (objects and arrays; "
                          "the limit is HELIOS_MAX_NESTING_DEPTH)", line)
    last = len(compact) - 1
    state.depth, state.low = depth[last].as_py(), lows[last].as_py()
    state.in_string = (before[last].as_py() + quote[last].as_py() - at_line_start[last].as_py()) % 2


# -- time range -----------------------------------------------------------------------


def check_time_range(times: pa.Array | pa.ChunkedArray, line_of: Callable[[int], int]) -> None:
    """Raise ``IngestError`` naming the first row whose ``_time`` is outside ``TIME_RANGE``.

    Queries without ``to`` end at the largest int64, exclusive, and bucket
    arithmetic needs headroom: times outside the range could be stored but
    never found, so they are refused.
    """
    if len(times) == 0:
        return
    ns = times.cast(pa.int64())
    bounds = pc.min_max(ns)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or (low >= MIN_TIME_NS and high < MAX_TIME_NS):
        return
    outside = pc.or_(pc.less(ns, MIN_TIME_NS), pc.greater_equal(ns, MAX_TIME_NS))
    row = pc.index(outside, True).as_py()
    value = ns[row].as_py()
    raise IngestError(f"_time {_describe(value)} is outside the supported range, {TIME_RANGE}", line_of(row))


def _describe(ns: int) -> str:
    try:
        return timeutil.format_ns(ns)
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"

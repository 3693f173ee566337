"""Cutting an NDJSON body into pieces of whole lines that are safe to parse one at a time.

An Arrow table has every column for every row: a piece of R rows in which C
distinct keys appear becomes R x C cells, whatever few of them hold values,
and pyarrow builds a column (with a builder and a schema field) per key. A
key takes at least 5 bytes (``"k":1,``) and is followed by a colon, so for a
piece of B bytes with K colons, C <= min(K, B / 5). Pieces are cut so that

    R x B <= ROWS_X_BYTES      (cells <= ROWS_X_BYTES / 5, about 6.7 M: tens of MB)
    K <= MAX_COLONS            (at most that many columns for pyarrow to build)

unless the piece is a single line, which cannot be cut: a single line over
``MAX_COLONS`` colons is marked ``wide`` and parsed per line (orjson), after a
worst-case memory check (``records.EXACT_BYTES_PER_KEY`` per colon).

Typical log lines (300 bytes, 10 to 20 keys) give pieces of ~100 KB and ~350
rows, which pyarrow parses as fast as one large block. Sizes adapt to the
average line length seen so far; every count is a C-speed ``bytes`` method,
never a Python loop over lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import Iterator

__all__ = ["MAX_COLONS", "ROWS_X_BYTES", "Piece", "cut_after", "pieces"]

ROWS_X_BYTES = 1 << 25
MAX_COLONS = 1 << 14
MIN_PIECE_BYTES = 1 << 12
MAX_PIECE_BYTES = 4 << 20
FIRST_PIECE_BYTES = 1 << 16


@dataclass(frozen=True)
class Piece:
    start: int  # byte offsets in the body: [start, end), whole lines
    end: int
    first_line: int  # 1-based line number of its first line
    rows: int  # lines in it (an upper bound on its records: blank lines count)
    wide: bool  # one line with more than MAX_COLONS colons


def pieces(body: bytes | bytearray, start: int = 0, stop: int | None = None,
           first_line: int = 1) -> Iterator[Piece]:
    """Consecutive pieces covering ``body[start:stop]`` (whole lines), each within the bounds
    above (or one line); ``first_line`` is the line number at ``start``."""
    size = FIRST_PIECE_BYTES
    position, line = start, first_line
    total = len(body) if stop is None else stop
    while position < total:
        while True:  # shrink until the piece fits; a single line always ends this loop
            end = cut_after(body, position, size, total)
            newlines = body.count(b"\n", position, end)
            rows = newlines + (body[end - 1] != 0x0A)
            length = end - position
            colons = body.count(b":", position, end)
            if rows <= 1 or (rows * length <= ROWS_X_BYTES and colons <= MAX_COLONS):
                break
            size = max(1, length // 2)
        yield Piece(position, end, line, rows, wide=rows <= 1 and colons > MAX_COLONS)
        position, line = end, line + newlines
        average = max(1, length // max(rows, 1))
        size = min(MAX_PIECE_BYTES, max(MIN_PIECE_BYTES, isqrt(ROWS_X_BYTES // 2 * average)))


def cut_after(body: bytes | bytearray, start: int, size: int, stop: int | None = None) -> int:
    """End of whole lines from ``start``: after the last newline within ``size`` bytes, or the end
    of the first line if it is longer (never past ``stop``, itself the end of a line or the body)."""
    total = len(body) if stop is None else stop
    limit = start + max(1, size)
    if limit >= total:
        return total
    cut = body.rfind(b"\n", start, limit)
    if cut < 0:
        cut = body.find(b"\n", limit, total)
        return total if cut < 0 else cut + 1
    return cut + 1

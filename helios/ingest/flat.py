"""Ingest's fast path: NDJSON of flat objects read by ``_flatjson`` (C) into Arrow buffers.

``pyarrow.json`` spends ~1.9 us of CPU a row on the bench's Loghub records with a schema given,
as much as DuckDB's whole load of a row; ``_flatjson`` reads the common shape (one object a line,
every value a string, number, true/false or null, keys without escapes) in ~0.4 us, without the
GIL. A span (``records._read_span``) is offered to it first; whatever it is not sure of it
declines (None), and the span is read by ``pyarrow.json`` exactly as before. What it accepts
equals ``pyarrow.json``'s table for the same bytes and schema (``tests/test_flatjson.py``).

The extension is optional: ``setup.py`` builds it where a C compiler is found. Without it,
``AVAILABLE`` is False and every span takes ``pyarrow.json`` (same answers, slower ingest).
"""

from __future__ import annotations

import pyarrow as pa

try:
    from helios.ingest import _flatjson
except ImportError:  # not built (no C compiler at install): pyarrow.json reads everything
    _flatjson = None

__all__ = ["AVAILABLE", "infer_schema", "read_flat"]

AVAILABLE = _flatjson is not None
MAX_FIELDS = 64  # as _flatjson.c: wider schemas take pyarrow.json

_KINDS = {pa.int64(): "i", pa.float64(): "d", pa.string(): "s", pa.bool_(): "b", pa.null(): "n"}
_TYPES = {kind: kind_type for kind_type, kind in _KINDS.items()}
_plans: dict[tuple[pa.Schema, bool], tuple[tuple[bytes, ...], bytes] | None] = {}
TIME = "_time"  # never read as text: normalising parses it as a number of nanoseconds or RFC 3339 text


def _plan(schema: pa.Schema, text: bool) -> tuple[tuple[bytes, ...], bytes] | None:
    """The schema as ``_flatjson.read`` takes it (names, kinds: upper case for a number or bool
    field read as text), or None if a type is not flat."""
    if (schema, text) in _plans:
        return _plans[schema, text]
    kinds = [_KINDS.get(field.type) for field in schema]
    plan = None
    if 0 < len(kinds) <= MAX_FIELDS and None not in kinds and len(set(schema.names)) == len(kinds):
        if text:
            kinds = [kind.upper() if kind in "idb" and name != TIME else kind  # type: ignore[operator]
                     for name, kind in zip(schema.names, kinds)]
        plan = (tuple(name.encode() for name in schema.names), "".join(kinds).encode())  # type: ignore[arg-type]
    if len(_plans) > 256:  # bodies of many shapes: forget, rather than grow
        _plans.clear()
    _plans[schema, text] = plan
    return plan


def read_flat(data: bytes | bytearray | memoryview, schema: pa.Schema, *, text: bool = False) -> pa.Table | None:
    """``data`` (whole lines, valid UTF-8) as a table of ``schema``, or None to read it otherwise.

    ``text``: its number and bool fields but ``_time`` come as strings, each value the text the
    node stores (``normalise``: an integer's digits, a double as Arrow writes it, true / false), so
    that normalising has nothing to cast and no double to check; a number whose text the reader
    is not sure of (over 15 significant digits, an integer past int64) declines the span."""
    if _flatjson is None:
        return None
    plan = _plan(schema, text)
    if plan is None:
        return None
    read = _flatjson.read(data, *plan)
    if read is None:
        return None
    rows, columns = read
    arrays = []
    for field, (nulls, valid, values, offsets, chars) in zip(schema, columns):
        validity = pa.py_buffer(valid) if nulls else None
        kind = field.type
        if kind == pa.null():
            arrays.append(pa.nulls(rows))
        elif kind == pa.string() or (text and field.name != TIME):
            arrays.append(pa.Array.from_buffers(pa.string(), rows, [validity, pa.py_buffer(offsets),
                                                                    pa.py_buffer(chars)], null_count=nulls))
        else:
            arrays.append(pa.Array.from_buffers(kind, rows, [validity, pa.py_buffer(values)], null_count=nulls))
    if text:
        return pa.Table.from_arrays(arrays, names=schema.names)
    return pa.Table.from_arrays(arrays, schema=schema)


def infer_schema(data: bytes | bytearray | memoryview) -> pa.Schema | None:
    """The schema ``pyarrow.json`` infers for ``data`` (a body's sample of whole lines, valid
    UTF-8), or None to let pyarrow infer it. pyarrow's inference of 64 lines costs ~0.6 ms, a
    fixed cost, about what ``read_flat`` spends on the other 5,000 rows of a typical body.

    Where pyarrow would infer a timestamp from a string field, this says string, which is what
    every field but ``_time`` is stored as anyway (pyarrow's guess made ``normalise.fast_fields``
    send the body to the per-line path, to keep the text): a sample whose ``_time`` is text is
    left to pyarrow, so that ``_time`` is read as it always was."""
    if _flatjson is None:
        return None
    fields = _flatjson.infer(data)
    if fields is None or any(name == b"_time" and kind == "s" for name, kind in fields):
        return None
    try:
        return pa.schema([(name.decode(), _TYPES[kind]) for name, kind in fields])
    except UnicodeDecodeError:  # the caller checks the bytes first; a key that is not UTF-8 is pyarrow's
        return None


def is_utf8(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` decodes as UTF-8 (strictly, as ``bytes.decode`` does), without making the
    string: a 1.3 MB body's decode made a 1.3 MB str only to drop it (4-5 % of an ingesting
    node's CPU with its page faults); ``_flatjson.utf8`` checks it in place, ASCII 32 then 8 bytes
    at a time."""
    if _flatjson is not None:
        return bool(_flatjson.utf8(data))
    try:
        bytes(data).decode("utf-8") if isinstance(data, memoryview) else data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

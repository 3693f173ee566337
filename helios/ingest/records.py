"""Request bodies to normalised record tables.

A normalised table has ``_time`` (timestamp[ns, UTC], never null), ``_msg``
(string, never null) and any number of other fields, each a nullable string
column. Nested objects are flattened with dots; arrays are kept as their JSON
text; numbers and booleans are kept as their text (VictoriaLogs' model: a
field has no fixed type, numeric filters and aggregations parse on read).

NDJSON takes a vectorised path (``pyarrow.json``) and falls back to an exact
per-line path (orjson) when the fast one cannot be used: a malformed line (to
name it), a field whose type changes between lines, an array, or text that
pyarrow would have turned into a timestamp. Both paths give the same table.
"""

from __future__ import annotations

import io
import re
from typing import Any, Iterable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from helios import timeutil
from helios.errors import IngestError, InvalidInput

__all__ = ["MAX_FIELDS", "RESERVED", "empty_table", "from_columns", "parse_ndjson", "parse_text"]

MAX_FIELDS = 1000
MAX_FIELD_NAME = 256
RESERVED = frozenset({"dataset"})  # the dataset name is a pseudo-field of every row


class _Fallback(Exception):
    """The fast path cannot represent this body exactly; use the per-line path."""


def empty_table() -> pa.Table:
    return pa.table({"_time": pa.array([], timeutil.TIME_TYPE), "_msg": pa.array([], pa.string())})


def _check_utf8(body: bytes) -> None:
    """Reject a body that is not UTF-8, naming the line (pyarrow.json would accept it)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError("not valid UTF-8", body.count(b"\n", 0, exc.start) + 1) from None


def parse_text(body: bytes, now_ns: int) -> pa.Table:
    """``text/plain``: every non-blank line is one record's ``_msg``."""
    _check_utf8(body)
    raw = [line[:-1] if line.endswith(b"\r") else line for line in body.split(b"\n")]
    raw = [line for line in raw if line.strip()]
    msgs = pa.array(raw, pa.binary()).cast(pa.string())
    return pa.table({"_time": _ingest_times(now_ns, len(raw)), "_msg": msgs})


def _ingest_times(now_ns: int, count: int) -> pa.Array:
    """Ingest time for rows without ``_time``: ``now``, ``now+1ns``, … so line order survives."""
    if count == 0:
        return pa.array([], timeutil.TIME_TYPE)
    steps = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), count))
    return pc.add(steps, now_ns - 1).cast(timeutil.TIME_TYPE)


# A line that does not start an object (the first line is checked apart: a pattern that begins
# with a literal newline is searched at memchr speed, ~3 GB/s; `(?:^|\n)` is 30 times slower).
_FIRST_IS_OBJECT = re.compile(rb"[ \t\r\n]*\{")
_LATER_NOT_OBJECT = re.compile(rb"\n[ \t\r]*[^{ \t\r\n]")


def parse_ndjson(body: bytes, now_ns: int) -> pa.Table:
    """NDJSON: one JSON object per line; blank lines are skipped."""
    if not body.strip():
        return empty_table()
    _check_utf8(body)
    if not _FIRST_IS_OBJECT.match(body) or _LATER_NOT_OBJECT.search(body):
        # A line that does not start an object: the exact path names it. pyarrow must not see it:
        # it reads a `null` line as an empty record, and a body that starts with one crashes it
        # (pyarrow 26: segmentation fault, found by tests/test_input_fuzz.py).
        return _parse_exact(body, now_ns)
    try:
        table = pajson.read_json(
            io.BytesIO(body),
            read_options=pajson.ReadOptions(block_size=max(1 << 20, min(len(body) + 1, 64 << 20))),
        )
        return _normalise_fast(table, body, now_ns)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, _Fallback):
        return _parse_exact(body, now_ns)


def _normalise_fast(table: pa.Table, body: bytes, now_ns: int) -> pa.Table:
    rows = table.num_rows  # flattening a table of empty objects alone loses its row count
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    columns: dict[str, pa.ChunkedArray] = {}
    for name, column in zip(table.column_names, table.columns):
        _check_name(name, line=None)
        kind = column.type
        if name == "_time":
            columns[name] = column
        elif pa.types.is_null(kind):
            continue
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns[name] = column.cast(pa.string())
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            columns[name] = column.cast(pa.string())
        else:  # timestamps pyarrow inferred from text, lists, …: keep the exact text
            raise _Fallback(name)
    return from_columns(columns, rows, now_ns, lambda row: _line_of_row(body, row))


def _parse_exact(body: bytes, now_ns: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise IngestError(f"malformed JSON: {exc}", number) from None
        if not isinstance(doc, dict):
            raise IngestError(f"expected a JSON object, got {_json_kind(doc)}", number)
        flat: dict[str, Any] = {}
        _flatten(doc, "", flat, number)
        rows.append(flat)
        lines.append(number)
    names: dict[str, None] = {}
    for flat in rows:
        names.update(dict.fromkeys(flat))
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [flat.get(name) for flat in rows]
        if name == "_time":
            for index, value in enumerate(values):
                if value is not None and (isinstance(value, (bool, float)) or not isinstance(value, (int, str))):
                    raise IngestError("_time must be RFC 3339 text or integer nanoseconds", lines[index])
            ints = [str(v) if isinstance(v, int) else v for v in values]
            columns[name] = pa.array(ints, pa.string())
        else:
            columns[name] = _render(values)
    return from_columns(columns, len(rows), now_ns, lambda row: lines[row])


def from_columns(columns: dict[str, Any], num_rows: int, now_ns: int, line_of: Any) -> pa.Table:
    """Assemble a normalised table from flattened columns; ``_time`` parsed, defaults filled."""
    if len(columns) > MAX_FIELDS:
        raise InvalidInput(f"a request may carry at most {MAX_FIELDS} distinct fields")
    raw_time = columns.pop("_time", None)
    defaults = _ingest_times(now_ns, num_rows)
    if raw_time is None:
        times = defaults
    else:
        try:
            parsed = timeutil.parse_column(raw_time)
            times = pc.if_else(pc.is_null(parsed), defaults, parsed) if parsed.null_count else parsed
        except ValueError:
            row = _first_bad_time(raw_time)
            raise IngestError("_time must be RFC 3339 text or integer nanoseconds", line_of(row)) from None
    msg = columns.pop("_msg", None)
    if msg is None:
        msg = pa.array([""] * num_rows, pa.string())
    else:
        msg = pc.fill_null(msg.cast(pa.string()), "")
    out = {"_time": times, "_msg": msg}
    out.update(columns)
    return pa.table(out)


def _first_bad_time(values: Any) -> int:
    for row, value in enumerate(values.to_pylist()):
        if value is None:
            continue
        try:
            timeutil.parse_column(pa.array([value]))
        except ValueError:
            return row
    return 0


def _line_of_row(body: bytes, row: int) -> int:
    seen = -1
    for number, line in enumerate(body.split(b"\n"), 1):
        if line.strip():
            seen += 1
            if seen == row:
                return number
    return 1


def _flatten(doc: dict[str, Any], prefix: str, out: dict[str, Any], line: int) -> None:
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict):
            if value:
                _flatten(value, name + ".", out, line)
            continue
        _check_name(name, line)
        if isinstance(value, list):
            value = orjson.dumps(value).decode()
        out[name] = value


def _check_name(name: str, line: int | None) -> None:
    problem = None
    if not name:
        problem = "a field name is empty"
    elif len(name) > MAX_FIELD_NAME:
        problem = f"a field name is longer than {MAX_FIELD_NAME} characters"
    elif name in RESERVED:
        problem = f"the field name {name!r} is reserved (it names the dataset of each row); rename it"
    if problem is None:
        return
    if line is None:
        raise _Fallback(name)  # the exact path names the line
    raise IngestError(problem, line)


def _render(values: Iterable[Any]) -> pa.Array:
    """Scalars to their text; floats rendered by Arrow, as on the fast path."""
    values = list(values)
    if all(v is None or isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    floats = [(i, v) for i, v in enumerate(values) if isinstance(v, float)]
    rendered = [
        None if v is None else v if isinstance(v, str)
        else ("true" if v else "false") if isinstance(v, bool) else str(v)
        for v in values
    ]
    if floats:
        texts = pa.array([v for _, v in floats], pa.float64()).cast(pa.string()).to_pylist()
        for (index, _), text in zip(floats, texts):
            rendered[index] = text
    return pa.array(rendered, pa.string())


def _json_kind(doc: object) -> str:
    if isinstance(doc, bool):
        return "a boolean"
    if isinstance(doc, (int, float)):
        return "a number"
    return {list: "an array", str: "a string"}.get(type(doc), "null")

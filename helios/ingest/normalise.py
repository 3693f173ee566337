"""Normalised record tables: the columns both ingest paths produce, and the per-line path.

A normalised table has ``_time`` (timestamp[ns, UTC], never null), ``_msg``
(string, never null) and any number of other fields, each a nullable string
column, in the order ``_time``, ``_msg``, then by name. Nested objects are
flattened with dots; arrays are kept as their JSON text; numbers and booleans
are kept as their text (VictoriaLogs' model: a field has no fixed type,
numeric filters and aggregations parse on read). ``_time`` must lie in
``limits.TIME_RANGE``.

Two ways to get there, one result: ``normalise_fast`` takes what
``pyarrow.json`` read (a schema ``fast_fields`` accepted), ``parse_exact``
reads line by line with orjson (a malformed line, to name it; arrays; text
pyarrow would turn into a timestamp; a bad field name). Floats are rendered by
Arrow on both (``1e20`` -> ``1e+20``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil
from helios.errors import IngestError, InvalidInput
from helios.ingest.limits import check_time_range

__all__ = [
    "MAX_FIELD_NAME",
    "RESERVED",
    "Fallback",
    "check_exact_numbers",
    "check_utf8",
    "empty_table",
    "fast_fields",
    "from_columns",
    "ingest_times",
    "line_of_row",
    "normalise_fast",
    "parse_exact",
]

MAX_FIELD_NAME = 256
EXACT_INTEGERS = float(1 << 53)  # a double holds every integer below this magnitude
RESERVED = frozenset({"dataset"})  # the dataset name is a pseudo-field of every row

Body = bytes | bytearray


class Fallback(Exception):
    """The fast path cannot represent this piece exactly; use the per-line path."""


def empty_table() -> pa.Table:
    return pa.table({"_time": pa.array([], timeutil.TIME_TYPE), "_msg": pa.array([], pa.string())})


def check_utf8(piece: Body, first_line: int) -> None:
    """Reject bytes that are not UTF-8, naming the line (pyarrow.json would accept them)."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError("not valid UTF-8", first_line + piece.count(b"\n", 0, exc.start)) from None


def ingest_times(now_ns: int, count: int) -> pa.Array:
    """Ingest time for rows without ``_time``: ``now``, ``now+1ns``, … so line order survives."""
    if count == 0:
        return pa.array([], timeutil.TIME_TYPE)
    steps = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), count))
    return pc.add(steps, now_ns - 1).cast(timeutil.TIME_TYPE)


def fast_fields(schema: pa.Schema) -> list[str]:
    """The fields the piece will have (flattened, not all null); raise ``Fallback`` unless every
    one is a name and type the fast path keeps."""
    fields = []
    stack = [(field.name, field.type) for field in schema]
    while stack:
        name, kind = stack.pop()
        if pa.types.is_struct(kind):
            stack.extend((f"{name}.{child.name}", child.type) for child in kind)
            continue
        _check_name(name, line=None)
        if pa.types.is_null(kind):
            continue
        fields.append(name)
        if name != "_time" and not (
                pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise Fallback(name)  # timestamps pyarrow inferred from text, lists, …: keep the exact text
    return fields


def check_exact_numbers(table: pa.Table) -> None:
    """Raise ``Fallback`` unless every floating column reads as the per-line path would.

    pyarrow reads a field as double when one value of it in the part is a
    float (or an integer beyond int64), and the integers beside it become
    doubles: from 2^53 on they round (``12345678901234567`` next to ``1.5``
    would be ``12345678901234568``), and below it Arrow may write them with an
    exponent (``123456789012`` as ``1.23456789012e+11``). The per-line path
    keeps an integer's text. So a double column that holds a magnitude of 2^53
    or more, or a whole number whose text as a double is not its text as an
    integer, is read per line; other doubles (``0.5``, ``2.0`` -> ``2``) read
    the same both ways.
    """
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    for column in table.columns:
        if not pa.types.is_floating(column.type) or column.null_count == len(column):
            continue
        largest = pc.max(pc.abs(column)).as_py()
        if largest >= EXACT_INTEGERS:
            raise Fallback(f"{largest} is past the integers a double holds exactly")
        wholes = column.filter(pc.equal(column, pc.floor(column)))  # only they can differ
        if len(wholes) == 0:
            continue
        as_integer = pc.cast(pc.cast(wholes, pa.int64(), safe=False), pa.string())
        if pc.any(pc.not_equal(as_integer, pc.cast(wholes, pa.string()))).as_py():
            raise Fallback("a whole number a double would write with an exponent")


def normalise_fast(table: pa.Table, now_ns: int, line_of: Callable[[int], int]) -> pa.Table:
    """A table ``pyarrow.json`` read (its schema accepted by ``fast_fields``), normalised."""
    rows = table.num_rows  # flattening a table of empty objects alone loses its row count
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    columns: dict[str, pa.ChunkedArray] = {}
    for name, column in zip(table.column_names, table.columns):
        if name == "_time":
            columns[name] = column
        elif not pa.types.is_null(column.type):
            columns[name] = column.cast(pa.string())
    return from_columns(columns, rows, now_ns, line_of)


def parse_exact(data: Body, first_line: int, now_ns: int, max_fields: int) -> pa.Table:
    """Lines of NDJSON, one by one (orjson); errors name the line (counted from ``first_line``)."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    names: dict[str, None] = {}
    for number, line in enumerate(data.split(b"\n"), first_line):
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
        names.update(dict.fromkeys(flat))
        if len(names) > max_fields:
            raise InvalidInput(f"a request may carry at most {max_fields} distinct fields "
                               "(HELIOS_MAX_FIELDS)")
        rows.append(flat)
        lines.append(number)
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
    """Assemble a normalised table from flattened columns: ``_time`` parsed and range-checked,
    defaults filled (``now_ns``, ``now_ns + 1``, … for rows without ``_time``); ``_time``,
    ``_msg``, then the other fields by name (both paths, every piece: one order)."""
    raw_time = columns.pop("_time", None)
    if raw_time is None:
        times = ingest_times(now_ns, num_rows)
    else:
        try:
            parsed = timeutil.parse_column(raw_time)
            times = (pc.if_else(pc.is_null(parsed), ingest_times(now_ns, num_rows), parsed)
                     if parsed.null_count else parsed)  # the defaults only where some row lacks a time
        except ValueError:
            row = _first_bad_time(raw_time)
            raise IngestError("_time must be RFC 3339 text or integer nanoseconds", line_of(row)) from None
        check_time_range(times, line_of)
    msg = columns.pop("_msg", None)
    if msg is None:
        msg = pa.array([""] * num_rows, pa.string())
    else:
        msg = pc.fill_null(msg.cast(pa.string()), "")
    out = {"_time": times, "_msg": msg}
    out.update((name, columns[name]) for name in sorted(columns))
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


def line_of_row(body: Body, row: int) -> int:
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
        raise Fallback(name)  # the exact path names the line
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

"""What every compatible-ingest protocol shares: field names, bounded flattening, rows → table.

Each protocol module (``otlp``, ``loki``, ``elastic``, ``syslog``, ``forward``)
turns one request into *rows*: plain dicts with an optional ``_time``
(integer nanoseconds), an optional ``_msg`` (text) and other fields whose
values are JSON scalars. ``to_table`` turns rows into exactly the normalised
table that ``/api/v1/ingest`` builds (``records.from_columns``): text columns,
numbers and booleans as their text, floats rendered by Arrow, missing
``_time`` = ingest time. ``engine.ingest(dataset, table)`` then answers only
after the WAL commit.

Field-name rule (every protocol): names are kept as sent (dots, dashes, ``@``);
a shipper's field named ``dataset``, ``_time`` or ``_msg`` is stored under the
same name with one more leading ``_`` (``_dataset``, ``__time``, ``__msg``),
never dropped; an empty name or one over ``records.MAX_FIELD_NAME`` characters
rejects the record. Nesting deeper than ``MAX_DEPTH`` rejects the record.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import orjson
import pyarrow as pa

from helios.errors import InvalidInput, PayloadTooLarge
from helios.ingest.normalise import MAX_FIELD_NAME, from_columns

__all__ = ["MAX_DEPTH", "PROTOCOLS", "RENAMED", "Row", "check_depth", "clean_text", "count_drop",
           "count_rows", "field_name", "flatten_into", "metric_lines", "time_ns", "to_table"]

MAX_DEPTH = 32  # nesting of maps/arrays/AnyValues inside one record
MAX_FIELDS = 1000  # distinct fields in one request (HELIOS_MAX_FIELDS' default)
MAX_CELLS = 10_000_000  # rows × distinct fields of one request, before it becomes a table
PROTOCOLS = ("otlp", "loki", "elastic", "syslog", "forward")
RENAMED = {"dataset": "_dataset", "_time": "__time", "_msg": "__msg"}

Row = dict[str, Any]


def clean_text(text: str) -> str:
    """Text as valid UTF-8: lone surrogates (undecodable bytes kept by a decoder) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def field_name(name: str) -> str:
    """A shipper's field name as stored (see the module docstring); InvalidInput if unusable."""
    if not name.isascii():
        name = clean_text(name)
    if not name:
        raise InvalidInput("a field name is empty")
    if len(name) > MAX_FIELD_NAME:
        raise InvalidInput(f"a field name is longer than {MAX_FIELD_NAME} characters: {name[:40]!r}…")
    return RENAMED.get(name, name)


def time_ns(value: int) -> int:
    """An event time in integer nanoseconds, checked to fit the time column (int64, after 1970)."""
    if not 0 <= value < 1 << 63:
        raise InvalidInput(f"a timestamp of {value} ns is out of range")
    return value


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise InvalidInput if ``value`` (decoded JSON or msgpack) nests deeper than ``limit``.

    Iterative, so a hostile document cannot exhaust the Python stack here.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            raise InvalidInput(f"the document nests deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


def flatten_into(row: Row, prefix: str, value: Any, depth: int = 0) -> None:
    """Put ``value`` under ``prefix`` in ``row``: maps flattened with dots, lists as JSON text.

    ``prefix`` is the name as sent; the stored name follows ``field_name``.
    """
    if depth > MAX_DEPTH:
        raise InvalidInput(f"a field nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, child in value.items():
            key = key if isinstance(key, str) else _text(key)
            flatten_into(row, f"{prefix}.{key}" if prefix else key, child, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        check_depth(list(value), MAX_DEPTH - depth)
        value = orjson.dumps(value, default=_text).decode()
    elif isinstance(value, bytes):
        value = _text(value)
    row[field_name(prefix)] = value


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def to_table(rows: list[Row], now_ns: int, *, max_fields: int = MAX_FIELDS) -> pa.Table:
    """Rows → the normalised table of ``records`` (``_time``, ``_msg``, text fields).

    Bounded like ``/api/v1/ingest``: at most ``max_fields`` distinct fields, and
    at most ``MAX_CELLS`` cells (rows × fields: every field is a cell of every
    row once it is a table), so sparse fields cannot blow one request up.
    """
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    if len(names) > max_fields:
        raise InvalidInput(f"a request may carry at most {max_fields} distinct fields (HELIOS_MAX_FIELDS)")
    if len(names) * len(rows) > MAX_CELLS:
        raise PayloadTooLarge(f"{len(rows)} records with {len(names)} distinct fields make more than "
                              f"{MAX_CELLS} cells; send smaller batches")
    columns: dict[str, Any] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name == "_time":  # integer ns, or text (RFC 3339 / digits as ns) parsed by from_columns
            if all(v is None or isinstance(v, int) for v in values):
                columns[name] = pa.array(values, pa.int64())
            else:
                columns[name] = pa.array([v if v is None else str(v) for v in values], pa.string())
        else:
            columns[name] = _render(values)
    return from_columns(columns, len(rows), now_ns, lambda row: row + 1)


def _render(values: list[Any]) -> pa.Array:
    """Scalars to their text as ``/api/v1/ingest`` stores them (floats rendered by Arrow)."""
    if all(v is None or isinstance(v, str) for v in values):
        try:
            return pa.array(values, pa.string())
        except UnicodeEncodeError:
            return pa.array([v if v is None else clean_text(v) for v in values], pa.string())
    rendered: list[str | None] = []
    floats: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None or isinstance(value, str):
            rendered.append(value if value is None or value.isascii() else clean_text(value))
        elif isinstance(value, bool):
            rendered.append("true" if value else "false")
        elif isinstance(value, float):
            floats.append((index, value))
            rendered.append(None)
        else:
            rendered.append(_text(value))
    if floats:
        texts = pa.array([v for _, v in floats], pa.float64()).cast(pa.string()).to_pylist()
        for (index, _), text in zip(floats, texts):
            rendered[index] = text
    return pa.array(rendered, pa.string())


def count_rows(counters: Counter[str], protocol: str, rows: int) -> None:
    counters[f"compat_rows.{protocol}"] += rows
    counters["ingested_rows"] += rows


def count_drop(counters: Counter[str], protocol: str, reason: str, count: int = 1) -> None:
    counters[f"compat_dropped.{protocol}.{reason}"] += count


def metric_lines(counters: Counter[str]) -> list[str]:
    """Prometheus lines: rows stored and requests/messages rejected or dropped, per protocol."""
    lines = ["# TYPE helios_compat_rows_total counter"]
    lines += [f'helios_compat_rows_total{{protocol="{p}"}} {counters[f"compat_rows.{p}"]}' for p in PROTOCOLS]
    lines.append("# TYPE helios_compat_dropped_total counter")
    for key in sorted(k for k in counters if k.startswith("compat_dropped.")):
        _, protocol, reason = key.split(".", 2)
        lines.append(f'helios_compat_dropped_total{{protocol="{protocol}",reason="{reason}"}} {counters[key]}')
    return lines

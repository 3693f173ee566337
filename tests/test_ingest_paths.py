"""The NDJSON reader's paths give one result.

``records.parse_ndjson`` learns a body's fields from a sample spread over it,
reads the rest in large spans with that schema (pyarrow.json), falls back to
pieces where a span does not fit, and to the per-line path (orjson) where the
fast path cannot represent a piece exactly. Whichever way a body goes, its
table must be the one the per-line path gives: same rows, same text for every
value, columns ``_time``, ``_msg``, then by name, one chunk each.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helios.errors import IngestError
from helios.ingest import records
from helios.ingest.normalise import parse_exact
from helios.ingest.records import parse_ndjson

NOW = 1_700_000_000_000_000_000


def _stored(table: pa.Table) -> pa.Table:
    """Without all-null fields (the fast path drops fields that are only ever null, the per-line path
    keeps them; the memtable drops both: ``memtable.drop_null_columns``), in one chunk."""
    keep = [n for n, c in zip(table.column_names, table.columns) if n in ("_time", "_msg") or c.null_count < len(c)]
    return table.select(keep).combine_chunks()


def _exact(body: bytes) -> pa.Table:
    """The per-line path alone: the reference."""
    return _stored(parse_exact(body, 1, NOW, 1000))


def _same(body: bytes) -> pa.Table:
    parsed = parse_ndjson(body, NOW)
    assert parsed.column_names == ["_time", "_msg", *sorted(parsed.column_names[2:])]
    assert all(column.num_chunks <= 1 for column in parsed.columns)
    table, expected = _stored(parsed), _exact(body)
    assert table.column_names == expected.column_names
    assert table.equals(expected), (table.to_pylist()[:3], expected.to_pylist()[:3])
    return table


def _lines(docs: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(doc).encode() + b"\n" for doc in docs)


def test_fields_of_later_sources_are_learnt_from_the_sample() -> None:
    """3,000 lines without ``level``, then 3,000 with it (as Loghub batches mix services)."""
    docs = [{"_time": NOW + i, "_msg": f"android {i}", "host": f"web-{i % 5}", "size": i} for i in range(3000)]
    docs += [{"_time": NOW + i, "_msg": f"apache {i}", "level": "INFO", "latency": i / 8} for i in range(3000)]
    table = _same(_lines(docs))
    assert table.column("level").null_count == 3000


def test_a_field_only_the_sample_misses_is_read_by_pieces() -> None:
    """A field that appears on one line between sample lines: the span fails, pieces find it."""
    docs = [{"_msg": f"m{i}", "n": i} for i in range(20_000)]
    docs[12_345]["rare"] = "once"
    table = _same(_lines(docs))
    assert table.column("rare").null_count == 19_999


def test_spans_of_large_bodies_and_a_type_change() -> None:
    """Over SPAN_BYTES (several spans), and a field whose type changes half-way (spans stop fitting)."""
    pad = "x" * 200
    docs = [{"_msg": f"{pad} {i}", "n": i if i < 30_000 else f"n{i}"} for i in range(60_000)]
    body = _lines(docs)
    assert len(body) > records.SPAN_BYTES
    _same(body)


@pytest.mark.parametrize("value", [12345678901234567, 123456789012, 10**15, 2**63 + 5, -0.0, 0, 7])
def test_integers_beside_floats_keep_their_text(value: Any) -> None:
    """pyarrow reads a field as double once any value is a float; integers must not round or gain an exponent."""
    docs = [{"_msg": "m", "a": value + i if isinstance(value, int) else value} for i in range(500)]
    docs.insert(250, {"_msg": "f", "a": 1.5})
    table = _same(_lines(docs))
    if isinstance(value, int):
        assert table.column("a")[0].as_py() == str(value)


def test_errors_still_name_their_line_after_a_span() -> None:
    body = _lines([{"_msg": f"m{i}", "n": i} for i in range(5000)]) + b'{"_msg": "x", "n": \n'
    with pytest.raises(IngestError) as info:
        parse_ndjson(body, NOW)
    assert info.value.line == 5001
    body = _lines([{"_msg": f"m{i}"} for i in range(5000)]) + b'{"_msg": "x", "_time": "later"}\n'
    with pytest.raises(IngestError) as info:
        parse_ndjson(body, NOW)
    assert info.value.line == 5001


SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
           | st.floats(allow_nan=False, allow_infinity=False))
DOCS = st.dictionaries(st.sampled_from(["_msg", "a", "b", "c.d", "é", "n"]),
                       SCALARS | st.dictionaries(st.sampled_from(["x", "y"]), SCALARS, max_size=2), max_size=5)


@given(st.lists(DOCS, min_size=1, max_size=40), st.integers(1, 300))
@settings(max_examples=300, deadline=None, database=None)
def test_every_path_reads_as_the_per_line_path(docs: list[dict[str, Any]], repeat: int) -> None:
    """Any records (repeated, so bodies reach the sample and span paths): the per-line result."""
    body = _lines(docs * repeat)
    try:
        expected = _exact(body)
    except IngestError:
        with pytest.raises(IngestError):
            parse_ndjson(body, NOW)
        return
    table = parse_ndjson(body, NOW)
    assert table.column_names == ["_time", "_msg", *sorted(table.column_names[2:])]
    assert all(column.num_chunks <= 1 for column in table.columns)
    table = _stored(table)
    assert table.column_names == expected.column_names == ["_time", "_msg", *sorted(table.column_names[2:])]
    assert table.equals(expected)

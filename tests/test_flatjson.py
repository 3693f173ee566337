"""The C fast path of ingest (``helios.ingest.flat``): what it accepts equals pyarrow.json's reading.

Two functions: ``read_flat`` (a span with a known schema) and ``infer_schema`` (a body's sample).
``read_flat(text=True)``, what ingest uses, gives number and bool fields as the text the node
stores; its oracle is the per-line path's text (orjson, then ``normalise._render``).

Its contract: for bytes it accepts, the table is the one ``pyarrow.json.read_json`` makes with the
same explicit schema (unexpected fields an error), row for row; anything else it declines (None)
and pyarrow reads as before. So every test here is one oracle -- pyarrow -- over Loghub lines,
generated records, their mutations, and hand-made hostile bytes; and ``parse_ndjson`` gives the
same tables with the fast path and without it.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pajson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helios.ingest import flat, records
from helios.ingest.normalise import _render
from helios.ingest.records import parse_ndjson
from support import loghub_records

pytestmark = pytest.mark.skipif(not flat.AVAILABLE, reason="helios.ingest._flatjson is not built (no C compiler)")

QUICK = settings(max_examples=400, deadline=None, database=None)
NOW_NS = 1_700_000_000_000_000_000


def pyarrow_read(data: bytes, schema: pa.Schema) -> pa.Table | None:
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    try:
        return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=len(data) + 1),
                                parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def agrees(data: bytes, schema: pa.Schema) -> pa.Table | None:
    """read_flat's table, after checking it against pyarrow's (None if it declined)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # the caller never offers invalid UTF-8
    got = flat.read_flat(data, schema)
    if got is not None:
        expected = pyarrow_read(data, schema)
        assert expected is not None, f"accepted what pyarrow refuses: {data[:300]!r}"
        assert got.schema == expected.schema
        assert got.equals(expected), f"{data[:300]!r}\n{got.to_pylist()[:3]}\n{expected.to_pylist()[:3]}"
        assert got.validate(full=True) is None
    return got


def agrees_as_text(data: bytes, schema: pa.Schema) -> pa.Table | None:
    """read_flat's table with numbers and bools as text, after checking it (None if it declined):
    pyarrow reads the bytes too, each string or null field as read_flat without text does, and each
    number or bool field (but ``_time``) as the per-line path writes the value orjson parses."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    got = flat.read_flat(data, schema, text=True)
    if got is not None:
        typed = pyarrow_read(data, schema)
        assert typed is not None, f"accepted what pyarrow refuses: {data[:300]!r}"
        docs = [orjson.loads(line) for line in data.split(b"\n") if line.strip()]
        assert got.num_rows == typed.num_rows == len(docs)
        assert got.column_names == schema.names
        for field in schema:
            column = got.column(field.name)
            if field.name == "_time" or field.type in (pa.string(), pa.null()):
                assert column.equals(typed.column(field.name)), field
            else:
                assert column.type == pa.string()
                expected = _render(doc.get(field.name) for doc in docs).to_pylist()
                assert column.to_pylist() == expected, (field, data[:300], column.to_pylist()[:5], expected[:5])
        assert got.validate(full=True) is None
    return got


def infers_as_pyarrow(data: bytes) -> pa.Schema | None:
    """infer_schema's answer, after checking it against pyarrow's inference (None if it declined)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    got = flat.infer_schema(data)
    if got is not None:
        try:
            expected = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(
                use_threads=False, block_size=max(1 << 16, len(data) + 1))).schema
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise AssertionError(f"inferred what pyarrow refuses: {data[:300]!r}") from None
        assert got.names == expected.names, data[:300]
        for mine, theirs in zip(got, expected):  # pyarrow may guess a timestamp from text
            assert mine.type == theirs.type or (mine.type == pa.string() and pa.types.is_timestamp(theirs.type)), (
                mine, theirs, data[:300])
    return got


def test_loghub_lines_are_read_by_the_fast_path_exactly() -> None:
    docs = [r.doc() for r in loghub_records()]
    body = b"".join(orjson.dumps(doc) + b"\n" for doc in docs)
    schema = pajson.read_json(io.BytesIO(body)).schema
    assert infers_as_pyarrow(body) == schema
    got = agrees(body, schema)
    assert got is not None and got.num_rows == len(docs)
    # Keys in another order a line, the ensure_ascii escapes json.dumps writes, blanks, no last newline.
    rng = random.Random(7)
    lines = []
    for doc in docs[:3000]:
        items = list(doc.items())
        rng.shuffle(items)
        lines.append(json.dumps(dict(items), separators=rng.choice([(",", ":"), (", ", ": ")])).encode())
    got = agrees(b"\n".join(lines), schema)
    assert got is not None and got.num_rows == 3000


SCALARS = {
    "i": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "d": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20),
    "s": st.text(max_size=12),
    "b": st.booleans(),
    "n": st.none(),
}
TYPES = {"i": pa.int64(), "d": pa.float64(), "s": pa.string(), "b": pa.bool_(), "n": pa.null()}


@st.composite
def bodies(draw: Any) -> tuple[bytes, pa.Schema]:
    kinds = draw(st.lists(st.sampled_from("idsbn"), min_size=1, max_size=5))
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=len(kinds), max_size=len(kinds), unique=True))
    schema = pa.schema([(name, TYPES[kind]) for name, kind in zip(names, kinds)])
    rows = draw(st.lists(st.fixed_dictionaries({}, optional={
        name: st.none() | SCALARS[kind] for name, kind in zip(names, kinds)}), min_size=1, max_size=8))
    ascii_only = draw(st.booleans())
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r")]))
    text = "\n".join(json.dumps(row, ensure_ascii=ascii_only, separators=sep) for row in rows)
    return (text + draw(st.sampled_from(["", "\n", " \n", "\r\n"]))).encode(), schema


@given(bodies())
@QUICK
def test_generated_records_equal_pyarrows_reading(case: tuple[bytes, pa.Schema]) -> None:
    data, schema = case
    agrees(data, schema)
    agrees_as_text(data, schema)


ANY_SCALAR = st.one_of(*SCALARS.values(), st.sampled_from(["2024-01-02T03:04:05", "2024-01-02 03:04:05Z",
                                                         "2024-01-02", "12:00:00"]))


@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "_time", "é", "x y"]), ANY_SCALAR, max_size=4),
                min_size=1, max_size=6))
@QUICK
def test_inferred_schemas_equal_pyarrows(rows: list[dict[str, Any]]) -> None:
    infers_as_pyarrow("\n".join(json.dumps(row) for row in rows).encode())


@given(bodies(), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
    ['"', "\\", "{", "}", "[", ",", ":", "\n", " ", "\x00", "\x1f", "-", ".", "e", "0", "9", "\\u", "\\ud800",
     "null", "true", "1e999", "\\udc00", "é", "\t"])), min_size=1, max_size=4), st.booleans())
@QUICK
def test_mutated_records_are_read_exactly_or_declined(case: tuple[bytes, pa.Schema],
                                                     edits: list[tuple[int, str]], cut: bool) -> None:
    data, schema = case
    for at, text in edits:
        at %= len(data) + 1
        data = data[:at] + text.encode() + data[at + (1 if cut else 0):]
    agrees(data, schema)
    agrees_as_text(data, schema)
    infers_as_pyarrow(data)


def test_the_shapes_it_must_decline_or_read_as_pyarrow_does() -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("c", pa.string()), ("d", pa.bool_()),
                        ("e", pa.null())])
    cases = [
        b'{"a":9223372036854775807}', b'{"a":-9223372036854775808}', b'{"a":9223372036854775808}',
        b'{"a":-9223372036854775809}', b'{"a":99999999999999999999999}', b'{"a":-0}', b'{"a":1.0}', b'{"a":1e2}',
        b'{"a":01}', b'{"a":-}', b'{"a":+1}', b'{"a":"1"}', b'{"b":1}', b'{"b":-0.0}', b'{"b":1e308}',
        b'{"b":1e309}', b'{"b":-1e309}', b'{"b":0e309}', b'{"b":0.0e310}', b'{"b":-0E+400}', b'{"b":1e300}',
        b'{"b":1e301}', b'{"b":0e-301}', b'{"b":4.9e-324}', b'{"b":1e-400}', b'{"b":12345678901234567890123}',
        b'{"b":0.' + b"1" * 80 + b"}", b'{"b":1.}', b'{"b":.5}', b'{"b":1e}', b'{"b":NaN}', b'{"b":Infinity}',
        b'{"c":"\\u0000"}', b'{"c":"\\ud83d\\ude00"}', b'{"c":"\\ud800"}', b'{"c":"\\udc00x"}',
        b'{"c":"\\ud800\\u0041"}', b'{"c":"\\u12"}', b'{"c":"\\x41"}', b'{"c":"tab\there"}', b'{"c":"a\\/b"}',
        b'{"c":"\\b\\f\\n\\r\\t\\"\\\\"}', b'{"c":"\xc3\xa9\xe2\x82\xac"}', b'{"c":"unterminated}',
        b'{"c":1}', b'{"c":null}', b'{"d":true}', b'{"d":false}', b'{"d":tru}', b'{"d":1}', b'{"e":null}',
        b'{"e":1}', b'{"e":"x"}', b'{}', b'{ }', b' {"a":1} ', b'{"a":1}{"a":2}', b'{"a":1} {"a":2}',
        b'{"a":1}\n\n{"a":2}', b'{"a":\n1}', b'{"a":1,}', b'{,"a":1}', b'{"a":1 "b":2}', b'{"a":1,"a":2}',
        b'{"z":1}', b'{"\\u0061":1}', b'{"a":[1]}', b'{"a":{"x":1}}', b'{"c":["x"]}', b'["a"]', b"null",
        b'{"a":1', b'{"a"', b"{", b'{"a":1}\n', b'{"a":1}\r\n{"a":2}\r\n', b'\t{"a":1}\t\n', b"\n", b"",
        b'{"a":1}x', b'{"c":"\x01"}',
    ]
    accepted = sum(agrees(case, schema) is not None for case in cases)
    assert accepted >= 20  # the plain cases (22 of them) are read here, not all declined
    assert sum(agrees_as_text(case, schema) is not None for case in cases) >= 20
    inferred = [infers_as_pyarrow(case) for case in cases]
    assert sum(schema is not None for schema in inferred) >= 20
    for mixed in [b'{"a":1}\n{"a":"x"}', b'{"a":true}\n{"a":1}', b'{"a":"x"}\n{"a":null}\n{"a":1.5}',
                  b'{"_time":"2024-01-02T03:04:05Z"}', b'{"a":1}\n{"a":2,"a":3}', b'{"a":18446744073709551616}',
                  b'{"a":0e309}']:  # pyarrow refuses zero with a large exponent: left to it
        assert flat.infer_schema(mixed) is None, mixed
    assert flat.infer_schema(b'{"a":1}\n{"a":2.5}\n{"a":null}') == pa.schema([("a", pa.float64())])
    assert flat.infer_schema(b'{"a":null}\n{}') == pa.schema([("a", pa.null())])


NUMBER_TEXTS = st.builds(
    lambda sign, whole, fraction, exponent: sign + whole + (("." + fraction) if fraction else "") + exponent,
    st.sampled_from(["", "-"]), st.from_regex(r"0|[1-9][0-9]{0,20}", fullmatch=True),
    st.from_regex(r"[0-9]{0,22}", fullmatch=True),
    st.sampled_from(["", "e0", "E+5", "e-5", "e22", "e-22", "e23", "e-23"]) | st.from_regex(r"[eE][+-]?[0-9]{1,2}",
                                                                                          fullmatch=True))


def double_bits(table: pa.Table) -> list[int]:
    return table.column("b").combine_chunks().to_numpy(zero_copy_only=False).view("<i8").tolist()


@given(st.lists(NUMBER_TEXTS, min_size=1, max_size=20))
@QUICK
def test_doubles_are_the_correctly_rounded_value_bit_for_bit(texts: list[str]) -> None:
    """The reader's own double parsing (Clinger's fast path, else strtod): every bit of each value
    equals Python's float() of the text (correctly rounded), -0.0 included, and pyarrow's reading."""
    schema = pa.schema([("b", pa.float64())])
    data = "\n".join(f'{{"b":{text}}}' for text in texts).encode()
    got = agrees(data, schema)
    if got is None:
        return  # declined (a large exponent): pyarrow reads it
    expected = pa.table({"b": pa.array([float(text) for text in texts], pa.float64())})
    assert double_bits(got) == double_bits(expected), texts


@given(st.lists(st.tuples(NUMBER_TEXTS, st.integers(-(2**63), 2**63 - 1), st.booleans() | st.none()),
                min_size=1, max_size=20))
@QUICK
def test_numbers_as_text_are_what_the_per_line_path_stores(rows: list[tuple[str, int, bool | None]]) -> None:
    """Doubles written as Arrow writes them (fixed from 1e-6 to below 1e10, else with an exponent),
    integers as their digits (-0 as 0, also in a double field), bools as true / false."""
    schema = pa.schema([("b", pa.float64()), ("i", pa.int64()), ("t", pa.bool_()), ("_time", pa.int64())])
    lines = [f'{{"b":{d},"i":{i},"t":{json.dumps(t)},"_time":{i}}}' for d, i, t in rows]
    data = "\n".join(lines).encode()
    got = agrees_as_text(data, schema)
    if got is not None:
        assert got.schema.field("_time").type == pa.int64()
    agrees_as_text(b"\n".join(b'{"b":%d}' % i for _, i, _ in rows), pa.schema([("b", pa.float64())]))


def test_numbers_as_text_decline_what_they_cannot_write_exactly() -> None:
    schema = pa.schema([("b", pa.float64()), ("i", pa.int64())])
    for line in [b'{"b":1.234567890123456}', b'{"b":9223372036854775808}',
                 b'{"b":1e-301}', b'{"b":1e301}', b'{"i":1.5}', b'{"b":0.' + b"1" * 70 + b"}"]:
        assert flat.read_flat(line, schema, text=True) is None, line
    for line in [b'{"b":1.23456789012345}', b'{"b":1.500000000000000000000}', b'{"b":12345678901234567}',
                 b'{"b":-0}', b'{"i":-0}', b'{"b":1e300}', b'{"b":1e-300}']:
        assert agrees_as_text(line, schema) is not None, line


def test_doubles_at_the_edges_of_the_fast_path() -> None:
    """Just inside and just outside Clinger's fast path (a mantissa of 2^53, 19 digits, 10^±22),
    ties that a double rounding would get wrong, and values strtod reads."""
    edges = ["9007199254740992", "9007199254740993", "9007199254740993.0", "900719925474099.3e1", "1e22", "1e23",
             "1e-22", "1e-23", "123456789012345678.9", "1234567890123456789", "12345678901234567890", "0.1",
             "0.3", "-0.0", "-0", "0.000000000000000000001", "0.0000000000000000000001", "100000000000000000000000",
             "4.35", "2.675", "1.7976931348623157e300", "5e-300", "-2.2250738585072014e-300", "8.98846567431158e22",
             "0.000000000000000000000000000000000000001"]
    schema = pa.schema([("b", pa.float64())])
    got = agrees("\n".join(f'{{"b":{text}}}' for text in edges).encode(), schema)
    assert got is not None
    assert double_bits(got) == double_bits(pa.table({"b": pa.array([float(text) for text in edges], pa.float64())}))


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Bytes near UTF-8's edges: every lead byte, the continuation range's ends, and ASCII runs long
# enough for the eight-byte fast path to start and stop anywhere.
_EDGE_BYTES = st.sampled_from([0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
                               0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF])
_NEAR_UTF8 = st.lists(st.one_of(st.binary(max_size=3), st.text(max_size=12).map(str.encode),
                                st.lists(_EDGE_BYTES, max_size=4).map(bytes), st.just(b"a" * 9)),
                      max_size=12).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(data=st.one_of(_NEAR_UTF8, st.binary(max_size=64)))
def test_is_utf8_accepts_exactly_what_decode_accepts(data: bytes) -> None:
    assert flat.is_utf8(data) == _decodes(data), data
    assert flat.is_utf8(bytearray(data)) == _decodes(data)


def test_is_utf8_on_every_sequence_of_up_to_four_bytes_that_starts_above_ascii() -> None:
    """Every lead byte with continuation bytes at their ranges' edges, cut at every length."""
    follow = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    for lead in range(0x80, 0x100):
        for second in follow:
            for third in follow[2:8]:
                for fourth in follow[2:8]:
                    sequence = bytes([lead, second, third, fourth])
                    for cut in range(1, 5):
                        data = b"abcdefg" + sequence[:cut]
                        assert flat.is_utf8(data) == _decodes(data), data


def test_strings_with_an_escape_a_quote_or_a_control_at_every_place() -> None:
    """Strings are scanned and copied 16 bytes at a time: every length around a block or two, with
    an escape (each kind), a non-ASCII letter, a raw control character or a cut at every place."""
    schema = pa.schema([("c", pa.string()), ("a", pa.int64())])
    lines = []
    for length in range(0, 40):
        for at in range(length + 1):
            for special in ('\\"', "\\\\", "\\n", "\\/", "\\u00e9", "\\u20ac", "\\ud83d\\ude00", "é", "€"):
                text = "x" * at + special + "y" * (length - at)
                lines.append(b'{"c":"%s","a":%d}' % (text.encode(), length))
    got = agrees(b"\n".join(lines), schema)  # one body of all of them
    assert got is not None and got.num_rows == len(lines)
    for length in range(0, 40, 3):
        for at in range(length + 1):
            text = b"x" * at + b"\x01" + b"y" * (length - at)
            assert flat.read_flat(b'{"c":"%s","a":1}' % text, schema) is None  # a raw control: declined
            cut = b'{"c":"' + (b"x" * length)[:at]
            assert flat.read_flat(cut, schema) is None  # the body ends inside the string
            assert agrees(b'{"c":"%s"}\n{"c":"%s"}' % (b"z" * at, b"w" * length), schema) is not None


@given(st.lists(st.permutations(["_time", "_msg", "host", "size", "level"]), min_size=1, max_size=12),
       st.lists(st.booleans(), min_size=12, max_size=12))
@QUICK
def test_keys_in_a_different_order_on_each_line(orders: list[list[str]], missing: list[bool]) -> None:
    """The reader looks for each key where the one after the same key was on the line before; any
    order, and keys left out, read the same."""
    schema = pa.schema([("_time", pa.int64()), ("_msg", pa.string()), ("host", pa.string()), ("size", pa.int64()),
                        ("level", pa.string())])
    values = {"_time": 1_700_000_000_123_456_789, "_msg": "a message long enough to span blocks", "host": "web-1",
              "size": 123, "level": "info"}
    lines = []
    for row, order in enumerate(orders):
        keys = order[1:] if missing[row] else order
        lines.append(orjson.dumps({key: values[key] for key in keys}))
    agrees(b"\n".join(lines), schema)
    agrees_as_text(b"\n".join(lines), schema)


def test_integers_of_every_length_and_at_int64s_edges() -> None:
    schema = pa.schema([("a", pa.int64())])
    for digits in range(1, 22):
        for value in (10 ** (digits - 1), 10**digits - 1, 10 ** (digits - 1) * 9 + 7):
            for sign in (1, -1):
                got = agrees(b'{"a":%d}' % (sign * value), schema)
                assert (got is not None) == (-(2**63) <= sign * value < 2**63), (sign * value)
    edges = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**63 + 9, 10**19 - 1, -(10**19) + 1, 10**18, -(10**18)]
    for value in edges:
        got = agrees(b'{"a":%d}' % value, schema)
        assert (got is not None) == (-(2**63) <= value < 2**63), value


def test_the_readers_buffers_outlive_its_input_and_are_read_only() -> None:
    """The arrays own their bytes (not views of the input): they live as long as the arrays do."""
    schema = pa.schema([("_msg", pa.string()), ("n", pa.int64()), ("b", pa.bool_())])
    body = bytearray(b"".join(b'{"_msg":"row %d \\u00e9","n":%d,"b":true}\n' % (i, i) for i in range(1000)))
    table = flat.read_flat(bytes(body), schema)
    assert table is not None
    del body
    import gc

    gc.collect()
    assert table.validate(full=True) is None
    assert table.column("_msg")[999].as_py() == "row 999 é" and table.column("n")[500].as_py() == 500
    chunk = table.column("_msg").chunk(0)
    assert all(not buffer.is_mutable for buffer in chunk.buffers() if buffer is not None)
    assert table.slice(10, 5).column("_msg").to_pylist() == [f"row {i} é" for i in range(10, 15)]


def test_many_fields_and_many_rows() -> None:
    wide = pa.schema([(f"f{i}", pa.int64()) for i in range(flat.MAX_FIELDS + 1)])
    line = orjson.dumps({f"f{i}": i for i in range(flat.MAX_FIELDS + 1)})
    assert flat.read_flat(line, wide) is None  # wider than the C reader: pyarrow's
    narrow = pa.schema(list(wide)[: flat.MAX_FIELDS])
    line = orjson.dumps({f"f{i}": i for i in range(flat.MAX_FIELDS)})
    got = agrees(b"\n".join([line] * 3000), narrow)
    assert got is not None and got.num_rows == 3000
    got = agrees(b'{"f1":1}\n' * 5 + b'{"f2":2}', narrow)  # sparse: nulls everywhere else
    assert got is not None and got.column("f2").null_count == 5


def test_parse_ndjson_is_the_same_with_and_without_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [r.doc() for r in loghub_records()[:4000]]
    for doc in docs[::7]:
        doc["extra"] = 1.5  # a field the sample may miss: spans fail, pieces learn it
    body = b"".join(orjson.dumps(doc) + b"\n" for doc in docs)
    stamped = b"".join(b'{"_msg":"m%d","ts":"2024-01-02T03:04:%02d","_time":"2024-01-02T03:04:05Z"}\n' % (i, i % 60)
                       for i in range(300))
    bodies_ = [body, body.replace(b'"_time":', b'"t":', 500), b'{"_msg":"x","n":1}\n{"_msg":"y","n":"z"}\n',
               stamped, stamped.replace(b',"_time":"2024-01-02T03:04:05Z"', b"")]
    fast = [parse_ndjson(b, NOW_NS) for b in bodies_]
    monkeypatch.setattr(flat, "_flatjson", None)
    slow = [parse_ndjson(b, NOW_NS) for b in bodies_]
    for a, b in zip(fast, slow):
        assert a.equals(b)
    assert records.read_flat is flat.read_flat


def test_random_bodies_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """_flatjson.c built with ASan and UBSan reads 20,000 mutated bodies: no memory error, no
    undefined behaviour, and every answer equal to pyarrow's (tests/flatjson_fuzz.py)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    runtimes = [subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                for name in ("libasan.so", "libubsan.so")]
    if not all(os.path.isabs(path) and os.path.exists(path) for path in runtimes):
        pytest.skip("the sanitizer runtimes are not installed")
    built = tmp_path / "_flatjson_asan.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-std=c11", "-D_GNU_SOURCE",
                    f"-I{sysconfig.get_paths()['include']}", str(Path(flat.__file__).with_name("_flatjson.c")),
                    "-o", str(built)], check=True, timeout=120)
    env = {**os.environ, "LD_PRELOAD": ":".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("flatjson_fuzz.py")), "13", "20000",
                           str(built)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()  # read R as text T inferred I of N
    read, text, inferred = int(words[1]), int(words[4]), int(words[6])
    assert read > 2000 and text > 2000 and inferred > 2000, done.stdout  # the fuzz reaches the accepting paths

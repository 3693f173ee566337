"""Units behind the ingest limits: the WAL frame cap on both sides, compact WAL payloads, the
configuration checks, the memory budget, the nesting guard against a per-byte reference, and the
unguarded spans read with a schema."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import helios.ingest.limits as limits
from helios import config
from helios.errors import ConfigError, IngestError, PayloadTooLarge, Unavailable
from helios.ingest.budget import MemoryBudget
from helios.ingest.records import parse_ndjson
from helios.storage.wal import MAX_FRAME_BYTES, Wal, decode_payload, encode_payload


def test_the_wal_never_acknowledges_a_frame_replay_would_refuse(tmp_path: Path) -> None:
    assert MAX_FRAME_BYTES < 1 << 32, "a frame length is a u32"
    small = encode_payload("ds", pa.table({"_msg": ["a"]}))
    cap = len(small) + 16
    large = encode_payload("ds", pa.table({"_msg": [os.urandom(2048).hex()]}))  # incompressible
    assert len(large) > cap

    async def write() -> None:
        wal = Wal(tmp_path, max_frame_bytes=cap)
        list(wal.replay())
        wal.start()
        applied: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            await wal.append(small, lambda: applied.append("small"))
            with pytest.raises(PayloadTooLarge):
                await wal.append(large, lambda: applied.append("large"))
            await wal.append(small, lambda: applied.append("small again"))
            nursery.cancel_scope.cancel()
        assert applied == ["small", "small again"]
        wal.close()

    trio.run(write)
    replayed = [payload for _, payload in Wal(tmp_path, max_frame_bytes=cap).replay()]
    assert replayed == [small, small]  # nothing of the refused frame, nothing cut
    with pytest.raises(AssertionError):
        Wal(tmp_path, max_frame_bytes=1 << 32)


def test_sparse_rows_make_compact_wal_payloads() -> None:
    """Arrow IPC keeps a 4-byte offset a row for every null string cell; compressed, they vanish."""
    table = parse_ndjson(b"".join(b'{"f%d":"x"}\n' % (i % 998) for i in range(5000)), 0)
    assert table.num_columns == 1000 and table.nbytes > 20_000_000
    payload = encode_payload("sparse", table)
    assert len(payload) < table.nbytes // 20
    assert decode_payload(payload) == ("sparse", table)


def test_frames_of_every_codec_read_the_same() -> None:
    """Payloads written with zstd (before LZ4) or uncompressed still decode: a message names its codec."""
    table = parse_ndjson(b"".join(b'{"_msg":"line %d","n":%d}\n' % (i, i) for i in range(1000)), 0)
    for codec in ("zstd", None, "lz4"):
        sink = pa.BufferOutputStream()
        sink.write(struct.pack("<H", 2) + b"ds")
        with ipc.new_stream(sink, table.schema, options=ipc.IpcWriteOptions(compression=codec)) as writer:
            writer.write_table(table)
        assert decode_payload(sink.getvalue().to_pybytes()) == ("ds", table)
    assert decode_payload(encode_payload("ds", table)) == ("ds", table)


def test_configuration_keeps_one_request_within_the_budget_and_the_wal_cap() -> None:
    loaded = config.load(environ={})
    assert (loaded.max_nesting_depth, loaded.max_fields) == (32, 1000)
    assert loaded.max_parsed_bytes == 256 << 20 and loaded.ingest_memory_bytes == 1 << 30
    assert config.load(environ={"HELIOS_MAX_NESTING_DEPTH": "8"}).max_nesting_depth == 8
    with pytest.raises(ConfigError, match="HELIOS_MAX_PARSED_BYTES"):
        config.load(environ={"HELIOS_MAX_PARSED_BYTES": str(MAX_FRAME_BYTES), "HELIOS_INGEST_MEMORY_BYTES": str(8 << 30)})
    with pytest.raises(ConfigError, match="HELIOS_INGEST_MEMORY_BYTES"):
        config.load(environ={"HELIOS_INGEST_MEMORY_BYTES": str(256 << 20)})


def test_the_budget_refuses_at_once_and_returns_everything() -> None:
    budget = MemoryBudget(100)
    with budget.reservation() as first:
        first.charge(60)
        with budget.reservation() as second:
            with pytest.raises(Unavailable, match="HELIOS_INGEST_MEMORY_BYTES"):
                second.charge(41)
            second.charge(40)
            assert budget.used_bytes == 100
        first.refund(10)
        assert budget.used_bytes == 50
    assert budget.used_bytes == 0 and budget.refusals == 1


def _reference_depth_error(body: bytes, max_depth: int) -> int | None:
    """Per byte, the guard's model: strings (escapes; reset at each newline), escaped quotes
    never count (outside a string too), and the bound D - min D. The line, if over."""
    depth = low = 0
    inside = escaped = skip = False
    line = 1
    for index, byte in enumerate(body):
        char = chr(byte)
        if skip:
            skip = False
        elif char == "\n":
            inside = escaped = False
            line += 1
        elif inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == "\\" and body[index + 1 : index + 2] in (b"\\", b'"'):
            skip = True
        elif char == '"':
            inside = True
        elif char in "{[}]":
            depth += 1 if char in "{[" else -1
            low = min(low, depth)
            if depth - low > max_depth:
                return line
    return None


@given(st.lists(st.sampled_from(['{', '}', '[', ']', '"', '\\', '\n', 'a', ':', ',', ' ']), max_size=80).map("".join),
       st.integers(1, 4), st.sampled_from([1, 2, 3, 5, 1 << 20]))
@settings(max_examples=500, deadline=None)
def test_the_nesting_guard_agrees_with_a_per_byte_scan(text: str, max_depth: int, chunk: int) -> None:
    """Any text, any chunk size (the state carried between chunks): the same verdict and line.
    On valid NDJSON the model is exact; elsewhere it never counts less than a parser that starts
    at a line start and stops at its first error (see ``check_json_nesting``)."""
    body = text.encode()
    saved = limits._SCAN_CHUNK_BYTES
    limits._SCAN_CHUNK_BYTES = chunk
    try:
        limits.check_json_nesting(body, max_depth)
        got = None
    except IngestError as error:
        got = error.line
    finally:
        limits._SCAN_CHUNK_BYTES = saved
    assert got == _reference_depth_error(body, max_depth), (body, max_depth, chunk)


def test_the_nesting_guard_on_long_bodies() -> None:
    line = b'{"_msg":"a \\" [[ {{ \\\\","o":{"p":[1,{"q":[2]}]}}\n'
    limits.check_json_nesting(line * 200_000, 5)  # ~9 MB, 5 deep: chunk boundaries, escaped quotes
    with pytest.raises(IngestError) as info:
        limits.check_json_nesting(line * 100_000 + b'{"a":' + b"[" * 5 + b"]" * 5 + b"}\n" + line, 5)
    assert info.value.line == 100_001


def test_spans_are_not_guarded_yet_a_line_too_deep_is_named_and_nothing_crashes() -> None:
    """A span is read with the schema learnt from guarded bytes and is not itself guarded: pyarrow
    must stop at the first value deeper than that schema, where inferring it would crash (a
    segmentation fault at ~10,000 levels). Every shape, each far too deep for the guard's model
    to pass, lands in a span (over 8 KiB: the schema sample leaves it out); the pieces then name
    its line."""
    good = b"".join(b'{"_msg":"line %d [{","n":%d,"o":{"p":"q"},"l":[1,2]}\n' % (i, i)
                    for i in range(3000))
    deep = 100_000
    arrays, objects = b"[" * deep + b"]" * deep, b'{"a":' * deep + b"1" + b"}" * deep
    shapes = [b'{"_msg":' + arrays + b"}", b'{"_msg":' + objects + b"}", b'{"n":' + arrays + b"}",
              b'{"o":{"p":' + objects + b"}}", b'{"l":[' + arrays + b"]}", arrays, objects,
              b'{"unknown":' + arrays + b"}", b'{"_msg":' + b"[" * deep]
    limit = limits.DEFAULT_LIMITS.max_nesting_depth
    for shape in shapes:
        for before in (1500, 2999):
            body = b"".join(good.splitlines(True)[:before])
            with pytest.raises(IngestError) as info:
                parse_ndjson(body + shape + b"\n" + good, 0)
            assert info.value.line == before + 1 and f"deeper than {limit}" in str(info.value)
    # The limit exactly, inside a span: 32 levels pass, 33 are named.
    inner = b"[" * (limit - 2) + b"]" * (limit - 2)
    assert parse_ndjson(good + b'{"l":[' + inner + b"]}\n" + good, 0).num_rows == 6001
    with pytest.raises(IngestError) as info:
        parse_ndjson(good + b'{"l":[[' + inner + b"]]}\n" + good, 0)
    assert info.value.line == 3001

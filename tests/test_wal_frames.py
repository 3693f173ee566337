"""The WAL's frames: CRC-32C checksums (C, with the crc32 instruction or tables; pure Python for
replay without the extension) beside the zlib CRC-32 frames of older nodes, and the payload's
codec (uncompressed Arrow IPC, LZ4 when a quarter of the cells are null)."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
import trio

from helios.ingest.records import parse_ndjson
from helios.storage import crc32c
from helios.storage.wal import Wal, decode_payload, encode_payload

needs_native = pytest.mark.skipif(not crc32c.NATIVE, reason="the C extension was not built")


def test_crc32c_known_answers() -> None:
    # RFC 3720 (iSCSI), B.4, and the usual check value.
    cases = {b"": 0, b"123456789": 0xE3069283, bytes(32): 0x8A9136AA, b"\xff" * 32: 0x62A8AB43,
             bytes(range(32)): 0x46DD794E, bytes(range(31, -1, -1)): 0x113FDB5C}
    for data, expected in cases.items():
        assert crc32c.crc32c_python(data) == expected, data
        assert crc32c.crc32c(data) == expected, data


@needs_native
def test_the_instruction_the_tables_and_python_agree_at_every_length_and_offset() -> None:
    from helios.storage import _crc32c

    rng = random.Random(14)
    blob = rng.randbytes(200_000)
    for _ in range(300):
        start = rng.randrange(0, 64)
        length = rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, rng.randrange(0, 5000)])
        view = memoryview(blob)[start : start + length]
        seed = rng.getrandbits(32)
        expected = crc32c.crc32c_python(view, seed)
        assert crc32c.crc32c(view, seed) == expected == _crc32c.table(view, seed)
    # Chained like zlib.crc32, and over the 64 KiB at which the GIL is released.
    head, tail = blob[:123_457], blob[123_457:]
    assert crc32c.crc32c(tail, crc32c.crc32c(head)) == crc32c.crc32c(blob) == _crc32c.table(blob)
    with pytest.raises(OverflowError):
        crc32c.crc32c(b"x", 1 << 32)


def frame(payload: bytes, *, castagnoli: bool) -> bytes:
    """A frame as the WAL writes it: CRC-32C (length's top bit set) or zlib's CRC-32 (older nodes)."""
    field = len(payload) | (1 << 31 if castagnoli else 0)
    check = crc32c.crc32c_python if castagnoli else zlib.crc32
    return struct.pack("<II", field, check(payload, check(struct.pack("<I", field)))) + payload


def test_frames_of_both_checksums_replay_and_damage_to_either_is_cut(tmp_path: Path) -> None:
    payloads = [encode_payload("ds", pa.table({"_msg": [f"row {i}"] * (i + 1)})) for i in range(4)]
    segment = tmp_path / f"{1:016d}.wal"
    segment.write_bytes(b"".join(frame(p, castagnoli=i % 2 == 1) for i, p in enumerate(payloads)))
    assert [payload for _, payload in Wal(tmp_path).replay()] == payloads

    good = segment.read_bytes()
    second = len(frame(payloads[0], castagnoli=False))
    third = second + len(frame(payloads[1], castagnoli=True))
    damaged = [
        (second + 8 + 3, 0x01),  # a payload byte of the CRC-32C frame
        (second + 3, 0x80),  # its flag cleared: checked with the other checksum, fails
        (third + 3, 0x80),  # the flag set on a CRC-32 frame
        (third + 5, 0x01),  # a checksum byte
    ]
    for offset, bits in damaged:
        data = bytearray(good)
        data[offset] ^= bits
        segment.write_bytes(bytes(data))
        kept = [payload for _, payload in Wal(tmp_path).replay()]
        assert kept == payloads[: 1 if offset < third else 2], (offset, bits)
        assert segment.stat().st_size == (second if offset < third else third), "the torn tail is cut"


@needs_native
def test_the_wal_writes_castagnoli_frames_and_reads_them_back(tmp_path: Path) -> None:
    table = parse_ndjson(b"".join(b'{"_msg":"line %d","n":%d}\n' % (i, i) for i in range(3000)), 0)
    payload = encode_payload("ds", table)

    async def write() -> None:
        wal = Wal(tmp_path)
        list(wal.replay())
        wal.start()
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            await wal.append(payload, lambda: None)
            nursery.cancel_scope.cancel()
        wal.close()

    trio.run(write)
    data = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("*.wal")))
    assert data == frame(payload, castagnoli=True)
    assert [decode_payload(p) for _, p in Wal(tmp_path).replay()] == [("ds", table)]


def test_dense_tables_are_stored_plain_and_sparse_ones_compressed() -> None:
    """A table with few nulls is written as it is (no LZ4 pass over every byte); a quarter of null
    cells or more, compressed (the nulls' offsets and validity bits are runs of zeros)."""
    dense = parse_ndjson(b"".join(b'{"_msg":"%s","n":%d}\n' % (os.urandom(20).hex().encode(), i)
                                  for i in range(2000)), 0)
    sparse = parse_ndjson(b"".join(b'{"f%d":"x"}\n' % (i % 40) for i in range(2000)), 0)
    assert 4 * sum(column.null_count for column in sparse.columns) > sparse.num_rows * sparse.num_columns
    plain, packed = encode_payload("ds", dense), encode_payload("ds", sparse)
    assert decode_payload(plain) == ("ds", dense) and decode_payload(packed) == ("ds", sparse)
    assert len(plain) >= dense.nbytes  # every buffer as it is
    assert len(packed) < sparse.nbytes // 4


def test_a_table_framed_in_place_is_the_frame_of_its_payload(tmp_path: Path) -> None:
    """Engine.prepare's frame_table (the payload encoded after room for the header, no copy) makes
    the same bytes as framing encode_payload's payload, and the WAL writes several such frames of
    one commit back to back."""
    wal = Wal(tmp_path)
    tables = [parse_ndjson(b"".join(b'{"_msg":"t%d line %d"}\n' % (t, i) for i in range(500 * (t + 1))), 0)
              for t in range(3)]
    frames = [wal.frame_table("ds", table) for table in tables]
    assert [bytes(f) for f in frames] == [wal.frame(encode_payload("ds", table)) for table in tables]
    list(wal.replay())
    wal.start()

    async def write() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            async with trio.open_nursery() as writers:
                for f in frames:
                    writers.start_soon(wal.append_frame, f, lambda: None)
            nursery.cancel_scope.cancel()
        wal.close()

    trio.run(write)
    assert sorted(decode_payload(p)[1].num_rows for _, p in Wal(tmp_path).replay()) == [500, 1000, 1500]

"""Hostile ingest (issue 13, items 1, 2, 6, 10, 11): one request never crashes a node, loses
acknowledged rows, or takes memory past its limits.

Each test sends the hostile input to a real `helios serve`, then checks that the same process
is still serving (its PID unchanged), that rows acknowledged before are all there, and that the
answer is the documented status (README, "Limits").
"""

from __future__ import annotations

import gzip
import threading
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import zstandard

from support import Record, Server, ndjson

MIB = 1 << 20
INT64_MAX = (1 << 63) - 1


def seed(server: Server, records: list[Record]) -> tuple[int, int]:
    """Rows acknowledged before the attack; returns (node PID, rows)."""
    reply = server.ingest(ndjson(records[:500]), dataset="keep")
    assert reply.json() == {"ingested": 500}
    return server.proc.pid, 500


def still_serving(server: Server, pid: int, rows: int) -> None:
    assert server.proc.poll() is None and server.proc.pid == pid, "the node process died"
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    assert server.count(dataset="keep") == rows, "rows acknowledged before the attack were lost"


def rows_in(server: Server, dataset: str) -> int:
    entry = server.datasets().get(dataset)
    return 0 if entry is None else entry["rows"]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def nested(depth: int, opener: bytes = b"[") -> bytes:
    """A record ``depth`` levels deep: the record is level 1, its field ``a`` holds the rest."""
    if opener == b"[":
        value = b"[" * (depth - 1) + b"]" * (depth - 1)
    else:
        value = b'{"b":' * (depth - 1) + b"1" + b"}" * (depth - 1)
    return b'{"_msg":"deep","a":' + value + b"}\n"


# -- item 1: nesting -----------------------------------------------------------------


def test_deep_nesting_is_refused_before_any_parser(server_factory: Any, records: list[Record]) -> None:
    server = server_factory()
    pid, rows = seed(server, records)
    hostile = [
        b'{"_msg":"x","a":' + b"[" * 20000 + b"]" * 20000 + b"}",  # pyarrow 26: segmentation fault
        b'{"a":' * 30000 + b"1" + b"}" * 30000,  # objects: segmentation fault too
        b'{"_msg":"x","a":' + b"[" * 15000 + b"]" * 15000 + b"}",  # 27 s of CPU, then a 400
        b'{"_msg":"x","a":' + b"[" * 20000,  # unclosed
    ]
    for body in hostile:
        reply = server.ingest(body, dataset="deep")
        assert reply.status_code == 400, reply.text
        assert reply.json()["line"] == 1 and "nested deeper than 32 levels" in reply.json()["error"]
    # The line is named, in a body after good lines, and after gzip decoding too.
    good = b"".join(b'{"_msg":"fine %d","o":{"p":[1,{"q":2}]}}\n' % i for i in range(10))
    for body, headers in [(good + hostile[0], {}), (gzip.compress(good + hostile[1]), {"Content-Encoding": "gzip"})]:
        reply = server.ingest(body, dataset="deep", headers=headers)
        assert reply.status_code == 400 and reply.json()["line"] == 11, reply.text
    # The documented limit exactly: 32 levels pass, 33 do not ("{" of the record is level 1).
    assert server.ingest(nested(32), dataset="deep").json() == {"ingested": 1}
    assert server.ingest(nested(32, b"{"), dataset="deep").json() == {"ingested": 1}
    for body in (nested(33), nested(33, b"{")):
        reply = server.ingest(body, dataset="deep")
        assert reply.status_code == 400 and reply.json()["line"] == 1, reply.text
    # Brackets inside strings (escaped quotes too) are not nesting.
    text = b'{"_msg":"\\"' + b"[" * 100 + b'\\\\","b":"' + b"{" * 100 + b'"}\n'
    assert server.ingest(text, dataset="deep").json() == {"ingested": 1}
    assert rows_in(server, "deep") == 3
    still_serving(server, pid, rows)


# -- item 2: what one request may expand to; the WAL; kill -9 --------------------------


def test_a_request_cannot_expand_past_its_limits_and_kill9_loses_nothing_acknowledged(
        server_factory: Any, records: list[Record]) -> None:
    # No flush while the test runs: every acknowledged row is only in the WAL when the node dies.
    server = server_factory(HELIOS_FLUSH_SECS="3600", HELIOS_MEMTABLE_ROWS="10000000")
    pid, rows = seed(server, records)
    before = memory(pid)["VmRSS"]
    # 3.4 MB whose rows each have another of 998 keys: 1.08 GB as one Arrow table (every row a cell
    # for every field). It was acknowledged, and lost after kill -9 (its WAL record passed the
    # replay cap); the request alone took the node to 5.9 GB.
    sparse = b"".join(b'{"f%d":"x"}\n' % (i % 998) for i in range(262_000))
    reply = server.ingest(sparse, dataset="sparse")
    assert reply.status_code == 413, reply.text
    assert "HELIOS_MAX_PARSED_BYTES" in reply.json()["error"]
    assert memory(pid)["VmHWM"] - before < 512 * MIB, "the refused request still took too much memory"
    # More distinct fields than HELIOS_MAX_FIELDS (1000, _time and _msg included): 400.
    wide = b"".join(b'{"g%d":"x"}\n' % i for i in range(1000))
    reply = server.ingest(wide, dataset="sparse")
    assert reply.status_code == 400 and "HELIOS_MAX_FIELDS" in reply.json()["error"], reply.text
    # The same shape within the limits is accepted, and its WAL record stays compact:
    # 5,000 rows x 998 fields is ~20 MB as Arrow, mostly null cells.
    allowed = b"".join(b'{"f%d":"x"}\n' % (i % 998) for i in range(5_000))
    wal_before = sum(p.stat().st_size for p in (server.data_dir / "wal").glob("*.wal"))
    assert server.ingest(allowed, dataset="sparse").json() == {"ingested": 5000}
    wal_growth = sum(p.stat().st_size for p in (server.data_dir / "wal").glob("*.wal")) - wal_before
    assert 0 < wal_growth < 4 * MIB, f"the WAL record is {wal_growth} bytes"
    still_serving(server, pid, rows)
    assert rows_in(server, "sparse") == 5000

    server.kill()  # kill -9: everything acknowledged is only in the WAL
    server.start()
    opened = next(orjson.loads(line) for line in server.logs if '"storage opened"' in line)
    assert opened["replayed_rows"] == rows + 5000
    assert not any("torn" in line for line in server.logs), "replay cut an acknowledged record"
    assert server.count(dataset="keep") == rows
    assert server.count(dataset="sparse") == 5000  # and nothing of the refused requests


# -- item 6: concurrent decoding within one memory budget -------------------------------


def test_concurrent_decoding_is_bounded_by_the_memory_budget(server_factory: Any, records: list[Record]) -> None:
    server = server_factory(HELIOS_MAX_DECODED_BYTES=str(64 * MIB), HELIOS_MAX_PARSED_BYTES=str(16 * MIB),
                            HELIOS_INGEST_MEMORY_BYTES=str(96 * MIB))
    pid, rows = seed(server, records)

    def storm(bodies: list[tuple[bytes, str]]) -> tuple[list[httpx.Response], int]:
        """Send every body at once; the replies and how much the node's peak memory grew."""
        before = memory(pid)["VmRSS"]
        replies: list[httpx.Response] = []
        lock = threading.Lock()

        def send(body: bytes, encoding: str) -> None:
            reply = server.ingest(body, dataset="bombs", headers={"Content-Encoding": encoding})
            with lock:
                replies.append(reply)

        threads = [threading.Thread(target=send, args=pair) for pair in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert len(replies) == len(bodies)
        return replies, memory(pid)["VmHWM"] - before

    # The bombs: 10 KB of zstd (and 80 KB of gzip) that decode to 300 MiB (80 MiB).
    # Each was refused with 413 only after decoding 256 MiB, and eight at once took 1.8 GB.
    zstd_bomb = zstandard.ZstdCompressor().compress(b"\0" * (300 * MIB))
    gzip_bomb = gzip.compress(b"\n" * (80 * MIB), compresslevel=9)
    assert len(zstd_bomb) < 20_000 and len(gzip_bomb) < 200_000
    replies, growth = storm([(zstd_bomb, "zstd"), (gzip_bomb, "gzip")] * 8)
    assert [reply.status_code for reply in replies] == [413] * 16, [reply.text for reply in replies]
    assert growth < 128 * MIB, f"refusing 16 bombs took {growth >> 20} MiB"  # 1.8 GB before

    # Bodies under the decoded limit (48 MiB each, blank lines: nothing to store) are decoded in
    # full; eight at once would hold 384 MiB. The budget (96 MiB) lets at most two hold theirs;
    # the others are told to retry (503).
    near_limit = zstandard.ZstdCompressor().compress(b"\n" * (48 * MIB))
    replies, growth = storm([(near_limit, "zstd")] * 8)
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) <= {200, 503}, [reply.text for reply in replies]
    assert 200 in statuses
    for reply in replies:
        if reply.status_code == 503:
            assert "HELIOS_INGEST_MEMORY_BYTES" in reply.json()["error"]
    assert growth < 96 * MIB + 48 * MIB, f"peak memory grew by {growth >> 20} MiB"
    # The budget is whole again: a large legitimate body fits.
    body = gzip.compress(ndjson(records[:5000]))
    assert server.ingest(body, dataset="after", headers={"Content-Encoding": "gzip"}).json() == {"ingested": 5000}
    assert rows_in(server, "bombs") == 0
    still_serving(server, pid, rows)


# -- item 10: truncated compressed bodies ------------------------------------------------


def test_truncated_compressed_bodies_are_refused_whole(server_factory: Any, records: list[Record]) -> None:
    server = server_factory()
    pid, rows = seed(server, records)
    text = b"".join(b"message number %d of the truncated body\n" % i for i in range(60_000))
    lines = ndjson(records[:3000])
    encoders = {"zstd": zstandard.ZstdCompressor().compress, "gzip": gzip.compress, "deflate": zlib.compress}
    for encoding, compress in encoders.items():
        for body, content_type in [(text, "text/plain"), (lines, "application/x-ndjson")]:
            whole = compress(body)
            for cut in (0.6, 0.99):
                reply = server.ingest(whole[: int(len(whole) * cut)], dataset="cut", content_type=content_type,
                                      headers={"Content-Encoding": encoding})
                assert reply.status_code == 400, (encoding, content_type, cut, reply.text)
                assert "truncated" in reply.json()["error"]
    assert rows_in(server, "cut") == 0
    # Whole bodies, several zstd frames and gzip members included, are taken whole.
    frames = zstandard.ZstdCompressor().compress(text[: len(text) // 2]) + zstandard.ZstdCompressor().compress(
        text[len(text) // 2 :])
    reply = server.ingest(frames, dataset="whole", content_type="text/plain", headers={"Content-Encoding": "zstd"})
    assert reply.json() == {"ingested": 60_000}
    members = gzip.compress(lines[:1000]) + gzip.compress(lines[1000:])
    reply = server.ingest(members, dataset="whole", headers={"Content-Encoding": "gzip"})
    assert reply.json() == {"ingested": 3000}
    assert rows_in(server, "whole") == 63_000
    still_serving(server, pid, rows)


# -- item 11: _time range ------------------------------------------------------------------


def test_times_outside_the_supported_range_are_refused(server_factory: Any, records: list[Record]) -> None:
    server = server_factory()
    pid, rows = seed(server, records)
    good = b'{"_msg":"fine"}\n'
    for value in (INT64_MAX, -1, "2200-01-01T00:00:00Z", "1969-12-31T23:59:59Z", 7_258_118_400_000_000_000):
        body = good + orjson.dumps({"_msg": "edge", "_time": value}) + b"\n"
        reply = server.ingest(body, dataset="edge")
        assert reply.status_code == 400, (value, reply.text)
        doc = reply.json()
        assert doc["line"] == 2
        assert "from 1970-01-01T00:00:00Z (inclusive) to 2200-01-01T00:00:00Z (exclusive)" in doc["error"]
    assert rows_in(server, "edge") == 0
    # The ends of the range are stored and found by a query without from/to.
    last = 7_258_118_400_000_000_000 - 1
    body = orjson.dumps({"_msg": "first", "_time": 0}) + b"\n" + orjson.dumps({"_msg": "last", "_time": last})
    assert server.ingest(body, dataset="edge").json() == {"ingested": 2}
    found = server.query("*", dataset="edge")["rows"]
    assert [row["_msg"] for row in found] == ["last", "first"]
    assert found[0]["_time"] == "2199-12-31T23:59:59.999999999Z"
    still_serving(server, pid, rows)

"""kill -9 loses nothing acknowledged and counts nothing twice; SIGTERM/SIGINT drain and exit 0."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from support import Record, Server, ndjson, wait_until


def batch_body(records: list[Record], batch: int) -> bytes:
    lines = []
    for r in records:
        doc = r.doc()
        doc["batch"] = batch
        lines.append(orjson.dumps(doc))
    return b"\n".join(lines) + b"\n"


def counts_by_batch(server: Server) -> dict[int, int]:
    rows = server.query("* | stats count() as n by (batch)", limit=100_000)["rows"]
    return {int(row["batch"]): row["n"] for row in rows if row.get("batch") is not None}


def test_kill9_right_after_acknowledged_ingest(server_factory, records: list[Record]) -> None:
    server = server_factory(HELIOS_FLUSH_SECS="3600")
    assert server.ingest(ndjson(records[:3000])).json() == {"ingested": 3000}
    assert server.ingest(ndjson(records[3000:3001])).json() == {"ingested": 1}
    server.kill()
    server.start()
    assert server.count() == 3001
    assert server.count("service:android") == sum(1 for r in records[:3001] if r.service == "android")
    # and once more after a flush to blocks and another crash: still exactly once
    assert server.stop() == 0
    server.start()
    server.kill()
    server.start()
    assert server.count() == 3001


def test_kill9_under_concurrent_ingest_and_flushes(server_factory, records: list[Record]) -> None:
    """Writers stream batches while flushes run; kill -9 at random moments, three times."""
    server = server_factory(HELIOS_FLUSH_SECS="0.2", HELIOS_MEMTABLE_ROWS="2500")
    rng = random.Random(20261126)
    acked: dict[int, int] = {}
    sizes: dict[int, int] = {}
    next_batch = iter(range(1, 1_000_000))
    lock = threading.Lock()

    def writer(url: str, token: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            while not stop.is_set():
                with lock:
                    batch = next(next_batch)
                start = rng.randrange(0, len(records) - 400)
                part = records[start : start + rng.randrange(1, 400)]
                sizes[batch] = len(part)
                try:
                    reply = client.post("/api/v1/ingest", params={"dataset": "crash"}, content=batch_body(part, batch))
                except httpx.HTTPError:
                    return
                if reply.status_code == 200:
                    assert reply.json() == {"ingested": len(part)}
                    acked[batch] = len(part)

    for _ in range(3):
        stop = threading.Event()
        threads = [threading.Thread(target=writer, args=(server.url, server.token, stop)) for _ in range(4)]
        for thread in threads:
            thread.start()
        target = len(acked) + 30
        wait_until(lambda: len(acked) >= target, what="acknowledged batches")
        server.kill()  # mid-stream: requests are in flight
        stop.set()
        for thread in threads:
            thread.join()
        server.start()
        found = counts_by_batch(server)
        for batch, n in acked.items():
            assert found.get(batch) == n, f"acknowledged batch {batch} has {found.get(batch)} rows, not {n}"
        for batch, n in found.items():
            assert n == sizes[batch], f"batch {batch} is partial or duplicated: {n} of {sizes[batch]}"
    assert server.stop() == 0


def test_torn_wal_tail_is_cut(server_factory, records: list[Record]) -> None:
    server = server_factory(HELIOS_FLUSH_SECS="3600")
    assert server.ingest(ndjson(records[:100])).json() == {"ingested": 100}
    server.kill()
    wal_dir: Path = server.data_dir / "wal"
    last = sorted(wal_dir.glob("*.wal"))[-1]
    good = last.read_bytes()
    assert good, "the acknowledged frame should be in the newest segment"
    with open(last, "ab") as handle:  # a frame header promising more bytes than follow
        handle.write(b"\x00\x10\x00\x00\xde\xad\xbe\xefpartial")
    server.start()
    assert server.count() == 100
    assert last.read_bytes() == good, "the torn tail should have been truncated"
    assert any("torn" in line for line in server.logs)
    assert server.ingest(ndjson(records[100:150])).json() == {"ingested": 50}
    server.kill()
    server.start()
    assert server.count() == 150


def test_corrupt_frame_in_the_middle_stops_replay_there(server_factory, records: list[Record]) -> None:
    server = server_factory(HELIOS_FLUSH_SECS="3600")
    for start in range(0, 300, 100):
        assert server.ingest(ndjson(records[start : start + 100])).json() == {"ingested": 100}
    server.kill()
    last = sorted((server.data_dir / "wal").glob("*.wal"))[-1]
    data = bytearray(last.read_bytes())
    data[-5] ^= 0xFF  # flip a byte of the last frame: its checksum no longer matches
    last.write_bytes(bytes(data))
    server.start()
    assert server.count() == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_drain_and_exit_zero(server_factory, records: list[Record], sig: int) -> None:
    server = server_factory(HELIOS_FLUSH_SECS="3600")
    assert server.ingest(ndjson(records[:500])).json() == {"ingested": 500}
    began = time.monotonic()
    assert server.stop(sig) == 0
    assert time.monotonic() - began < 15
    assert any('"stopped"' in line for line in server.logs)
    # the graceful stop flushed the memtable: the WAL holds no frames any more
    assert all(p.stat().st_size == 0 for p in (server.data_dir / "wal").glob("*.wal"))
    server.start()
    assert server.count() == 500
    assert server.datasets()["default"]["blocks"] >= 1

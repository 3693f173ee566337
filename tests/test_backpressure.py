"""Ingest waits for flushing instead of outgrowing memory (issue 14: peak RSS bounded at any volume).

A real node whose flushes fail (its partition's directory is a file: a disk fault) keeps
acknowledging rows until twice ``HELIOS_MEMTABLE_BYTES`` are unflushed; then an ingest waits for a
flush, and is refused with 429 and ``Retry-After`` once ``HELIOS_INGEST_WAIT_SECS`` pass. Nothing
refused is stored, nothing acknowledged is lost, and a waiting ingest goes on as soon as a flush
makes room.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from helios import timeutil
from support import BASE_NS, metric, wait_until
from test_store_faults import rows

BATCH = 2000  # rows of about 60 bytes: ~100 KiB of Arrow a request


def _blocker(node: Any) -> Any:
    """A file where the flush must create the partition's directory: every flush fails until it goes."""
    path = node.data_dir / "parts" / "default" / timeutil.day_name(timeutil.day_of(BASE_NS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a directory")
    return path


def test_ingest_waits_for_flushes_then_is_refused_and_nothing_acknowledged_is_lost(server_factory: Any) -> None:
    node = server_factory("solo", HELIOS_MEMTABLE_BYTES=str(256 << 10), HELIOS_INGEST_WAIT_SECS="1",
                          HELIOS_FLUSH_SECS="0.2")
    blocker = _blocker(node)
    acknowledged, refused = 0, None
    for i in range(40):  # bounded: ~6 requests fill twice 256 KiB
        reply = node.ingest(rows(BATCH, f"batch{i}"))
        if reply.status_code != 200:
            refused = (i, reply)
            break
        acknowledged += reply.json()["ingested"]
    assert refused is not None, "ingest never waited although no flush could succeed"
    number, reply = refused
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "1", reply.text
    assert "HELIOS_MEMTABLE_BYTES" in reply.json()["error"], reply.text
    assert metric(node, "helios_ingest_backpressure_refusals_total") >= 1
    assert metric(node, "helios_memtable_bytes") >= 2 * (256 << 10)
    assert node.count() == acknowledged and node.count(f"batch{number}") == 0  # the refused rows: not stored

    # A waiting ingest goes on once a flush makes room (the wait is long enough now).
    node.stop()
    node.env["HELIOS_INGEST_WAIT_SECS"] = "60"
    node.start()
    assert node.count() == acknowledged  # replayed from the WAL after the restart
    waited: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: waited.append(node.ingest(rows(BATCH, "late"))))
    sender.start()
    wait_until(lambda: metric(node, "helios_ingest_backpressure_waits_total") >= 1, what="an ingest waiting")
    assert sender.is_alive()
    blocker.unlink()  # the disk is back: the flush makes room
    sender.join(timeout=60)
    assert waited and waited[0].status_code == 200, waited
    wait_until(lambda: metric(node, "helios_memtable_rows") == 0, what="every row flushed")
    assert node.count() == acknowledged + BATCH and node.count("late") == BATCH
    assert metric(node, "helios_compaction_paused_seconds_total") >= 0  # exported (niceness.Pacer)

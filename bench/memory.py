"""Where a node's memory goes during a long ingest: its RSS, beside its memtable, flushes and
compactions, every ``--every`` seconds (not part of ``make bench``: a diagnosis tool).

One fresh ``helios serve`` (the bench's settings: compaction every 2 s) takes ``--rows`` generated
Loghub rows from two HTTP clients, then idles ``--tail`` seconds; each sample line shows the
resident set now and its peak, and the node's own gauges. ``NAME=VALUE`` arguments are extra
environment of the node (``HELIOS_MEMTABLE_BYTES=…``, ``MALLOC_ARENA_MAX=…``), to compare settings.
This is how the memtable outgrowing flushes (issue 14) was found: RSS followed
``helios_memtable_bytes`` up, run after run.

    .venv/bin/python bench/memory.py [--rows 10000000] [--tail 40] [--every 2] [NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from common import peak_rss_bytes, start_node, write_ndjson
from query import NODE_ENV, ingest
from support import Server, loghub_records, metric

GAUGES = ("helios_memtable_bytes", "helios_flushes_total", "helios_compactions_total", "helios_ingested_rows_total",
          "helios_ingest_backpressure_waits_total")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def sample(server: Server, began: float) -> str:
    pid = server.proc.pid
    gauges = []
    for name in GAUGES:
        try:
            gauges.append(f"{name.removeprefix('helios_')}={metric(server, name):,.0f}")
        except AssertionError:  # a node without that gauge
            continue
    return (f"{time.monotonic() - began:6.1f} s  rss {rss_bytes(pid) >> 20:5d} MiB  peak "
            f"{peak_rss_bytes(pid) >> 20:5d} MiB  " + "  ".join(gauges))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tail", type=float, default=40.0, help="seconds sampled after the ingest")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("env", nargs="*", metavar="NAME=VALUE")
    args = parser.parse_args()
    env = {**NODE_ENV, **dict(item.split("=", 1) for item in args.env)}
    with tempfile.TemporaryDirectory(prefix="helios-memory-") as scratch:
        path = Path(scratch) / "rows.ndjson"
        batches = write_ndjson(path, loghub_records(), args.rows)
        server = start_node(**env)
        try:
            began, done = time.monotonic(), threading.Event()

            def sampler() -> None:
                while not done.wait(args.every):
                    print(sample(server, began), flush=True)

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            rate = ingest(server, path, batches, 2)
            print(f"ingested {args.rows:,} rows at {rate:,.0f} rows/s", flush=True)
            time.sleep(args.tail)
            done.set()
            thread.join()
            print(f"peak RSS {peak_rss_bytes(server.proc.pid) >> 20} MiB", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

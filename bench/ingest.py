"""Ingest throughput over HTTP: Loghub replayed in NDJSON batches of 5,000.

Prints rows/s for 1 and 2 concurrent clients, the node's CPU time per row
(user + system, from /proc: steadier than rates on a shared machine), and two
baselines measured in the same run on the same bodies: DuckDB's ``read_json``
loading them into a table (when duckdb is installed; the issue-14 goal is
ingest >= 1.0x its rate with two clients), and ``pyarrow.json.read_json``
parsing them in this process (the bound for a server that must at least parse
what it receives).

    .venv/bin/python bench/ingest.py [--rounds 10] [--repeat 1]

With ``--repeat N`` every measurement is taken N times, interleaved, and the
median is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow.json as pajson

from common import bodies, start_node


def baseline(batches: list[bytes]) -> float:
    began = time.perf_counter()
    rows = sum(pajson.read_json(io.BytesIO(body)).num_rows for body in batches)
    return rows / (time.perf_counter() - began)


def duckdb_rate(batches: list[bytes]) -> float | None:
    """DuckDB's ``read_json`` of the same NDJSON (from a file) into a table: rows/s, or None."""
    try:
        import duckdb
    except ImportError:
        return None
    rows = sum(body.count(b"\n") for body in batches)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "batches.ndjson"
        path.write_bytes(b"".join(batches))
        connection = duckdb.connect()
        began = time.perf_counter()
        connection.execute(f"CREATE TABLE t AS SELECT * FROM read_json('{path}', format='newline_delimited')")
        elapsed = time.perf_counter() - began
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (rows,)
        connection.close()
    return rows / elapsed


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(server, batches: list[bytes], clients: int, dataset: str) -> tuple[float, float]:
    """rows/s over HTTP with ``clients`` concurrent clients, and the node's CPU microseconds per row."""
    rows = [0]
    lock = threading.Lock()
    queue = list(batches)

    def client() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                          timeout=120) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                reply = http.post("/api/v1/ingest", params={"dataset": dataset}, content=body)
                reply.raise_for_status()
                with lock:
                    rows[0] += reply.json()["ingested"]

    cpu_before = cpu_s(server.proc.pid)
    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return rows[0] / elapsed, (cpu_s(server.proc.pid) - cpu_before) / rows[0] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10, help="Loghub replays (20,000 rows each)")
    parser.add_argument("--repeat", type=int, default=1, help="measure each figure this often (median)")
    args = parser.parse_args()
    batches = bodies(args.rounds)
    total = sum(body.count(b"\n") for body in batches)
    results: dict[str, list[tuple[float, float]]] = {}
    server = start_node()
    try:
        assert server.token  # log in before timing (scrypt)
        for repeat in range(args.repeat):
            results.setdefault("pyarrow", []).append((baseline(batches), 0.0))
            duck = duckdb_rate(batches)
            if duck is not None:
                results.setdefault("duckdb", []).append((duck, 0.0))
            for clients in (1, 2):
                results.setdefault(f"http{clients}", []).append(
                    run(server, batches, clients, f"bench{clients}-{repeat}"))
        stats = server.datasets()
    finally:
        server.stop()

    def median(name: str, index: int = 0) -> float:
        return statistics.median(r[index] for r in results[name])

    base = median("pyarrow")
    duck = median("duckdb") if "duckdb" in results else None
    print(f"baseline pyarrow.json.read_json in-process: {base:,.0f} rows/s ({total:,} rows)")
    if duck is None:
        print("DuckDB read_json load: duckdb is not installed (pip install duckdb)")
    else:
        print(f"DuckDB read_json load (same NDJSON, in-process): {duck:,.0f} rows/s")
    for clients in (1, 2):
        rate, cpu_us = median(f"http{clients}"), median(f"http{clients}", 1)
        versus = "" if duck is None else f", {rate / duck:.2f}x DuckDB"
        print(f"ingest over HTTP, {clients} client(s), batches of 5,000: {rate:,.0f} rows/s "
              f"(ratio to pyarrow baseline {rate / base:.2f}{versus}); node CPU {cpu_us:.2f} us/row")
    print(f"stored: {stats['bench1-0']['rows']:,} rows")


if __name__ == "__main__":
    main()

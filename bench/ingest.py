"""Ingest throughput over HTTP: Loghub replayed in NDJSON batches of 5,000.

Prints rows/s for 1 and 2 concurrent clients, and the ratio to the baseline:
pyarrow.json.read_json parsing the same bodies in this process (the bound
for a server that must at least parse what it receives).

    .venv/bin/python bench/ingest.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import io
import threading
import time

import httpx
import pyarrow.json as pajson

from common import bodies, start_node


def baseline(batches: list[bytes]) -> float:
    began = time.perf_counter()
    rows = sum(pajson.read_json(io.BytesIO(body)).num_rows for body in batches)
    return rows / (time.perf_counter() - began)


def run(server, batches: list[bytes], clients: int, dataset: str) -> float:
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

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows[0] / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10, help="Loghub replays (20,000 rows each)")
    args = parser.parse_args()
    batches = bodies(args.rounds)
    total = sum(body.count(b"\n") for body in batches)
    base = baseline(batches)
    print(f"baseline pyarrow.json.read_json in-process: {base:,.0f} rows/s ({total:,} rows)")
    server = start_node()
    try:
        for clients in (1, 2):
            rate = run(server, batches, clients, f"bench{clients}")
            print(f"ingest over HTTP, {clients} client(s), batches of 5,000: {rate:,.0f} rows/s "
                  f"(ratio to baseline {rate / base:.2f})")
        stats = server.datasets()
        print(f"stored: {stats['bench1']['rows']:,} rows")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

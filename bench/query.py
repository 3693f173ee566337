"""Query latency over HTTP, with the same filters computed directly in this process as the baseline.

Loads Loghub replayed ``--rounds`` times into a node, lets it flush to
blocks, then times each query (best of 5) against a direct pyarrow.compute
evaluation over one in-memory table of the same rows.

    .venv/bin/python bench/query.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import io
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from common import bodies, start_node
from support import wait_until

QUERIES = [
    ("error", lambda t: pc.sum(pc.match_substring_regex(t["_msg"], r"(?:^|[^\p{L}\p{N}_])error(?:$|[^\p{L}\p{N}_])", ignore_case=True))),
    ('"connection reset"', lambda t: pc.sum(pc.match_substring(t["_msg"], "connection reset", ignore_case=True))),
    ("service:hdfs", lambda t: pc.sum(pc.equal(t["service"], "hdfs"))),
    ("zzzznotthere", lambda t: pc.sum(pc.match_substring(t["_msg"], "zzzznotthere", ignore_case=True))),
    ("* | stats count() as n by (service)", lambda t: t.group_by("service").aggregate([("service", "count")])),
    ("error | limit 10", lambda t: pc.sum(pc.match_substring_regex(t["_msg"], "error", ignore_case=True))),
]


def best_of(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    batches = bodies(args.rounds)
    table = pa.concat_tables([pajson.read_json(io.BytesIO(b)) for b in batches], promote_options="permissive")
    server = start_node(HELIOS_FLUSH_SECS="1")
    try:
        for body in batches:
            server.ingest(body, dataset="bench").raise_for_status()
        wait_until(lambda: server.datasets()["bench"]["blocks"] >= 1
                   and server.query("*", limit=1)["stats"]["rows_scanned"] <= table.num_rows, what="flush")
        print(f"{table.num_rows:,} rows; {server.datasets()['bench']['blocks']} blocks")
        for q, direct in QUERIES:
            server.query(q)  # warm the block cache
            http = best_of(lambda: server.query(q))
            base = best_of(lambda: direct(table))
            stats = server.query(q)["stats"]
            print(f"{q:45s} {http * 1000:8.1f} ms  (direct pyarrow {base * 1000:7.1f} ms, ratio {http / base:5.2f}; "
                  f"scanned {stats['blocks_scanned']} pruned {stats['blocks_pruned']})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

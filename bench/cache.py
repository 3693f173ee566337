"""Idle store requests per node per sync interval (counted), and a cold query against a warm one.

Starts two nodes on a shared fs store (``--sync-secs``, lease three times
that: the default 10 s / 30 s ratio), loads a little Loghub data on one,
lets both settle, then counts the store requests each node sends over
``--intervals`` sync intervals of idleness (from ``/metrics``:
``helios_store_requests_total``, GET + PUT + LIST + DELETE). Then a fresh
third node (nothing local, metadata pulled) runs the same queries twice:
cold (every block fetched from the store) and warm (blocks in its data dir
and decoded in memory). Small data: it runs in about a minute.

    .venv/bin/python bench/cache.py [--sync-secs 2] [--intervals 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import re
import secrets
import tempfile
import time
from pathlib import Path

from common import bodies
from support import Server, wait_until

OPS = ("GET", "PUT", "LIST", "DELETE")
QUERIES = ["* | stats count() as n", "error | stats count() as n by (service)", "service:hdfs | limit 10"]
SECONDS_PER_MONTH = 30 * 86_400


def requests_by_op(node: Server) -> dict[str, int]:
    text = node.request("GET", "/metrics").text
    found = re.findall(r'^helios_store_requests_total\{backend="[^"]+",op="([A-Z]+)"\} (\d+)$', text, re.M)
    return {op: int(n) for op, n in found if op in OPS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync-secs", type=float, default=2.0)
    parser.add_argument("--intervals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="Loghub replays loaded (20,000 lines each)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="helios-bench-cache-"))
    keys = root / "secrets"
    keys.mkdir(mode=0o700)
    for name in ("control.key", "jwt.secret"):
        (keys / name).write_bytes(secrets.token_bytes(32))
        (keys / name).chmod(0o600)
    env = {"HELIOS_SHARED_STORE": str(root / "store"), "HELIOS_BLOCK_SYNC_SECS": str(args.sync_secs),
           "HELIOS_LEASE_SECS": str(3 * args.sync_secs), "HELIOS_CONTROL_KEY_PATH": str(keys / "control.key"),
           "HELIOS_JWT_SECRET_PATH": str(keys / "jwt.secret")}
    nodes: list[Server] = []

    def start(name: str, **extra: str) -> Server:
        (root / name).mkdir()
        node = Server(root / name, {**env, **extra}).start()
        nodes.append(node)
        return node

    try:
        a, b = start("a", HELIOS_MEMTABLE_ROWS="2000"), start("b")  # blocks of 2,000 rows
        batches = bodies(args.rounds)
        for body in batches:
            a.ingest(body, dataset="bench").raise_for_status()
        rows = sum(body.count(b"\n") for body in batches)
        wait_until(lambda: b.count(dataset="bench") == rows, timeout_s=120, what="B to see A's rows")
        wait_until(lambda: all(n.request("GET", "/api/v1/cluster").json()["leaders"]["compaction"] for n in (a, b)),
                   timeout_s=60, what="a leader")
        time.sleep(2 * args.sync_secs)
        before = [(requests_by_op(n), time.monotonic()) for n in (a, b)]
        time.sleep(args.intervals * args.sync_secs)
        print(f"idle store requests per node per sync interval ({args.intervals} intervals of "
              f"{args.sync_secs:g} s, lease {3 * args.sync_secs:g} s):")
        for node, (counts, began) in zip((a, b), before):
            intervals = (time.monotonic() - began) / args.sync_secs
            now = requests_by_op(node)
            per = {op: (now.get(op, 0) - counts.get(op, 0)) / intervals for op in OPS}
            total = sum(per.values())
            role = "leader" if node.request("GET", "/api/v1/cluster").json()["leaders"]["compaction"] == \
                node.request("GET", "/api/v1/version").json()["node_id"] else "follower"
            detail = ", ".join(f"{op} {n:.2f}" for op, n in per.items() if n)
            print(f"  {node.data_dir.name} ({role}): {total:.2f} per interval ({detail}); at the default 10 s "
                  f"that is {total * SECONDS_PER_MONTH / 10 / 1e6:.2f} M requests per month")
        c = start("c", HELIOS_PREFETCH_HOURS="0")  # nothing fetched ahead: the first query is cold
        wait_until(lambda: c.datasets().get("bench", {}).get("rows") == rows, timeout_s=120, what="C's metadata")
        blocks = c.datasets()["bench"]["blocks"]
        print(f"a fresh node, {rows:,} rows in {blocks} blocks, all in the store (best of 3 when warm):")
        for q in QUERIES:
            times = []
            for _ in range(4):
                began = time.perf_counter()
                c.query(q, dataset="bench")
                times.append(time.perf_counter() - began)
            print(f"  {q:42s} first {times[0] * 1000:8.1f} ms  warm {min(times[1:]) * 1000:8.1f} ms")
        text = c.request("GET", "/metrics").text
        fetched = re.search(r"^helios_local_cache_fetched_bytes_total (\d+)$", text, re.M)
        print(f"  fetched from the store: {int(fetched.group(1)) if fetched else 0:,} bytes "
              f"(the first query is the cold one; the others find the blocks local)")
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()


if __name__ == "__main__":
    main()

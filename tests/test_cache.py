"""The data dir as a bounded cache of the shared store, and a cheap idle node.

- fs ``list`` walks only the prefix's directory, in key order, and stops at the limit (checked
  against the memory backend, the reference, on random key sets);
- an idle node makes at most 6 store requests per sync interval (counted on real nodes, fs and S3);
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Callable

import pytest
import trio

from backends.base import check_prefix
from backends.fs import FsBackend
from backends.memory import MemoryBackend
from support import SYNC_SECS, Record, Server, ndjson, wait_until

IDLE_BUDGET = 6  # store requests per node per sync interval when nothing changes (issue 18)
REQUEST_OPS = ("GET", "PUT", "LIST", "DELETE")


# -- fs list --------------------------------------------------------------------------------------


def _random_keys(rng: random.Random) -> list[str]:
    """Keys over names that sort around "/" ("-" and "." sort before it, letters and digits after)."""
    names = ["a", "b", "a-x", "a.y", "ab", "0", "_c", "z9", "b-", "b."]
    keys = sorted({"/".join(rng.choice(names) for _ in range(rng.randint(1, 3))) for _ in range(40)})
    kept: list[str] = []
    for key in keys:  # a name is a file or a directory, not both
        if any(other.startswith(key + "/") for other in keys) or any(key.startswith(k + "/") for k in kept):
            continue
        kept.append(key)
    return kept


def test_fs_list_matches_the_reference_in_order_prefix_start_after_and_limit(tmp_path: Path) -> None:
    rng = random.Random(18)

    async def main() -> None:
        for trial in range(25):
            fs, memory = FsBackend(tmp_path / f"s{trial}"), MemoryBackend()
            keys = _random_keys(rng)
            for key in keys:
                await fs.put(key, key.encode())
                await memory.put(key, key.encode())
            checked = 0
            while checked < 50:
                prefix = rng.choice(["", *[k[: rng.randint(0, len(k))] for k in keys]])
                try:
                    check_prefix(prefix)
                except Exception:
                    continue
                start_after = rng.choice(["", *keys, *[k[:3] for k in keys]])
                limit = rng.randint(1, 50)
                got = await fs.list(prefix, start_after=start_after, limit=limit)
                want = await memory.list(prefix, start_after=start_after, limit=limit)
                assert got == want, (prefix, start_after, limit)
                checked += 1

    trio.run(main)


def test_fs_list_reads_only_the_directories_on_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of one folder never walks the store: the start-up probe and the feed poll stay cheap."""
    async def main() -> None:
        fs = FsBackend(tmp_path / "store")
        for day in range(30):
            for block in range(5):
                await fs.put(f"parts/logs/2026-01-{day + 1:02d}/blocks/b{block}.parquet", b"x")
        await fs.put("_control/fingerprints.json", b"{}")
        await fs.put("_changes/00000000000000000001.logs.2026-01-01.1.a", b"")
        opened: list[str] = []
        real = os.scandir

        def counting(path: str) -> object:
            opened.append(os.path.relpath(path, fs.root))
            return real(path)

        monkeypatch.setattr(os, "scandir", counting)
        assert [i.key for i in await fs.list("_control/", limit=1)] == ["_control/fingerprints.json"]
        assert opened == ["_control"]
        opened.clear()
        assert len(await fs.list("", limit=1)) == 1
        assert opened == [".", "_changes"], opened  # the first directory in key order, then stop
        opened.clear()
        page = await fs.list("parts/logs/", start_after="parts/logs/2026-01-10/blocks/b4.parquet", limit=2)
        assert [i.key for i in page] == ["parts/logs/2026-01-11/blocks/b0.parquet",
                                         "parts/logs/2026-01-11/blocks/b1.parquet"]
        assert opened == ["parts/logs", "parts/logs/2026-01-10", "parts/logs/2026-01-10/blocks",
                          "parts/logs/2026-01-11", "parts/logs/2026-01-11/blocks"], opened

    trio.run(main)


# -- an idle node -----------------------------------------------------------------------------------


def store_requests(node: Server) -> int:
    """Requests this node has sent to the store so far (GET, PUT, LIST, DELETE; retries included)."""
    text = node.request("GET", "/metrics").text
    total = 0
    for op, count in re.findall(r'^helios_store_requests_total\{backend="[^"]+",op="([A-Z]+)"\} (\d+)$', text, re.M):
        if op in REQUEST_OPS:
            total += int(count)
    return total


def test_an_idle_node_makes_at_most_six_store_requests_per_sync_interval(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record]) -> None:
    # The default lease is three sync intervals (30 s against 10 s): keep that ratio.
    env = {**store_env, "HELIOS_LEASE_SECS": str(3 * SYNC_SECS)}
    a = server_factory("a", **env)
    b = server_factory("b", **env)
    assert a.ingest(ndjson(records[:300]), dataset="idle").status_code == 200
    wait_until(lambda: b.count(dataset="idle") == 300, timeout_s=10 * SYNC_SECS, what="B to see A's rows")
    wait_until(lambda: all(n.request("GET", "/api/v1/cluster").json()["leaders"]["compaction"] for n in (a, b)),
               timeout_s=10 * SYNC_SECS, what="a leader known to both")
    time.sleep(2 * SYNC_SECS)  # let the last upload's feed key and the first passes settle
    before = [(store_requests(n), time.monotonic()) for n in (a, b)]
    time.sleep(10 * SYNC_SECS)
    for node, (count, began) in zip((a, b), before):
        intervals = (time.monotonic() - began) / SYNC_SECS
        rate = (store_requests(node) - count) / intervals
        print(f"{node.data_dir.name}: {rate:.2f} store requests per sync interval")
        assert rate <= IDLE_BUDGET, f"{node.data_dir.name}: {rate:.2f} requests per sync interval when idle"

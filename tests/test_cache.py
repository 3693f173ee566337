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
from support import SYNC_SECS, Record, Server, ndjson, store_outage, wait_until

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


# -- eviction (in-process, deterministic) -----------------------------------------------------------


def _parquet_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "parts").rglob("*.parquet"))


def test_eviction_spares_own_unuploaded_blocks_and_blocks_a_query_holds(tmp_path: Path,
                                                                         records: list[Record]) -> None:
    from helios.ingest.records import parse_ndjson
    from helios.replication.replicator import Replicator
    from helios.storage.engine import Engine
    from helios.storage.fetch import query_blocks

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await scenario(nursery)
            nursery.cancel_scope.cancel()

    async def scenario(nursery: trio.Nursery) -> None:
        store = MemoryBackend()
        writer = Engine(tmp_path / "a", "a")
        writer.open()
        await nursery.start(writer.wal.run)
        for start in range(0, 600, 60):  # ten blocks of one partition, each flushed and uploaded
            await writer.ingest("d", parse_ndjson(ndjson(records[start : start + 60]), 0))
            await writer.flush()
        await Replicator(writer, store, "a", 0.1).upload_once()
        sizes = sorted(b.bytes for m in writer.manifests.values() for b in m.blocks)
        capacity = sizes[-1] * 5 // 2  # room for two blocks, never three
        node = Engine(tmp_path / "b", "b", local_cache_bytes=capacity)
        node.open()
        await nursery.start(node.wal.run)
        puller = Replicator(node, store, "b", 0.1, prefetch_hours=0)
        await puller.pull_once()  # metadata only: no block of the writer is local yet
        key = next(iter(node.manifests))
        peers = list(node.manifests[key].blocks)
        assert len(peers) == 10 and _parquet_bytes(tmp_path / "b") == 0
        await node.ingest("d", parse_ndjson(ndjson(records[600:700]), 0))  # the node's own rows ...
        await node.flush()  # ... in a block that is not uploaded (no upload pass runs here)
        own = node.manifests[key].pending("b")
        assert len(own) == 1
        own_file = node.part_dir(key) / own[0].filename
        own_bytes = sum(b.bytes for m in node.manifests.values() for b in m.pending("b"))  # maybe a second day
        held = peers[0]
        sources = [s for s in node.sources({"d"}, None, None) if s.block is not None and s.block.id == held.id]
        async with query_blocks(node.blocks, sources, deadline_s=60):  # a running query holds one block
            await node.blocks.read(key, held)
            assert node.blocks.is_resident(held.id)
            for round_ in range(3):
                for block in peers[1:]:
                    await node.blocks.read(key, block)  # each read evicts the least recently used it may
                    assert (node.part_dir(key) / held.filename).exists(), "a block under a query was evicted"
                    assert own_file.exists(), "an own block the store does not have was evicted"
                    assert node.blocks.used_bytes() <= capacity
                    assert _parquet_bytes(tmp_path / "b") - own_bytes <= capacity
            assert node.blocks.stats.evicted_blocks >= 10
        for block in peers[1:]:  # released: the held block is the least recently used and goes first
            await node.blocks.read(key, block)
        assert not (node.part_dir(key) / held.filename).exists()
        assert own_file.exists()
        await puller.upload_once()  # uploaded: the own block is counted now, and evictable
        assert node.blocks.used_bytes() <= capacity
        for block in peers:
            await node.blocks.read(key, block)
        assert not own_file.exists() and node.blocks.used_bytes() <= capacity
        assert _parquet_bytes(tmp_path / "b") <= capacity
        writer.close()
        node.close()

    trio.run(main)


# -- a fresh node with a small cache (real nodes, fs and S3) --------------------------------------


def _cache_files_bytes(data_dir: Path) -> int:
    """Bytes of every block file (and temporary file) in a data dir: what the cache bound covers."""
    total = 0
    for path in (data_dir / "parts").rglob("*"):
        if path.name != "manifest.json":
            try:
                if path.is_file():
                    total += path.stat().st_size
            except FileNotFoundError:
                continue
    return total


class Sampler:
    """Samples a data dir's block bytes in a thread while a test runs queries."""

    def __init__(self, data_dir: Path) -> None:
        import threading

        self.data_dir = data_dir
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _cache_files_bytes(self.data_dir))
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def metric(node: Server, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", node.request("GET", "/metrics").text, re.M)
    assert match, name
    return float(match.group(1))


def test_a_fresh_node_with_a_quarter_of_the_store_as_cache_answers_exactly_within_its_bound(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record]) -> None:
    from collections import Counter

    # Many small blocks, each indexed as it is flushed (compaction would do it only after 300 s).
    env = {**store_env, "HELIOS_MEMTABLE_ROWS": "1000", "HELIOS_INDEX_ON_FLUSH": "1"}
    a = server_factory("a", **env)
    for start in range(0, len(records), 1000):
        assert a.ingest(ndjson(records[start : start + 1000]), dataset="dr").status_code == 200
    wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0
               and a.datasets()["dr"]["rows"] == len(records), timeout_s=120, what="A's blocks in the store")
    store_bytes = a.datasets()["dr"]["bytes"]
    blocks = a.datasets()["dr"]["blocks"]
    capacity = store_bytes // 4
    assert blocks >= 20, blocks
    c = server_factory("c", **store_env, HELIOS_LOCAL_CACHE_BYTES=str(capacity))
    wait_until(lambda: c.datasets().get("dr", {}).get("rows") == len(records), timeout_s=60,
               what="C to know every block (metadata)")
    services = Counter(r.service for r in records)
    newest = sorted(records, key=lambda r: r.time_ns, reverse=True)[:5]
    expected = {
        "* | stats count() as n": [{"n": len(records)}],
        "level:ERROR | stats count() as n": [{"n": sum(r.level == "ERROR" for r in records)}],
        "host:web-3 | stats count() as n": [{"n": sum(r.host == "web-3" for r in records)}],
        "* | stats max(size) as m": [{"m": max(r.size for r in records)}],  # reads a column of every block
    }
    with Sampler(c.data_dir) as sampler:
        for _ in range(2):  # cold, then with whatever the cache kept
            for q, rows in expected.items():
                reply = c.query(q, dataset="dr")
                assert reply["rows"] == rows, (q, reply["stats"])
                assert not reply["stats"]["partial"] and reply["stats"]["blocks_missing"] == 0
            by_service = c.query("* | stats count() as n by (service)", dataset="dr")["rows"]
            assert {row["service"]: row["n"] for row in by_service} == services
            latest = c.query("*", dataset="dr", limit=5)["rows"]
            assert [row["_msg"] for row in latest] == [r.msg for r in newest]
    print(f"store {store_bytes} B in {blocks} blocks, cache bound {capacity} B, peak {sampler.peak} B "
          f"({sampler.samples} samples), now {_cache_files_bytes(c.data_dir)} B")
    assert sampler.samples > 10 and 0 < sampler.peak <= capacity
    assert _cache_files_bytes(c.data_dir) <= capacity
    assert metric(c, "helios_local_cache_misses_total") > 0
    assert metric(c, "helios_local_cache_fetched_bytes_total") >= store_bytes  # more than the cache holds
    assert metric(c, "helios_local_cache_index_fetched_total") > 0  # counts and filters from the indexes
    assert metric(c, "helios_local_cache_bytes") <= capacity


def test_an_unreachable_store_gives_partial_answers_within_the_deadline_and_local_rows_stay_exact(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record],
        request: pytest.FixtureRequest) -> None:
    deadline_s = 3.0
    a = server_factory("a", **store_env, HELIOS_MEMTABLE_ROWS="500")
    for start in range(0, 3000, 500):
        assert a.ingest(ndjson(records[start : start + 500]), dataset="o").status_code == 200
    wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0
               and a.datasets()["o"]["rows"] == 3000, timeout_s=120, what="A's blocks in the store")
    c = server_factory("c", **store_env, HELIOS_FETCH_DEADLINE_SECS=str(deadline_s))
    wait_until(lambda: c.datasets().get("o", {}).get("rows") == 3000, timeout_s=60, what="C to know A's blocks")
    assert c.ingest(ndjson(records[5000:5400]), dataset="mine").status_code == 200  # C's own rows
    early = {"from": records[0].time_ns, "to": records[500].time_ns}  # the first block only: C reads (caches) it
    assert c.query("* | stats count(_msg) as n", dataset="o", **early)["rows"] == [{"n": 500}]  # reads the block
    total_blocks = a.datasets()["o"]["blocks"]
    restore = store_outage(store_env, request)
    try:
        began = time.monotonic()
        # A count of rows is known from the manifests without any block: exact, even now.
        assert c.query("* | stats count() as n", dataset="o")["rows"] == [{"n": 3000}]
        reply = c.request("POST", "/api/v1/query", json={"q": "* | stats count(_msg) as n", "dataset": "o"})
        took = time.monotonic() - began
        assert reply.status_code == 200, reply.text
        stats = reply.json()["stats"]
        print(f"partial answer in {took:.2f}s: {reply.json()['rows']} {stats}")
        assert stats["partial"] is True and 0 < stats["blocks_missing"] < total_blocks
        assert reply.json()["rows"][0]["n"] < 3000
        assert took < deadline_s + 10, f"{took:.1f}s: a partial answer must come within the deadline"
        cached = c.query("* | stats count(_msg) as n", dataset="o", **early)
        assert cached["rows"] == [{"n": 500}] and not cached["stats"]["partial"]
        mine = c.query("* | stats count() as n", dataset="mine")
        assert mine["rows"] == [{"n": 400}] and not mine["stats"]["partial"]
        search = c.query("*", dataset="o", limit=3)  # a plain search: partial too, never an error
        assert search["stats"]["partial"] is True
    finally:
        restore()
    wait_until(lambda: not c.query("* | stats count(_msg) as n", dataset="o")["stats"]["partial"], timeout_s=60,
               what="exact answers once the store is back")
    assert c.count(dataset="o") == 3000 and c.count(dataset="mine") == 400


# -- the control-plane log: snapshot and trim (in-process) ------------------------------------------


def test_the_control_log_is_snapshotted_and_trimmed_and_a_joiner_reads_snapshot_plus_tail(tmp_path: Path) -> None:
    from helios.control.plane import ControlPlane, Sealer

    def plane(name: str) -> ControlPlane:
        node = ControlPlane(tmp_path / name, Sealer(b"k" * 32, b"j" * 32, "aes-256-gcm"), name)
        node.snapshot_every = 10
        return node

    def state(node: ControlPlane) -> list[tuple[str, str, int, object]]:
        return sorted((o.kind, o.id, o.version, o.doc) for o in node._objects.values())

    def numbers(store: FsBackend, prefix: str) -> list[int]:
        return sorted(int(p.name) for p in (store.root / prefix).iterdir()) if (store.root / prefix).is_dir() else []

    def count(n: int):  # noqa: ANN202
        return lambda current: {"n": n}

    async def main() -> None:
        store = FsBackend(tmp_path / "store")
        writer, stale = plane("w"), plane("s")
        for node in (writer, stale):
            await node.open()
            await node.attach(store, "fs")
        for i in range(5):
            await writer.commit("dashboards", f"d{i % 3}", count(i), "alice")
        await stale.pull()  # the stale node has applied 5 entries, then sleeps through 30 more
        assert stale.applied == 5
        for i in range(5, 35):
            await writer.commit("dashboards", f"d{i % 3}", count(i), "alice")
        await writer.commit("users", "gone", count(0), "alice")
        await writer.commit("users", "gone", lambda current: None, "alice")  # a tombstone: versions go on
        assert writer.applied == 37
        # The store keeps the newest two snapshots and the entries after the older one.
        assert numbers(store, "_control/snapshots") == [20, 30]
        assert numbers(store, "_control/log") == list(range(21, 38))
        assert numbers(writer.local, "snapshots") == [20, 30]
        assert numbers(writer.local, "log") == list(range(21, 38))
        # A joining node reads the newest snapshot and the tail, not the history.
        joiner = plane("j")
        await joiner.open()
        before = store.counters.snapshot()
        await joiner.attach(store, "fs")
        gets = store.counters.snapshot().get("GET", 0) - before.get("GET", 0)
        assert joiner.applied == 37 and state(joiner) == state(writer)
        assert gets <= 12, f"{gets} GETs: a joiner reads the snapshot and the tail"  # fingerprints, 1, snapshot, 31-38
        assert [a.seq for a in joiner.audit][-7:] == list(range(31, 38))
        # A node that slept through a trim never writes into the trimmed numbers: it catches up first.
        await stale.commit("settings", "cluster", count(99), "bob")
        assert stale.applied == 38 and numbers(store, "_control/log")[-1] == 38
        assert not (store.root / "_control/log/000000000006").exists()
        await writer.pull()
        assert state(writer) == state(stale)
        # The feed announces an entry beyond a trim: a poked node reads the snapshot and catches up.
        for i in range(38, 52):
            await writer.commit("dashboards", "d0", count(i), "alice")
        assert numbers(store, "_control/log")[0] > joiner.applied + 1
        joiner.poke(writer.applied)
        await joiner.pull()
        assert joiner.applied == writer.applied and state(joiner) == state(writer)
        # A restart reads the local snapshot and the local tail.
        again = plane("w")
        await again.open()
        assert again.applied == writer.applied and state(again) == state(writer)
        # A new store is seeded from a node whose own log starts after its snapshot.
        fresh = FsBackend(tmp_path / "store2")
        await again.attach(fresh, "fs2")
        assert again.applied == 52
        assert numbers(fresh, "_control/snapshots") == [50] and numbers(fresh, "_control/log") == [51, 52]
        other = plane("o")
        await other.open()
        await other.attach(fresh, "fs2")
        assert state(other) == state(writer)

    trio.run(main)

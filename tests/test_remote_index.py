"""Index sections fetched small (issue 18 with the token index of issue 14).

A block that is not in the data dir is two things in the store: its Parquet bytes and, at the end of
the same object, its token index section (``index_bytes``, checked by ``index_sha256``). A node reads
the section alone with one ranged GET — eagerly when its puller learns of the block, lazily when a
query meets a block whose index it lacks — and fetches the whole block only when a query reads rows.

- in-process (memory store, deterministic): which store reads each kind of query makes — ranged reads
  of index sections, whole blocks only for rows (format 1 blocks, non-ASCII rows, columns the pipes
  read, plain searches) — with answers equal to reading every block locally; the puller's eager fetch
  (one ranged GET per block, verified, a damaged section quarantined and never used, its memory bound,
  a store outage retried);
- real nodes on fs and S3: a fresh node whose data dir holds no block answers word, ``field:value``
  and ``by (level)`` counts exactly while fetching no block (eagerly, and lazily on a node whose
  eager budget is zero), a plain search still fetches rows exactly; with the store down, index
  answers stay exact and a query needing rows answers ``partial`` within the deadline.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from backends import Unavailable
from backends.faulty import FaultyBackend, Passthrough
from backends.memory import MemoryBackend
from support import Record, Server, metric, ndjson, store_outage, wait_until

# -- in-process -------------------------------------------------------------------------------------


class Reads(Passthrough):
    """Records the keys of whole-object GETs and of ranged GETs."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.whole: list[str] = []
        self.ranged: list[str] = []

    async def get(self, key: str) -> bytes:
        self.whole.append(key)
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranged.append(key)
        return await self.inner.get_range(key, start, length)

    def clear(self) -> None:
        self.whole.clear()
        self.ranged.clear()


UNICODE = ["Fehler: Verbindung ÜBER Proxy abgelehnt, error 17", "日本語のログ error 警告"]


def _blocks(root: Path, records: list[Record]) -> dict[str, Any]:
    """Eight format 2 blocks, one format 1 block (no index section) and one format 2 block with
    non-ASCII messages (rows its index leaves to a scan), in one partition, newest last."""
    from helios.ingest.records import parse_ndjson
    from helios.storage.blocks import build_block

    pieces: list[tuple[str, list[Record], bool]] = [(f"b{i}", records[i * 400 : (i + 1) * 400], True)
                                                    for i in range(8)]
    pieces.append(("old", records[3200:3600], False))
    odd = [dataclasses.replace(r, msg=UNICODE[i % 2] if i % 50 == 0 else r.msg, service="hdfs" if i % 3 else r.service)
           for i, r in enumerate(records[3600:3800])]
    pieces.append(("odd", odd, True))
    made = {}
    for name, rows, indexed in pieces:
        entry = build_block(root, f"{rows[0].time_ns:x}-w-{name}", [parse_ndjson(ndjson(rows), 0)], dataset="d",
                            day=0, node="w", created_ns=rows[0].time_ns, index="tokens" if indexed else "bloom")
        made[name] = entry
    return made


async def _query(engine: Any, text: str, **window: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run a query as the HTTP handler does: plan, fetch indexes then rows, execute in threads."""
    from helios.api.query import fetch_plan
    from helios.query.executor import execute, to_rows
    from helios.query.parser import parse
    from helios.storage.fetch import query_blocks

    parsed = parse(text)
    start, end = window.get("start"), window.get("end")
    sources = engine.sources({"d"}, start, end)
    needs_rows, needs_index = fetch_plan(parsed, engine.cache, start, end)
    async with query_blocks(engine.blocks, sources, start_ns=start, end_ns=end, wanted=needs_rows,
                            index_wanted=needs_index, deadline_s=30) as blocks:
        result = await trio.to_thread.run_sync(lambda: execute(parsed, sources, engine.cache, start_ns=start,
                                                               end_ns=end, limit=10_000, fetch=blocks.open))
    return to_rows(result), result.stats


def test_a_query_reads_index_sections_and_fetches_only_blocks_whose_rows_it_reads(
        tmp_path: Path, records: list[Record]) -> None:
    from helios.replication.shared import block_key
    from helios.storage.cache import BlockCache
    from helios.storage.engine import Engine
    from helios.storage.manifest import PartitionManifest

    local = Engine(tmp_path / "local", "w")  # every block in its data dir: the answers to compare with
    node = Engine(tmp_path / "node", "n", local_cache_bytes=1)  # keeps no block on disk
    for engine in (local, node):
        engine.open()
    made = _blocks(local.part_dir(("d", 0)), records)
    names = {entry.id: name for name, entry in made.items()}
    indexed = {name for name, entry in made.items() if entry.index_bytes}
    assert made["old"].index_bytes == 0 and len(indexed) == 9
    for engine in (local, node):
        engine.manifests[("d", 0)] = PartitionManifest("d", 0, blocks=list(made.values()), shared_version=1)

    def read(keys: list[str]) -> list[str]:
        return sorted(names[key.rsplit("/", 1)[1].removesuffix(".parquet")] for key in keys)

    async def main() -> None:
        store = Reads(MemoryBackend())
        for entry in made.values():
            await store.inner.put(block_key("d", 0, entry.id), (local.part_dir(("d", 0)) / entry.filename).read_bytes())
        node.blocks.store = store
        edge = made["b7"]
        cases: list[tuple[str, dict[str, int], set[str] | None, set[str]]] = [
            # query, time window, blocks read whole (None: some, "old" among them), index sections read
            ("error | stats count() as n", {}, {"old", "odd"}, indexed),
            ("service:hdfs | stats count() as n", {}, {"old", "odd"}, indexed),
            ("error service:hdfs | stats count() as n", {}, {"old", "odd"}, indexed),
            ("* | stats count() as n by (level)", {}, {"old"}, indexed),
            ("* | stats count() as n", {}, set(), set()),  # the manifest's row counts
            ("zzzunknowntoken | stats count() as n", {}, {"old", "odd"}, indexed),  # ruled out by the indexes
            # the range cuts b7 (its rows' times are read); the older blocks are outside it
            ("error | stats count() as n", {"start": edge.min_time + 1, "end": 1 << 62}, {"b7", "old", "odd"},
             {"b7", "odd"}),
            ("error | stats count() as n by (host)", {}, None, indexed),  # a column for the pipes
            ("error | limit 5", {}, None, set()),  # a plain search: rows, newest first, no index first
            ("* | stats max(size) as m", {}, set(made), set()),  # rows of every block: no index first
        ]
        for text, window, whole, ranged in cases:
            node.cache = BlockCache(1 << 28)  # nothing in memory: every index is read from the store
            store.clear()
            got, stats = await _query(node, text, **window)
            want, _ = await _query(local, text, **window)
            assert got == want, text
            assert not stats["partial"], text
            if whole is not None:
                assert read(store.whole) == sorted(whole), (text, read(store.whole))
            else:
                assert "old" in read(store.whole) and len(set(store.whole)) == len(store.whole), text
            assert read(store.ranged) == sorted(ranged), (text, read(store.ranged))
        # With the indexes in memory an index answer reads no index again, and no block but those it must.
        got, _ = await _query(node, "service:hdfs | stats count() as n")
        store.clear()
        again, _ = await _query(node, "service:hdfs | stats count() as n")
        assert again == got and store.ranged == [] and set(read(store.whole)) <= {"odd", "old"}
        local.close()
        node.close()

    trio.run(main)


def test_the_puller_fetches_index_sections_eagerly_verified_and_within_its_budget(
        tmp_path: Path, records: list[Record]) -> None:
    from helios.ingest.records import parse_ndjson
    from helios.replication.replicator import Replicator
    from helios.replication.shared import block_key
    from helios.storage.engine import Engine
    from helios.storage.local import INDEX_IN_FLIGHT

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await scenario(nursery)
            nursery.cancel_scope.cancel()

    async def scenario(nursery: trio.Nursery) -> None:
        inner = MemoryBackend()
        writer = Engine(tmp_path / "a", "a", index_on_flush=True)
        writer.open()
        await nursery.start(writer.wal.run)
        for start in range(0, 1200, 100):
            await writer.ingest("d", parse_ndjson(ndjson(records[start : start + 100]), 0))
            await writer.flush()
        await Replicator(writer, inner, "a", 0.1).upload_once()
        entries = {b.id: (key, b) for key, m in writer.manifests.items() for b in m.blocks}
        assert len(entries) >= 12 and all(b.index_bytes for _, b in entries.values())

        def reader(name: str, store: Any) -> tuple[Engine, Replicator]:
            engine = Engine(tmp_path / name, name, local_cache_bytes=1)
            engine.open()
            return engine, Replicator(engine, store, name, 0.1, prefetch_hours=0)

        # Eager: one ranged GET per block, nothing else; each verified index is in memory.
        store = Reads(inner)
        node, puller = reader("b", store)
        await puller.pull_once()
        store.clear()
        requests = inner.counters.snapshot().get("GET", 0)
        assert await puller.fetch_indexes() == len(entries)
        assert store.whole == [] and sorted(store.ranged) == sorted(block_key(k[0], k[1], i)
                                                                    for i, (k, _) in entries.items())
        assert inner.counters.snapshot()["GET"] - requests == len(entries)
        stats = node.blocks.stats
        assert stats.index_fetched == len(entries) and stats.fetched_blocks == 0 and stats.misses == 0
        assert stats.index_fetched_bytes == sum(b.index_bytes for _, b in entries.values())
        assert all(node.cache.known_index(i) is not None for i in entries)
        assert await puller.fetch_indexes() == 0 and len(store.ranged) == len(entries)  # known: no request

        # A damaged section in the store is quarantined by key and never used; the others are.
        damaged_id = sorted(entries)[3]
        key, entry = entries[damaged_id]
        name = block_key(key[0], key[1], damaged_id)
        good = inner.objects[name]
        spot = entry.parquet_bytes + entry.index_bytes // 2
        inner.objects[name] = good[:spot] + bytes([good[spot] ^ 0x01]) + good[spot + 1 :]
        node2, puller2 = reader("c", inner)
        await puller2.pull_once()
        assert await puller2.fetch_indexes() == len(entries) - 1
        assert node2.cache.known_index(damaged_id) is None
        assert node2.health.problems[("fetch", name)].quarantined
        assert node2.blocks.stats.index_fetch_errors == 1
        inner.objects[name] = good

        # The memory budget: the eager fetch stops once indexes take what it may use.
        node3, puller3 = reader("d", inner)
        await puller3.pull_once()
        wanted = sorted(entries.values(), key=lambda item: item[1].max_time, reverse=True)
        fetched = await node3.blocks.fetch_indexes(wanted, budget_bytes=1)
        assert 1 <= fetched <= INDEX_IN_FLIGHT < len(entries)
        assert node3.cache.known_index(wanted[0][1].id) is not None  # newest first

        # A store that is down: the pass raises, and the next one fetches what is left.
        down = FaultyBackend(inner, seed=1, error_rate=1.0)
        node4, puller4 = reader("e", inner)
        await puller4.pull_once()
        puller4.store = node4.blocks.store = down
        with pytest.raises(Unavailable):
            await puller4.fetch_indexes()
        assert puller4._indexes_due
        down.enabled = False
        assert await puller4.fetch_indexes() == len(entries)
        for engine in (writer, node, node2, node3, node4):
            engine.close()

    trio.run(main)


# -- real nodes, fs and S3 --------------------------------------------------------------------------


def _block_files(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "parts").rglob("*.parquet"))


def _tokens(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z0-9_]+", text.lower()))  # the Loghub lines are ASCII


def _index_answers(records: list[Record]) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Queries a block's index answers without rows, each with a check of the reply's rows."""
    error = sum("error" in _tokens(r.msg) for r in records)
    hdfs = sum(r.service == "hdfs" for r in records)
    both = sum(r.service == "hdfs" and "block" in _tokens(r.msg) for r in records)
    levels = Counter(r.level for r in records)
    return {
        "error | stats count() as n": lambda rows: rows == [{"n": error}],
        "service:hdfs | stats count() as n": lambda rows: rows == [{"n": hdfs}],
        "block service:hdfs | stats count() as n": lambda rows: rows == [{"n": both}],
        "* | stats count() as n by (level)": lambda rows: {row.get("level"): row["n"] for row in rows} == levels,
    }


def _ingest_and_upload(a: Server, records: list[Record], dataset: str) -> None:
    for start in range(0, len(records), 500):
        assert a.ingest(ndjson(records[start : start + 500]), dataset=dataset).status_code == 200
    wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0
               and a.datasets()[dataset]["rows"] == len(records), timeout_s=120, what="A's blocks in the store")


def _indexes_known(node: Server, dataset: str) -> bool:
    """Every block the node knows has its index section fetched (no block is in its data dir)."""
    blocks = node.datasets().get(dataset, {}).get("blocks", 0)
    return blocks > 0 and metric(node, "helios_local_cache_index_fetched_total") >= blocks


# The block set stays what A uploaded, each block indexed as it is flushed (no compaction to do it).
NO_COMPACTION = {"HELIOS_COMPACTION_INTERVAL_SECS": "3600", "HELIOS_INDEX_ON_FLUSH": "1"}


def test_a_fresh_node_answers_from_index_sections_without_fetching_a_block(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record]) -> None:
    data = records[:8000]
    a = server_factory("a", **store_env, **NO_COMPACTION, HELIOS_MEMTABLE_ROWS="500")
    _ingest_and_upload(a, data, "ix")
    blocks, store_bytes = a.datasets()["ix"]["blocks"], a.datasets()["ix"]["bytes"]
    assert blocks >= 16, blocks
    # C fetches index sections eagerly; D's decoded cache is too small for any to be fetched ahead,
    # so its first queries read them lazily. Neither keeps a block in its data dir.
    c = server_factory("c", **store_env, **NO_COMPACTION, HELIOS_LOCAL_CACHE_BYTES="1")
    d = server_factory("d", **store_env, **NO_COMPACTION, HELIOS_LOCAL_CACHE_BYTES="1", HELIOS_CACHE_BYTES="1")
    wait_until(lambda: _indexes_known(c, "ix"), timeout_s=60, what="C to fetch every index section")
    wait_until(lambda: d.datasets().get("ix", {}).get("rows") == len(data), timeout_s=60, what="D to know A's blocks")
    assert metric(d, "helios_local_cache_index_fetched_total") == 0  # no budget: nothing fetched ahead
    for node in (c, d):
        for _ in range(2):
            for q, right in _index_answers(data).items():
                reply = node.query(q, dataset="ix")
                assert right(reply["rows"]), (node.data_dir.name, q, reply)
                assert not reply["stats"]["partial"] and reply["stats"]["blocks_missing"] == 0
        sections = metric(node, "helios_local_cache_index_fetched_total")
        section_bytes = metric(node, "helios_local_cache_index_fetched_bytes_total")
        print(f"{node.data_dir.name}: {sections:.0f} index sections, {section_bytes:.0f} B "
              f"(store {store_bytes} B in {blocks} blocks)")
        assert sections == blocks, "one ranged read per block, once"
        assert 0 < section_bytes < store_bytes
        assert metric(node, "helios_local_cache_fetched_blocks_total") == 0
        assert metric(node, "helios_local_cache_fetched_bytes_total") == 0
        assert metric(node, "helios_local_cache_misses_total") == 0
        assert _block_files(node.data_dir) == 0
    # Rows still come from the blocks, exactly.
    newest = sorted(data, key=lambda r: r.time_ns, reverse=True)
    for node in (c, d):
        latest = node.query("*", dataset="ix", limit=5)
        assert [row["_msg"] for row in latest["rows"]] == [r.msg for r in newest[:5]]
        errors = node.query("error", dataset="ix", limit=7)
        assert [row["_msg"] for row in errors["rows"]] == [r.msg for r in newest if "error" in _tokens(r.msg)][:7]
        assert not latest["stats"]["partial"] and not errors["stats"]["partial"]
        assert metric(node, "helios_local_cache_fetched_blocks_total") > 0
        assert _block_files(node.data_dir) <= 1  # streamed through a 1-byte cache


def test_index_answers_stay_exact_in_a_store_outage_and_row_queries_answer_partial_within_the_deadline(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record],
        request: pytest.FixtureRequest) -> None:
    deadline_s = 3.0
    data = records[:5000]
    a = server_factory("a", **store_env, **NO_COMPACTION, HELIOS_MEMTABLE_ROWS="500")
    _ingest_and_upload(a, data, "out")
    c = server_factory("c", **store_env, **NO_COMPACTION, HELIOS_LOCAL_CACHE_BYTES="1",
                       HELIOS_FETCH_DEADLINE_SECS=str(deadline_s))
    wait_until(lambda: _indexes_known(c, "out"), timeout_s=60, what="C to fetch every index section")
    answers = _index_answers(data)
    restore = store_outage(store_env, request)
    try:
        for q, right in answers.items():
            began = time.monotonic()
            reply = c.query(q, dataset="out")
            assert right(reply["rows"]), (q, reply)
            assert not reply["stats"]["partial"] and reply["stats"]["blocks_missing"] == 0, q
            assert time.monotonic() - began < deadline_s, f"{q}: an index answer does not wait on the store"
        began = time.monotonic()
        reply = c.request("POST", "/api/v1/query", json={"q": "*", "dataset": "out", "limit": 5})
        took = time.monotonic() - began
        assert reply.status_code == 200, reply.text
        stats = reply.json()["stats"]
        print(f"rows during the outage: partial answer in {took:.2f}s: {stats}")
        assert stats["partial"] is True and stats["blocks_missing"] > 0
        assert took < deadline_s + 10, f"{took:.1f}s: a partial answer must come within the deadline"
        counted = c.query("error | stats count() by (host)", dataset="out")  # rows of every matching block
        assert counted["stats"]["partial"] is True
    finally:
        restore()
    wait_until(lambda: not c.query("*", dataset="out", limit=5)["stats"]["partial"], timeout_s=60,
               what="exact answers once the store is back")
    newest = sorted(data, key=lambda r: r.time_ns, reverse=True)[:5]
    assert [row["_msg"] for row in c.query("*", dataset="out", limit=5)["rows"]] == [r.msg for r in newest]

"""In-process: leases hand over after a pause (simulated time), old epochs are fenced off, uploads and GC respect retirement."""

from __future__ import annotations

import os
import sys
import time
import threading
from pathlib import Path
from typing import Any

import pytest

import trio
import trio.testing

from backends.memory import MemoryBackend
from helios import config
from helios.errors import ConfigError
from helios.niceness import niced
from helios.replication import shared
from helios.replication import jobs
from helios.replication.jobs import Maintenance, plan_compaction
from helios.replication.lease import BEATS, Lease
from helios.storage.blocks import BlockEntry
from helios.storage.engine import Engine

TTL = 3.0


def test_a_paused_holder_loses_the_lease_and_cannot_act_on_it() -> None:
    store = MemoryBackend()
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        a, b = Lease("compaction", store, "a", TTL), Lease("compaction", store, "b", TTL)
        await a.tick()
        await b.tick()
        assert a.is_leader and a.epoch == 1 and not b.is_leader and b.leader() == "a"
        for _ in range(10):  # both tick: a renews, b sees a change every time and never takes over
            await trio.sleep(TTL / 3)
            await a.tick()
            await b.tick()
            assert a.is_leader and not b.is_leader
        # a is paused (no ticks); b sees nothing change for 1.5 TTL and takes epoch 2.
        waited = 0.0
        while not b.is_leader:
            await trio.sleep(TTL / 3)
            waited += TTL / 3
            await b.tick()
        assert b.epoch == 2 and TTL * 1.5 <= waited <= TTL * 2.5
        assert not a.is_leader  # its own clock says its lease ran out before b could take over
        assert not await a.still_leader(1)
        await a.tick()  # wakes up: sees epoch 2, stays a follower
        assert not a.is_leader and a.leader() == "b" and a.epoch == 0
        assert await b.still_leader(2)

    trio.run(main, clock=clock)


def test_a_lone_node_takes_the_lease_at_once_and_without_a_store_holds_all() -> None:
    async def main() -> None:
        lone = Lease("retention", MemoryBackend(), "solo", TTL)
        await lone.tick()
        assert lone.is_leader and lone.epoch == 1
        local = Lease("retention", None, "solo", TTL)
        assert local.is_leader and await local.still_leader(1)

    trio.run(main)


def _block(i: int, rows: int = 10, indexed: bool = True) -> BlockEntry:
    return BlockEntry(id=f"b{i}", rows=rows, bytes=100, min_time=i, max_time=i, sha256="x", node="n", created_ns=i,
                      index_bytes=10 if indexed else 0, index_sha256="y" if indexed else "")


def test_commits_from_an_older_epoch_are_refused(tmp_path: Path) -> None:
    store = MemoryBackend()

    async def main() -> None:
        def newer(current: shared.SharedManifest) -> shared.SharedManifest:
            current.blocks = [_block(1), _block(2)]
            return jobs.stamp(current, "retention", 5, "retention")

        await shared.commit(store, "d", 1, "new-leader", newer)
        engine = Engine(tmp_path / "n", "old-leader")
        maintenance = Maintenance(engine, store, None, {}, "old-leader", retention_days=lambda d: 1,
                           compaction_interval_s=1, retention_interval_s=1, gc_grace_s=1)
        assert await maintenance._drop_shared(("d", 1), epoch=4, now=10**18) == 0
        assert maintenance.stats.fenced == 1
        latest = await shared.read_latest(store, "d", 1)
        assert latest.version == 1 and not latest.dropped and len(latest.blocks) == 2
        assert await maintenance._drop_shared(("d", 1), epoch=5, now=10**18) == 1
        assert (await shared.read_latest(store, "d", 1)).dropped

    trio.run(main)


def test_a_late_upload_skips_retired_blocks_and_dropped_partitions(tmp_path: Path) -> None:
    """The real uploader, for a node that appended its block, crashed before recording it, and came back."""
    from helios.ingest.records import parse_ndjson
    from helios.replication.replicator import Replicator

    store = MemoryBackend()
    table = parse_ndjson(b'{"_msg": "one", "_time": 5}\n', 0)

    async def main() -> None:
        engine = Engine(tmp_path / "n", "n")
        engine.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.wal.run)
            await engine.ingest("d", table)
            await engine.flush()
            (mine,) = engine.manifests[("d", 0)].blocks

            def compacted(current: shared.SharedManifest) -> shared.SharedManifest:
                current.blocks, current.retired = [_block(9, 20)], {mine.id: 1}
                return current

            await shared.commit(store, "d", 0, "leader", compacted)
            replicator = Replicator(engine, store, "n", 0.1)
            await replicator.upload_once()
            latest = await shared.read_latest(store, "d", 0)
            assert latest.version == 1 and [b.id for b in latest.blocks] == ["b9"], "not appended again"
            await engine.ingest("d", table)
            await engine.flush()

            def dropped(current: shared.SharedManifest) -> shared.SharedManifest:
                current.blocks, current.dropped = [], True
                return current

            await shared.commit(store, "d", 0, "leader", dropped)
            await replicator.upload_once()
            latest = await shared.read_latest(store, "d", 0)
            assert latest.version == 2 and latest.dropped and latest.blocks == []
            assert ("d", 0) not in engine.manifests, "the local copy of a dropped partition goes too"
            nursery.cancel_scope.cancel()
        engine.close()

    trio.run(main)


def test_compaction_plans_runs_of_small_blocks() -> None:
    blocks = [_block(i) for i in range(10)] + [_block(99, rows=5_000_000)]
    groups = plan_compaction(blocks, min_inputs=4, target_rows=35)
    assert [[b.id for b in g] for g in groups] == [["b0", "b1", "b2"], ["b3", "b4", "b5"], ["b6", "b7", "b8"]]
    assert plan_compaction(blocks[:3], min_inputs=4) == []


def test_compaction_plans_every_block_without_an_index() -> None:
    """A flush writes blocks without an index: each is rewritten (with one) by its first compaction,
    merged with its small neighbours however few they are, or alone; indexed blocks wait as before."""
    def ids(groups: list[list[BlockEntry]]) -> list[list[str]]:
        return [[b.id for b in g] for g in groups]

    assert ids(plan_compaction([_block(0, indexed=False)], min_inputs=4)) == [["b0"]]
    assert ids(plan_compaction([_block(0), _block(1, indexed=False), _block(2)], min_inputs=4)) == [["b0", "b1", "b2"]]
    # Runs of at most target_rows: only the runs that hold an unindexed block, and a big one alone.
    blocks = [_block(0, rows=20), _block(1, rows=20), _block(2, rows=20, indexed=False), _block(3, rows=50, indexed=False)]
    assert ids(plan_compaction(blocks, min_inputs=4, target_rows=35)) == [["b2"], ["b3"]]
    blocks = [_block(i, indexed=i != 5) for i in range(8)]  # eager: 8 small blocks, every run planned
    assert ids(plan_compaction(blocks, min_inputs=4, target_rows=35)) == [["b0", "b1", "b2"], ["b3", "b4", "b5"],
                                                                          ["b6", "b7"]]
    assert plan_compaction([_block(0), _block(1)], min_inputs=4) == []


def test_local_gc_waits_for_the_grace_period_and_for_running_queries(tmp_path: Path) -> None:
    from helios.ingest.records import parse_ndjson

    clock = trio.testing.MockClock()

    async def main() -> None:
        engine = Engine(tmp_path / "n", "n")
        engine.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.wal.run)
            await engine.ingest("d", parse_ndjson(b'{"_msg": "one", "_time": 5}\n', 0))
            await engine.flush()
            sources = engine.sources(None, None, None)
            (block,) = engine.manifests[("d", 0)].blocks
            path = engine.part_dir(("d", 0)) / block.filename
            engine.acquire(sources)  # a query is reading the block
            assert await engine.drop_partition(("d", 0))
            assert await engine.collect_garbage(10.0) == 0 and path.exists()
            clock.jump(11.0)
            assert await engine.collect_garbage(10.0) == 0 and path.exists(), "a running query still reads it"
            engine.release(sources)
            assert await engine.collect_garbage(10.0) == 1 and not path.exists()
            nursery.cancel_scope.cancel()
        engine.close()

    trio.run(main, clock=clock)


class _SlowBeats:
    """A store whose next beat write (``put``) or beat read (``get``) answers ``delay_s`` late (simulated)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.put_delay_s, self.get_delay_s = inner, 0.0, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith(BEATS) and self.put_delay_s:
            delay, self.put_delay_s = self.put_delay_s, 0.0
            await trio.sleep(delay)
        await self.inner.put(key, data)

    async def get(self, key: str) -> bytes:
        data = await self.inner.get(key)  # read now, answered late: an old value arrives after a newer write
        if key.startswith(BEATS) and self.get_delay_s:
            delay, self.get_delay_s = self.get_delay_s, 0.0
            await trio.sleep(delay)
        return data


@pytest.mark.parametrize("slow", ["holder's beat write", "observer's beat read"])
def test_slow_store_answers_never_make_two_leaders(slow: str) -> None:
    """A renewal that returns after its lease ran out, and a read that returns an old beat late,
    must not leave two nodes leading at once (found by the flake hunt; each made 1-3 s of overlap)."""

    ttl = 3.0

    async def main() -> list[float]:
        store = MemoryBackend()
        wrapped = _SlowBeats(store)
        holder = Lease("monitors", wrapped if slow.startswith("holder") else store, "h", ttl)
        observer = Lease("monitors", wrapped if slow.startswith("observer") else store, "o", ttl)
        await holder.tick()
        await observer.tick()
        await trio.sleep(1.0)
        await holder.tick()
        await observer.tick()
        await trio.sleep(2.85)
        both: list[float] = []

        async def sample() -> None:
            while True:
                if holder.is_leader and observer.is_leader:
                    both.append(trio.current_time())
                await trio.sleep(0.01)

        async def watch() -> None:
            while True:
                await observer.tick()
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            if slow.startswith("holder"):
                wrapped.put_delay_s = 1.7  # the renewal starts inside the lease and lands after it
                nursery.start_soon(watch)
                await holder.tick()
            else:
                wrapped.get_delay_s = 1.7  # the observer's read answers the old beat 1.7 s late
                nursery.start_soon(observer.tick)
                await trio.sleep(0.05)
                await holder.tick()  # a fresh beat lands while that read is in flight
            await trio.sleep(3.0)
            nursery.cancel_scope.cancel()
        return both

    both = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not both, f"two leaders from t={both[0]:.2f} to t={both[-1]:.2f}"


def _own_nice() -> tuple[int, int]:
    return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_a_niced_merge_runs_in_a_thread_of_its_own_at_that_priority() -> None:
    caller, before = _own_nice()
    thread, nice = niced(_own_nice, 19)()
    assert thread != caller and nice == 19
    assert _own_nice() == (caller, before)  # the caller (a cached worker thread) keeps its priority

    def fails() -> None:
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        niced(fails, 19)()
    assert niced(_own_nice, 0)() == (caller, before)  # 0: run as it is, in the caller's thread


def test_the_compaction_priority_is_a_nice_value() -> None:
    assert config.load(environ={}).compaction_nice == 19
    assert config.load(environ={"HELIOS_COMPACTION_NICE": "0"}).compaction_nice == 0
    for bad in ("20", "-1", "low"):
        with pytest.raises(ConfigError, match="HELIOS_COMPACTION_NICE"):
            config.load(environ={"HELIOS_COMPACTION_NICE": bad})


def test_a_merge_keeps_to_its_share_of_the_time_while_ingest_is_busy() -> None:
    """``niceness.Pacer``: between its steps a paced job sleeps so that a step is ``share`` of the
    time, while ingest committed within the last second; otherwise it does not pause at all."""
    from helios.niceness import BUSY_ROWS, BUSY_WINDOW_S, MAX_PAUSE_S, Pacer, pace
    now = [100.0]
    pacer = Pacer(0.25, clock=lambda: now[0])
    assert pacer.pause_after(0.2) == 0  # no ingest yet
    for _ in range(5):  # a trickle: fewer than BUSY_ROWS rows a window
        pacer.busy(BUSY_ROWS // 10)
        now[0] += BUSY_WINDOW_S * 0.6
    assert pacer.pause_after(0.2) == 0
    pacer.busy(BUSY_ROWS // 2)
    pacer.busy(BUSY_ROWS // 2)  # within the window: busy
    assert pacer.pause_after(0.2) == pytest.approx(0.6)  # 0.2 of every 0.8 s
    assert pacer.pause_after(100.0) == MAX_PAUSE_S
    now[0] += BUSY_WINDOW_S + 0.01
    assert pacer.pause_after(0.2) == 0  # ingest has been quiet for a while
    assert Pacer(1.0).pause_after(5.0) == 0
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError):
            Pacer(bad)

    def steps(count: int, step_s: float) -> float:
        began = time.monotonic()
        for _ in range(count):
            end = time.monotonic() + step_s
            while time.monotonic() < end:  # a step of work
                pass
            pace()
        return time.monotonic() - began

    busy = Pacer(0.5)
    busy.busy(BUSY_ROWS)
    took = niced(lambda: steps(4, 0.02), 0, pacer=busy)()
    assert took >= 0.15 and busy.paused_s >= 0.07, (took, busy.paused_s)  # half the time paused
    idle = Pacer(0.5)
    niced(lambda: steps(4, 0.02), 0, pacer=idle)()
    assert idle.paused_s == 0
    assert steps(2, 0.001) < 1  # outside a paced thread, pace() does nothing
    assert config.load(environ={}).compaction_busy_share == 0.1
    for bad in ("0", "1.5", "nan", "half"):
        with pytest.raises(ConfigError, match="HELIOS_COMPACTION_BUSY_SHARE"):
            config.load(environ={"HELIOS_COMPACTION_BUSY_SHARE": bad})

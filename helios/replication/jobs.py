"""Leader-elected background work: compaction, garbage collection, retention.

Every node runs the loops; only the holder of a job's lease does the
cluster-wide part, with its lease epoch on every commit:

- **Compaction** (every ``HELIOS_COMPACTION_INTERVAL_SECS``): in each
  partition with at least ``MIN_INPUTS`` small blocks, merge runs of small
  blocks (adjacent in time) into blocks of up to ``TARGET_ROWS`` rows sorted
  by ``_time``; upload the output; swap inputs for output in one
  compare-and-swap of the shared manifest. If an input is gone by then
  (another commit replaced it), nothing is written and the partition is
  planned again next pass. The inputs become *retired* (unreferenced).
- **Garbage collection** (after each compaction pass, same leader): retired
  blocks older than ``HELIOS_GC_GRACE_SECS`` are deleted from the store;
  manifest versions more than ``KEEP_VERSIONS`` behind the newest, change
  feed keys older than ``2 × CHANGE_TTL`` and index entries of dropped
  partitions go too. Locally, every node deletes the files of blocks that
  left its manifests after the same grace period, and only once no running
  query reads them.
- **Retention** (every ``HELIOS_RETENTION_INTERVAL_SECS``): a partition
  whose whole day is older than its dataset's ``retention_days`` is dropped:
  the leader commits a *dropped* manifest version first (every block
  retired, nothing appended afterwards), objects are deleted by GC after.
  Every node also drops such partitions locally, which clears their pending
  uploads; an upload that still races finds the partition dropped and is
  refused, so a dropped partition is never resurrected.

Without a shared store the node leads every job and works on its local
manifests alone.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Awaitable, Callable

import trio

from backends import Backend, Corrupt, NotFound, list_all
from helios import log, timeutil
from helios.niceness import niced
from helios.replication import shared
from helios.replication.lease import Lease
from helios.replication.replicator import CHANGE_TTL_NS, Replicator
from helios.storage.blocks import BlockEntry, merge_blocks, new_block_id
from helios.storage.engine import Engine
from helios.storage.memtable import PartKey
from helios.supervisor import Health, supervise

__all__ = ["JobStats", "Maintenance", "fence", "plan_compaction", "stamp"]

MIN_INPUTS = 4          # compact a partition once it has this many small blocks
TARGET_ROWS = 1_000_000  # a block with fewer rows is small; outputs hold up to this many
KEEP_VERSIONS = 100     # manifest versions kept behind the newest
# Retired block ids stay in the manifest this long, so that a node that appended a block and
# crashed before recording it never appends it again after compaction replaced it (as Delta
# Lake keeps its tombstones). A node down for longer than this could duplicate such a block.
RETIRED_KEEP_NS = 7 * 86_400 * 10**9
_log = log.get("helios.jobs")


def fence(current: shared.SharedManifest, lease_job: str, epoch: int) -> None:
    """Refuse a leader commit from an epoch older than one of the same lease that already committed here."""
    newest = current.epochs.get(lease_job, 0)
    if newest > epoch:
        raise shared.Fenced(f"{lease_job} epoch {newest} committed after ours ({epoch})")


def stamp(current: shared.SharedManifest, lease_job: str, epoch: int, job: str) -> shared.SharedManifest:
    """Mark a leader commit: its job and epoch, and the newest epoch of its lease."""
    current.epochs = {**current.epochs, lease_job: epoch}
    current.epoch, current.job = epoch, job
    return current


def plan_compaction(blocks: list[BlockEntry], *, min_inputs: int = MIN_INPUTS,
                    target_rows: int = TARGET_ROWS) -> list[list[BlockEntry]]:
    """Groups of blocks to rewrite as one, in time order: runs of small blocks (≥ 2 blocks, ≤
    ``target_rows`` rows) once a partition has ``min_inputs`` of them, and every block without a token
    index (a flush writes none: its first compaction builds it), merged with its small neighbours
    whatever their number, or alone."""
    unindexed = [b for b in blocks if not b.index_bytes]
    small = sorted((b for b in blocks if b.rows < target_rows), key=lambda b: (b.min_time, b.id))
    if len(small) < min_inputs and not unindexed:
        return []
    runs = _runs(small, target_rows)
    eager = len(small) >= min_inputs
    plan = [g for g in runs if (eager and len(g) >= 2) or any(not b.index_bytes for b in g)]
    plan.extend([b] for b in unindexed if b.rows >= target_rows)
    return sorted(plan, key=lambda g: (g[0].min_time, g[0].id))


def _runs(small: list[BlockEntry], target_rows: int) -> list[list[BlockEntry]]:
    """``small`` (in time order) cut into runs of at most ``target_rows`` rows (a bigger block alone)."""
    groups: list[list[BlockEntry]] = []
    group: list[BlockEntry] = []
    rows = 0
    for block in small:
        if group and rows + block.rows > target_rows:
            groups.append(group)
            group, rows = [], 0
        group.append(block)
        rows += block.rows
    if group:
        groups.append(group)
    return groups


@dataclass
class JobStats:
    compactions: int = 0
    compacted_blocks: int = 0
    replans: int = 0
    fenced: int = 0
    dropped_partitions: int = 0
    deleted_objects: int = 0
    last_compaction_ns: int | None = None
    last_retention_ns: int | None = None


class Maintenance:
    # Blocks younger than this are not compacted yet (the node sets it to HELIOS_BLOCK_SYNC_SECS): by
    # then every node has pulled them, so a live tail on any node sees their rows before a compaction
    # output re-holds them (helios.tail). Ages are judged by the creating node's clock.
    min_block_age_s: float = 0.0
    # The nice value merges run at (the node sets HELIOS_COMPACTION_NICE; helios.niceness): in-process
    # tests and the fuzzer leave it 0.
    merge_nice: int = 0

    def __init__(self, engine: Engine, store: Backend | None, replicator: Replicator | None,
                 leases: dict[str, Lease], node_id: str, *, retention_days: Callable[[str], int | None],
                 compaction_interval_s: float, retention_interval_s: float, gc_grace_s: float,
                 clock: Callable[[], int] = timeutil.now_ns, health: Health | None = None,
                 commit: shared.CommitFn = shared.commit,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
                 token_hex: Callable[[int], str] = secrets.token_hex) -> None:
        """``clock`` (wall ns), ``commit`` (the manifest CAS), ``run_sync`` (runs blocking work off the
        event loop) and ``token_hex`` (randomness of new block ids) are seams: production uses the
        defaults, the fuzzer passes its own."""
        self.engine = engine
        self.store = store
        self.replicator = replicator
        self.leases = leases
        self.node_id = node_id
        self.retention_days = retention_days
        self.compaction_interval_s = compaction_interval_s
        self.retention_interval_s = retention_interval_s
        self.gc_grace_s = gc_grace_s
        self.clock = clock
        self._commit = commit
        self._run_sync = run_sync
        self._token_hex = token_hex
        self.stats = JobStats()
        self.keep_versions = KEEP_VERSIONS
        self.min_inputs = MIN_INPUTS
        self.health = health if health is not None else engine.health
        # Retired block keys this node already deleted as GC leader (so each is deleted once). Only
        # keys still listed as retired by a manifest are kept: the set is bounded by the retired maps.
        self._deleted: set[str] = set()
        # Per partition, what the last GC visit saw: (shared version, dropped, when something next falls
        # due in ns, its retired block keys). A partition whose version this node's puller still knows
        # as that one is skipped until then: an idle cluster's GC pass costs no request per partition.
        self._gc_seen: dict[PartKey, tuple[int, bool, float, frozenset[str]]] = {}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        local_gc_s = max(0.05, min(self.gc_grace_s / 4, 30.0))
        async with trio.open_nursery() as nursery:
            for task, step, interval_s in (("compaction", self.compaction_pass, self.compaction_interval_s),
                                           ("retention", self.retention_pass, self.retention_interval_s),
                                           ("local gc", self.local_gc, local_gc_s)):
                nursery.start_soon(partial(supervise, self.health, task, step, interval_s=interval_s,
                                           first_delay_s=interval_s))

    # -- compaction -----------------------------------------------------------

    async def compaction_pass(self) -> int:
        """If this node leads compaction: compact every partition that needs it, then collect garbage."""
        lease = self.leases["compaction"]
        if not lease.is_leader:
            return 0
        epoch = lease.epoch
        done = 0
        for key in sorted(self.engine.manifests):
            manifest = self.engine.manifests.get(key)
            if manifest is None or not plan_compaction(self._settled(manifest.blocks), min_inputs=self.min_inputs):
                continue
            with self.health.isolate("compaction", _subject(key)):  # a bad block or manifest spares the rest
                if self.store is None:
                    done += await self._compact_local(key)
                else:
                    done += await self._compact_shared(key, lease, epoch)
        self.stats.last_compaction_ns = self.clock()
        if self.store is not None and lease.is_leader:
            await self.store_gc(lease, epoch)
        return done

    def _settled(self, blocks: list[BlockEntry]) -> list[BlockEntry]:
        """The blocks old enough to compact (``min_block_age_s``; 0: all of them)."""
        if not self.min_block_age_s:
            return blocks
        horizon = self.clock() - int(self.min_block_age_s * 1e9)
        return [b for b in blocks if b.created_ns <= horizon]

    async def _merge(self, key: PartKey, group: list[BlockEntry]) -> BlockEntry:
        directory = self.engine.part_dir(key)
        # Local, or fetched from the store (inputs are read once: not kept in the local cache).
        inputs = [(await self.engine.blocks.read(key, block, keep=False), block) for block in group]
        created = self.clock()
        block_id = new_block_id(created, self.node_id, compacted=True, token_hex=self._token_hex)
        return await self._run_sync(niced(
            lambda: merge_blocks(directory, block_id, inputs, dataset=key[0], day=key[1], node=self.node_id,
                                 created_ns=created), self.merge_nice, "helios-merge", self.engine.pacer))

    async def _compact_local(self, key: PartKey) -> int:
        done = 0
        for group in plan_compaction(self._settled(self.engine.manifests[key].blocks), min_inputs=self.min_inputs):
            output = await self._merge(key, group)
            inputs = {b.id for b in group}
            async with self.engine.part_lock(key):
                current = self.engine.manifests.get(key)
                if current is None or not inputs <= {b.id for b in current.blocks}:
                    (self.engine.part_dir(key) / output.filename).unlink(missing_ok=True)
                    self.stats.replans += 1
                    continue
                new = replace(current, blocks=_swap(current.blocks, inputs, output))
                await self._run_sync(new.save, self.engine.part_dir(key))
                self.engine.manifests[key] = new  # one step: inputs out, output in
                self.engine.blocks.register(key, output)
            self.engine.retire([(key, b) for b in group])
            self._count(group)
            done += 1
        return done

    async def _compact_shared(self, key: PartKey, lease: Lease, epoch: int) -> int:
        assert self.store is not None and self.replicator is not None
        dataset, day = key
        latest = await shared.read_latest(self.store, dataset, day)
        if latest.dropped:
            return 0
        done = 0
        for group in plan_compaction(self._settled(latest.blocks), min_inputs=self.min_inputs):
            output = await self._merge(key, group)
            data = await self._run_sync((self.engine.part_dir(key) / output.filename).read_bytes)
            await self.store.put(shared.block_key(dataset, day, output.id), data)
            inputs = {b.id for b in group}
            now = self.clock()

            def swap(current: shared.SharedManifest) -> shared.SharedManifest | None:
                fence(current, "compaction", epoch)
                if current.dropped or not inputs <= {b.id for b in current.blocks}:
                    return None  # an input is gone: plan again next pass
                current.blocks = _swap(current.blocks, inputs, output)
                current.retired = {**current.retired, **dict.fromkeys(inputs, now)}
                return stamp(current, "compaction", epoch, "compaction")

            committed = None
            if await lease.still_leader(epoch):
                try:
                    result = await self._commit(self.store, dataset, day, self.node_id, swap)
                    # The output's id is new: it is in the result only if our swap was committed.
                    committed = result if output.id in {b.id for b in result.blocks} else None
                except shared.Fenced:
                    self.stats.fenced += 1
            if committed is None:
                # Never referenced by any manifest: nobody can have fetched it; remove it now.
                await self.store.delete(shared.block_key(dataset, day, output.id))
                (self.engine.part_dir(key) / output.filename).unlink(missing_ok=True)
                self.stats.replans += 1
                if not lease.is_leader:
                    break
                continue
            self.engine.blocks.register(key, output)  # in the store now: counted by the local cache's bound
            await self.replicator.announce(dataset, day, committed.version)
            await self.replicator.sync_partition(dataset, day)  # apply here now; peers pull it
            self._count(group)
            done += 1
        return done

    def _count(self, group: list[BlockEntry]) -> None:
        self.stats.compactions += 1
        self.stats.compacted_blocks += len(group)
        log.log(_log, logging.INFO, "compacted", inputs=len(group), rows=sum(b.rows for b in group))

    # -- garbage collection ---------------------------------------------------

    async def store_gc(self, lease: Lease, epoch: int) -> int:
        """Delete from the store what no manifest references any more, after the grace period."""
        assert self.store is not None
        horizon = self.clock() - int(self.gc_grace_s * 1e9)
        deleted = 0
        still_retired: set[str] = set()
        partitions = [info.key async for info in list_all(self.store, shared.INDEX)]
        now = self.clock()
        for index in partitions:
            try:
                dataset, day = shared.parse_index_key(index)
            except Corrupt as exc:
                self.health.quarantine("store gc", index, exc.reason)
                continue
            seen = self._gc_seen.get((dataset, day))
            local = self.engine.manifests.get((dataset, day))
            if seen is not None and now < seen[2] and (
                    (local is not None and local.shared_version == seen[0]) or (local is None and seen[1])):
                still_retired |= seen[3]  # unchanged since the last visit and nothing due yet
                continue
            with self.health.isolate("store gc", _subject((dataset, day))):
                deleted += await self._collect_partition(lease, epoch, index, dataset, day, horizon,
                                                         still_retired)
        self._deleted &= still_retired
        known = {shared.parse_index_key(i) for i in partitions if _is_index_key(i)}
        self._gc_seen = {k: v for k, v in self._gc_seen.items() if k in known}
        feed_horizon = f"_changes/{max(0, self.clock() - 2 * CHANGE_TTL_NS):020d}"
        stale = [info.key async for info in list_all(self.store, "_changes/") if info.key < feed_horizon]
        for key in stale:
            await self.store.delete(key)
            deleted += 1
        self.stats.deleted_objects += deleted
        return deleted

    async def _collect_partition(self, lease: Lease, epoch: int, index: str, dataset: str, day: int,
                                 horizon: int, still_retired: set[str]) -> int:
        assert self.store is not None
        deleted = 0
        versions = await shared.list_versions(self.store, dataset, day)
        if not versions:
            return 0
        latest = await shared.read_version(self.store, dataset, day, max(versions))
        for block_id, retired_ns in latest.retired.items():
            key = shared.block_key(dataset, day, block_id)
            still_retired.add(key)
            if retired_ns <= horizon and key not in self._deleted:
                await self.store.delete(key)
                self._deleted.add(key)
                deleted += 1
        for version in versions:
            if version < latest.version - self.keep_versions:
                await self.store.delete(shared.version_key(dataset, day, version))
                deleted += 1
        keep_after = self.clock() - max(RETIRED_KEEP_NS, int(self.gc_grace_s * 1e9))
        if any(r < keep_after for r in latest.retired.values()) and await lease.still_leader(epoch):
            await self._prune_retired(dataset, day, epoch, keep_after)
        if latest.dropped and all(r <= horizon for r in latest.retired.values()):
            await self.store.delete(index)  # the dropped manifest version itself stays, as a tombstone
        grace_ns = int(self.gc_grace_s * 1e9)
        due = [r + grace_ns for r in latest.retired.values()]  # a deletion, or the index of a dropped one
        due += [r + max(RETIRED_KEEP_NS, grace_ns) for r in latest.retired.values()]  # pruning the map
        keys = frozenset(shared.block_key(dataset, day, i) for i in latest.retired)
        after = horizon + grace_ns  # now: what is due before it was done above
        self._gc_seen[(dataset, day)] = (latest.version, latest.dropped,
                                         min((d for d in due if d > after), default=float("inf")), keys)
        return deleted

    async def _prune_retired(self, dataset: str, day: int, epoch: int, keep_after: int) -> None:
        assert self.store is not None

        def prune(current: shared.SharedManifest) -> shared.SharedManifest | None:
            fence(current, "compaction", epoch)
            kept = {i: r for i, r in current.retired.items() if r >= keep_after}
            if len(kept) == len(current.retired):
                return None
            current.retired = kept
            return stamp(current, "compaction", epoch, "gc")

        try:
            result = await self._commit(self.store, dataset, day, self.node_id, prune)
            if result.job == "gc" and result.node == self.node_id and self.replicator is not None:
                await self.replicator.announce(dataset, day, result.version)
        except shared.Fenced:
            self.stats.fenced += 1

    async def local_gc(self) -> int:
        return await self.engine.collect_garbage(self.gc_grace_s)

    # -- retention ------------------------------------------------------------

    def expired(self, key: PartKey, now_ns: int) -> bool:
        days = self.retention_days(key[0])
        if days is None:
            return False
        end_of_day_ns = (key[1] + 1) * 86_400 * 10**9
        return end_of_day_ns <= now_ns - days * 86_400 * 10**9

    async def retention_pass(self) -> int:
        """Drop expired partitions: in the store if this node leads retention, locally on every node."""
        now = self.clock()
        lease = self.leases["retention"]
        dropped = 0
        if self.store is not None and lease.is_leader:
            epoch = lease.epoch
            keys = set(self.engine.manifests)
            async for info in list_all(self.store, shared.INDEX):
                try:
                    keys.add(shared.parse_index_key(info.key))
                except Corrupt as exc:
                    self.health.quarantine("retention", info.key, exc.reason)
            for key in sorted(k for k in keys if self.expired(k, now)):
                if not await lease.still_leader(epoch):
                    break
                with self.health.isolate("retention", _subject(key)):
                    dropped += await self._drop_shared(key, epoch, now)
        for key in [k for k in list(self.engine.manifests) if self.expired(k, now)]:
            if await self.engine.drop_partition(key):
                dropped += 1
        self.stats.dropped_partitions += dropped
        self.stats.last_retention_ns = now
        return dropped

    async def _drop_shared(self, key: PartKey, epoch: int, now: int) -> int:
        assert self.store is not None

        def drop(current: shared.SharedManifest) -> shared.SharedManifest | None:
            fence(current, "retention", epoch)
            if current.dropped or current.version == 0:
                return None
            current.retired = {**current.retired, **dict.fromkeys((b.id for b in current.blocks), now)}
            current.blocks, current.dropped = [], True
            return stamp(current, "retention", epoch, "retention")

        try:
            result = await self._commit(self.store, key[0], key[1], self.node_id, drop)
        except shared.Fenced:
            self.stats.fenced += 1
            return 0
        except NotFound:
            return 0
        if result.dropped and result.node == self.node_id and result.job == "retention":
            if self.replicator is not None:
                await self.replicator.announce(key[0], key[1], result.version)
            log.log(_log, logging.INFO, "retention dropped a partition", dataset=key[0],
                    day=timeutil.day_name(key[1]), version=result.version)
            return 1
        return 0

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {"compactions": s.compactions, "compacted_blocks": s.compacted_blocks, "replans": s.replans,
                "fenced": s.fenced, "dropped_partitions": s.dropped_partitions,
                "deleted_objects": s.deleted_objects, "deleted_files": self.engine.deleted_files,
                "last_compaction": timeutil.format_ns(s.last_compaction_ns) if s.last_compaction_ns else None,
                "last_retention": timeutil.format_ns(s.last_retention_ns) if s.last_retention_ns else None}


def _is_index_key(key: str) -> bool:
    try:
        shared.parse_index_key(key)
    except Corrupt:
        return False
    return True


def _subject(key: PartKey) -> str:
    return f"{key[0]}/{timeutil.day_name(key[1])}"


def _swap(blocks: list[BlockEntry], inputs: set[str], output: BlockEntry) -> list[BlockEntry]:
    """Inputs out, output in, at the place of the first input (order is by arrival)."""
    out: list[BlockEntry] = []
    placed = False
    for block in blocks:
        if block.id in inputs:
            if not placed:
                out.append(output)
                placed = True
        else:
            out.append(block)
    return out

"""Uploader and puller: every node's background replication through the shared store.

Uploader: for every own block not yet in the shared manifest (the pending set,
persisted in the local manifest), put the block (idempotent: same name, same
bytes), append it to the partition's shared manifest by compare-and-swap,
then record it as uploaded. A crash anywhere re-runs the same steps: the
block is put again, the append finds it already there, nothing is doubled.
A node whose data predates the store uploads it all: that is the seeder.

Puller: learns which partitions changed from the change feed (one LIST of
new keys per pass; a full pass over the partition index at start and every
few minutes is the safety net), reads each changed partition's newest
manifest, and replaces its local block list with the shared one plus its own
still-pending blocks, in one step under the partition lock. Block bytes are
fetched only for the recent window (``prefetch``); the token index section of
every other block is fetched alone, at once, by a task of its own
(``fetch_indexes``: one ranged GET per block, kept in memory), so queries prune
and answer from indexes without waiting for the store.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Awaitable, Callable

import trio

from backends import Backend, Corrupt, list_all
from helios import timeutil
from helios.replication import shared
from helios.storage.blocks import BlockEntry
from helios.storage.engine import Engine
from helios.storage.manifest import PartitionManifest
from helios.supervisor import Health, supervise

__all__ = ["Replicator"]

# The full pass is a safety net (a change announced by nobody: a leader that crashed between its
# commit and its announcement; a writer whose clock is more than the window behind). It costs a
# LIST per partition, so it is rare; a fetch that finds a block gone also re-syncs its partition.
FULL_PASS_EVERY_S = 3600.0
CHANGE_WINDOW_NS = 120 * 1_000_000_000  # re-read feed keys this far back: late writers, skewed clocks
# A node deletes its own feed keys after this long. It is longer than the window, so a puller
# misses no change: one that could not read the feed for longer than FEED_GAP_S (the TTL minus
# the window) does a full pass when it comes back.
CHANGE_TTL_NS = 600 * 1_000_000_000
FEED_GAP_S = (CHANGE_TTL_NS - CHANGE_WINDOW_NS) / 1e9


@dataclass
class SyncStatus:
    last_upload_ns: int | None = None
    last_pull_ns: int | None = None
    uploaded_blocks: int = 0
    pulled_blocks: int = 0


def _subject(dataset: str, day: int) -> str:
    return f"{dataset}/{timeutil.day_name(day)}"


class Replicator:
    # Called with the blocks a pull has just added to a partition's local manifest, in the same
    # synchronous step (live tail: ``helios.tail.TailHub.publish_blocks``). Must not block or raise.
    on_pulled: Callable[[str, int, list[BlockEntry]], None] | None = None

    def __init__(self, engine: Engine, store: Backend, node_id: str, interval_s: float,
                 clock: Callable[[], int] = time.time_ns, *, health: Health | None = None,
                 commit: shared.CommitFn = shared.commit,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
                 pull_interval_s: float | None = None, prefetch_hours: float = 24.0) -> None:
        """``interval_s``: the uploader's cadence (local checks: no store request when nothing is
        pending); ``pull_interval_s`` (default ``interval_s``): the puller's, one feed LIST each.
        ``clock`` (wall ns), ``commit`` (the manifest CAS) and ``run_sync`` (runs blocking file work
        off the event loop) are seams: production uses the defaults, the fuzzer passes its own."""
        self.engine = engine
        self.clock = clock
        self._commit = commit
        self._run_sync = run_sync
        self.store = store
        self.node_id = node_id
        self.interval_s = interval_s
        self.pull_interval_s = pull_interval_s if pull_interval_s is not None else interval_s
        # Called with the sequence number of each new control-plane log entry the feed announces.
        self.on_control_change: Callable[[int], None] = lambda seq: None
        self.prefetch_ns = int(prefetch_hours * 3600e9)
        engine.blocks.store = store  # blocks not in the data dir are fetched from the store
        engine.blocks.on_gone = self.resync
        self._last_feed = -1e18  # trio time of the last feed read that went through
        self.health = health if health is not None else Health(clock)
        self.status = SyncStatus()
        self._cursor_ns = 0
        self._seen: set[str] = set()
        self._last_full = -1e18
        self._own_changes: deque[tuple[int, str]] = deque()  # (written at ns, key), oldest first
        self._retry: set[tuple[str, int]] = set()  # partitions whose last sync failed
        self._indexes_due = True  # blocks may lack their index in memory (at start, after a pull added blocks)
        self._indexes_wanted = trio.Event()  # wakes the index task at once

    def pending_uploads(self) -> int:
        return sum(len(m.pending(self.node_id)) for m in self.engine.manifests.values())

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        pull = self.status.last_pull_ns
        return {
            "last_upload": timeutil.format_ns(self.status.last_upload_ns) if self.status.last_upload_ns else None,
            "last_pull": timeutil.format_ns(pull) if pull else None,
            "pending_uploads": self.pending_uploads(),
            "lag_seconds": round((now - pull) / 1e9, 3) if pull else None,
            "uploaded_blocks": self.status.uploaded_blocks,
            "pulled_blocks": self.status.pulled_blocks,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.engine.blocks.enforce()  # the bound may have shrunk since the last start
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(supervise, self.health, "upload", self.upload_once, interval_s=self.interval_s))
            nursery.start_soon(partial(supervise, self.health, "pull", self.pull_once,
                                       interval_s=self.pull_interval_s))
            nursery.start_soon(partial(supervise, self.health, "index", self._index_step,
                                       interval_s=self.pull_interval_s / 4))

    # -- uploader -------------------------------------------------------------

    async def upload_once(self) -> None:
        """Upload every partition's pending blocks; one partition's local or store fault spares the others."""
        for key, manifest in list(self.engine.manifests.items()):
            pending = manifest.pending(self.node_id)
            if pending:
                with self.health.isolate("upload", _subject(*key)):
                    await self._upload_partition(key, pending)
        await self._expire_changes()

    async def _expire_changes(self) -> None:
        """Delete this node's change-feed keys older than CHANGE_TTL_NS (keys left by a crash wait for GC)."""
        horizon = self.clock() - CHANGE_TTL_NS
        while self._own_changes and self._own_changes[0][0] < horizon:
            await self.store.delete(self._own_changes[0][1])
            self._own_changes.popleft()

    async def _upload_partition(self, key: tuple[str, int], pending: list[BlockEntry]) -> None:
        dataset, day = key
        directory = self.engine.part_dir(key)
        manifest = self.engine.manifests.get(key)
        if manifest is None:  # dropped meanwhile (retention)
            return
        latest = await shared.read_latest(self.store, dataset, day, manifest.shared_version)
        if latest.dropped:  # retention dropped the partition: a late upload must not bring it back
            await self.engine.drop_partition(key, latest.version)
            return
        present = {b.id for b in latest.blocks}
        # A retired block was appended before (its answer or its record was lost) and since replaced.
        todo = [b for b in pending if b.id not in present and b.id not in latest.retired]
        # Appended by an earlier attempt that did not get to record it: maybe not announced either.
        unannounced = any(b.id in present for b in pending)
        for block in todo:
            data = await self._run_sync((directory / block.filename).read_bytes)
            await self.store.put(shared.block_key(dataset, day, block.id), data)
        ids = {b.id for b in pending}

        def append(current: shared.SharedManifest) -> shared.SharedManifest | None:
            if current.dropped:
                return None
            here = {b.id for b in current.blocks}
            missing = [b for b in todo if b.id not in here and b.id not in current.retired]
            if not missing:
                return None
            current.blocks = current.blocks + missing
            current.epoch, current.job = 0, ""
            return current

        result = await self._commit(self.store, dataset, day, self.node_id, append, latest=latest)
        if result.dropped:
            for block in todo:  # put a moment ago and never referenced by any manifest: nobody reads them
                await self.store.delete(shared.block_key(dataset, day, block.id))
            await self.engine.drop_partition(key, result.version)
            return
        if result.version != latest.version or unannounced:
            await self.announce(dataset, day, result.version)
        async with self.engine.part_lock(key):
            current = self.engine.manifests.get(key)
            if current is None:  # dropped locally meanwhile
                return
            self.engine.manifests[key] = await self._save(current, uploaded=current.uploaded | ids)
        self.status.last_upload_ns = self.clock()
        self.status.uploaded_blocks += len(ids)
        await self.engine.blocks.enforce()  # they are safely in the store now: counted, evictable

    async def announce(self, dataset: str, day: int, version: int) -> None:
        """Tell pullers that a partition changed: a change-feed key (uploads, compaction, retention)."""
        await self._announce(shared.change_key(self.clock(), dataset, day, version, self.node_id))

    async def announce_control(self, seq: int) -> None:
        """Tell every node's control-plane sync that log entry ``seq`` exists (read on their next pull)."""
        await self._announce(shared.control_change_key(self.clock(), seq, self.node_id))

    async def _announce(self, change: str) -> None:
        await self.store.put(change, b"")
        self._own_changes.append((self.clock(), change))

    async def _save(self, manifest: PartitionManifest, **changes: Any) -> PartitionManifest:
        new = replace(manifest, **changes)
        directory = self.engine.part_dir((new.dataset, new.day))

        def save() -> None:
            directory.mkdir(parents=True, exist_ok=True)  # a partition pulled before any block is local
            new.save(directory)

        await self._run_sync(save)
        return new

    # -- puller ---------------------------------------------------------------

    async def pull_once(self) -> None:
        """Sync every changed partition; a partition whose sync fails is reported and retried next pass."""
        for dataset, day in sorted(await self._changed_partitions()):
            subject = _subject(dataset, day)
            with self.health.isolate("pull", subject):
                await self.sync_partition(dataset, day)
            if ("pull", subject) in self.health.problems:
                self._retry.add((dataset, day))
            else:
                self._retry.discard((dataset, day))
        self.status.last_pull_ns = self.clock()

    async def _changed_partitions(self) -> set[tuple[str, int]]:
        """Partitions to sync: from the change feed (or the whole index, now and then) plus failed ones."""
        now = trio.current_time()
        if now - self._last_full >= FULL_PASS_EVERY_S or now - self._last_feed >= FEED_GAP_S:
            changed = set(self._retry)
            feed_start = self.clock() - CHANGE_WINDOW_NS
            listed = set()
            async for info in list_all(self.store, shared.INDEX):
                listed.add(info.key)
                part = self._parse(shared.parse_index_key, info.key)
                if part is not None:
                    changed.add(part)
            self._unquarantine(shared.INDEX, "", listed)
            self._last_full = self._last_feed = now
            self._cursor_ns = max(self._cursor_ns, feed_start)
            self.on_control_change(0)  # a full pass covers the control-plane log too
            return changed
        changed = set(self._retry)
        start_after = f"{shared.CHANGES}{max(0, self._cursor_ns - CHANGE_WINDOW_NS):020d}"
        newest = self._cursor_ns
        listed = set()
        async for info in list_all(self.store, shared.CHANGES, start_after=start_after):
            listed.add(info.key)
            if info.key in self._seen:
                continue
            change = self._parse(_parse_any_change, info.key)
            if change is None:
                continue  # quarantined: reported under its name, looked at again next pass
            self._seen.add(info.key)
            if change[0] == "control":
                _, stamp, seq = change
                self.on_control_change(seq)
            else:
                _, stamp, dataset, day = change
                changed.add((dataset, day))
            newest = max(newest, stamp)
        self._unquarantine(shared.CHANGES, start_after, listed)
        self._last_feed = now
        self._cursor_ns = newest
        horizon = f"{shared.CHANGES}{max(0, newest - 2 * CHANGE_WINDOW_NS):020d}"
        self._seen = {k for k in self._seen if k >= horizon}
        return changed

    def _unquarantine(self, prefix: str, start_after: str, listed: set[str]) -> None:
        """Quarantined keys in the range just listed that are gone (removed by an operator) leave the report."""
        for task, key in list(self.health.problems):
            if task == "pull" and key.startswith(prefix) and key > start_after and key not in listed:
                self.health.ok(task, key)

    def _parse(self, parse: Callable[[str], Any], key: str) -> Any:
        """``parse(key)``, or None after quarantining a key that is not what its folder says."""
        try:
            return parse(key)
        except Corrupt as exc:
            self.health.quarantine("pull", key, exc.reason)
            return None

    async def sync_partition(self, dataset: str, day: int) -> None:
        key = (dataset, day)
        local = self.engine.manifests.get(key)
        latest = await shared.read_latest(self.store, dataset, day, local.shared_version if local else 0)
        if latest.version == 0 or (local is not None and latest.version <= local.shared_version):
            await self.prefetch(key)  # e.g. a retry after a prefetch failed
            return
        if latest.dropped:
            await self.engine.drop_partition(key, latest.version)
            return
        async with self.engine.part_lock(key):
            current = self.engine.manifests.get(key) or PartitionManifest(dataset=dataset, day=day)
            live: set[str] | None = None
            if latest.version > current.shared_version:
                shared_ids = {b.id for b in latest.blocks}
                own_pending = [b for b in current.pending(self.node_id)
                               if b.id not in shared_ids and b.id not in latest.retired]
                blocks = [*latest.blocks, *own_pending]
                live = {b.id for b in blocks}
                uploaded = {i for i in current.uploaded | {b.id for b in latest.blocks if b.node == self.node_id}
                            if i in live}
                # One step: the partition's block list becomes the shared one (plus own pending blocks).
                self.engine.manifests[key] = await self._save(current, blocks=blocks,
                                                              shared_version=latest.version, uploaded=uploaded)
                if self.on_pulled is not None:  # no checkpoint since the swap: a tail's cut stays exact
                    before = {b.id for b in current.blocks}  # (the tail reads them through engine.blocks)
                    self.on_pulled(dataset, day, [b for b in blocks if b.id not in before])
                self._indexes_due = True
                self._indexes_wanted.set()
        if live is not None:
            self.engine.retire([(key, b) for b in current.blocks if b.id not in live])
        await self.prefetch(key)

    async def prefetch(self, key: tuple[str, int]) -> int:
        """Fetch the partition's blocks of the recent window ahead of queries, newest first, while the
        local cache has room (making it only from blocks older than the window); returns how many."""
        manifest = self.engine.manifests.get(key)
        if manifest is None or self.prefetch_ns <= 0:
            return 0
        window_start = self.clock() - self.prefetch_ns
        fetched = 0
        for block in sorted(manifest.blocks, key=lambda b: b.max_time, reverse=True):
            if block.max_time < window_start:
                break
            if self.engine.blocks.is_resident(block.id):
                continue
            if not await self.engine.blocks.prefetch(key, block,
                                                     evictable=lambda r: r.entry.max_time < window_start):
                break  # no room left (or a query is fetching it right now)
            fetched += 1
            self.status.pulled_blocks += 1
        return fetched

    async def _index_step(self) -> None:
        """The index task: wait until a pull added blocks (or one pull interval), then fetch their indexes."""
        with trio.move_on_after(self.pull_interval_s):
            await self._indexes_wanted.wait()
        self._indexes_wanted = trio.Event()
        if self._indexes_due:
            await self.fetch_indexes()

    async def fetch_indexes(self) -> int:
        """Fetch the index sections of blocks not in the data dir whose index is not in memory; returns how many.

        Newest first over every partition, ``local.INDEX_IN_FLIGHT`` at once, one ranged GET each,
        while the indexes kept in memory take less than half the decoded-block cache
        (``HELIOS_CACHE_BYTES``); blocks beyond that are read lazily by the queries that meet them.
        Format 1 blocks (no index section) are left to queries. A store error stops the pass and is
        raised: the task backs off and tries again."""
        blocks, cache = self.engine.blocks, self.engine.cache
        self._indexes_due = False
        wanted = sorted(((key, b) for key, m in self.engine.manifests.items() for b in m.blocks
                         if b.index_bytes and not blocks.is_resident(b.id) and cache.known_index(b.id) is None),
                        key=lambda item: item[1].max_time, reverse=True)
        try:
            return await blocks.fetch_indexes(wanted, budget_bytes=cache.capacity_bytes // 2) if wanted else 0
        except BaseException:
            self._indexes_due = True  # the next step tries the rest
            raise

    def resync(self, key: tuple[str, int]) -> None:
        """Sync this partition on the next pass (a query found one of its blocks gone from the store)."""
        self._retry.add(key)


def _parse_any_change(key: str) -> tuple[Any, ...]:
    """``("control", stamp, seq)`` or ``("partition", stamp, dataset, day)``; raises Corrupt."""
    control = shared.parse_control_change(key)
    if control is not None:
        return ("control", *control)
    return ("partition", *shared.parse_change_key(key))


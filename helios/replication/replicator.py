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
manifest, downloads the blocks it lacks (checksum verified), and replaces its
local block list with the shared one plus its own still-pending blocks, in
one step under the partition lock.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from collections import deque
from typing import Any, Awaitable, Callable

import trio

from backends import Backend, StoreError, Unavailable, list_all
from helios import log, timeutil
from helios.replication import shared
from helios.storage.blocks import BlockEntry
from helios.storage.engine import Engine
from helios.storage.fsutil import write_atomic
from helios.storage.manifest import PartitionManifest

__all__ = ["Replicator"]

_log = log.get("helios.replication")
FULL_PASS_EVERY_S = 300.0
CHANGE_WINDOW_NS = 120 * 1_000_000_000  # re-read feed keys this far back: late writers, skewed clocks
# A node deletes its own feed keys after this long. It is longer than the window
# and than the full-pass interval, so a puller misses no change: one that was
# away longer does a full pass when it comes back.
CHANGE_TTL_NS = 600 * 1_000_000_000


@dataclass
class SyncStatus:
    last_upload_ns: int | None = None
    last_pull_ns: int | None = None
    last_error: str | None = None
    uploaded_blocks: int = 0
    pulled_blocks: int = 0


class Replicator:
    def __init__(self, engine: Engine, store: Backend, node_id: str, interval_s: float,
                 clock: Callable[[], int] = time.time_ns, *, commit: shared.CommitFn = shared.commit,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync) -> None:
        """``clock`` (wall ns), ``commit`` (the manifest CAS) and ``run_sync`` (runs blocking file work
        off the event loop) are seams: production uses the defaults, the fuzzer passes its own."""
        self.engine = engine
        self.clock = clock
        self._commit = commit
        self._run_sync = run_sync
        self.store = store
        self.node_id = node_id
        self.interval_s = interval_s
        self.status = SyncStatus()
        self._cursor_ns = 0
        self._seen: set[str] = set()
        self._last_full = -1e18
        self._own_changes: deque[tuple[int, str]] = deque()  # (written at ns, key), oldest first

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
            "last_error": self.status.last_error,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._loop, self.upload_once, "upload")
            nursery.start_soon(self._loop, self.pull_once, "pull")

    async def _loop(self, step: Any, what: str) -> None:
        failures = 0
        while True:
            try:
                await step()
                failures = 0
                delay = self.interval_s
            except StoreError as exc:
                failures += 1
                self.status.last_error = f"{what}: {exc}"
                if failures in (1, 10) or failures % 100 == 0:
                    log.log(_log, logging.WARNING, f"{what} failed; will retry", error=str(exc), failures=failures)
                delay = min(self.interval_s * 2 ** min(failures, 6), 30.0)
            await trio.sleep(delay)

    # -- uploader -------------------------------------------------------------

    async def upload_once(self) -> None:
        for key, manifest in list(self.engine.manifests.items()):
            pending = manifest.pending(self.node_id)
            if pending:
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
        if result.version != latest.version:
            await self.announce(dataset, day, result.version)
        async with self.engine.part_lock(key):
            current = self.engine.manifests.get(key)
            if current is None:  # dropped locally meanwhile
                return
            self.engine.manifests[key] = await self._save(current, uploaded=current.uploaded | ids)
        self.status.last_upload_ns = self.clock()
        self.status.uploaded_blocks += len(ids)

    async def announce(self, dataset: str, day: int, version: int) -> None:
        """Tell pullers that a partition changed: a change-feed key (uploads, compaction, retention)."""
        now = self.clock()
        change = f"_changes/{now:020d}.{dataset}.{timeutil.day_name(day)}.{version}.{self.node_id}"
        await self.store.put(change, b"")
        self._own_changes.append((now, change))

    async def _save(self, manifest: PartitionManifest, **changes: Any) -> PartitionManifest:
        new = replace(manifest, **changes)
        await self._run_sync(new.save, self.engine.part_dir((new.dataset, new.day)))
        return new

    # -- puller ---------------------------------------------------------------

    async def pull_once(self) -> None:
        for dataset, day in sorted(await self._changed_partitions()):
            await self.sync_partition(dataset, day)
        self.status.last_pull_ns = self.clock()

    async def _changed_partitions(self) -> set[tuple[str, int]]:
        now = trio.current_time()
        if now - self._last_full >= FULL_PASS_EVERY_S:
            changed = set()
            feed_start = self.clock() - CHANGE_WINDOW_NS
            async for info in list_all(self.store, "_partitions/"):
                _, dataset, day_name = info.key.split("/")
                changed.add((dataset, timeutil.day_number(day_name)))
            self._last_full = now
            self._cursor_ns = max(self._cursor_ns, feed_start)
            return changed
        changed = set()
        start_after = f"_changes/{max(0, self._cursor_ns - CHANGE_WINDOW_NS):020d}"
        newest = self._cursor_ns
        async for info in list_all(self.store, "_changes/", start_after=start_after):
            if info.key in self._seen:
                continue
            self._seen.add(info.key)
            stamp, dataset, day_name, _version, _node = info.key[len("_changes/"):].split(".", 4)
            newest = max(newest, int(stamp))
            changed.add((dataset, timeutil.day_number(day_name)))
        self._cursor_ns = newest
        horizon = f"_changes/{max(0, newest - 2 * CHANGE_WINDOW_NS):020d}"
        self._seen = {k for k in self._seen if k >= horizon}
        return changed

    async def sync_partition(self, dataset: str, day: int) -> None:
        key = (dataset, day)
        local = self.engine.manifests.get(key)
        latest = await shared.read_latest(self.store, dataset, day, local.shared_version if local else 0)
        if latest.version == 0 or (local is not None and latest.version <= local.shared_version):
            return
        if latest.dropped:
            await self.engine.drop_partition(key, latest.version)
            return
        directory = self.engine.part_dir(key)
        have = {b.id for b in local.blocks} if local else set()
        for block in latest.blocks:
            if block.id not in have and not (directory / block.filename).exists():
                data = await self.store.get(shared.block_key(dataset, day, block.id))
                if len(data) != block.bytes or hashlib.sha256(data).hexdigest() != block.sha256:
                    raise _corrupt(block)
                await self._run_sync(_write_block, directory, block, data)
                self.status.pulled_blocks += 1
        async with self.engine.part_lock(key):
            current = self.engine.manifests.get(key) or PartitionManifest(dataset=dataset, day=day)
            if latest.version <= current.shared_version:
                return
            shared_ids = {b.id for b in latest.blocks}
            own_pending = [b for b in current.pending(self.node_id)
                           if b.id not in shared_ids and b.id not in latest.retired]
            blocks = [*latest.blocks, *own_pending]
            live = {b.id for b in blocks}
            uploaded = {i for i in current.uploaded | {b.id for b in latest.blocks if b.node == self.node_id}
                        if i in live}
            # One step: the partition's block list becomes the shared one (plus own pending blocks).
            self.engine.manifests[key] = await self._save(current, blocks=blocks, shared_version=latest.version,
                                                          uploaded=uploaded)
        self.engine.retire([(key, b) for b in current.blocks if b.id not in live])


def _write_block(directory: Any, block: BlockEntry, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / block.filename, data)


def _corrupt(block: BlockEntry) -> StoreError:
    return Unavailable(f"block {block.id} fetched from the store does not match its checksum")

"""The local storage engine: ingest → WAL → memtable → blocks, and query sources.

Data flow::

    ingest(dataset, table)
      └─ WAL append (group commit, fdatasync) ─► memtable.add ─► acknowledged
    flush()                                         (every flush_secs, or on size)
      ├─ under the WAL lock: freeze the memtable, rotate the segment (the cut)
      ├─ per partition: write block (tmp → fsync → rename), save manifest
      │   with wal_through = cut, then in one step make the block visible
      │   and drop the frozen rows (never both visible, never neither)
      └─ delete WAL segments ≤ cut

Directory layout under the data dir::

    wal/<seq>.wal
    parts/<dataset>/<YYYY-MM-DD>/manifest.json
    parts/<dataset>/<YYYY-MM-DD>/<block-id>.parquet
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import pyarrow as pa
import trio

from helios import log, timeutil
from helios.errors import Overloaded
from helios.niceness import Pacer
from helios.storage.blocks import BlockEntry, build_block, new_block_id
from helios.storage.cache import BlockCache
from helios.storage.local import LocalBlocks
from helios.storage.manifest import MANIFEST_NAME, PartitionManifest
from helios.storage.memtable import Memtable, PartKey, Slice, slices, split_by_day
from helios.storage.wal import Wal, decode_payload
from helios.supervisor import Health

__all__ = ["Batch", "DatasetStats", "Engine", "Source"]

_log = log.get("helios.storage")
PREPARE_IN_THREAD_BYTES = 64 << 10  # smaller tables (a few rows) are prepared faster than a thread hop


@dataclass(frozen=True)
class Source:
    """One unit of scanning: a block on disk or a partition's memtable rows."""

    dataset: str
    day: int
    min_time: int
    max_time: int
    rows: int
    block: BlockEntry | None = None
    path: Path | None = None
    table: pa.Table | None = None


@dataclass
class DatasetStats:
    name: str
    rows: int = 0
    bytes: int = 0
    partitions: int = 0
    blocks: int = 0


@dataclass(frozen=True)
class Batch:
    """One request's rows, ready to commit: its WAL frame and its memtable slices (``Engine.prepare``)."""

    dataset: str
    table: pa.Table
    frame: bytes
    slices: list[Slice]


class Engine:
    # Called with every acknowledged request's rows, right after its WAL commit, before the answer
    # (live tail: ``helios.tail.TailHub.publish``). Synchronous; must not block or raise.
    on_ingest: Callable[[str, pa.Table], None] | None = None

    def __init__(self, root: Path, node_id: str, *, memtable_rows: int = 1_000_000,
                 memtable_bytes: int = 64 << 20, ingest_wait_s: float = 30.0, index_on_flush: bool = False,
                 cache_bytes: int = 1 << 30, clock: Callable[[], int] = time.time_ns,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
                 token_hex: Callable[[int], str] = secrets.token_hex,
                 local_cache_bytes: int | None = None) -> None:
        """``clock`` (wall ns), ``run_sync`` (runs blocking file work off the event loop, WAL included)
        and ``token_hex`` (randomness of new block ids) are seams: production uses the defaults, the
        fuzzer passes its own. ``local_cache_bytes`` bounds the blocks kept locally (helios.storage.local).

        Memory: a flush starts once the memtable holds ``memtable_rows`` rows or ``memtable_bytes``
        bytes; while twice ``memtable_bytes`` is not yet in blocks (the memtable and the one being
        flushed), an ingest waits for a flush to make room, at most ``ingest_wait_s`` (then
        ``Overloaded``: 429). Ingest runs at the pace of flushing instead of outgrowing memory.

        A flushed block gets no token index unless ``index_on_flush``: the first compaction that
        rewrites it builds one (helios.replication.jobs), off the ingest path."""
        self.root = root
        self.node_id = node_id
        self.parts_dir = root / "parts"
        self.wal = Wal(root / "wal", run_sync=run_sync)
        self.memtable_rows = memtable_rows
        self.memtable_bytes = memtable_bytes
        self.ingest_wait_s = ingest_wait_s
        self.index_on_flush = index_on_flush
        self._room = trio.Event()  # set (and replaced) whenever a flush moved rows into a block
        self.backpressure_waits = 0
        self.backpressure_refusals = 0
        self.pacer: Pacer | None = None  # told of each commit: compaction yields to a busy ingest
        self.clock = clock
        self._run_sync = run_sync
        self._token_hex = token_hex
        self.cache = BlockCache(cache_bytes)
        self.manifests: dict[PartKey, PartitionManifest] = {}  # replaced, never changed in place
        # Each partition's blocks as query sources, made again only once its list of blocks is new.
        self._block_sources: dict[PartKey, tuple[list[BlockEntry], list[Source]]] = {}
        self.memtable = Memtable()
        self.frozen: list[tuple[int, Memtable]] = []  # (WAL cut, rows), oldest first
        self._flush_wanted = trio.Event()
        self._flush_lock = trio.Lock()
        self._part_locks: dict[PartKey, list[Any]] = {}
        self.health = Health()  # the node shares one Health among its tasks (helios.supervisor)  # key -> [lock, users]: only keys in use
        self.flushes = 0
        self.replayed_rows = 0
        # Garbage collection of local block files: blocks no manifest references any more,
        # deleted after a grace period and only once no running query reads them.
        self._readers: Counter[str] = Counter()
        self._retired: dict[str, tuple[Path, float]] = {}  # block id -> (file, retired at, trio time)
        self.deleted_files = 0
        # Which blocks are in the data dir; fetching the others; the bound (helios.storage.local).
        self.blocks = LocalBlocks(self, local_cache_bytes)

    # -- start-up ---------------------------------------------------------

    def part_dir(self, key: PartKey) -> Path:
        return self.parts_dir / key[0] / timeutil.day_name(key[1])

    def open(self) -> None:
        """Load manifests, drop files no manifest names, replay the WAL."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for manifest_path in sorted(self.parts_dir.glob(f"*/*/{MANIFEST_NAME}")):
            manifest = PartitionManifest.load(manifest_path.parent)
            self.manifests[(manifest.dataset, manifest.day)] = manifest
        self._remove_orphans()
        self.blocks.scan()
        for seq, payload in self.wal.replay():
            dataset, table = decode_payload(payload)
            for day, piece in split_by_day(table):
                manifest = self.manifests.get((dataset, day))
                if manifest is not None and manifest.wal_through >= seq:
                    continue  # already in a recorded block
                self.memtable.add_piece((dataset, day), piece)
                self.replayed_rows += piece.num_rows
        self.wal.start()
        log.log(_log, logging.INFO, "storage opened", partitions=len(self.manifests),
                replayed_rows=self.replayed_rows, wal_segment=self.wal.current_segment)

    def _remove_orphans(self) -> None:
        """A crash between writing a block and recording it leaves an orphan; its rows are in the WAL."""
        live = {self.part_dir(key): {block.filename for block in manifest.blocks}
                for key, manifest in self.manifests.items()}
        for part_dir in self.parts_dir.glob("*/*"):
            if not part_dir.is_dir():
                continue
            names = live.get(part_dir, set())
            for path in part_dir.iterdir():
                if path.name == MANIFEST_NAME:
                    continue
                if path.name.startswith(".") or (path.suffix == ".parquet" and path.name not in names):
                    path.unlink()

    # -- ingest -----------------------------------------------------------

    async def ingest(self, dataset: str, table: pa.Table) -> int:
        """Durably append ``table`` (normalised) to ``dataset``; returns its row count.

        One request is one WAL frame (all or nothing): ``prepare`` (in a worker
        thread unless the table is small), then ``commit``. A payload over the
        WAL's frame cap raises ``PayloadTooLarge`` and nothing is written or
        acknowledged.
        """
        if table.num_rows == 0:
            return 0
        if table.nbytes > PREPARE_IN_THREAD_BYTES:
            batch = await trio.to_thread.run_sync(self.prepare, dataset, table)
        else:
            batch = self.prepare(dataset, table)
        return await self.commit(batch)

    def prepare(self, dataset: str, table: pa.Table) -> Batch:
        """The Arrow work of an ingest, off the event loop: the WAL frame (encoded, compressed,
        checksummed; ``PayloadTooLarge`` over the frame cap) and the memtable slices. Touches no
        engine state, so a request's worker thread runs it right after parsing.

        Columns in several chunks are joined first: IPC compresses every chunk's
        buffers apart (a zstd context each, ~30 us), which costs more than the
        copy. (``records`` hands over one chunk, charged to the request's budget.)
        """
        if table.num_rows and max(column.num_chunks for column in table.columns) > 1:
            table = table.combine_chunks()
        frame = self.wal.frame_table(dataset, table)
        return Batch(dataset, table, frame, slices(dataset, table))

    async def commit(self, batch: Batch) -> int:
        """Append a prepared batch to the WAL (group commit), then to the memtable; its row count."""
        if batch.table.num_rows == 0:
            return 0
        await self._wait_for_room()
        await self.wal.append_frame(batch.frame, lambda: self._apply(batch))
        if self.pacer is not None:
            self.pacer.busy(batch.table.num_rows)  # a busy ingest: merges pause between steps
        return batch.table.num_rows

    def unflushed_bytes(self) -> int:
        """Bytes of acknowledged rows not yet in a block: the memtable and the one being flushed."""
        return self.memtable.nbytes + sum(m.nbytes for _, m in self.frozen)

    async def _wait_for_room(self) -> None:
        """Backpressure: hold an ingest, before its WAL append, while flushing is behind."""
        limit = 2 * self.memtable_bytes
        if self.unflushed_bytes() < limit:
            return
        self.backpressure_waits += 1
        self._flush_wanted.set()
        with trio.move_on_after(self.ingest_wait_s):
            while self.unflushed_bytes() >= limit:
                await self._room.wait()
            return
        self.backpressure_refusals += 1
        raise Overloaded(f"ingest is ahead of flushing: {self.unflushed_bytes()} bytes are not in blocks yet "
                         f"(the bound is {limit}, twice HELIOS_MEMTABLE_BYTES); retry later")

    def _apply(self, batch: Batch) -> None:
        self.memtable.add_slices(batch.slices)
        if self.on_ingest is not None:
            self.on_ingest(batch.dataset, batch.table)
        if self.memtable.rows >= self.memtable_rows or self.memtable.nbytes >= self.memtable_bytes:
            self._flush_wanted.set()

    # -- flushing ---------------------------------------------------------

    async def run_flusher(self, interval_s: float, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(interval_s):
                await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self.flush()
            except OSError as exc:  # the disk: reported, retried; acknowledged rows stay in the WAL
                self.health.fail("flush", "", exc)
                await trio.sleep(min(interval_s, 5.0))
            else:
                if ("flush", "") in self.health.problems:
                    self.health.ok("flush")

    async def flush(self) -> None:
        """Turn every acknowledged memtable row into blocks, in order."""
        async with self._flush_lock:
            async with self.wal.lock:
                if self.memtable:
                    cut = await self._run_sync(self.wal.rotate)
                    self.frozen.append((cut, self.memtable))
                    self.memtable = Memtable()
            while self.frozen:
                cut, frozen = self.frozen[0]
                for key in list(frozen.parts):
                    await self._flush_part(key, frozen, cut)
                self.frozen.pop(0)
                await self._run_sync(self.wal.delete_through, cut)
                self.flushes += 1

    @asynccontextmanager
    async def part_lock(self, key: PartKey) -> AsyncIterator[None]:
        """Held for every read-modify-write of a partition's manifest (flusher, replicator, jobs).

        Locks are counted and exist only while someone holds or waits for
        one, so the table stays as small as the work in flight. Taking the
        entry and counting happen before the first checkpoint: no two tasks
        can ever hold different locks for one key.
        """
        entry = self._part_locks.get(key)
        if entry is None:
            entry = self._part_locks[key] = [trio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._part_locks[key]

    async def _flush_part(self, key: PartKey, frozen: Memtable, cut: int) -> None:
        part = frozen.parts[key]
        created = self.clock()
        block_id = new_block_id(created, self.node_id, token_hex=self._token_hex)
        directory = self.part_dir(key)
        entry = await self._run_sync(
            lambda: build_block(directory, block_id, part.tables, dataset=key[0], day=key[1], node=self.node_id,
                                created_ns=created, index="tokens" if self.index_on_flush else "later"))
        async with self.part_lock(key):
            old = self.manifests.get(key) or PartitionManifest(dataset=key[0], day=key[1])
            new = replace(old, wal_through=max(old.wal_through, cut), blocks=[*old.blocks, entry])
            await self._run_sync(new.save, directory)
            # One step, no checkpoint: the rows move from the memtable to the block.
            self.manifests[key] = new
            frozen.remove(key)
            self.blocks.register(key, entry)
        self._room.set()  # waiting ingests may go on
        self._room = trio.Event()

    # -- reading ----------------------------------------------------------

    def sources(self, datasets: set[str] | None, start_ns: int | None, end_ns: int | None) -> list[Source]:
        """A consistent snapshot of everything a query over the range may need.

        Taken without a checkpoint, so no flush can move rows between the
        memtable and a block halfway through it.
        """
        first_day = None if start_ns is None else timeutil.day_of(start_ns)
        last_day = None if end_ns is None else timeutil.day_of(end_ns - 1)

        def wanted(key: PartKey) -> bool:
            dataset, day = key
            return ((datasets is None or dataset in datasets)
                    and (first_day is None or day >= first_day)
                    and (last_day is None or day <= last_day))

        out: list[Source] = []
        for key, manifest in self.manifests.items():
            # Blocks of other days are listed too: the executor prunes (and counts) them by time.
            if datasets is None or key[0] in datasets:
                out.extend(self._sources_of(key, manifest.blocks))
        for memtable in [*(m for _, m in self.frozen), self.memtable]:
            for key, part in memtable.parts.items():
                if wanted(key) and part.rows:
                    table = pa.concat_tables(part.tables, promote_options="default")
                    out.append(Source(key[0], key[1], part.min_time or 0, part.max_time or 0,
                                      part.rows, table=table))
        return out

    def _sources_of(self, key: PartKey, blocks: list[BlockEntry]) -> list[Source]:
        """A partition's blocks as sources (a query's fixed cost: ~5 us a block to make, so kept).

        Kept while the manifest holds the same list object: a manifest's list is replaced, never
        changed in place, and the cache holds a reference to it, so no other list takes its id."""
        cached = self._block_sources.get(key)
        if cached is not None and cached[0] is blocks:
            return cached[1]
        directory = self.part_dir(key)
        made = [Source(key[0], key[1], b.min_time, b.max_time, b.rows, block=b,
                       path=directory / b.filename) for b in blocks]
        self._block_sources[key] = (blocks, made)
        return made

    # -- readers and local garbage ----------------------------------------

    def acquire(self, sources: list[Source]) -> None:
        """A query reads these sources: their files stay until ``release``."""
        self._readers.update(s.block.id for s in sources if s.block is not None)

    def release(self, sources: list[Source]) -> None:
        self._readers.subtract(s.block.id for s in sources if s.block is not None)
        self._readers += Counter()  # drop zero counts

    def retire(self, blocks: list[tuple[PartKey, BlockEntry]]) -> None:
        """These blocks left their partition's manifest: delete their files after the grace period."""
        now = trio.current_time()
        for key, block in blocks:
            self.cache.forget(block.id)
            self._retired.setdefault(block.id, (self.part_dir(key) / block.filename, now))

    async def collect_garbage(self, grace_s: float) -> int:
        """Delete retired block files past the grace period that no running query reads."""
        now = trio.current_time()
        due = [(bid, path) for bid, (path, at) in self._retired.items()
               if now - at >= grace_s and self._readers[bid] <= 0]
        live = {b.id for m in self.manifests.values() for b in m.blocks}
        for block_id, path in due:
            if self._retired.pop(block_id, None) is None:
                continue  # a concurrent pass took it
            if block_id not in live:
                await self._run_sync(lambda: path.unlink(missing_ok=True))
                self.blocks.forget(block_id)
                self.deleted_files += 1
        for directory in {path.parent for _, path in due}:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return len(due)

    async def drop_partition(self, key: PartKey, shared_version: int = 0) -> bool:
        """Remove a partition (retention): its manifest now, its files after the grace period."""
        async with self.part_lock(key):
            manifest = self.manifests.pop(key, None)
            self._block_sources.pop(key, None)
            if manifest is None:
                return False
            await self._run_sync(lambda: (self.part_dir(key) / MANIFEST_NAME).unlink(missing_ok=True))
        self.retire([(key, b) for b in manifest.blocks])
        log.log(_log, logging.INFO, "dropped a partition", dataset=key[0], day=timeutil.day_name(key[1]),
                blocks=len(manifest.blocks), rows=manifest.rows, shared_version=shared_version)
        return True

    def dataset_stats(self) -> dict[str, DatasetStats]:
        stats: dict[str, DatasetStats] = {}
        partitions: dict[str, set[int]] = {}
        for (dataset, day), manifest in self.manifests.items():
            entry = stats.setdefault(dataset, DatasetStats(dataset))
            entry.rows += manifest.rows
            entry.bytes += manifest.bytes
            entry.blocks += len(manifest.blocks)
            partitions.setdefault(dataset, set()).add(day)
        for memtable in [*(m for _, m in self.frozen), self.memtable]:
            for (dataset, day), part in memtable.parts.items():
                entry = stats.setdefault(dataset, DatasetStats(dataset))
                entry.rows += part.rows
                partitions.setdefault(dataset, set()).add(day)
        for dataset, days in partitions.items():
            stats[dataset].partitions = len(days)
        return stats

    def close(self) -> None:
        self.wal.close()

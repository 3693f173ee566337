"""The data dir as a bounded cache of the shared store's blocks.

Every block a local manifest names is *resident* (its file is in the
partition's directory) or lives only in the shared store. Metadata is eager
(the puller keeps every manifest current); bytes are fetched when a query
needs them, or ahead of time for a recent window (the puller's prefetch).
Fetched bytes are checked against the manifest's SHA-256 before use.

What pruning and index answers need is fetched small: a format 2 block's
token index section alone (``fetch_index``: one ranged read of the file's last
``index_bytes``, checked against the entry's ``index_sha256``), kept parsed in
memory (the decoded-block cache), never on disk — the puller fetches them
eagerly (``fetch_indexes``), a query lazily for blocks whose index it lacks.

``capacity_bytes`` (``HELIOS_LOCAL_CACHE_BYTES``; None: unbounded) bounds the
bytes of resident blocks that are safely in the store, plus the bytes of
fetches under way. Eviction is LRU over those blocks and never touches:

- this node's own blocks not yet uploaded (``manifest.pending``: the store
  does not have them; they are not counted either, like the WAL);
- a block a running query or job holds (the engine's reader counts, the same
  ones local garbage collection respects: ``Engine.acquire`` / ``release``).

Room is made *before* a fetch starts, so the bound holds during fetches too.
When no room can be made (everything evictable is held), a fetched block is
used from memory and not kept: a query over more data than the cache streams
through it.

Shape::

    blocks = engine.blocks                  # one per engine
    blocks.store = store                    # the replicator attaches the store
    data = await blocks.read(key, entry)    # local bytes, or fetched (kept if there is room)
    await blocks.prefetch(key, entry, keep=lambda r: r.max_time >= window_start)
    index = await blocks.fetch_index(key, entry)   # the index section alone (memory)
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import trio

from backends import Backend, Corrupt, NotFound, StoreError
from helios import log
from helios.storage.blocks import BlockEntry, BlockIndex, CorruptBlock, load_index_section
from helios.storage.fsutil import write_atomic
from helios.storage.memtable import PartKey

if TYPE_CHECKING:
    from helios.storage.engine import Engine

__all__ = ["INDEX_IN_FLIGHT", "CacheStats", "LocalBlocks", "Resident", "block_key"]

_log = log.get("helios.cache")
INDEX_IN_FLIGHT = 4  # index sections fetched at once by ``fetch_indexes``


@dataclass
class CacheStats:
    """Counters for /metrics: a hit is a block read from the data dir, a miss one fetched from the store."""

    hits: int = 0
    misses: int = 0
    fetched_bytes: int = 0
    fetched_blocks: int = 0
    evicted_bytes: int = 0
    evicted_blocks: int = 0
    streamed_blocks: int = 0  # fetched, used from memory, not kept (no room)
    fetch_errors: int = 0
    index_fetched: int = 0  # token index sections fetched alone (ranged reads), not blocks
    index_fetched_bytes: int = 0
    index_fetch_errors: int = 0


@dataclass
class Resident:
    key: PartKey
    entry: BlockEntry
    path: Path


def block_key(key: PartKey, block_id: str) -> str:
    from helios.replication.shared import block_key as shared_key  # the store's layout

    return shared_key(key[0], key[1], block_id)


class LocalBlocks:
    def __init__(self, engine: Engine, capacity_bytes: int | None = None) -> None:
        self.engine = engine
        self.capacity_bytes = capacity_bytes
        self.store: Backend | None = None
        self.stats = CacheStats()
        # Called with a partition whose manifest names a block the store no longer has (its manifest is stale).
        self.on_gone: Callable[[PartKey], None] = lambda key: None
        self._resident: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._reserved = 0  # bytes of fetches under way that will be kept
        self._busy: dict[str, trio.Event] = {}  # block id -> set when its fetch or eviction is done
        self._index_busy: dict[str, trio.Event] = {}  # block id -> set when its index fetch is done

    # -- what is on disk --------------------------------------------------------

    def scan(self) -> None:
        """At start-up: every block file of a live manifest is resident; least recently written first."""
        found = []
        for key, manifest in self.engine.manifests.items():
            directory = self.engine.part_dir(key)
            for entry in manifest.blocks:
                path = directory / entry.filename
                try:
                    found.append((path.stat().st_mtime_ns, entry.id, Resident(key, entry, path)))
                except FileNotFoundError:
                    continue
        for _, block_id, resident in sorted(found, key=lambda item: (item[0], item[1])):
            self._resident[block_id] = resident

    def register(self, key: PartKey, entry: BlockEntry) -> None:
        """A block file this node wrote itself (a flush, a compaction output): resident, most recent."""
        self._resident[entry.id] = Resident(key, entry, self.engine.part_dir(key) / entry.filename)
        self._resident.move_to_end(entry.id)

    def forget(self, block_id: str) -> None:
        """The block's file was deleted (local garbage collection, a compaction output never committed)."""
        self._resident.pop(block_id, None)

    def is_resident(self, block_id: str) -> bool:
        return block_id in self._resident

    def used_bytes(self) -> int:
        """Counted bytes: resident blocks safely in the store, plus fetches under way that will be kept."""
        protected = self._protected()
        return self._reserved + sum(r.entry.bytes for i, r in self._resident.items() if i not in protected)

    def _protected(self) -> set[str]:
        """This node's own blocks that the store does not have yet: never evicted, not counted."""
        node = self.engine.node_id
        return {b.id for m in self.engine.manifests.values() for b in m.blocks
                if b.node == node and b.id not in m.uploaded}

    # -- reading ------------------------------------------------------------------

    def local_path(self, key: PartKey, entry: BlockEntry) -> Path | None:
        """The block's file if it is resident (and marks it recently used)."""
        resident = self._resident.get(entry.id)
        if resident is None:
            path = self.engine.part_dir(key) / entry.filename
            if self.store is None and path.exists():  # no store: every live block is local
                return path
            return None
        self._resident.move_to_end(entry.id)
        return resident.path

    async def read(self, key: PartKey, entry: BlockEntry, *, keep: bool = True) -> bytes:
        """The block's verified bytes: from the data dir, else fetched from the store (kept if room).

        Raises what the store raises (``Unavailable``, ``NotFound``), ``Corrupt``
        for fetched bytes that fail the checksum, ``CorruptBlock`` is left to
        the block loaders (they verify local bytes on every load).
        """
        self.engine._readers[entry.id] += 1  # a concurrent eviction leaves it alone meanwhile
        try:
            while entry.id in self._busy:
                await self._busy[entry.id].wait()
            path = self.local_path(key, entry)
            if path is not None:
                try:
                    data = await self.engine._run_sync(path.read_bytes)
                    self.stats.hits += 1
                    return data
                except FileNotFoundError:
                    self.forget(entry.id)
            return await self._fetch(key, entry, keep=keep)
        finally:
            self.engine._readers[entry.id] -= 1
            if self.engine._readers[entry.id] <= 0:
                del self.engine._readers[entry.id]

    async def prefetch(self, key: PartKey, entry: BlockEntry, *,
                       evictable: Callable[[Resident], bool] = lambda r: True) -> bool:
        """Bring a block into the data dir ahead of queries, if room can be made (evicting only
        ``evictable`` blocks); False when it was not fetched. Store errors propagate."""
        if entry.id in self._resident or entry.id in self._busy:
            return False
        event = self._busy[entry.id] = trio.Event()
        try:
            if not await self._make_room(entry.bytes, evictable):
                return False
            try:
                data = await self._get(key, entry)
                await self._keep(key, entry, data)
            finally:
                self._reserved -= entry.bytes
            return True
        finally:
            del self._busy[entry.id]
            event.set()

    async def _fetch(self, key: PartKey, entry: BlockEntry, *, keep: bool) -> bytes:
        event = self._busy[entry.id] = trio.Event()
        try:
            self.stats.misses += 1
            room = keep and await self._make_room(entry.bytes)
            try:
                data = await self._get(key, entry)
                if room:
                    try:
                        await self._keep(key, entry, data)
                    except OSError as exc:  # a full or failing disk: the query still gets its bytes
                        log.log(_log, logging.WARNING, "could not keep a fetched block", block=entry.id,
                                error=str(exc))
                else:
                    self.stats.streamed_blocks += 1
                return data
            finally:
                if room:
                    self._reserved -= entry.bytes
        finally:
            del self._busy[entry.id]
            event.set()

    async def _get(self, key: PartKey, entry: BlockEntry) -> bytes:
        if self.store is None:  # without a store every live block is local: this one is gone
            raise FileNotFoundError(str(self.engine.part_dir(key) / entry.filename))
        name = block_key(key, entry.id)
        try:
            data = await self.store.get(name)
        except Exception:
            self.stats.fetch_errors += 1
            raise
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            self.stats.fetch_errors += 1
            raise Corrupt(name, "the fetched bytes do not match the manifest's checksum")
        self.stats.fetched_bytes += len(data)
        self.stats.fetched_blocks += 1
        return data

    async def _keep(self, key: PartKey, entry: BlockEntry, data: bytes) -> None:
        directory = self.engine.part_dir(key)
        path = directory / entry.filename

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)

        await self.engine._run_sync(write)
        if key in self.engine.manifests and any(b.id == entry.id for b in self.engine.manifests[key].blocks):
            self.register(key, entry)
        else:  # the block left its manifest while it was fetched: nobody will read the file again
            await self.engine._run_sync(lambda: path.unlink(missing_ok=True))

    # -- index sections ----------------------------------------------------------------

    async def fetch_index(self, key: PartKey, entry: BlockEntry) -> BlockIndex:
        """A format 2 block's index without its rows: from memory, else its index section fetched alone.

        One ranged read (the file's last ``entry.index_bytes``), checked against
        ``entry.index_sha256`` and kept parsed in the decoded-block cache (memory
        only), where queries find it (``BlockCache.known_index``). Single-flight
        per block. Raises what the store raises, ``Corrupt`` for a section that
        fails its checksum or cannot be parsed.
        """
        if not entry.index_bytes:
            raise ValueError(f"block {entry.id} has no index section (format 1)")
        cache = self.engine.cache
        while (busy := self._index_busy.get(entry.id)) is not None:
            await busy.wait()
        known = cache.known_index(entry.id)
        if known is not None:
            return known
        if self.store is None:  # without a store every live block is local: this one is gone
            raise FileNotFoundError(str(self.engine.part_dir(key) / entry.filename))
        event = self._index_busy[entry.id] = trio.Event()
        name = block_key(key, entry.id)
        try:
            try:
                section = await self.store.get_range(name, entry.parquet_bytes, entry.index_bytes)
                index = await self.engine._run_sync(load_index_section, section, entry)
            except CorruptBlock as exc:
                self.stats.index_fetch_errors += 1
                raise Corrupt(name, str(exc)) from None
            except Exception:
                self.stats.index_fetch_errors += 1
                raise
            self.stats.index_fetched += 1
            self.stats.index_fetched_bytes += len(section)
            manifest = self.engine.manifests.get(key)
            if manifest is not None and any(b.id == entry.id for b in manifest.blocks):
                cache.remember_index(entry, index)  # (a block retired meanwhile is not remembered)
            return index
        finally:
            del self._index_busy[entry.id]
            event.set()

    async def fetch_indexes(self, wanted: list[tuple[PartKey, BlockEntry]], *, budget_bytes: int,
                            in_flight: int = INDEX_IN_FLIGHT) -> int:
        """Fetch the index sections of ``wanted`` in order, ``in_flight`` at once, while the indexes kept
        in memory take less than ``budget_bytes``; returns how many were fetched.

        A block the store no longer has re-syncs its partition (``on_gone``); a
        corrupt section is quarantined by key; both are skipped. Any other store
        error (the store is down) stops the rest and is raised once.
        """
        fetched = 0
        failed: list[StoreError] = []
        limiter = trio.Semaphore(max(1, in_flight))

        async def one(key: PartKey, entry: BlockEntry, nursery: trio.Nursery) -> None:
            nonlocal fetched
            try:
                await self.fetch_index(key, entry)
                fetched += 1
            except NotFound:
                self.on_gone(key)
            except Corrupt as exc:
                self.engine.health.quarantine("fetch", exc.key, exc.reason)
            except StoreError as exc:
                failed.append(exc)
                nursery.cancel_scope.cancel()
            finally:
                limiter.release()

        async with trio.open_nursery() as nursery:
            for key, entry in wanted:
                await limiter.acquire()
                if failed or self.engine.cache.index_bytes >= budget_bytes:
                    limiter.release()
                    break
                nursery.start_soon(one, key, entry, nursery)
        if failed:
            raise failed[0]
        return fetched

    # -- the bound ------------------------------------------------------------------

    async def _make_room(self, size: int, evictable: Callable[[Resident], bool] = lambda r: True) -> bool:
        """Reserve ``size`` bytes within the bound, evicting least recently used blocks; False if impossible.

        Victims are chosen and the bytes reserved in one step (no checkpoint),
        so concurrent fetches never overcommit; victims' files are deleted
        before the caller writes anything.
        """
        if self.capacity_bytes is None:
            self._reserved += size
            return True
        protected = self._protected()
        used = self._reserved + sum(r.entry.bytes for i, r in self._resident.items() if i not in protected)
        victims: list[tuple[str, Resident]] = []
        for block_id, resident in self._resident.items():
            if used + size <= self.capacity_bytes:
                break
            if (block_id in protected or self.engine._readers[block_id] > 0 or block_id in self._busy
                    or not evictable(resident)):
                continue
            victims.append((block_id, resident))
            used -= resident.entry.bytes
        if used + size > self.capacity_bytes:
            return False
        self._reserved += size
        await self._evict(victims)
        return True

    async def _evict(self, victims: Iterable[tuple[str, Resident]]) -> None:
        victims = list(victims)
        for block_id, _ in victims:
            self._resident.pop(block_id, None)
            self._busy.setdefault(block_id, trio.Event())
        try:
            for block_id, resident in victims:
                try:
                    await self.engine._run_sync(lambda: resident.path.unlink(missing_ok=True))
                except OSError as exc:  # reported; the file is no longer the cache's (GC may get it)
                    log.log(_log, logging.WARNING, "could not evict a block", block=block_id, error=str(exc))
                    continue
                self.stats.evicted_blocks += 1
                self.stats.evicted_bytes += resident.entry.bytes
        finally:
            for block_id, _ in victims:
                event = self._busy.pop(block_id, None)
                if event is not None:
                    event.set()

    async def enforce(self) -> None:
        """Evict down to the bound (blocks become counted once uploaded, or after the bound shrank)."""
        if self.capacity_bytes is not None and self.used_bytes() > self.capacity_bytes:
            await self._make_room(0)

    def snapshot(self) -> dict[str, object]:
        """For /api/v1/cluster."""
        s = self.stats
        return {"bytes": self.used_bytes(), "capacity_bytes": self.capacity_bytes,
                "resident_blocks": len(self._resident), "hits": s.hits, "misses": s.misses,
                "fetched_bytes": s.fetched_bytes, "evicted_bytes": s.evicted_bytes,
                "index_sections_fetched": s.index_fetched, "index_fetched_bytes": s.index_fetched_bytes,
                "index_memory_bytes": self.engine.cache.index_bytes}

    def metrics_lines(self) -> list[str]:
        s = self.stats
        lines = []
        for name, kind, value in (
                ("helios_local_cache_hits_total", "counter", s.hits),
                ("helios_local_cache_misses_total", "counter", s.misses),
                ("helios_local_cache_fetched_bytes_total", "counter", s.fetched_bytes),
                ("helios_local_cache_fetched_blocks_total", "counter", s.fetched_blocks),
                ("helios_local_cache_evicted_bytes_total", "counter", s.evicted_bytes),
                ("helios_local_cache_evicted_blocks_total", "counter", s.evicted_blocks),
                ("helios_local_cache_streamed_blocks_total", "counter", s.streamed_blocks),
                ("helios_local_cache_fetch_errors_total", "counter", s.fetch_errors),
                ("helios_local_cache_index_fetched_total", "counter", s.index_fetched),
                ("helios_local_cache_index_fetched_bytes_total", "counter", s.index_fetched_bytes),
                ("helios_local_cache_index_fetch_errors_total", "counter", s.index_fetch_errors),
                ("helios_block_index_memory_bytes", "gauge", self.engine.cache.index_bytes),
                ("helios_local_cache_bytes", "gauge", self.used_bytes()),
                ("helios_local_cache_capacity_bytes", "gauge", self.capacity_bytes or 0)):
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        return lines


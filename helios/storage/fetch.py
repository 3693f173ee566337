"""One query's blocks: held while it runs, their indexes and bytes fetched ahead, never waited on past a deadline.

The executor runs in worker threads (the query's, and the scan threads of an
aggregation) and visits sources newest first. For each block whose index or
columns are not in memory it calls ``QueryBlocks.open(source)``, which
answers from trio:

- the block's file, if it is in the data dir;
- its bytes, fetched from the store (kept in the data dir if the cache has
  room): blocks the query will read are fetched ahead, in the executor's
  order, at most ``in_flight`` at once and at most that far ahead of it;
- None when the block cannot be had — the store is down, slower than the
  deadline, or no longer has it — so the query answers with what it has and
  says so (``stats.partial``, ``stats.blocks_missing``).

What pruning and index answers need comes first, and small: before the query
starts, the blocks for which ``index_wanted(source)`` holds and whose token
index is not in memory get their index section alone (one ranged read each,
``LocalBlocks.fetch_index``, ``2 × in_flight`` at once). Only then is the plan
made: a block is fetched ahead only if ``wanted(source)`` — asked with its index
now known — says its rows are needed; a block its index rules out, or answers
without rows (an exact hit and no column to read), is never fetched. A block
the plan left out that the executor asks for anyway is fetched then.

The deadline (``deadline_s``) bounds each fetch: a healthy store may take as
long as a large query needs, block after block. Once one fetch of the query
failed because the store is unreachable (``Unavailable``) or timed out, the
query stops asking the store: fetches under way are cancelled and every
block not local yet is missing at once. So a query over many unreachable
blocks answers within about one deadline, never hangs and never fails
because the store is down. Local and cached blocks, and answers from indexes
already in memory, need no store. Leaving the context cancels fetches still
under way (a plain search that found its ``limit`` rows stops early), answers
None to any reader still asking, and releases the blocks.

Shape (in a request handler)::

    async with query_blocks(engine.blocks, sources, start_ns=s, end_ns=e, wanted=needs_rows,
                            index_wanted=needs_index) as blocks:
        result = await trio.to_thread.run_sync(lambda: execute(..., fetch=blocks.open))
    blocks.missing          # blocks the answer lacks
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import trio

from backends import Corrupt, NotFound, StoreError, Unavailable
from helios import log
from helios.storage.blocks import BlockEntry, CorruptBlock
from helios.storage.engine import Source
from helios.storage.local import LocalBlocks, block_key

__all__ = ["DEFAULT_DEADLINE_S", "DEFAULT_IN_FLIGHT", "Fetch", "QueryBlocks", "query_blocks"]

Fetch = Callable[[Source], "Path | bytes | None"]  # ``QueryBlocks.open``, as ``execute`` takes it

DEFAULT_DEADLINE_S = 10.0
DEFAULT_IN_FLIGHT = 4
_log = log.get("helios.fetch")
T = TypeVar("T")


@dataclass
class _Slot:
    index: int
    source: Source
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    failed: bool = False  # done without bytes: the store could not give them


class QueryBlocks:
    def __init__(self, blocks: LocalBlocks, sources: list[Source], *, start_ns: int | None, end_ns: int | None,
                 wanted: Callable[[Source], bool] | None, index_wanted: Callable[[Source], bool] | None,
                 in_flight: int, deadline_s: float) -> None:
        self.blocks = blocks
        self.in_flight = max(1, in_flight)
        self.deadline_s = deadline_s
        self.missing = 0
        self.fetched = 0
        self.indexes_fetched = 0
        self.unreachable = False  # a fetch found the store down or too slow: stop asking it
        self.closed = False  # the query is over: answer None to readers still asking
        self._changed = trio.Event()  # set (and replaced) when a fetch ends or the store is given up
        self._scopes: set[trio.CancelScope] = set()  # the fetches under way
        self._wanted = wanted
        self._index_wanted = index_wanted
        low = -(1 << 63) if start_ns is None else start_ns
        high = (1 << 63) - 1 if end_ns is None else end_ns
        cache = blocks.engine.cache
        self._candidates = [s for s in sorted(sources, key=lambda s: s.max_time, reverse=True)  # the executor's order
                            if s.block is not None and s.max_time >= low and s.min_time < high
                            and not blocks.is_resident(s.block.id)
                            and cache.cached_columns(s.block, None, use=False) is None]
        self._slots: dict[str, _Slot] = {}
        self._plan: list[_Slot] = []
        self._next = 0  # the first planned block the executor has not asked for yet
        self._moved = trio.Event()
        self._trio = trio.lowlevel.current_trio_token()  # the executor's scan threads are not trio's

    # -- the executor's side (worker threads) -------------------------------------------

    def open(self, source: Source) -> Path | bytes | None:
        """The block's file or verified bytes, or None if it cannot be had before the deadline."""
        return trio.from_thread.run(self._take, source, trio_token=self._trio)

    # -- trio's side ----------------------------------------------------------------------

    async def _take(self, source: Source) -> Path | bytes | None:
        entry = source.block
        assert entry is not None
        key = (source.dataset, source.day)
        path = self.blocks.local_path(key, entry)
        if path is not None:
            self.blocks.stats.hits += 1
            return path
        slot = self._slots.get(entry.id)
        if slot is not None:
            self._advance(slot.index)
            while not slot.done.is_set() and not self.unreachable and not self.closed:
                await self._changed.wait()
            data, slot.data = slot.data, None
            if data is not None or slot.failed or not slot.done.is_set():
                self.missing += data is None
                return data
        # Not planned (its index said no rows were needed, it was local, or it looked prunable), or its
        # bytes were handed out already: fetch it now.
        slot = _Slot(-1, source)
        with self._guard():
            await self._fetch(slot)
        self.missing += slot.data is None
        return slot.data

    def _advance(self, index: int) -> None:
        """The executor reached planned block ``index``: fetch further ahead.

        The executor may ask out of order (an aggregation scans blocks on several threads), so blocks it
        passed keep their bytes until asked for or the query ends (at most ``in_flight`` ahead)."""
        if index + 1 <= self._next:
            return
        self._next = index + 1
        self._moved.set()
        self._moved = trio.Event()

    async def _make_plan(self) -> None:
        """The blocks to fetch ahead: those whose rows ``wanted`` says the query needs (indexes known now).

        Asked in a worker thread: answering from an index may decode its postings."""
        wanted, candidates = self._wanted, self._candidates
        plan = candidates if wanted is None or not candidates else await self.blocks.engine._run_sync(
            lambda: [s for s in candidates if wanted(s)])
        self._slots = {s.block.id: _Slot(i, s) for i, s in enumerate(plan)}  # type: ignore[union-attr]
        self._plan = list(self._slots.values())

    async def _load_indexes(self) -> None:
        """Fetch the index sections the query wants and memory lacks, ``2 × in_flight`` at once."""
        if self._index_wanted is None:
            return
        cache = self.blocks.engine.cache
        todo = [s for s in self._candidates if s.block.index_bytes  # type: ignore[union-attr]
                and cache.known_index(s.block.id) is None and self._index_wanted(s)]  # type: ignore[union-attr]
        if not todo:
            return
        limiter = trio.Semaphore(2 * self.in_flight)
        with self._guard():
            async with trio.open_nursery() as nursery:
                for source in todo:
                    await limiter.acquire()
                    nursery.start_soon(self._index_one, source, limiter)

    async def _index_one(self, source: Source, limiter: trio.Semaphore) -> None:
        entry = source.block
        assert entry is not None
        key = (source.dataset, source.day)
        try:
            if await self._attempt(key, entry, lambda: self.blocks.fetch_index(key, entry)) is not None:
                self.indexes_fetched += 1
        finally:
            limiter.release()

    async def _prefetch(self) -> None:
        """Fetch the planned blocks in order, ``in_flight`` at once, at most that far ahead of the executor."""
        limiter = trio.Semaphore(self.in_flight)
        with self._guard():
            async with trio.open_nursery() as nursery:
                for slot in self._plan:
                    while slot.index >= self._next + self.in_flight:
                        await self._moved.wait()
                    if self.unreachable:
                        return
                    await limiter.acquire()
                    nursery.start_soon(self._fetch_one, slot, limiter)

    async def _fetch_one(self, slot: _Slot, limiter: trio.Semaphore) -> None:
        try:
            await self._fetch(slot)
        finally:
            limiter.release()

    async def _fetch(self, slot: _Slot) -> None:
        """Fill ``slot`` with the block's bytes (None if it cannot be had within the deadline); set it done."""
        source = slot.source
        entry = source.block
        assert entry is not None
        key = (source.dataset, source.day)
        try:
            slot.data = await self._attempt(key, entry, lambda: self.blocks.read(key, entry))
            self.fetched += slot.data is not None
        finally:
            slot.failed = slot.data is None
            slot.done.set()
            self._wake()

    async def _attempt(self, key: tuple[str, int], entry: BlockEntry,
                       action: Callable[[], Awaitable[T]]) -> T | None:
        """``action()`` (a fetch of the block or of its index) within the deadline; None if it failed."""
        if self.unreachable or self.closed:
            return None
        try:
            with trio.move_on_after(self.deadline_s):
                return await action()
            self._give_up(f"no answer within {self.deadline_s:g} s")
        except Unavailable as exc:
            self._give_up(str(exc))
        except NotFound:
            # The manifest this node holds is stale (compaction replaced the block and it was collected):
            # have the puller sync the partition; the rows are in the block that replaced it.
            self.blocks.on_gone(key)
            log.log(_log, logging.INFO, "a block is gone from the store; re-syncing its partition",
                    block=entry.id, dataset=key[0])
        except Corrupt as exc:
            self.blocks.engine.health.quarantine("fetch", exc.key, exc.reason)
        except (StoreError, OSError, CorruptBlock) as exc:
            log.log(_log, logging.DEBUG, "could not fetch a block", key=block_key(key, entry.id), error=str(exc))
        return None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A scope for fetches that giving up on the store, or the end of the query, cancels."""
        scope = trio.CancelScope()
        if self.unreachable or self.closed:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)

    def _give_up(self, why: str) -> None:
        """The store is unreachable for this query: cancel what is under way; the rest is missing."""
        if not self.unreachable:
            self.unreachable = True
            for scope in self._scopes:
                scope.cancel()
            log.log(_log, logging.INFO, "a query answers without the shared store", reason=why)
        self._wake()

    def close(self) -> None:
        """The query is over: cancel the fetches under way; readers still asking get None."""
        self.closed = True
        for scope in self._scopes:
            scope.cancel()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def query_blocks(blocks: LocalBlocks, sources: list[Source], *, start_ns: int | None = None,
                       end_ns: int | None = None, wanted: Callable[[Source], bool] | None = None,
                       index_wanted: Callable[[Source], bool] | None = None,
                       in_flight: int = DEFAULT_IN_FLIGHT,
                       deadline_s: float = DEFAULT_DEADLINE_S) -> AsyncIterator[QueryBlocks]:
    """Hold ``sources`` for one query and fetch what it needs (see the module docstring).

    ``index_wanted(source)``: fetch the block's index section first if memory lacks it (None: never);
    ``wanted(source)``: the query needs the block's rows (None: every block), asked once indexes are in."""
    session = QueryBlocks(blocks, sources, start_ns=start_ns, end_ns=end_ns, wanted=wanted,
                          index_wanted=index_wanted, in_flight=in_flight, deadline_s=deadline_s)
    blocks.engine.acquire(sources)  # garbage collection and eviction keep these files until the query is done
    try:
        async with trio.open_nursery() as nursery:
            try:
                if blocks.store is not None:
                    await session._load_indexes()
                await session._make_plan()
                if session._plan and blocks.store is not None:
                    nursery.start_soon(session._prefetch)
                yield session
            finally:
                session.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the query raised (CorruptBlock, a deadline, ...): callers catch it as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        blocks.engine.release(sources)

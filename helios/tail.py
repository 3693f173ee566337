"""Live tail: rows as they arrive on this node, to every open stream whose query matches, once each.

Where rows come from, and the once-per-stream rule::

    Engine.on_ingest(dataset, table)        every acknowledged request, right after its WAL commit
    Replicator.on_pulled(dataset, day, blocks)   blocks a pull just added to a local manifest

A row enters a node exactly once through one of these: its own node's
ingest (the WAL commit that acknowledges it), or, on every other node, the
pull that first brings the block its writer flushed it into. So the hub takes
every ingested table, and of pulled blocks only those that are **neither this
node's own** (their rows came through ingest here) **nor compaction outputs**
(``blocks.is_compacted``: they only re-hold rows of earlier blocks). A
flush moves rows from the memtable to a block without publishing anything;
a compaction output, local or pulled, is never published; a block id enters
a manifest once (pulls apply under the partition lock and publish only the
ids that were not there before). Known gap: a peer's block compacted away
before this node pulled it (a pull more than a compaction interval late) is
seen only as the compaction output, so its rows are not tailed.

Backfill and live rows meet at an exact cut: a stream is opened and the
backfill's sources are snapshotted in one synchronous step, and every
published item carries a sequence number, so a stream gets exactly the
items published after it opened (both hooks are called in the step that
makes their rows visible to queries).

Bounds, and who waits for whom: publishing appends a reference to an inbox
(``INBOX_ROWS``; beyond it rows are dropped and counted for every stream that
wanted them) and never blocks ingest or pull. One dispatcher task matches
items against every stream's query in a worker thread and appends the rows
as server-sent events to each stream's buffer (``buffer_rows``); a stream
whose reader is slow fills its buffer, and further rows are dropped and
reported to it as ``event: dropped`` with their count, in place, once it
reads again. At most ``max_streams`` streams are open on a node.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import trio

from backends import StoreError
from helios import log
from helios.errors import Unavailable
from helios.query import ast
from helios.query.executor import QueryResult, to_rows
from helios.query.filters import mask
from helios.query.pipes import apply
from helios.storage.blocks import BlockEntry, CorruptBlock, is_compacted, load_block
from helios.storage.engine import Engine

__all__ = ["KEEPALIVE_S", "Stream", "TailHub"]

KEEPALIVE_S = 15.0
INBOX_ROWS = 1_000_000  # rows published and not yet matched, across all streams
SEND_BATCH = 500  # events written at once
UNSTARTED_S = 30.0  # a stream whose response never started (client gone first) is closed after this
_log = log.get("helios.tail")


@dataclass(frozen=True)
class _Item:
    seq: int
    dataset: str
    rows: int
    table: pa.Table | None = None
    day: int | None = None  # with ``block``: the partition it was pulled into
    block: BlockEntry | None = None


class _Dropped:
    """A gap in a stream's buffer: this many rows were not kept."""

    def __init__(self, count: int) -> None:
        self.count = count


class Stream:
    """One open tail: its query, its buffer of events, its place in the sequence of items."""

    def __init__(self, query: ast.Query, datasets: set[str] | None, since_seq: int, buffer_rows: int,
                 opened_at: float) -> None:
        self.query = query
        self.datasets = datasets
        self.since_seq = since_seq  # items numbered from here on are this stream's
        self.buffer_rows = buffer_rows
        self.buffer: deque[bytes | _Dropped] = deque()
        self.buffered = 0  # rows in the buffer (not counting gaps)
        self.wake = trio.Event()
        self.closed = False
        self.started = False
        self.opened_at = opened_at

    def wants(self, item: _Item) -> bool:
        return item.seq >= self.since_seq and (self.datasets is None or item.dataset in self.datasets)

    def offer(self, events: list[bytes]) -> int:
        """Buffer what fits; the rest becomes a gap. Returns how many were dropped."""
        room = max(0, self.buffer_rows - self.buffered)
        kept = events[:room]
        self.buffer.extend(kept)
        self.buffered += len(kept)
        dropped = len(events) - len(kept)
        if dropped:
            self.lose(dropped)
        elif kept:
            self.wake.set()
        return dropped

    def lose(self, count: int) -> None:
        last = self.buffer[-1] if self.buffer else None
        if isinstance(last, _Dropped):
            last.count += count
        else:
            self.buffer.append(_Dropped(count))
        self.wake.set()


class TailHub:
    def __init__(self, engine: Engine, node_id: str, *, max_streams: int, buffer_rows: int,
                 inbox_rows: int = INBOX_ROWS) -> None:
        self.engine = engine
        self.node_id = node_id
        self.max_streams = max_streams
        self.buffer_rows = buffer_rows
        self.inbox_rows = inbox_rows
        self.streams: set[Stream] = set()
        self.stats: Counter[str] = Counter()
        self._inbox: deque[_Item] = deque()
        self._queued_rows = 0
        self._seq = 0
        self._wake = trio.Event()
        self._closing = False

    # -- producers: synchronous, never block, never raise ------------------------

    def publish(self, dataset: str, table: pa.Table) -> None:
        """``Engine.on_ingest``: rows this node acknowledged."""
        if self.streams and table.num_rows:
            self._push(dataset, table.num_rows, table=table)

    def publish_blocks(self, dataset: str, day: int, blocks: list[BlockEntry]) -> None:
        """``Replicator.on_pulled``: of the blocks a pull added, the peers' fresh ones."""
        if not self.streams:
            return
        for block in blocks:
            if block.node != self.node_id and not is_compacted(block.id):
                self._push(dataset, block.rows, day=day, block=block)

    def _push(self, dataset: str, rows: int, **source: Any) -> None:
        self._seq += 1
        item = _Item(self._seq, dataset, rows, **source)
        if self._queued_rows + rows > self.inbox_rows:  # matching cannot keep up: count, never wait
            for stream in self.streams:
                if stream.wants(item):
                    stream.lose(rows)
                    self.stats["dropped"] += rows
            return
        self._inbox.append(item)
        self._queued_rows += rows
        self._wake.set()

    # -- streams -----------------------------------------------------------------

    def open(self, query: ast.Query, datasets: set[str] | None) -> Stream:
        """A new stream, receiving every item published from now on (``Unavailable`` when full)."""
        if self._closing:
            raise Unavailable("the node is shutting down")
        if len(self.streams) >= self.max_streams:
            self.stats["refused"] += 1
            raise Unavailable(f"{self.max_streams} live tails are open on this node, the most it serves; "
                              "close one or try another node")
        stream = Stream(query, datasets, self._seq + 1, self.buffer_rows, trio.current_time())
        self.streams.add(stream)
        self.stats["opened"] += 1
        return stream

    def close(self, stream: Stream) -> None:
        stream.closed = True
        stream.wake.set()
        self.streams.discard(stream)

    def close_all(self) -> None:
        """Shutdown: every stream ends (its response completes) and no new one opens."""
        self._closing = True
        for stream in list(self.streams):
            self.close(stream)

    # -- the dispatcher ----------------------------------------------------------

    async def dispatch(self) -> None:
        """Match what was published against the streams; runs under ``supervise`` (``helios.node``)."""
        with trio.move_on_after(UNSTARTED_S / 3):
            await self._wake.wait()
        self._wake = trio.Event()
        now = trio.current_time()
        for stream in [s for s in self.streams if not s.started and now - s.opened_at > UNSTARTED_S]:
            self.close(stream)  # its response never started: the client went away first
        while self._inbox:
            item = self._inbox.popleft()
            self._queued_rows -= item.rows
            streams = [s for s in self.streams if s.wants(item)]
            if not streams:
                continue
            try:
                data = None
                if item.block is not None:  # a peer's block: local, or fetched now (metadata only is pulled)
                    assert item.day is not None
                    data = await self.engine.blocks.read((item.dataset, item.day), item.block)
                matched = await trio.to_thread.run_sync(self._match, item, [s.query for s in streams], data)
            except (OSError, CorruptBlock, StoreError) as exc:  # a pulled block gone or damaged: rows lost here
                log.log(_log, logging.WARNING, "live tail could not read a pulled block", error=str(exc),
                        block=item.block.id if item.block else None)
                for stream in streams:
                    stream.lose(item.rows)
                self.stats["dropped"] += item.rows * len(streams)
                continue
            for stream, events in zip(streams, matched):
                if events is None:
                    self.close(stream)
                elif not stream.closed:
                    self.stats["dropped"] += stream.offer(events)

    def _match(self, item: _Item, queries: list[ast.Query],
               data: bytes | None) -> list[list[bytes] | None]:
        """Each query's matching rows of the item as ``data: {row}`` events, oldest first (worker
        thread), or None for a query that failed; ``data``: a pulled block's bytes (verified against
        its manifest entry here)."""
        if item.table is not None:
            table = item.table
        else:
            assert data is not None and item.block is not None
            table = load_block(data, item.block)
        order = pc.sort_indices(table, sort_keys=[("_time", "ascending")])
        table = table.take(order)
        out: list[list[bytes] | None] = []
        for query in queries:
            try:
                out.append(_events(table, query, item.dataset))
            except Exception as exc:  # noqa: BLE001 -- a bug this stream's query hit
                # One user's query must not end the node (nor the other streams): its stream ends.
                _log.error("a live tail's query failed on a bug; its stream is closed",
                           exc_info=exc)
                out.append(None)
        return out

    def metrics_lines(self) -> list[str]:
        return ["# TYPE helios_tail_streams gauge", f"helios_tail_streams {len(self.streams)}",
                "# TYPE helios_tail_streams_max gauge", f"helios_tail_streams_max {self.max_streams}",
                "# TYPE helios_tail_streams_opened_total counter",
                f"helios_tail_streams_opened_total {self.stats['opened']}",
                "# TYPE helios_tail_streams_refused_total counter",
                f"helios_tail_streams_refused_total {self.stats['refused']}",
                "# TYPE helios_tail_rows_sent_total counter", f"helios_tail_rows_sent_total {self.stats['sent']}",
                "# TYPE helios_tail_rows_dropped_total counter",
                f"helios_tail_rows_dropped_total {self.stats['dropped']}"]


class StreamBody:
    """The response body of one stream: backfill, then live events, gaps and keep-alives, until closed.

    ``aclose`` (called by the server when the response ends, the client
    disconnects or the request is cancelled) closes the stream, whether or
    not its first event was ever sent.
    """

    def __init__(self, hub: TailHub, stream: Stream, backfill: list[bytes]) -> None:
        self.hub = hub
        self.stream = stream
        self._events = self._generate(backfill)

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        self.stream.started = True
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self.hub.close(self.stream)

    async def _generate(self, backfill: list[bytes]) -> AsyncIterator[bytes]:
        stream, stats = self.stream, self.hub.stats
        yield b": helios live tail\n\n"
        for start in range(0, len(backfill), SEND_BATCH):
            chunk = backfill[start : start + SEND_BATCH]
            stats["sent"] += len(chunk)
            yield b"".join(chunk)
        while True:
            chunk_events: list[bytes] = []
            while stream.buffer and len(chunk_events) < SEND_BATCH:
                head = stream.buffer[0]
                if isinstance(head, _Dropped):
                    if chunk_events:
                        break  # send the rows before the gap first
                    stream.buffer.popleft()
                    chunk_events.append(b"event: dropped\ndata: " + orjson.dumps({"dropped": head.count}) + b"\n\n")
                    break
                stream.buffer.popleft()
                stream.buffered -= 1
                chunk_events.append(head)
            if chunk_events:
                stats["sent"] += sum(1 for e in chunk_events if e.startswith(b"data:"))
                yield b"".join(chunk_events)
                continue
            if stream.closed:
                return
            stream.wake = trio.Event()
            with trio.move_on_after(KEEPALIVE_S) as idle:
                await stream.wake.wait()
            if idle.cancelled_caught:
                yield b": keep-alive\n\n"


def _events(table: pa.Table, query: ast.Query, dataset: str) -> list[bytes]:
    """The rows of ``table`` (one dataset's, oldest first) that ``query`` keeps, as SSE events."""
    part = table.filter(mask(query.filter, table, dataset))
    if part.num_rows == 0:
        return []
    part = part.append_column("dataset", pa.repeat(dataset, part.num_rows))
    for pipe in query.pipes:
        part = apply(pipe, part)
    return [b"data: " + orjson.dumps(row) + b"\n\n" for row in to_rows(QueryResult(part, False))]

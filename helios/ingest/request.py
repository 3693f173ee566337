"""The one way an ingest body becomes a table: limits, memory budget, decoding, parsing.

Every HTTP ingest path calls this (the NDJSON/text endpoint with ``read``;
OTLP, Loki and Elasticsearch bulk with ``read_with``), so each limit holds for all::

    reader = BodyReader.from_config(config)          # once per node: limits + the shared budget
    async with reader.read(body, encoding, text=..., now_ns=...,
                           prepare=partial(engine.prepare, dataset)) as batch:
        await engine.commit(batch)                    # the charges are held until this returns

Decoding, parsing and ``prepare`` (the WAL frame and memtable slices) run in
one worker thread, so the event loop does none of the Arrow work. What they make is charged to the
node's ingest memory budget as it is made; a request that would pass the budget
stops with 503 (retry) and one that passes its own limits with 413 or 400. The
charges for the table are returned when the ``async with`` block ends, after
the rows are durable and in the memtable.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, TypeVar

import pyarrow as pa
import trio

from helios.ingest.budget import MemoryBudget, Reservation
from helios.ingest.decode import decode_body
from helios.ingest.limits import IngestLimits, check_json_nesting
from helios.ingest.records import parse_ndjson, parse_text

__all__ = ["BodyReader"]

T = TypeVar("T")


@dataclass
class BodyReader:
    limits: IngestLimits
    budget: MemoryBudget

    @classmethod
    def from_config(cls, config: Any) -> BodyReader:
        return cls(IngestLimits.from_config(config), MemoryBudget(config.ingest_memory_bytes))

    @asynccontextmanager
    async def read(self, body: bytes, encoding: str | None, *, text: bool, now_ns: int,
                   prepare: Callable[[pa.Table], T]) -> AsyncIterator[T]:
        """Decode and parse ``body`` (NDJSON, or one message a line when ``text``) within limits,
        then ``prepare`` the table, all in one worker thread; ``prepare``'s result is yielded."""
        def work(reservation: Reservation) -> T:
            return prepare(self._decode_and_parse(body, encoding, text, now_ns, reservation))

        with self.budget.reservation() as reservation:
            yield await trio.to_thread.run_sync(work, reservation)

    @asynccontextmanager
    async def read_with(self, body: bytes, encoding: str | None, parse: Callable[[bytes], T], *,
                        json_depth: int | None, size: Callable[[T], int]) -> AsyncIterator[T]:
        """Another protocol's body (OTLP, Loki, Elasticsearch bulk): the same limits and budget.

        Decoded within the limit and charged to the budget; a JSON body passes
        the nesting guard (``json_depth``: the protocol's envelope plus
        ``HELIOS_MAX_NESTING_DEPTH`` levels of record) before ``parse`` sees
        it; what ``parse`` returns is
        charged (``size``) until the block ends, after the rows are durable.
        """
        def work(reservation: Reservation) -> T:
            decoded = decode_body(body, encoding, self.limits.max_decoded_bytes, reservation)
            decoded_charge = 0 if decoded is body else len(decoded)
            if json_depth is not None:
                check_json_nesting(decoded, json_depth)
            result = parse(bytes(decoded) if not isinstance(decoded, bytes) else decoded)
            del decoded
            reservation.charge(size(result))
            reservation.refund(decoded_charge)
            return result

        with self.budget.reservation() as reservation:
            yield await trio.to_thread.run_sync(work, reservation)

    def _decode_and_parse(self, body: bytes, encoding: str | None, text: bool, now_ns: int,
                          reservation: Reservation) -> pa.Table:
        decoded = decode_body(body, encoding, self.limits.max_decoded_bytes, reservation)
        decoded_charge = 0 if decoded is body else len(decoded)
        parser = parse_text if text else parse_ndjson
        table = parser(decoded, now_ns, self.limits, reservation)
        del decoded
        reservation.refund(decoded_charge)  # the decoded body is dropped; the table is what is held
        return table

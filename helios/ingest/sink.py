"""The batching sink of the socket listeners (syslog, Fluent forward), and their drop log.

Protocols that acknowledge nothing (syslog, forward without ``chunk``) hand
rows to a ``Sink``: a bounded channel of messages drained by one task that
commits a batch to the WAL when it holds ``batch_rows`` rows or
``interval_s`` after its first message, whichever comes first. A full channel
makes TCP readers wait (backpressure reaches the sender); UDP, which cannot
wait, drops and counts. A batch that cannot become one table (too many
distinct fields) is retried message by message, and only the messages that
fail are dropped, logged and counted.

Every drop goes through ``DropLog``: counted in ``node.counters`` (seen in
``/metrics`` as ``helios_compat_dropped_total{protocol, reason}``) and logged
at most once per ``interval_s`` per reason, with the count since the last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable

import pyarrow as pa
import trio

from helios import log, timeutil
from helios.errors import HeliosError, InvalidInput
from helios.ingest import shipper

__all__ = ["DropLog", "Ingest", "Sink"]

Ingest = Callable[[str, pa.Table], Awaitable[int]]
_log = log.get("helios.ingest.sink")


class DropLog:
    """Count every drop; log each reason at most once per ``interval_s``."""

    def __init__(self, logger: logging.Logger, protocol: str, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.protocol = protocol
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._pending: Counter[str] = Counter()

    def drop(self, counters: Counter[str], reason: str, message: str, count: int = 1) -> None:
        shipper.count_drop(counters, self.protocol, reason, count)
        self._pending[reason] += count
        now = time.monotonic()
        if now - self._last.get(reason, -self.interval_s) >= self.interval_s:
            log.log(self.logger, logging.WARNING, f"{self.protocol}: dropped: {message}", reason=reason,
                    dropped=self._pending.pop(reason))
            self._last[reason] = now


class Sink:
    """Batches ``(dataset, rows)`` messages into WAL commits; see the module docstring."""

    def __init__(self, ingest: Ingest, counters: Counter[str], protocol: str, *, batch_rows: int = 5000,
                 interval_s: float = 0.1, capacity: int = 256) -> None:
        self.ingest = ingest
        self.counters = counters
        self.protocol = protocol
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.drops = DropLog(_log, protocol)
        self._send, self._receive = trio.open_memory_channel[tuple[str, list[shipper.Row]]](capacity)

    async def put(self, dataset: str, rows: list[shipper.Row]) -> None:
        """Queue one message's rows, waiting while the sink is full."""
        if rows:
            await self._send.send((dataset, rows))

    def put_nowait(self, dataset: str, rows: list[shipper.Row]) -> bool:
        """Queue without waiting; False when the sink is full (the caller counts the drop)."""
        try:
            self._send.send_nowait((dataset, rows))
        except trio.WouldBlock:
            return False
        return True

    def close(self) -> None:
        """No more messages: ``run`` commits what is queued and returns."""
        self._send.close()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            ended = False
            while not ended:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    return
                rows = len(batch[0][1])
                with trio.move_on_after(self.interval_s):
                    while rows < self.batch_rows:
                        try:
                            item = await self._receive.receive()
                        except trio.EndOfChannel:
                            ended = True
                            break
                        batch.append(item)
                        rows += len(item[1])
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[str, list[shipper.Row]]]) -> None:
        now = timeutil.now_ns()
        by_dataset: dict[str, list[list[shipper.Row]]] = {}
        for dataset, rows in batch:
            by_dataset.setdefault(dataset, []).append(rows)

        def build() -> tuple[list[tuple[str, pa.Table]], list[str]]:
            tables: list[tuple[str, pa.Table]] = []
            failures: list[str] = []
            for dataset, messages in by_dataset.items():
                try:
                    tables.append((dataset, shipper.to_table([r for m in messages for r in m], now)))
                    continue
                except Exception:  # noqa: BLE001 - a listener must not stop on one message; found below
                    pass
                for rows in messages:  # find the messages that cannot be stored, keep the rest
                    try:
                        tables.append((dataset, shipper.to_table(rows, now)))
                    except InvalidInput as exc:
                        failures.append(str(exc))
                    except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, not fatal
                        _log.error("could not build a table from listener rows", exc_info=exc)
                        failures.append(f"internal error: {exc!r}")
            return tables, failures

        tables, failures = await trio.to_thread.run_sync(build)
        if failures:
            self.drops.drop(self.counters, "invalid", failures[0], len(failures))
        for dataset, table in tables:
            try:
                count = await self.ingest(dataset, table)
            except HeliosError as exc:  # an operating error (disk, shutdown): nothing acknowledged these rows
                self.drops.drop(self.counters, "store_error", str(exc), table.num_rows)
                continue
            shipper.count_rows(self.counters, self.protocol, count)

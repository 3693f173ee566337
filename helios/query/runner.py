"""Queries run in their own bounded set of worker threads, each under a deadline, and can be stopped.

    QueryPool.run(work)
      wait for a slot            at most ``queue_s``; then Overloaded (429)
      worker thread: work(token)   the deadline clock starts when the slot is taken
        ├─ finishes               → its result
        ├─ deadline passes        → DeadlineExceeded (503), the thread stops at its next check
        ├─ client goes away       → trio.Cancelled propagates, the thread stops at its next check
        └─ node shuts down        → Unavailable (503), the thread stops at its next check

Queries never use trio's default thread limiter, so however many are
running, ingest parsing, WAL writes and logins keep their threads. A
stopped query's thread is abandoned at once (``abandon_on_cancel=True``):
neither the answer nor the shutdown waits for it; it keeps its slot until
it reaches its next ``check()`` and ends (one filter term or one block of
work later).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, TypeVar

import trio

from helios.errors import DeadlineExceeded, Overloaded, Unavailable
from helios.query.cancel import CLIENT_GONE, DEADLINE, SHUTDOWN, CancelToken, QueryCancelled

__all__ = ["QueryPool"]

T = TypeVar("T")


class _Admission:
    """A limiter for ``trio.to_thread.run_sync``: waits a bounded time for a slot, then starts the deadline."""

    def __init__(self, limiter: trio.CapacityLimiter, pool: QueryPool, scope: trio.CancelScope) -> None:
        self._limiter, self._pool, self._scope = limiter, pool, scope

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        self._pool.counters["waiting"] += 1
        try:
            with trio.move_on_after(self._pool.queue_s):
                await self._limiter.acquire_on_behalf_of(borrower)
                self._scope.deadline = trio.current_time() + self._pool.deadline_s
                return
        finally:
            self._pool.counters["waiting"] -= 1
        self._pool.counters["rejected_busy"] += 1
        raise Overloaded(f"{self._pool.max_concurrent} queries are running (HELIOS_MAX_CONCURRENT_QUERIES) and "
                         f"none finished within {self._pool.queue_s:g} s (HELIOS_QUERY_QUEUE_SECS); "
                         "retry shortly")

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(borrower)


class QueryPool:
    def __init__(self, *, max_concurrent: int, queue_s: float, deadline_s: float) -> None:
        self.max_concurrent = max_concurrent
        self.queue_s = queue_s
        self.deadline_s = deadline_s
        self.counters: Counter[str] = Counter()
        self._limiter = trio.CapacityLimiter(max_concurrent)
        # Threads that encode the rest of large answers as their clients read them (api/query.py): not
        # trio's default limiter, which ingest uses.
        self.encoders = trio.CapacityLimiter(max_concurrent)
        self._running: dict[CancelToken, trio.CancelScope] = {}
        self._closing = False

    @property
    def threads_busy(self) -> int:
        """Worker threads holding a slot, including stopped ones that have not reached a check yet."""
        return int(self._limiter.borrowed_tokens)

    def close(self) -> None:
        """Shutdown: stop every running query now and refuse new ones."""
        self._closing = True
        for token, scope in list(self._running.items()):
            token.cancel(SHUTDOWN)
            scope.cancel()

    async def run(self, work: Callable[[CancelToken], T]) -> T:
        """``work(token)`` in a query worker thread; ``work`` must call ``token.check()`` often."""
        if self._closing:
            raise Unavailable("the node is shutting down; it takes no new queries")
        token = CancelToken(self.deadline_s)

        def in_thread() -> T:
            token.start()
            return work(token)

        with trio.CancelScope() as scope:
            self._running[token] = scope
            self.counters["running"] += 1
            try:
                return await trio.to_thread.run_sync(in_thread, abandon_on_cancel=True,
                                                     limiter=_Admission(self._limiter, self, scope))  # type: ignore[arg-type]
            except QueryCancelled:  # the worker saw its own deadline first
                pass
            except trio.Cancelled:
                token.cancel(SHUTDOWN if self._closing else DEADLINE if scope.cancel_called else CLIENT_GONE)
                if token.reason == CLIENT_GONE:
                    self.counters["cancelled_client_gone"] += 1
                raise
            finally:
                self.counters["running"] -= 1
                del self._running[token]
        if token.reason == SHUTDOWN:
            raise Unavailable("the node is shutting down; the query was stopped")
        token.cancel(DEADLINE)
        self.counters["stopped_deadline"] += 1
        raise DeadlineExceeded(f"the query ran longer than its deadline of {self.deadline_s:g} s "
                               "(HELIOS_QUERY_TIMEOUT_SECS) and was stopped; narrow its time range, "
                               "datasets or filter")

    def metrics_lines(self) -> list[str]:
        c = self.counters
        return [
            "# TYPE helios_queries_running gauge", f"helios_queries_running {c['running'] - c['waiting']}",
            "# TYPE helios_queries_waiting gauge", f"helios_queries_waiting {c['waiting']}",
            "# TYPE helios_query_threads_busy gauge", f"helios_query_threads_busy {self.threads_busy}",
            "# TYPE helios_queries_stopped_total counter",
            f'helios_queries_stopped_total{{reason="deadline"}} {c["stopped_deadline"]}',
            f'helios_queries_stopped_total{{reason="client_gone"}} {c["cancelled_client_gone"]}',
            "# TYPE helios_queries_rejected_total counter",
            f'helios_queries_rejected_total{{reason="busy"}} {c["rejected_busy"]}',
            "# TYPE helios_query_answers_streaming gauge", f"helios_query_answers_streaming {c['streaming']}",
        ]

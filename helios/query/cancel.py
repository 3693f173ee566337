"""Cooperative cancellation of a query running in a worker thread.

The trio side owns a ``CancelToken`` and may ``cancel(reason)`` it at any
moment (deadline, client gone, shutdown); the worker calls ``check()``
between units of work (sources, filter terms, result chunks) and stops with
``QueryCancelled`` at the first check after that. The token also carries
the query's own deadline, measured in the worker from ``start()``, so a
worker whose trio task was abandoned still stops on time by itself.

Reading and writing one attribute is atomic under the GIL, so the token
needs no lock: the worst case is one more unit of work before the stop.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["CLIENT_GONE", "DEADLINE", "SHUTDOWN", "CancelToken", "Check", "QueryCancelled", "never"]

DEADLINE = "deadline"
CLIENT_GONE = "client gone"
SHUTDOWN = "shutdown"

Check = Callable[[], None]  # raises QueryCancelled when the query must stop


class QueryCancelled(Exception):
    """Raised in the worker at a check after the token was cancelled or its deadline passed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"query stopped: {reason}")
        self.reason = reason


class CancelToken:
    def __init__(self, deadline_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_s = deadline_s
        self.reason: str | None = None
        self._clock = clock
        self._deadline: float | None = None

    def start(self) -> None:
        """Start the deadline clock (called by the worker when it begins)."""
        if self.deadline_s is not None:
            self._deadline = self._clock() + self.deadline_s

    def cancel(self, reason: str) -> None:
        """Ask the worker to stop; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        """Raise ``QueryCancelled`` if the query must stop now."""
        if self.reason is not None:
            raise QueryCancelled(self.reason)
        if self._deadline is not None and self._clock() > self._deadline:
            self.cancel(DEADLINE)
            raise QueryCancelled(DEADLINE)


def never() -> None:
    """A check that never stops (for callers without a token)."""

"""One memory budget shared by every ingest request that is decoding or parsing.

A request charges the bytes it makes as it makes them: its decoded body (as
the decoder produces it) and its parsed tables (as each piece is parsed). A
charge the budget cannot cover fails at once with ``Unavailable`` (503, retry
later): the request stops, drops what it made and returns its charges. Charges
never wait, so two requests can never hold half the budget each and wait for
each other. A request keeps its charges until its rows are durable (the WAL
has them and the memtable holds them), then releases all at once.

The per-request limits (``IngestLimits``) keep any single request well under
the budget (checked when the configuration is loaded), so a request alone on
the node always fits; the budget bounds how many large requests run at once.

Thread-safe: charges come from worker threads, releases from the event loop.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol

from helios.errors import Unavailable

__all__ = ["FREE", "MemoryBudget", "Meter", "Reservation"]


class Meter(Protocol):
    """Where a request charges the memory it makes (a ``Reservation``, or ``FREE``)."""

    def charge(self, nbytes: int) -> None: ...

    def refund(self, nbytes: int) -> None: ...


class _Free:
    """Charges nothing: for callers outside a request (tests, the fuzzer, replay)."""

    def charge(self, nbytes: int) -> None:
        return None

    def refund(self, nbytes: int) -> None:
        return None


FREE: Meter = _Free()


class MemoryBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._used = 0
        self._lock = threading.Lock()
        self.refusals = 0  # charges refused since start (for /metrics and tests)

    @property
    def used_bytes(self) -> int:
        return self._used

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, nbytes: int) -> None:
        with self._lock:
            if self._used + nbytes > self.total_bytes:
                self.refusals += 1
                raise Unavailable(
                    f"the node is decoding and parsing other large requests (ingest memory budget "
                    f"of {self.total_bytes} bytes in use, HELIOS_INGEST_MEMORY_BYTES); retry shortly")
            self._used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            assert self._used >= 0, "the ingest memory budget returned more than it lent"


class Reservation:
    """One request's charges; a context manager that releases them all on exit."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._held

    def charge(self, nbytes: int) -> None:
        """Take ``nbytes`` more from the budget, or raise ``Unavailable`` (nothing taken)."""
        if nbytes <= 0:
            return
        with self._lock:
            self._budget._take(nbytes)
            self._held += nbytes

    def refund(self, nbytes: int) -> None:
        """Give back part of what this request holds (memory it has dropped)."""
        with self._lock:
            nbytes = min(max(nbytes, 0), self._held)
            self._held -= nbytes
            self._budget._give(nbytes)

    def release(self) -> None:
        self.refund(self._held)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()

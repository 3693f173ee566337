"""Work that yields the CPU to requests: compaction's merges run at a lower CPU priority.

A merge re-reads blocks, tokenises their messages and writes a new block: seconds of CPU that
serve no waiting client. Run at the priority of a request, it takes its share of the cores from
ingest and queries; niced, it runs on what they leave idle and catches up when they pause
(ClickHouse's ``os_thread_priority`` for background merges is the same idea).

On Linux each thread has its own nice value (``setpriority`` on its thread id). A thread may
raise its nice value but, without ``CAP_SYS_NICE``, never lower it again: so the work gets a
thread of its own, which ends with it, never one of trio's cached worker threads (they go on to
serve requests). Elsewhere the work runs as it is.

A nice value alone does not keep a merge off a busy ingest's cores: ingest leaves gaps (each client
waits for its answer), the merge fills them, and the cores' caches, the memory bus and the GIL are
shared; under a two-client ingest of 10 M rows it still cost 12 % of the rate. So a ``Pacer`` also
holds niced work to a share of the time while ingest is busy: the work calls ``pace()`` between
its steps (a tokenised chunk, a copied row group), which sleeps long enough that the step's time
is ``share`` of the time since the last step. Ingest tells the pacer the rows of each commit
(``Pacer.busy``): ``BUSY_ROWS`` of them within a second make it busy (a trickle of small batches
does not), and a second later, without more, the work runs freely again.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Callable, TypeVar

__all__ = ["Pacer", "niced", "pace"]

T = TypeVar("T")
BUSY_WINDOW_S = 1.0  # ingest is busy this long after BUSY_ROWS rows came within this long
BUSY_ROWS = 10_000
MAX_PAUSE_S = 2.0  # one pause at most (a step is a fraction of a second; a stopping node waits)
_local = threading.local()  # the pacer of the niced thread, and when its last step ended


class Pacer:
    """When ingest last committed, and the share of the time niced work may take meanwhile."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a share of the time is in (0, 1], not {share}")
        self.share = share
        self.clock = clock
        self.busy_at = -math.inf
        self.paused_s = 0.0  # in all (helios_compaction_paused_seconds_total)
        self._counted_at = -math.inf  # rows committed since then (a window of BUSY_WINDOW_S)
        self._rows = 0

    def busy(self, rows: int) -> None:
        """``rows`` were committed: busy once ``BUSY_ROWS`` came within a window."""
        now = self.clock()
        if now - self._counted_at > BUSY_WINDOW_S:
            self._counted_at, self._rows = now, 0
        self._rows += rows
        if self._rows >= BUSY_ROWS:
            self.busy_at = now

    def pause_after(self, worked_s: float) -> float:
        """How long to sleep after a step of ``worked_s`` seconds: 0 unless ingest is busy."""
        if self.share >= 1 or self.clock() - self.busy_at > BUSY_WINDOW_S:
            return 0.0
        return min(MAX_PAUSE_S, worked_s * (1 - self.share) / self.share)


def pace() -> None:
    """Between two steps of niced work: sleep as its pacer says (elsewhere, nothing)."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    if pacer is None:
        return
    now = time.monotonic()
    pause = pacer.pause_after(now - _local.since)
    if pause > 0:
        time.sleep(pause)
        pacer.paused_s += pause
    _local.since = time.monotonic()


def niced(fn: Callable[[], T], nice: int, name: str = "helios-niced",
          pacer: Pacer | None = None) -> Callable[[], T]:
    """``fn`` as a blocking call that runs it in a new thread at nice value ``nice`` (0: as it is),
    paced by ``pacer`` (its ``pace()`` calls sleep while ingest is busy).

    Meant for ``trio.to_thread.run_sync``: the worker thread waits for the niced one. An exception
    of ``fn`` is raised to the caller. A platform or sandbox that refuses the priority runs ``fn``
    at the caller's."""
    if (nice == 0 or sys.platform != "linux") and pacer is None:
        return fn

    def call() -> T:
        outcome: list[tuple[bool, object]] = []

        def body() -> None:
            if nice and sys.platform == "linux":
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
                except OSError:
                    pass  # refused (seccomp, a sandbox): the work still runs
            _local.pacer, _local.since = pacer, time.monotonic()
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    return call

"""Work that yields the CPU to requests: compaction's merges run at a lower CPU priority.

A merge re-reads blocks, tokenises their messages and writes a new block: seconds of CPU that
serve no waiting client. Run at the priority of a request, it takes its share of the cores from
ingest and queries; niced, it runs on what they leave idle and catches up when they pause
(ClickHouse's ``os_thread_priority`` for background merges is the same idea).

On Linux each thread has its own nice value (``setpriority`` on its thread id). A thread may
raise its nice value but, without ``CAP_SYS_NICE``, never lower it again: so the work gets a
thread of its own, which ends with it, never one of trio's cached worker threads (they go on to
serve requests). Elsewhere the work runs as it is.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, TypeVar

__all__ = ["niced"]

T = TypeVar("T")


def niced(fn: Callable[[], T], nice: int, name: str = "helios-niced") -> Callable[[], T]:
    """``fn`` as a blocking call that runs it in a new thread at nice value ``nice`` (0: as it is).

    Meant for ``trio.to_thread.run_sync``: the worker thread waits for the niced one. An exception
    of ``fn`` is raised to the caller. A platform or sandbox that refuses the priority runs ``fn``
    at the caller's."""
    if nice == 0 or sys.platform != "linux":
        return fn

    def call() -> T:
        outcome: list[tuple[bool, object]] = []

        def body() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            except OSError:
                pass  # refused (seccomp, a sandbox): the work still runs
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

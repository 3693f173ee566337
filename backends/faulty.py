"""Wrappers that break a backend on purpose, for tests and the fuzzer.

- ``FaultyBackend``: seeded injected errors (before the operation: it does
  not land), latency, and lost answers (after a write landed the caller
  gets Unavailable anyway — the ambiguous case). For the fuzzer, also
  seeded scheduling points around every call (``reorder``: up to that many
  trio checkpoints before and after, so concurrent callers interleave in
  every order) and a ``Rendezvous`` that holds the creates of a group of
  tasks and releases them together (same-key contention at one instant).
- ``Rendezvous``: that gate.
- ``NonAtomicCreate``: a planted bug: create-if-absent done as
  check-then-put with a pause between, so concurrent creators can both
  "win". Race detectors must catch it (a negative control).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator

import trio

from backends.base import Backend, Conflict, NotFound, ObjectInfo, RequestCounters, Unavailable

__all__ = ["FaultyBackend", "NonAtomicCreate", "Passthrough", "Rendezvous"]


class Rendezvous:
    """Holds the creates of its member tasks until every member still running waits here; then
    releases them all at once (woken in one scheduler batch, in arrival order): the worst case for
    a compare-and-swap.

    A member is a task inside ``member()``; other tasks pass straight through. A member that
    finishes, fails or is cancelled leaves, which may complete the group. ``max_wait_s`` (trio
    time) bounds a wait in case a member never arrives (counted in ``timeouts``). Waiters park in a
    ``ParkingLot`` (first in, first out), not on an ``Event`` (a set: wake-up order by address),
    so a seeded run wakes them in the same order every time.
    """

    def __init__(self, *, max_wait_s: float = 60.0) -> None:
        self.max_wait_s = max_wait_s
        self._members: set[trio.lowlevel.Task] = set()
        self._waiting: dict[trio.lowlevel.Task, str] = {}  # task -> the key it creates
        self._lot = trio.lowlevel.ParkingLot()
        self.releases = 0        # releases of two or more creates together
        self.same_key = 0        # ... of which two or more created one key
        self.timeouts = 0

    @contextmanager
    def member(self) -> Iterator[None]:
        task = trio.lowlevel.current_task()
        self._members.add(task)
        try:
            yield
        finally:
            self._members.discard(task)
            self._waiting.pop(task, None)
            self._maybe_release()

    async def wait(self, key: str) -> None:
        task = trio.lowlevel.current_task()
        if task not in self._members:
            return
        self._waiting[task] = key
        if self._maybe_release():  # the last to arrive: goes with the others, in the next batch
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.move_on_after(self.max_wait_s) as scope:
                await self._lot.park()
            if scope.cancelled_caught:
                self.timeouts += 1
        finally:
            self._waiting.pop(task, None)

    def _maybe_release(self) -> bool:
        if not self._waiting or len(self._waiting) < len(self._members):
            return False
        if len(self._waiting) > 1:
            self.releases += 1
            keys = list(self._waiting.values())
            self.same_key += len(set(keys)) < len(keys)
        self._waiting = {}
        self._lot.unpark_all()
        return True


class FaultyBackend:
    def __init__(self, inner: Backend, *, seed: int, error_rate: float = 0.0, lost_answer_rate: float = 0.0,
                 max_latency_s: float = 0.0, reorder: int = 0, rendezvous: Rendezvous | None = None,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> None:
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.counters = RequestCounters()
        self.rng = random.Random(seed)
        self.error_rate = error_rate
        self.lost_answer_rate = lost_answer_rate
        self.max_latency_s = max_latency_s
        self.reorder = reorder
        self.rendezvous = rendezvous
        self._sleep = sleep
        self.enabled = True

    async def _yield(self) -> None:
        """A seeded number (0..reorder) of scheduling points: lets other tasks run here, or not."""
        if self.reorder:
            for _ in range(self.rng.randint(0, self.reorder)):
                await trio.lowlevel.checkpoint()

    async def _before(self, op: str) -> None:
        if not self.enabled:
            return
        if self.max_latency_s:
            await self._sleep(self.rng.uniform(0, self.max_latency_s))
        await self._yield()
        if self.rng.random() < self.error_rate:
            self.counters.add(f"injected_errors_{op}")
            raise Unavailable(f"injected error before {op}")

    async def _after(self, op: str, write: bool = True) -> None:
        if not self.enabled:
            return
        await self._yield()
        if write and self.rng.random() < self.lost_answer_rate:
            self.counters.add(f"lost_answers_{op}")
            raise Unavailable(f"injected: the {op} landed but its answer was lost")

    async def get(self, key: str) -> bytes:
        await self._before("get")
        data = await self.inner.get(key)
        await self._after("get", write=False)
        return data

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        await self._before("get_range")
        data = await self.inner.get_range(key, start, length)
        await self._after("get_range", write=False)
        return data

    async def put(self, key: str, data: bytes) -> None:
        await self._before("put")
        await self.inner.put(key, data)
        await self._after("put")

    async def create(self, key: str, data: bytes) -> None:
        if self.enabled and self.rendezvous is not None:
            await self.rendezvous.wait(key)
        await self._before("create")
        await self.inner.create(key, data)
        await self._after("create")

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        await self._before("list")
        found = await self.inner.list(prefix, start_after=start_after, limit=limit)
        await self._after("list", write=False)
        return found

    async def delete(self, key: str) -> None:
        await self._before("delete")
        await self.inner.delete(key)
        await self._after("delete")

    async def aclose(self) -> None:
        await self.inner.aclose()


class Passthrough:
    """A backend that hands every call to ``inner``: the base of wrappers that change one thing."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"{type(self).__name__.lower()}({inner.name})"
        self.counters = inner.counters

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self.inner.get_range(key, start, length)

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def create(self, key: str, data: bytes) -> None:
        await self.inner.create(key, data)

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def aclose(self) -> None:
        await self.inner.aclose()


class NonAtomicCreate(Passthrough):
    """A deliberately broken CAS: ``get`` then ``put``, with a pause between (a planted race)."""

    def __init__(self, inner: Backend, pause_s: float = 0.002) -> None:
        super().__init__(inner)
        self.pause_s = pause_s

    async def create(self, key: str, data: bytes) -> None:
        try:
            await self.inner.get(key)
        except NotFound:
            await trio.sleep(self.pause_s)
            await self.inner.put(key, data)
            return
        raise Conflict(key)

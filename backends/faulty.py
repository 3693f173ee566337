"""Wrappers that break a backend on purpose, for tests and the fuzzer.

- ``FaultyBackend``: seeded injected errors (before the operation: it does
  not land), latency, and lost answers (after a write landed the caller
  gets Unavailable anyway — the ambiguous case).
- ``NonAtomicCreate``: a planted bug: create-if-absent done as
  check-then-put with a pause between, so concurrent creators can both
  "win". Race detectors must catch it (a negative control).
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable

import trio

from backends.base import Backend, Conflict, NotFound, ObjectInfo, RequestCounters, Unavailable

__all__ = ["FaultyBackend", "NonAtomicCreate", "Passthrough"]


class FaultyBackend:
    def __init__(self, inner: Backend, *, seed: int, error_rate: float = 0.0, lost_answer_rate: float = 0.0,
                 max_latency_s: float = 0.0, sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> None:
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.counters = RequestCounters()
        self.rng = random.Random(seed)
        self.error_rate = error_rate
        self.lost_answer_rate = lost_answer_rate
        self.max_latency_s = max_latency_s
        self._sleep = sleep
        self.enabled = True

    async def _before(self, op: str) -> None:
        if not self.enabled:
            return
        if self.max_latency_s:
            await self._sleep(self.rng.uniform(0, self.max_latency_s))
        if self.rng.random() < self.error_rate:
            self.counters.add(f"injected_errors_{op}")
            raise Unavailable(f"injected error before {op}")

    def _after_write(self, op: str) -> None:
        if self.enabled and self.rng.random() < self.lost_answer_rate:
            self.counters.add(f"lost_answers_{op}")
            raise Unavailable(f"injected: the {op} landed but its answer was lost")

    async def get(self, key: str) -> bytes:
        await self._before("get")
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes) -> None:
        await self._before("put")
        await self.inner.put(key, data)
        self._after_write("put")

    async def create(self, key: str, data: bytes) -> None:
        await self._before("create")
        await self.inner.create(key, data)
        self._after_write("create")

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        await self._before("list")
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def delete(self, key: str) -> None:
        await self._before("delete")
        await self.inner.delete(key)
        self._after_write("delete")

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

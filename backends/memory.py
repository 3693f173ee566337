"""The in-memory backend: the executable reference of the contract, for fast simulation."""

from __future__ import annotations

import bisect

import trio

from backends.base import (Conflict, NotFound, ObjectInfo, RequestCounters, check_key, check_prefix, check_range)

__all__ = ["MemoryBackend"]


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._keys: list[str] = []  # sorted
        self.counters = RequestCounters()

    async def get(self, key: str) -> bytes:
        check_key(key)
        await trio.lowlevel.checkpoint()
        self.counters.add("GET")
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(key) from None

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        check_key(key)
        check_range(start, length)
        if length == 0:
            return b""
        await trio.lowlevel.checkpoint()
        self.counters.add("GET")
        try:
            return self.objects[key][start : start + length]
        except KeyError:
            raise NotFound(key) from None

    def _store(self, key: str, data: bytes) -> None:
        if key not in self.objects:
            bisect.insort(self._keys, key)
        self.objects[key] = bytes(data)

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        await trio.lowlevel.checkpoint()
        self.counters.add("PUT")
        self._store(key, data)

    async def create(self, key: str, data: bytes) -> None:
        check_key(key)
        await trio.lowlevel.checkpoint()
        self.counters.add("PUT")
        if key in self.objects:  # check and store with no checkpoint between: atomic
            self.counters.add("conflicts")
            raise Conflict(key)
        self._store(key, data)

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        check_prefix(prefix)
        await trio.lowlevel.checkpoint()
        self.counters.add("LIST")
        start = max(bisect.bisect_left(self._keys, prefix), bisect.bisect_right(self._keys, start_after))
        out = []
        for key in self._keys[start:]:
            if not key.startswith(prefix) or len(out) >= limit:
                break
            out.append(ObjectInfo(key, len(self.objects[key])))
        return out

    async def delete(self, key: str) -> None:
        check_key(key)
        await trio.lowlevel.checkpoint()
        self.counters.add("DELETE")
        if self.objects.pop(key, None) is not None:
            self._keys.remove(key)

    async def aclose(self) -> None:
        return None

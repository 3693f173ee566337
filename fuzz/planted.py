"""Planted bugs for the negative controls, and the seeded stand-ins a schedule passes through the seams.

Nothing here patches a production module: the simulation hands these to the
production classes through their constructor parameters (``clock``,
``run_sync``, ``token_hex``, ``commit``), or uses them in place of a
production class (a planted backend or lease is a subclass).

Planted bugs (each names the invariant it must be caught by, ``CAUGHT_BY``):

- ``non-atomic-cas``: create-if-absent done as check-then-put, with a 2 ms
  pause between, by a wrapper around the backend (``NonAtomicCreate``).
- ``racy-create``: the backend's *own* create done as check-then-store with
  no added delay, as a refactor could write it: on memory ``get`` then
  ``put`` (one scheduling point between), on fs an existence check and the
  write in two worker-thread calls, on S3 a GET then an unconditional PUT.
- ``racy-create-in-thread``: the same, but on fs the check and the write in
  one worker thread (the window is the tmp write, some 0.1 ms: only real
  threads overlapping in time can hit it); memory and S3 as ``racy-create``.
- ``lost-append``: a manifest commit that, after losing a race, re-applies
  its change to the blocks it read first, dropping the concurrent append.
- ``ignore-epoch``: leaders never step down and leader commits skip the
  epoch fence.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import trio

from backends.base import Backend, Conflict, NotFound
from backends.fs import FsBackend
from backends.memory import MemoryBackend
from helios.replication import shared
from helios.replication.lease import Lease

__all__ = ["BUGS", "CAUGHT_BY", "RacyFsBackend", "RacyFsThreadBackend", "RacyMemoryBackend", "SeededTokens",
           "StubbornLease", "blind_to_fences", "inline_threads", "lost_append_commit", "racy_s3_backend"]

BUGS = ("non-atomic-cas", "racy-create", "racy-create-in-thread", "lost-append", "ignore-epoch")
# The invariant each planted bug breaks (``Violation.invariant``): a control caught by another one
# would mean the harness no longer tests what it claims to.
CAUGHT_BY = {"non-atomic-cas": "compare-and-swap", "racy-create": "compare-and-swap",
             "racy-create-in-thread": "compare-and-swap", "lost-append": "no loss", "ignore-epoch": "leases"}


# -- racy-create: check-then-store inside the backend's own create, no added delay -------------


class RacyMemoryBackend(MemoryBackend):
    """Planted: create through the backend's own ``get`` then ``put`` (a scheduling point between)."""

    async def create(self, key: str, data: bytes) -> None:
        try:
            await self.get(key)
        except NotFound:
            await self.put(key, data)
            return
        self.counters.add("conflicts")
        raise Conflict(key)


class RacyFsBackend(FsBackend):
    """Planted: an existence check, then a plain put (two worker-thread calls, nothing added between)."""

    async def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if await self._run(path.exists):
            self.counters.add("conflicts")
            raise Conflict(key)
        await self.put(key, data)


class RacyFsThreadBackend(FsBackend):
    """Planted: an existence check, then a plain put, in one worker thread."""

    def _create(self, path: Path, data: bytes) -> None:
        if path.exists():
            self.counters.add("conflicts")
            raise Conflict(str(path))
        self._put(path, data)


def racy_s3_backend() -> type:
    """Planted: a GET, then a PUT without ``If-None-Match`` (imported late: S3 needs botocore)."""
    from backends.s3 import S3Backend

    class RacyS3Backend(S3Backend):
        async def create(self, key: str, data: bytes) -> None:
            try:
                await self.get(key)
            except NotFound:
                await self.put(key, data)
                return
            raise Conflict(key)

    return RacyS3Backend


# -- lost-append: a commit hook ---------------------------------------------------------------


async def lost_append_commit(store: Backend, dataset: str, day: int, node_id: str,
                             change: Callable[[shared.SharedManifest], shared.SharedManifest | None],
                             known: int = 0, *, latest: shared.SharedManifest | None = None,
                             token_hex: Callable[[int], str] = secrets.token_hex) -> shared.SharedManifest:
    """The planted bug, in place of ``shared.commit``: after a lost race, the change is re-applied to
    the blocks read *first*."""
    first = latest if latest is not None else await shared.read_latest(store, dataset, day, known)
    current = first
    for _ in range(shared.MAX_COMMIT_ATTEMPTS):
        stale = replace(first, version=current.version, commit_id=current.commit_id, epochs=current.epochs)
        proposed = change(stale)
        if proposed is None:
            return current
        proposed = replace(proposed, version=current.version + 1, parent=current.version,
                           commit_id=token_hex(12), parent_commit=current.commit_id, node=node_id)
        if current.version == 0:
            await store.put(shared.index_key(dataset, day), b"")
        try:
            await shared.create_resolved(store, shared.version_key(dataset, day, proposed.version),
                                         proposed.encode())
            return proposed
        except Conflict:
            current = await shared.read_latest(store, dataset, day, current.version)
    raise Conflict("gave up")


# -- ignore-epoch: a lease subclass and a change wrapper ----------------------------------------


class StubbornLease(Lease):
    """Planted: believes it leads whenever it holds an epoch, and never steps down."""

    @property
    def is_leader(self) -> bool:
        return self.epoch > 0

    async def still_leader(self, epoch: int) -> bool:
        return True

    async def tick(self) -> None:
        epoch = self.epoch
        await super().tick()
        if epoch and not self.epoch:
            self.epoch = epoch  # keeps believing, with its old epoch


def blind_to_fences(change: Callable[[shared.SharedManifest], shared.SharedManifest | None]
                    ) -> Callable[[shared.SharedManifest], shared.SharedManifest | None]:
    """Planted: the change sees no recorded epochs, so ``jobs.fence`` never refuses it."""

    def blind(current: shared.SharedManifest) -> shared.SharedManifest | None:
        seen = current.epochs
        current.epochs = {}
        proposed = change(current)
        if proposed is not None:
            proposed.epochs = {**seen, **proposed.epochs}  # what ``stamp`` makes of them, unfenced
        return proposed

    return blind


# -- the seeded stand-ins ---------------------------------------------------------------------


class SeededTokens:
    """``secrets.token_hex`` from a seeded generator: block ids, commit ids, lease records."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def token_hex(self, n: int = 32) -> str:
        return bytes(self.rng.getrandbits(8) for _ in range(n)).hex()


async def inline_threads(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    """``trio.to_thread.run_sync`` run inline (memory runs: no real I/O, so a seed replays exactly)."""
    await trio.lowlevel.checkpoint()
    return fn(*args)

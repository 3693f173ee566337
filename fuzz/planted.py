"""Planted bugs for the negative controls, and what makes a schedule repeatable."""

from __future__ import annotations

import random
import secrets
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterator

import trio

from backends.base import Backend, Conflict
from helios.replication import shared

__all__ = ["inline_threads", "lost_append_commit", "patched", "recording_commit", "seeded_secrets"]


def lost_append_commit(original: Callable[..., Awaitable[shared.SharedManifest]]) -> Callable[..., Any]:
    """The planted bug: after a lost race, the change is re-applied to the blocks read *first*."""

    async def commit(store: Backend, dataset: str, day: int, node_id: str, change: Any, known: int = 0,
                     *, latest: shared.SharedManifest | None = None) -> Any:
        first = latest if latest is not None else await shared.read_latest(store, dataset, day, known)
        current = first
        for _ in range(shared.MAX_COMMIT_ATTEMPTS):
            stale = replace(first, version=current.version, commit_id=current.commit_id, epochs=current.epochs)
            proposed = change(stale)
            if proposed is None:
                return current
            proposed = replace(proposed, version=current.version + 1, parent=current.version,
                               commit_id=secrets.token_hex(12), parent_commit=current.commit_id, node=node_id)
            if current.version == 0:
                await store.put(shared.index_key(dataset, day), b"")
            try:
                await shared.create_resolved(store, shared.version_key(dataset, day, proposed.version),
                                             proposed.encode())
                return proposed
            except Conflict:
                current = await shared.read_latest(store, dataset, day, current.version)
        raise Conflict("gave up")

    return commit


@contextmanager
def patched(attr_owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(attr_owner, name)
    setattr(attr_owner, name, value)
    try:
        yield
    finally:
        setattr(attr_owner, name, saved)


def seeded_secrets(rng: random.Random) -> dict[str, Callable[..., Any]]:
    def token_bytes(n: int = 32) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    def token_hex(n: int = 32) -> str:
        return token_bytes(n).hex()

    return {"token_bytes": token_bytes, "token_hex": token_hex}


async def inline_threads(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


def recording_commit(sim_holder: list[Any], original: Callable[..., Any]) -> Callable[..., Any]:
    async def commit(store: Backend, dataset: str, day: int, node_id: str, change: Any, known: int = 0,
                     **kwargs: Any) -> Any:
        result = await original(store, dataset, day, node_id, change, known, **kwargs)
        if result.node == node_id and result.commit_id and sim_holder:
            sim = sim_holder[0]
            sim.acked_commits_where[result.commit_id] = (shared.partition_prefix(dataset, day), result.version)
        return result

    return commit

"""The one conformance suite every backend must pass (library code; no pytest).

``await check_backend(backend, namespace)`` runs every check against keys
under ``namespace/`` and returns the names of the checks it ran; a failure
raises AssertionError naming the check. ``race_create(...)`` makes OS
processes race create-if-absent of one key per round and returns who won,
so a caller can assert exactly one winner per round.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
from typing import Any, Awaitable, Callable

import trio

from backends.base import Backend, Conflict, Invalid, NotFound, list_all

__all__ = ["CHECKS", "check_backend", "race_create"]

Check = Callable[[Backend, str], Awaitable[None]]
CHECKS: list[tuple[str, Check]] = []


def _check(fn: Check) -> Check:
    CHECKS.append((fn.__name__, fn))
    return fn


async def _raises(kind: type[Exception], awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except kind:
        return
    raise AssertionError(f"expected {kind.__name__}")


@_check
async def get_missing_is_not_found(b: Backend, ns: str) -> None:
    await _raises(NotFound, b.get(f"{ns}/missing"))


@_check
async def put_get_round_trip(b: Backend, ns: str) -> None:
    data = bytes(range(256)) * 4 + b"\x00\xff"
    await b.put(f"{ns}/a/b/c.bin", data)
    assert await b.get(f"{ns}/a/b/c.bin") == data
    await b.put(f"{ns}/a/b/c.bin", b"replaced")
    assert await b.get(f"{ns}/a/b/c.bin") == b"replaced"
    await b.put(f"{ns}/empty", b"")
    assert await b.get(f"{ns}/empty") == b""


@_check
async def large_object(b: Backend, ns: str) -> None:
    data = os.urandom(6 << 20)
    await b.put(f"{ns}/large", data)
    assert await b.get(f"{ns}/large") == data


@_check
async def get_range_reads_a_slice(b: Backend, ns: str) -> None:
    data = bytes(range(256)) * 8
    key = f"{ns}/r.bin"
    await b.put(key, data)
    for start, length in ((0, 10), (100, 256), (2047, 1), (2040, 8), (0, 2048),  # inside the object
                          (2040, 100), (0, 5000),  # past its end: what exists
                          (2048, 1), (5000, 3),  # at or after its end: nothing
                          (7, 0)):  # an empty range
        got = await b.get_range(key, start, length)
        assert got == data[start : start + length], f"bytes {start}+{length}: got {len(got)} bytes"
    large = os.urandom(3 << 20)
    await b.put(f"{ns}/large", large)
    assert await b.get_range(f"{ns}/large", (1 << 20) + 5, 1 << 20) == large[(1 << 20) + 5 : (2 << 20) + 5]
    await b.put(f"{ns}/empty", b"")
    assert await b.get_range(f"{ns}/empty", 0, 10) == b""
    await _raises(NotFound, b.get_range(f"{ns}/missing", 0, 10))
    for start, length in ((-1, 5), (0, -1)):
        await _raises(Invalid, b.get_range(key, start, length))
    await _raises(Invalid, b.get_range(f"{ns}/../x", 0, 1))


@_check
async def create_if_absent(b: Backend, ns: str) -> None:
    key = f"{ns}/cas/v-000001"
    await b.create(key, b"first")
    await _raises(Conflict, b.create(key, b"second"))
    assert await b.get(key) == b"first", "a lost create must not change the object"
    await b.delete(key)
    await b.create(key, b"third")
    assert await b.get(key) == b"third"


@_check
async def concurrent_creates_have_one_winner(b: Backend, ns: str) -> None:
    for round_ in range(5):
        key = f"{ns}/race/{round_}"
        winners: list[int] = []

        async def attempt(i: int) -> None:
            try:
                await b.create(key, f"writer-{i}".encode())
                winners.append(i)
            except Conflict:
                pass

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(attempt, i)
        assert len(winners) == 1, f"round {round_}: {len(winners)} winners"
        assert await b.get(key) == f"writer-{winners[0]}".encode()


@_check
async def list_prefix_order_and_pages(b: Backend, ns: str) -> None:
    keys = [f"{ns}/l/{name}" for name in ("b/2", "a", "b/1", "c", "b/10", "bb")]
    for key in keys:
        await b.put(key, key.encode())
    await b.put(f"{ns}/lx", b"outside")
    listed = [info.key for info in await b.list(f"{ns}/l/")]
    assert listed == sorted(keys), listed
    sizes = {info.key: info.size for info in await b.list(f"{ns}/l/")}
    assert sizes[f"{ns}/l/a"] == len(f"{ns}/l/a")
    assert [i.key for i in await b.list(f"{ns}/l/b")] == sorted(k for k in keys if k.startswith(f"{ns}/l/b"))
    assert [i.key for i in await b.list(f"{ns}/l/b/")] == sorted(k for k in keys if k.startswith(f"{ns}/l/b/"))
    page = await b.list(f"{ns}/l/", limit=2)
    assert [i.key for i in page] == sorted(keys)[:2]
    after = await b.list(f"{ns}/l/", start_after=page[-1].key, limit=2)
    assert [i.key for i in after] == sorted(keys)[2:4]
    assert [i.key async for i in list_all(b, f"{ns}/l/", page=2)] == sorted(keys)
    assert await b.list(f"{ns}/nothing-here/") == []


@_check
async def delete_is_idempotent(b: Backend, ns: str) -> None:
    await b.put(f"{ns}/d", b"x")
    await b.delete(f"{ns}/d")
    await b.delete(f"{ns}/d")
    await _raises(NotFound, b.get(f"{ns}/d"))
    assert await b.list(f"{ns}/d") == []


@_check
async def invalid_keys_are_refused(b: Backend, ns: str) -> None:
    for key in ("", "/abs", f"{ns}/../x", f"{ns}//x", f"{ns}/.hidden", f"{ns}/sp ace", "x" * 2000):
        await _raises(Invalid, b.get(key))
        await _raises(Invalid, b.get_range(key, 0, 1))
        await _raises(Invalid, b.put(key, b"x"))


async def check_backend(backend: Backend, namespace: str | None = None) -> list[str]:
    namespace = namespace or f"conformance-{secrets.token_hex(4)}"
    ran = []
    for name, check in CHECKS:
        try:
            await check(backend, f"{namespace}/{name}")
        except AssertionError as exc:
            raise AssertionError(f"{backend.name}: {name}: {exc}") from exc
        ran.append(name)
    return ran


# -- racing OS processes -------------------------------------------------------


def _racer(spec: str, environ: dict[str, str], namespace: str, rounds: int, worker: int,
           barrier: Any, results: Any, nonatomic: bool) -> None:
    from backends import open_backend
    from backends.faulty import NonAtomicCreate

    async def main() -> None:
        backend = await open_backend(spec, environ)
        if nonatomic:
            backend = NonAtomicCreate(backend)
        won = []
        for round_ in range(rounds):
            await trio.to_thread.run_sync(barrier.wait)
            try:
                await backend.create(f"{namespace}/r{round_:05d}", f"{worker}:{round_}".encode())
                won.append(round_)
            except Conflict:
                pass
        await backend.aclose()
        results.put((worker, won))

    trio.run(main)


def race_create(spec: str, *, rounds: int, workers: int, environ: dict[str, str] | None = None,
                nonatomic: bool = False, namespace: str | None = None) -> dict[int, list[int]]:
    """Race ``workers`` processes for ``rounds`` keys; returns ``{round: [winning workers]}``."""
    namespace = namespace or f"race-{secrets.token_hex(4)}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    env = dict(os.environ if environ is None else environ)
    procs = [ctx.Process(target=_racer, args=(spec, env, namespace, rounds, w, barrier, results, nonatomic))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    winners: dict[int, list[int]] = {r: [] for r in range(rounds)}
    for _ in procs:
        worker, won = results.get(timeout=600)
        for round_ in won:
            winners[round_].append(worker)
    for proc in procs:
        proc.join(timeout=60)
        if proc.exitcode != 0:
            raise AssertionError(f"racer exited with {proc.exitcode}")
    return winners

"""In-process: the control-plane log under racing writers and store faults, and joining a store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from backends.faulty import FaultyBackend
from backends.memory import MemoryBackend
from helios.control.plane import STORE_LOG, UNCHANGED, ControlPlane, Obj, Sealer
from helios.errors import ConfigError, StaleVersion, Unavailable

KEY, JWT = b"k" * 32, b"j" * 32


def plane(tmp_path: Path, name: str, key: bytes = KEY, jwt: bytes = JWT, encryption: str = "aes-256-gcm") -> ControlPlane:
    return ControlPlane(tmp_path / name, Sealer(key, jwt, encryption), name)


def counter_increment(expected: int):  # noqa: ANN201
    def mutate(current: Obj | None) -> object:
        version = current.version if current is not None else 0
        if version != expected:
            raise StaleVersion("stale", version)
        return {"n": (current.doc["n"] if current is not None and current.doc else 0) + 1}
    return mutate


@pytest.mark.parametrize("seed", range(4))
def test_racing_writers_with_faults_converge_with_no_lost_update(tmp_path: Path, seed: int) -> None:
    """Three nodes increment one counter with read-version-then-commit; faults lose answers.

    Every increment that was acknowledged is counted exactly once, every node
    ends with the same log, and the log is gap-free.
    """
    memory = MemoryBackend()

    async def main() -> None:
        nodes = []
        for i in range(3):
            node = plane(tmp_path, f"n{i}")
            await node.open()
            store = FaultyBackend(memory, seed=seed * 10 + i, error_rate=0.05, lost_answer_rate=0.05)
            store.enabled = False
            await node.attach(store, "memory")
            store.enabled = True
            nodes.append(node)
        acked = [0]
        rng = random.Random(seed)

        async def writer(node: ControlPlane) -> None:
            for _ in range(15):
                await trio.sleep(rng.random() / 1000)
                try:
                    await node.pull()
                except Exception:
                    pass
                current = node.state("settings", "counter")
                try:
                    await node.commit("settings", "counter", counter_increment(current.version if current else 0), "t")
                except (StaleVersion, Unavailable):
                    continue
                acked[0] += 1

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(writer, node)
        for node in nodes:
            node.store.enabled = False  # type: ignore[union-attr]
            await node.pull()
        final = nodes[0].get("settings", "counter")
        assert final is not None and final.doc is not None
        # Ambiguous commits (answer lost) may have landed: they count once, never twice.
        assert acked[0] <= final.doc["n"] == final.version
        assert {n.applied for n in nodes} == {final.version}
        assert [n.audit for n in nodes] == [nodes[0].audit] * 3
        keys = sorted(k for k in memory.objects if k.startswith(STORE_LOG))
        assert keys == [f"{STORE_LOG}{i:012d}" for i in range(1, len(keys) + 1)]

    trio.run(main)


async def _bootstrapped_alone(tmp_path: Path, name: str, store: MemoryBackend, username: str) -> ControlPlane:
    node = plane(tmp_path, name)
    await node.open()
    node.store, node.store_label = store, "memory"

    async def make_admin() -> None:
        await node.commit("users", username, lambda current: {"role": "admin"}, "bootstrap")

    await node.bootstrap_alone(make_admin)
    assert node.get("users", username) is not None and not node.attached
    return node


def test_a_node_bootstrapped_alone_adopts_or_seeds_the_store(tmp_path: Path) -> None:
    async def main() -> None:
        memory = MemoryBackend()
        first = await _bootstrapped_alone(tmp_path, "first", memory, "admin")
        await first.attach(memory, "memory")  # an empty store is seeded with the local entries
        assert len([k for k in memory.objects if k.startswith(STORE_LOG)]) == 1
        second = await _bootstrapped_alone(tmp_path, "second", memory, "other-admin")
        await second.attach(memory, "memory")  # the store has its own control plane: it wins
        assert second.get("users", "other-admin") is None and second.get("users", "admin") is not None
        assert second.cluster == first.cluster
        reopened = plane(tmp_path, "second")
        await reopened.open()
        assert [o.id for o in reopened.list("users")] == ["admin"]

    trio.run(main)


def test_unchanged_mutations_write_nothing_and_no_store_means_503(tmp_path: Path) -> None:
    async def main() -> None:
        node = plane(tmp_path, "n")
        await node.open()
        assert await node.commit("users", "x", lambda current: UNCHANGED, "t") is None
        assert node.applied == 0
        node.store = MemoryBackend()  # a store that has not been joined
        with pytest.raises(Unavailable):
            await node.commit("users", "x", lambda current: {"role": "viewer"}, "t")

    trio.run(main)


def test_local_fingerprints_refuse_another_key(tmp_path: Path) -> None:
    async def main() -> None:
        node = plane(tmp_path, "n")
        await node.open()
        await node.commit("users", "x", lambda current: {"role": "viewer"}, "t")
        for kwargs, named in [({"key": b"z" * 32}, "control key"), ({"jwt": b"z" * 32}, "JWT secret"),
                              ({"encryption": "none"}, "encryption mode")]:
            with pytest.raises(ConfigError, match=named):
                await plane(tmp_path, "n", **kwargs).open()

    trio.run(main)


def test_the_first_admin_is_retried_until_the_store_takes_it(tmp_path: Path) -> None:
    """A store that fails while the first admin is created: the sync loop keeps trying, the node stays up."""
    clock = trio.testing.MockClock(autojump_threshold=0.05)  # let local file I/O (threads) finish first

    async def main() -> None:
        store = FaultyBackend(MemoryBackend(), seed=1, error_rate=1.0)
        store.enabled = False
        node = plane(tmp_path, "n")
        await node.open()
        await node.attach(store, "memory")
        store.enabled = True  # every request fails from now on
        calls = []

        async def make_admin() -> None:
            calls.append(trio.current_time())
            await node.commit("users", "admin", lambda current: {"role": "admin"}, "bootstrap")

        with pytest.raises(Unavailable):  # what Node.open logs as a warning
            await make_admin()
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run, 1.0, make_admin)
            await trio.sleep(5.5)
            assert node.get("users", "admin") is None
            store.enabled = False
            # Poll rather than sleep: the sync loop backs off (at most 30 s, jittered), and the
            # autojumping clock also jumps while a worker thread (local file I/O) is slow.
            with trio.fail_after(60):
                while node.get("users", "admin") is None:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert len(calls) >= 2

    trio.run(main, clock=clock)

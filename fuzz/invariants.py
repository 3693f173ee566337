"""The invariants of DESIGN §4, checked after a schedule has quiesced (leases and creates, all along).

``Invariants`` is a mixin of ``fuzz.sim.Simulation``: each ``check_*``
raises ``Violation`` with what it found. ``Recorder`` sits under the faults
and raises a compare-and-swap violation the moment a create has two winners.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import orjson
import trio

from backends.base import Backend, list_all
from backends.faulty import Passthrough
from helios.replication import shared
from helios.replication.lease import JOBS
from helios.storage.blocks import load_block
from helios.timeutil import day_number

__all__ = ["Invariants", "Recorder", "Violation"]

DAY_NS = 86_400 * 10**9


class Violation(AssertionError):
    """An invariant does not hold: ``invariant`` names which (e.g. "compare-and-swap", "no loss")."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant


class Recorder(Passthrough):
    """Between the faults and the store: every create that returned, and every delete.

    A create that returns for a key an earlier create made, with no delete of
    it since or in flight, had two winners: raised at once as a violation of
    compare-and-swap (while the schedule runs, before anything else can hide it).
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.live: set[str] = set()
        self.deleting: Counter[str] = Counter()
        self.doubles: list[str] = []

    async def create(self, key: str, data: bytes) -> None:
        await self.inner.create(key, data)
        if key in self.live and not self.deleting[key]:
            self.doubles.append(key)
            raise Violation("compare-and-swap", f"{key} created twice: a second create returned "
                            f"at {trio.current_time():.6f}")
        self.live.add(key)

    async def delete(self, key: str) -> None:
        self.deleting[key] += 1
        try:
            await self.inner.delete(key)
        finally:
            self.deleting[key] -= 1
        self.live.discard(key)


def _lease_of(job: str) -> str:
    """The lease a leader commit's job runs under (garbage collection runs on the compaction leader)."""
    return "compaction" if job in ("compaction", "gc") else job


class Invariants:
    """Checks over a ``Simulation``'s nodes, store and records."""

    # Provided by the simulation.
    nodes: dict[str, Any]
    store: Any
    recorder: Any
    result: Any
    acked: dict[str, tuple[str, int]]
    attempted: set[str]
    acked_commits_where: dict[str, tuple[str, int]]
    beliefs: dict[tuple[str, int], set[str]]
    retention_days: dict[str, int | None]

    def wall(self) -> int: ...

    def expired(self, key: tuple[str, int]) -> bool:
        days = self.retention_days.get(key[0])
        return days is not None and (key[1] + 1) * DAY_NS <= self.wall() - days * DAY_NS

    async def rows_by_node(self) -> dict[str, Counter[str]]:
        out = {}
        for name, node in self.nodes.items():
            counts: Counter[str] = Counter()
            for key, manifest in node.engine.manifests.items():
                for block in manifest.blocks:  # local, or fetched from the store (a node with a small cache)
                    table = load_block(await node.engine.blocks.read(key, block, keep=False), block)
                    counts.update(table.column("uid").to_pylist())
            out[name] = counts
        return out

    async def shared_partitions(self) -> dict[tuple[str, int], shared.SharedManifest]:
        out = {}
        async for info in list_all(self.store, "_partitions/"):
            _, dataset, day_name = info.key.split("/")
            day = day_number(day_name)
            out[(dataset, day)] = await shared.read_latest(self.store, dataset, day)
        return out

    async def _differences(self) -> list[str]:
        found = []
        parts = await self.shared_partitions()
        for name, node in self.nodes.items():
            for key, manifest in node.engine.manifests.items():
                latest = parts.get(key)
                if latest is None:
                    found.append(f"{name} holds {key} which the store does not know")
                elif latest.dropped:
                    found.append(f"{name} still holds dropped {key}")
                elif {b.id for b in manifest.blocks} != {b.id for b in latest.blocks}:
                    found.append(f"{name} {key}: local blocks differ from shared version {latest.version}")
            for key, latest in parts.items():
                if not latest.dropped and latest.blocks and key not in node.engine.manifests:
                    found.append(f"{name} lacks {key}")
            if node.engine.memtable or node.engine.frozen:
                found.append(f"{name} has unflushed rows")
        return found

    async def check_convergence(self) -> None:
        """Invariant 1: every node's manifest of every partition is the shared one."""
        differences = await self._differences()
        if differences:
            raise Violation("convergence", "; ".join(differences[:5]))

    def check_no_loss(self, rows: dict[str, Counter[str]]) -> None:
        """Invariant 2: every acknowledged row is on every node, unless retention dropped its partition."""
        for name, counts in rows.items():
            lost = [uid for uid, key in self.acked.items() if not self.expired(key) and counts[uid] == 0]
            if lost:
                raise Violation("no loss", f"{len(lost)} acknowledged rows missing on {name}, e.g. {lost[:3]}")
            kept = [uid for uid, key in self.acked.items() if self.expired(key) and counts[uid]]
            if kept:
                raise Violation("retention", f"{len(kept)} rows of dropped partitions still on {name}")

    def check_no_duplication(self, rows: dict[str, Counter[str]]) -> None:
        """Invariant 3: no row counted twice on any node (acknowledged or not)."""
        for name, counts in rows.items():
            doubled = [uid for uid, n in counts.items() if n > 1]
            if doubled:
                raise Violation("no duplication",
                                f"{len(doubled)} rows more than once on {name}, e.g. {doubled[:3]}")
            unknown = [uid for uid in counts if uid not in self.attempted]
            if unknown:
                raise Violation("no invention", f"rows never ingested on {name}: {unknown[:3]}")

    async def check_manifest_chains(self) -> None:
        """Versions contiguous, each naming the previous as parent; leader epochs never go back."""
        holders = await self._holders()
        async for info in list_all(self.store, "_partitions/"):
            _, dataset, day_name = info.key.split("/")
            day = day_number(day_name)
            versions = sorted(await shared.list_versions(self.store, dataset, day))
            if versions and versions != list(range(versions[0], versions[-1] + 1)):
                raise Violation("chain", f"{dataset}/{day_name}: versions not contiguous: {versions}")
            chain = [shared.SharedManifest.decode(await self.store.get(shared.version_key(dataset, day, v)))
                     for v in versions]
            for previous, current in zip(chain, chain[1:]):
                if current.parent != previous.version or current.parent_commit != previous.commit_id:
                    raise Violation("chain", f"{dataset}/{day_name}: version {current.version} does not follow "
                                    f"{previous.version}")
                for job, epoch in previous.epochs.items():
                    if current.epochs.get(job, 0) < epoch:
                        raise Violation("fencing", f"{dataset}/{day_name}: version {current.version} has {job} "
                                        f"epoch {current.epochs.get(job, 0)} after {epoch}")
                if current.job and current.epoch < previous.epochs.get(_lease_of(current.job), 0):
                    raise Violation("fencing", f"{dataset}/{day_name}: version {current.version} committed "
                                    f"{current.job} with epoch {current.epoch} after epoch "
                                    f"{previous.epochs[_lease_of(current.job)]}")
            for version in chain:
                if version.job:
                    job = _lease_of(version.job)
                    if holders.get((job, version.epoch)) != version.node:
                        raise Violation("fencing", f"{dataset}/{day_name}: version {version.version} by "
                                        f"{version.node} with epoch {version.epoch} of {job}, held by "
                                        f"{holders.get((job, version.epoch))}")

    async def _holders(self) -> dict[tuple[str, int], str]:
        holders = {}
        async for info in list_all(self.store, "_control/leases/"):
            name = info.key.rsplit("/", 1)[1]
            if name.isdigit():
                holders[(info.key.split("/")[2], int(name))] = orjson.loads(await self.store.get(info.key))["holder"]
        return holders

    async def check_commit_ids(self) -> None:
        """Every acknowledged manifest commit is in its chain exactly once; every CAS key was created once."""
        doubles = self.recorder.doubles  # the recorder raises at the second create; this is the record
        if doubles:
            raise Violation("compare-and-swap", f"{len(doubles)} keys created twice, e.g. {doubles[:2]}")
        present: Counter[str] = Counter()
        oldest: dict[str, int] = {}
        async for info in list_all(self.store, "parts/"):
            if "/manifest/" in info.key:
                version = shared.SharedManifest.decode(await self.store.get(info.key))
                present[version.commit_id] += 1
                partition = info.key.split("/manifest/")[0]
                oldest[partition] = min(oldest.get(partition, version.version), version.version)
        for commit_id, where in self.acked_commits_where.items():
            partition, version = where
            if version < oldest.get(partition, 0):
                continue  # garbage-collected old version
            if present[commit_id] != 1:
                raise Violation("commit ids", f"acknowledged commit {commit_id} ({partition} v{version}) "
                                f"present {present[commit_id]} times")

    def check_own_blocks_kept(self) -> None:
        """The local cache never evicts a node's own block that the store does not have yet."""
        for name, node in self.nodes.items():
            for key, manifest in node.engine.manifests.items():
                for block in manifest.pending(name):
                    if not (node.engine.part_dir(key) / block.filename).exists():
                        raise Violation(f"cache: {name} lost its own un-uploaded block {block.id}")

    def check_one_leader_now(self) -> None:
        """At any moment at most one live node considers itself a job's leader."""
        for job in JOBS:
            leading = sorted(name for name, node in self.nodes.items() if node.alive and node.leases[job].is_leader)
            if len(leading) > 1:
                raise Violation("leases", f"{leading} all lead {job} at time {trio.current_time():.3f}")
        self.result.checks += 1

    async def watch_leaders(self) -> None:
        while True:
            await trio.sleep(0.25)
            self.check_one_leader_now()

    def check_leaders(self) -> None:
        """At most one node believed it led a job in any epoch."""
        for (job, epoch), nodes in self.beliefs.items():
            if len(nodes) > 1:
                raise Violation("leases", f"{sorted(nodes)} all led {job} in epoch {epoch}")

    async def check_all(self) -> None:
        rows = await self.rows_by_node()
        checks: list[Callable[[], Any]] = [
            self.check_convergence, lambda: self.check_no_loss(rows), lambda: self.check_no_duplication(rows),
            self.check_manifest_chains, self.check_commit_ids, self.check_leaders]
        for check in checks:
            outcome = check()
            if hasattr(outcome, "__await__"):
                await outcome
            self.result.checks += 1



"""A seeded simulation of the real replication protocol, checked against the invariants of DESIGN §4.

Several simulated nodes — each a real ``Engine`` (WAL, memtable, blocks),
``Replicator`` (uploader, puller), ``Lease`` per job and ``Maintenance``
(compaction, GC, retention) on its own data dir — share one store (memory,
fs, or S3 through moto) behind ``FaultyBackend`` (errors, latency, writes
that land with the answer lost; races give the CAS its 409/412 conflicts).
A seeded schedule runs steps of one to four concurrent operations: ingest
into shared partitions, flush, upload, pull, lease ticks, compaction,
retention, local GC, and crashes — a node's in-flight operations are
cancelled at whatever await point they reached (between a block upload and
the manifest swap, between the swap and the local record, mid-compaction…)
and the node restarts from its data dir.

Then faults stop, every node syncs, and the invariants are checked as named
functions (``check_*``). A violation carries the seed and a replay command.

Time is trio's ``MockClock``; trio's scheduler is seeded; ``secrets`` is
seeded. On the memory backend worker threads run inline, so a run is
deterministic for its seed (``Result.digest`` is identical on replay). On fs
and S3 the file and network I/O run for real (threads, sockets — the kernel's
atomicity is what is being tested), so a replay repeats the same schedule
but not necessarily the same interleaving.

Planted bugs (``--bug``), for the negative controls:
- ``non-atomic-cas``: create-if-absent done as check-then-put.
- ``lost-append``: a manifest commit that, after losing a race, re-applies its
  change to the blocks it read first, dropping the concurrent append.
- ``ignore-epoch``: leaders never step down and compaction ignores the epoch fence.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import shutil
import tempfile
import traceback
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import orjson
import trio
import trio.testing

from backends.base import Backend, Conflict, StoreError, list_all
from backends.faulty import FaultyBackend, NonAtomicCreate, Passthrough
from backends.fs import FsBackend
from backends.memory import MemoryBackend
from helios.ingest.records import parse_ndjson
from helios.replication import jobs, shared
from helios.replication.jobs import Maintenance
from helios.replication.lease import JOBS, Lease
from helios.replication.replicator import Replicator
from helios.storage.blocks import load_block
from helios.storage.engine import Engine
from helios.timeutil import day_number

__all__ = ["BUGS", "Result", "Violation", "run_schedule"]

BUGS = ("non-atomic-cas", "lost-append", "ignore-epoch")
BASE_NS = 1_768_003_200 * 10**9  # 2026-01-10T00:00:00Z: the simulation's wall clock at time 0
DAY_NS = 86_400 * 10**9
RETENTION_DAYS = {"a": None, "r": 3}
LEASE_TTL_S = 3.0
GC_GRACE_S = 2.0
REPO = Path(__file__).resolve().parent.parent
# Mock time jumps once every task has been idle this long in real time. Memory runs have no real
# I/O (worker threads run inline): jump at once. fs and S3 wait for real threads and sockets.
AUTOJUMP_S = {"memory": 0.0, "fs": 0.001, "s3": 0.005}


class Violation(AssertionError):
    """An invariant does not hold."""


@dataclass
class Result:
    backend: str
    seed: int
    bug: str | None
    ops: int = 0
    checks: int = 0
    faults: int = 0
    crashes: int = 0
    violation: str | None = None
    trace: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]

    def replay_command(self) -> str:
        bug = f" --bug {self.bug}" if self.bug else ""
        return f".venv/bin/python fuzz/run.py replay --backend {self.backend} --seed {self.seed}{bug}"


def _lines() -> list[str]:
    root = Path(os.environ.get("HELIOS_LOGHUB_DIR", REPO.parent / "shared" / "data" / "loghub"))
    lines: list[str] = []
    for path in sorted(root.glob("*_2k.log")):
        lines += [line for line in path.read_text(encoding="utf-8").splitlines()[:200] if line.strip()]
    if not lines:
        raise SystemExit(f"fuzz: Loghub samples not found under {root}: set HELIOS_LOGHUB_DIR")
    return lines


_LOGHUB: list[str] = []


class Recorder(Passthrough):
    """Between the faults and the store: remembers every create that landed, and what it wrote."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.created: dict[str, list[bytes]] = {}

    async def create(self, key: str, data: bytes) -> None:
        await self.inner.create(key, data)
        self.created.setdefault(key, []).append(data)


class Incarnation:
    """One life of a simulated node between crashes: its objects and its cancellable tasks."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.name = name
        self.directory = sim.root / name
        wall = sim.wall
        self.engine = Engine(self.directory, name, memtable_rows=10**9, cache_bytes=64 << 20, clock=wall)
        self.replicator = Replicator(self.engine, sim.store, name, 0.1, clock=wall)
        self.leases = {job: Lease(job, sim.store, name, LEASE_TTL_S) for job in JOBS}
        self.jobs = Maintenance(self.engine, sim.store, self.replicator, self.leases, name,
                                retention_days=lambda dataset: RETENTION_DAYS.get(dataset),
                                compaction_interval_s=1, retention_interval_s=1, gc_grace_s=GC_GRACE_S, clock=wall)
        self.jobs.min_inputs = 2
        self.jobs.keep_versions = sim.keep_versions
        self._scopes: set[trio.CancelScope] = set()
        self.alive = True

    async def guarded(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await fn()
            finally:
                self._scopes.discard(scope)
        return None

    async def wait_stopped(self) -> None:
        """After ``crash``: wait until every task has unwound (a worker thread finishes what it does)."""
        while self._scopes:
            await trio.sleep(0.001)

    def crash(self) -> None:
        self.alive = False
        for scope in list(self._scopes):
            scope.cancel()


class Simulation:
    def __init__(self, result: Result, rng: random.Random, root: Path, store: Backend, recorder: Recorder,
                 faulty: FaultyBackend) -> None:
        self.result = result
        self.rng = rng
        self.root = root
        self.store = store
        self.recorder = recorder
        self.faulty = faulty
        self.nodes: dict[str, Incarnation] = {}
        self.keep_versions = rng.choice([10**9, 10**9, 4])
        self.acked: dict[str, tuple[str, int]] = {}  # uid -> (dataset, day) of acknowledged rows
        self.attempted: set[str] = set()
        self.acked_commits_where: dict[str, tuple[str, int]] = {}  # commit id -> (partition, version)
        self.beliefs: dict[tuple[str, int], set[str]] = {}  # (job, epoch) -> nodes that believed they led
        self.errors: Counter[str] = Counter()
        self.burst_target: tuple[str, int] | None = None
        self._uid = 0

    def wall(self) -> int:
        return BASE_NS + int(trio.current_time() * 1e9)

    def trace(self, text: str) -> None:
        self.result.trace.append(f"{trio.current_time():.6f} {text}")

    # -- nodes -----------------------------------------------------------------

    async def start(self, name: str, nursery: trio.Nursery) -> Incarnation:
        node = Incarnation(self, name)
        await trio.to_thread.run_sync(node.engine.open)
        nursery.start_soon(node.guarded, node.engine.wal.run)
        await trio.sleep(0)
        self.nodes[name] = node
        return node

    async def restart(self, name: str, nursery: trio.Nursery) -> None:
        old = self.nodes[name]
        old.crash()
        await old.wait_stopped()
        old.engine.close()
        self.result.crashes += 1
        self.trace(f"crash {name}")
        await self.start(name, nursery)

    # -- operations --------------------------------------------------------------

    async def op_ship(self, node: Incarnation) -> None:
        """Ingest, flush and upload in a row: what every node's loops do all the time."""
        await self.op_ingest(node)
        await node.engine.flush()
        await node.replicator.upload_once()

    async def op_ingest(self, node: Incarnation) -> None:
        dataset = self.rng.choice(("a", "r"))
        day_back = self.rng.choice((0, 0, 0, 1, 4))
        if self.burst_target is not None:
            dataset, day_back = self.burst_target
        day = (self.wall() // DAY_NS) - day_back
        rows = []
        for _ in range(self.rng.randint(1, 12)):
            self._uid += 1
            uid = f"u{self._uid}"
            at = day * DAY_NS + self.rng.randrange(DAY_NS)
            rows.append({"_time": at, "_msg": self.rng.choice(_LOGHUB), "uid": uid})
        uids = [r["uid"] for r in rows]
        self.attempted.update(uids)
        table = parse_ndjson(b"\n".join(orjson.dumps(r) for r in rows) + b"\n", self.wall())
        await node.engine.ingest(dataset, table)
        for r in rows:  # acknowledged: each row's partition is its own day
            self.acked[r["uid"]] = (dataset, r["_time"] // DAY_NS)
        self.trace(f"{node.name} ingest {dataset} day-{day_back} {len(rows)}")

    async def op_flush(self, node: Incarnation) -> None:
        await node.engine.flush()

    async def op_upload(self, node: Incarnation) -> None:
        await node.replicator.upload_once()

    async def op_pull(self, node: Incarnation) -> None:
        if self.rng.random() < 0.2:
            node.replicator._last_full = -1e18  # a full pass over the partition index
        await node.replicator.pull_once()

    async def op_tick(self, node: Incarnation) -> None:
        for job, lease in node.leases.items():
            await lease.tick()
            if lease.is_leader:
                self.beliefs.setdefault((job, lease.epoch), set()).add(node.name)

    async def op_compact(self, node: Incarnation) -> None:
        await node.jobs.compaction_pass()

    async def op_retention(self, node: Incarnation) -> None:
        await node.jobs.retention_pass()

    async def op_gc(self, node: Incarnation) -> None:
        await node.jobs.local_gc()

    OPS: list[tuple[str, int]] = [("ingest", 30), ("flush", 14), ("upload", 14), ("pull", 14), ("tick", 14),
                                  ("compact", 7), ("retention", 3), ("gc", 4)]

    async def run_op(self, name: str, what: str) -> None:
        node = self.nodes[name]
        operation = getattr(self, f"op_{what}")

        async def attempt() -> None:
            try:
                await operation(node)
            except StoreError as exc:  # the node's loops log and retry these
                self.errors[type(exc).__name__] += 1
                self.trace(f"{name} {what} store error {type(exc).__name__}")
            except shared.Fenced:
                self.trace(f"{name} {what} fenced")

        self.result.ops += 1
        await node.guarded(attempt)

    async def schedule(self, nursery: trio.Nursery, steps: int) -> None:
        names = list(self.nodes)
        ops, weights = zip(*self.OPS)
        for _ in range(steps):
            await trio.sleep(self.rng.uniform(0, 1.0))
            self.burst_target = None
            if self.rng.random() < 0.3:  # a burst: every node does the same thing at once
                what = self.rng.choice(("ship", "ship", "upload", "pull", "compact", "tick"))
                chosen = [(name, what) for name in names]
                self.burst_target = (self.rng.choice(("a", "r")), self.rng.choice((0, 0, 1, 4)))
            else:
                chosen = [(self.rng.choice(names), self.rng.choices(ops, weights)[0])
                          for _ in range(self.rng.randint(1, 4))]
            crash = self.rng.choice(names) if self.rng.random() < 0.06 else None
            crash_after = self.rng.uniform(0, 0.05)
            self.trace(f"step {chosen} crash={crash}")
            async with trio.open_nursery() as step:
                for name, what in chosen:
                    step.start_soon(self.run_op, name, what)
                if crash is not None:
                    async def crash_later(name: str = crash) -> None:
                        await trio.sleep(crash_after)
                        self.nodes[name].crash()
                    step.start_soon(crash_later)
            if crash is not None:
                await self.restart(crash, nursery)
            self.check_one_leader_now()

    # -- quiescence --------------------------------------------------------------

    async def quiesce(self) -> None:
        """No more faults or crashes: let leases settle, then sync until nothing is left to do.

        Done when every node matches the store and no expired partition is
        left undropped in it. On fs and S3, mock time runs on while threads
        and sockets work, so a leader may lapse between two of its ticks: the
        loop goes on until a retention pass by a valid leader has happened.
        """
        self.faulty.enabled = False
        for _ in range(12):
            for node in self.nodes.values():
                await self.op_tick(node)
            await trio.sleep(LEASE_TTL_S / 3)
        for _ in range(40):
            for node in self.nodes.values():
                await node.engine.flush()
                await node.replicator.upload_once()
            for node in self.nodes.values():
                await self.op_tick(node)
                await node.jobs.retention_pass()
            for node in self.nodes.values():
                node.replicator._last_full = -1e18
                await node.replicator.pull_once()
            pending = [key for key, m in (await self.shared_partitions()).items()
                       if self.expired(key) and not m.dropped and m.blocks]
            if not pending and not await self._differences():
                break
            await trio.sleep(LEASE_TTL_S / 3)

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

    # -- invariants --------------------------------------------------------------

    def expired(self, key: tuple[str, int]) -> bool:
        days = RETENTION_DAYS.get(key[0])
        return days is not None and (key[1] + 1) * DAY_NS <= self.wall() - days * DAY_NS

    async def rows_by_node(self) -> dict[str, Counter[str]]:
        out = {}
        for name, node in self.nodes.items():
            counts: Counter[str] = Counter()
            for key, manifest in node.engine.manifests.items():
                for block in manifest.blocks:
                    table = load_block(node.engine.part_dir(key) / block.filename, block)
                    counts.update(table.column("uid").to_pylist())
            out[name] = counts
        return out

    async def check_convergence(self) -> None:
        """Invariant 1: every node's manifest of every partition is the shared one."""
        differences = await self._differences()
        if differences:
            raise Violation("convergence: " + "; ".join(differences[:5]))

    def check_no_loss(self, rows: dict[str, Counter[str]]) -> None:
        """Invariant 2: every acknowledged row is on every node, unless retention dropped its partition."""
        for name, counts in rows.items():
            lost = [uid for uid, key in self.acked.items() if not self.expired(key) and counts[uid] == 0]
            if lost:
                raise Violation(f"no loss: {len(lost)} acknowledged rows missing on {name}, e.g. {lost[:3]}")
            kept = [uid for uid, key in self.acked.items() if self.expired(key) and counts[uid]]
            if kept:
                raise Violation(f"retention: {len(kept)} rows of dropped partitions still on {name}")

    def check_no_duplication(self, rows: dict[str, Counter[str]]) -> None:
        """Invariant 3: no row counted twice on any node (acknowledged or not)."""
        for name, counts in rows.items():
            doubled = [uid for uid, n in counts.items() if n > 1]
            if doubled:
                raise Violation(f"no duplication: {len(doubled)} rows more than once on {name}, e.g. {doubled[:3]}")
            unknown = [uid for uid in counts if uid not in self.attempted]
            if unknown:
                raise Violation(f"no invention: rows never ingested on {name}: {unknown[:3]}")

    async def check_manifest_chains(self) -> None:
        """Versions contiguous, each naming the previous as parent; leader epochs never go back."""
        holders = await self._holders()
        async for info in list_all(self.store, "_partitions/"):
            _, dataset, day_name = info.key.split("/")
            day = day_number(day_name)
            versions = sorted(await shared.list_versions(self.store, dataset, day))
            if versions and versions != list(range(versions[0], versions[-1] + 1)):
                raise Violation(f"chain {dataset}/{day_name}: versions not contiguous: {versions}")
            chain = [shared.SharedManifest.decode(await self.store.get(shared.version_key(dataset, day, v)))
                     for v in versions]
            for previous, current in zip(chain, chain[1:]):
                if current.parent != previous.version or current.parent_commit != previous.commit_id:
                    raise Violation(f"chain {dataset}/{day_name}: version {current.version} does not follow "
                                    f"{previous.version}")
                for job, epoch in previous.epochs.items():
                    if current.epochs.get(job, 0) < epoch:
                        raise Violation(f"fencing {dataset}/{day_name}: version {current.version} has {job} "
                                        f"epoch {current.epochs.get(job, 0)} after {epoch}")
                if current.job and current.epoch < previous.epochs.get(_lease_of(current.job), 0):
                    raise Violation(f"fencing {dataset}/{day_name}: version {current.version} committed "
                                    f"{current.job} with epoch {current.epoch} after epoch "
                                    f"{previous.epochs[_lease_of(current.job)]}")
            for version in chain:
                if version.job:
                    job = _lease_of(version.job)
                    if holders.get((job, version.epoch)) != version.node:
                        raise Violation(f"fencing {dataset}/{day_name}: version {version.version} by "
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
        doubles = [key for key, writes in self.recorder.created.items() if len(writes) > 1]
        if doubles:
            raise Violation(f"compare-and-swap: {len(doubles)} keys created twice, e.g. {doubles[:2]}")
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
                raise Violation(f"commit ids: acknowledged commit {commit_id} ({partition} v{version}) "
                                f"present {present[commit_id]} times")

    def check_one_leader_now(self) -> None:
        """At any moment at most one live node considers itself a job's leader."""
        for job in JOBS:
            leading = sorted(name for name, node in self.nodes.items() if node.alive and node.leases[job].is_leader)
            if len(leading) > 1:
                raise Violation(f"leases: {leading} all lead {job} at time {trio.current_time():.3f}")
        self.result.checks += 1

    async def watch_leaders(self) -> None:
        while True:
            await trio.sleep(0.25)
            self.check_one_leader_now()

    def check_leaders(self) -> None:
        """At most one node believed it led a job in any epoch."""
        for (job, epoch), nodes in self.beliefs.items():
            if len(nodes) > 1:
                raise Violation(f"leases: {sorted(nodes)} all led {job} in epoch {epoch}")

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


def _lease_of(job: str) -> str:
    """The lease a leader commit's job runs under (garbage collection runs on the compaction leader)."""
    return "compaction" if job in ("compaction", "gc") else job


# -- planted bugs and determinism -------------------------------------------------


def _lost_append_commit(original: Callable[..., Awaitable[shared.SharedManifest]]) -> Callable[..., Any]:
    """The planted bug: after a lost race, the change is re-applied to the blocks read *first*."""

    async def commit(store: Backend, dataset: str, day: int, node_id: str, change: Any, known: int = 0) -> Any:
        first = await shared.read_latest(store, dataset, day, known)
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
def _patched(attr_owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(attr_owner, name)
    setattr(attr_owner, name, value)
    try:
        yield
    finally:
        setattr(attr_owner, name, saved)


def _seeded_secrets(rng: random.Random) -> dict[str, Callable[..., Any]]:
    def token_bytes(n: int = 32) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    def token_hex(n: int = 32) -> str:
        return token_bytes(n).hex()

    return {"token_bytes": token_bytes, "token_hex": token_hex}


async def _inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


def _recording_commit(sim_holder: list[Simulation], original: Callable[..., Any]) -> Callable[..., Any]:
    async def commit(store: Backend, dataset: str, day: int, node_id: str, change: Any, known: int = 0) -> Any:
        result = await original(store, dataset, day, node_id, change, known)
        if result.node == node_id and result.commit_id and sim_holder:
            sim = sim_holder[0]
            sim.acked_commits_where[result.commit_id] = (shared.partition_prefix(dataset, day), result.version)
        return result

    return commit


def run_schedule(backend: str, seed: int, *, bug: str | None = None, steps: int | None = None,
                 s3_env: dict[str, str] | None = None, workdir: Path | None = None) -> Result:
    """One schedule: simulate, quiesce, check. Returns the result; ``violation`` says what failed."""
    if not _LOGHUB:
        _LOGHUB.extend(_lines())
    result = Result(backend, seed, bug)
    rng = random.Random(f"{backend}/{seed}/{bug}")
    base = workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"helios-fuzz-{backend}-{seed}-", dir=base))
    holder: list[Simulation] = []
    inline = backend == "memory"
    with ExitStack() as stack:
        for name, fn in _seeded_secrets(random.Random(f"secrets/{seed}/{bug}")).items():
            stack.enter_context(_patched(secrets, name, fn))
        if inline:
            stack.enter_context(_patched(trio.to_thread, "run_sync", _inline))
        commit = _lost_append_commit(shared.commit) if bug == "lost-append" else shared.commit
        stack.enter_context(_patched(shared, "commit", _recording_commit(holder, commit)))
        if bug == "ignore-epoch":
            stack.enter_context(_patched(jobs, "fence", lambda current, lease_job, epoch: None))
            stack.enter_context(_patched(Lease, "is_leader", property(lambda self: self.epoch > 0)))

            async def always(self: Lease, epoch: int) -> bool:
                return True
            stack.enter_context(_patched(Lease, "still_leader", always))

            async def never_step_down(self: Lease, original: Any = Lease.tick) -> None:
                epoch = self.epoch
                await original(self)
                if epoch and not self.epoch:
                    self.epoch = epoch  # keeps believing, with its old epoch
            stack.enter_context(_patched(Lease, "tick", never_step_down))
        trio._core._run._r.seed(seed)  # trio shuffles its run queue: make the shuffle repeatable

        async def main() -> None:
            inner: Backend
            if backend == "memory":
                inner = MemoryBackend()
            elif backend == "fs":
                inner = FsBackend(root / "store")
            else:
                from backends.s3 import S3Backend

                assert s3_env is not None
                inner = await S3Backend.from_url(f"s3://helios-test/fuzz-{seed}-{secrets.token_hex(4)}", s3_env)
            recorder = Recorder(NonAtomicCreate(inner) if bug == "non-atomic-cas" else inner)
            faulty = FaultyBackend(recorder, seed=seed, error_rate=rng.choice([0.0, 0.02, 0.08]),
                                   lost_answer_rate=rng.choice([0.0, 0.02, 0.05]),
                                   max_latency_s=rng.choice([0.005, 0.02, 0.1]))
            sim = Simulation(result, rng, root, faulty, recorder, faulty)
            holder.append(sim)
            try:
                async with trio.open_nursery() as nursery:
                    for i in range(rng.randint(2, 4)):
                        await sim.start(f"n{i}", nursery)
                    nursery.start_soon(sim.watch_leaders)
                    await sim.schedule(nursery, steps or rng.randint(25, 60))
                    await sim.quiesce()
                    result.faults = sum(n for k, n in faulty.counters.snapshot().items()
                                        if k.startswith(("injected", "lost")))
                    await sim.check_all()
                    nursery.cancel_scope.cancel()
            except Violation as exc:
                result.violation = str(exc)
            finally:
                for node in sim.nodes.values():
                    node.engine.close()
                await inner.aclose()

        try:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=AUTOJUMP_S[backend]))
        except BaseExceptionGroup as group:
            found: BaseException = group.subgroup(Violation) or group
            while isinstance(found, BaseExceptionGroup):
                found = found.exceptions[0]
            if isinstance(found, Violation):
                result.violation = str(found)
            else:  # an operation raised what a node's loop would not survive: a bug
                where = traceback.extract_tb(found.__traceback__)[-1]
                result.violation = (f"unexpected {type(found).__name__}: {found} "
                                    f"at {Path(where.filename).name}:{where.lineno}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if result.violation:
        result.trace.append(f"VIOLATION {result.violation}")
    return result

"""A seeded simulation of the real replication protocol, checked against the invariants of DESIGN §4.

Several simulated nodes — each a real ``Engine`` (WAL, memtable, blocks),
``Replicator`` (uploader, puller), ``Lease`` per job and ``Maintenance``
(compaction, GC, retention) on its own data dir — share one store (memory,
fs, or S3 through moto) behind ``FaultyBackend`` (errors, latency, writes
that land with the answer lost, and a seeded 0–2 scheduling points before
and after every call). A seeded schedule runs steps of concurrent
operations: ingest into shared partitions, flush, upload, pull, lease ticks,
compaction, retention, local GC, and crashes — a node's in-flight
operations are cancelled at whatever await point they reached (between a
block upload and the manifest swap, between the swap and the local record,
mid-compaction…) and the node restarts from its data dir.

Contention is driven on purpose. A third of the steps are *lockstep*: every
node starts its operation at one instant (ship into one partition, upload,
lease ticks, or shipping while the leader compacts or drops), with no
latency, and a ``Rendezvous`` holds their creates until every node of the
step waits at one, then releases them together: several nodes creating the
same manifest version or lease epoch in one scheduler batch, then the
seeded scheduling points decide who goes first. A create that returns for a
key that already exists is caught at once by the ``Recorder`` under the
faults ("compare-and-swap").

Then faults stop, every node syncs, and the invariants are checked as named
functions (``check_*``). A violation names its invariant and carries the
seed and a replay command.

Seams, not patches: the production classes take their clock, randomness
(``token_hex``), thread runner (``run_sync``) and manifest commit
(``commit``) as constructor parameters; the simulation passes the mock wall
clock, a seeded token generator, inline threads on memory, and a commit hook
that records acknowledged commits (and plants ``lost-append`` /
``ignore-epoch``). Time is trio's ``MockClock``; trio's scheduler is seeded.
On the memory backend worker threads run inline, so a run is deterministic
for its seed (``Result.digest`` is identical on replay). On fs and S3 the
file and network I/O run for real (threads, sockets — the kernel's atomicity
is what is being tested), so a replay repeats the same schedule but not
necessarily the same interleaving.

Planted bugs (``--bug``, see ``fuzz.planted``): ``non-atomic-cas``,
``racy-create``, ``lost-append``, ``ignore-epoch``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
import trio
import trio.testing

from backends.base import Backend, StoreError
from backends.faulty import FaultyBackend, NonAtomicCreate, Rendezvous
from backends.fs import FsBackend
from backends.memory import MemoryBackend
from helios.ingest.records import parse_ndjson
from helios.replication import shared
from helios.replication.jobs import Maintenance
from helios.replication.lease import JOBS, Lease
from helios.replication.replicator import Replicator
from helios.storage.engine import Engine
from fuzz.invariants import Invariants, Recorder, Violation
from fuzz.planted import (BUGS, CAUGHT_BY, RacyFsBackend, RacyFsThreadBackend, RacyMemoryBackend,
                          SeededTokens, StubbornLease, blind_to_fences, inline_threads, lost_append_commit,
                          racy_s3_backend)

__all__ = ["BUGS", "CAUGHT_BY", "Result", "Violation", "loghub_dir", "run_schedule"]

BASE_NS = 1_768_003_200 * 10**9  # 2026-01-10T00:00:00Z: the simulation's wall clock at time 0
DAY_NS = 86_400 * 10**9
RETENTION_DAYS = {"a": None, "r": 3}
LEASE_TTL_S = 3.0
GC_GRACE_S = 2.0
REPO = Path(__file__).resolve().parent.parent
# Mock time jumps once every task has been idle this long in real time. Memory runs have no real
# I/O (worker threads run inline): jump at once. fs and S3 wait for real threads and sockets.
AUTOJUMP_S = {"memory": 0.0, "fs": 0.001, "s3": 0.005}
LOCKSTEP_SHARE = 0.35  # of the steps
BURST_SHARE = 0.2      # every node the same operation, with latency (not aligned)
REORDER = 2            # up to this many scheduling points before and after every store call


@dataclass
class Result:
    backend: str
    seed: int
    bug: str | None
    ops: int = 0
    checks: int = 0
    faults: int = 0
    crashes: int = 0
    lockstep_steps: int = 0
    contended: int = 0   # rendezvous releases of two or more creates at once
    same_key: int = 0    # ... of which two or more created the same key
    gate_timeouts: int = 0  # rendezvous waits that gave up on a member (none expected on memory)
    violation: str | None = None
    invariant: str | None = None  # which invariant the violation broke ("unexpected": an exception)
    trace: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]

    def replay_command(self) -> str:
        bug = f" --bug {self.bug}" if self.bug else ""
        return f".venv/bin/python fuzz/run.py replay --backend {self.backend} --seed {self.seed}{bug}"


def loghub_dir() -> Path:
    """The Loghub samples the rows come from: ``tests/data/loghub`` in the repo, or $HELIOS_LOGHUB_DIR."""
    return Path(os.environ.get("HELIOS_LOGHUB_DIR") or REPO / "tests" / "data" / "loghub")


def _lines() -> list[str]:
    root = loghub_dir()
    lines: list[str] = []
    for path in sorted(root.glob("*_2k.log")):
        lines += [line for line in path.read_text(encoding="utf-8").splitlines()[:200] if line.strip()]
    if not lines:
        raise SystemExit(f"fuzz: Loghub samples not found under {root}: set HELIOS_LOGHUB_DIR")
    return lines


_LOGHUB: list[str] = []


class Incarnation:
    """One life of a simulated node between crashes: its objects and its cancellable tasks."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.name = name
        self.directory = sim.root / name
        wall, token_hex = sim.wall, sim.tokens.token_hex
        self.engine = Engine(self.directory, name, memtable_rows=10**9, cache_bytes=64 << 20, clock=wall,
                             run_sync=sim.run_sync, token_hex=token_hex,
                             local_cache_bytes=sim.local_cache_bytes(name))
        self.replicator = Replicator(self.engine, sim.store, name, 0.1, clock=wall, commit=sim.commit,
                                     run_sync=sim.run_sync)
        lease = StubbornLease if sim.bug == "ignore-epoch" else Lease
        self.leases: dict[str, Lease] = {job: lease(job, sim.store, name, LEASE_TTL_S, clock=wall,
                                                    token_hex=token_hex) for job in JOBS}
        self.jobs = Maintenance(self.engine, sim.store, self.replicator, self.leases, name,
                                retention_days=lambda dataset: RETENTION_DAYS.get(dataset),
                                compaction_interval_s=1, retention_interval_s=1, gc_grace_s=GC_GRACE_S,
                                clock=wall, commit=sim.commit, run_sync=sim.run_sync, token_hex=token_hex)
        self.jobs.min_inputs = 2
        self.jobs.keep_versions = sim.keep_versions
        self._scopes: dict[trio.CancelScope, None] = {}  # in order: a crash cancels them in order
        self.alive = True

    async def guarded(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        with trio.CancelScope() as scope:
            self._scopes[scope] = None
            try:
                return await fn()
            finally:
                self._scopes.pop(scope, None)
        return None

    async def wait_stopped(self) -> None:
        """After ``crash``: wait until every task has unwound (a worker thread finishes what it does)."""
        while self._scopes:
            await trio.sleep(0.001)

    def crash(self) -> None:
        self.alive = False
        for scope in list(self._scopes):
            scope.cancel()


class Simulation(Invariants):
    def __init__(self, result: Result, rng: random.Random, root: Path, store: Backend, recorder: Recorder,
                 faulty: FaultyBackend, rendezvous: Rendezvous, *, tokens: SeededTokens,
                 run_sync: Callable[..., Awaitable[Any]]) -> None:
        self.result = result
        self.bug = result.bug
        self.rng = rng
        self.tokens = tokens
        self.run_sync = run_sync
        self.rendezvous = rendezvous
        self.root = root
        self.store = store
        self.recorder = recorder
        self.faulty = faulty
        self.nodes: dict[str, Incarnation] = {}
        self.retention_days = RETENTION_DAYS
        self.keep_versions = rng.choice([10**9, 10**9, 4])
        self.acked: dict[str, tuple[str, int]] = {}  # uid -> (dataset, day) of acknowledged rows
        self.attempted: set[str] = set()
        self.acked_commits_where: dict[str, tuple[str, int]] = {}  # commit id -> (partition, version)
        self.beliefs: dict[tuple[str, int], set[str]] = {}  # (job, epoch) -> nodes that believed they led
        self.errors: Counter[str] = Counter()
        self.burst_target: tuple[str, int] | None = None
        self._uid = 0
        # Some nodes keep only a few blocks locally (the rest is fetched from the store when read).
        # Drawn from their own generator, so the schedule of a seed is the same with or without them.
        self._cache_rng = random.Random(f"cache/{result.backend}/{result.seed}")
        self._cache_bytes: dict[str, int | None] = {}

    def local_cache_bytes(self, name: str) -> int | None:
        """A node's HELIOS_LOCAL_CACHE_BYTES: unbounded, or room for a few small blocks (same across restarts)."""
        if name not in self._cache_bytes:
            self._cache_bytes[name] = self._cache_rng.choice([None, None, 8_000, 30_000])
        return self._cache_bytes[name]

    def wall(self) -> int:
        return BASE_NS + int(trio.current_time() * 1e9)

    def trace(self, text: str) -> None:
        self.result.trace.append(f"{trio.current_time():.6f} {text}")

    async def commit(self, store: Backend, dataset: str, day: int, node_id: str,
                     change: Callable[[shared.SharedManifest], shared.SharedManifest | None], known: int = 0,
                     **kwargs: Any) -> shared.SharedManifest:
        """The ``commit`` seam of every node: ``shared.commit`` (or a planted one), seeded, recorded."""
        if self.bug == "ignore-epoch":
            change = blind_to_fences(change)
        commit = lost_append_commit if self.bug == "lost-append" else shared.commit
        result = await commit(store, dataset, day, node_id, change, known, token_hex=self.tokens.token_hex,
                              **kwargs)
        if result.node == node_id and result.commit_id:
            self.acked_commits_where[result.commit_id] = (shared.partition_prefix(dataset, day), result.version)
        return result

    # -- nodes -----------------------------------------------------------------

    async def start(self, name: str, nursery: trio.Nursery) -> Incarnation:
        node = Incarnation(self, name)
        await self.run_sync(node.engine.open)
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
        await node.replicator.fetch_indexes()  # the index task's work: ranged reads of index sections

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

    async def run_op(self, name: str, what: str, lockstep: bool = False) -> None:
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
        if lockstep:
            with self.rendezvous.member():
                await node.guarded(attempt)
        else:
            await node.guarded(attempt)

    LOCKSTEP: list[tuple[str, int]] = [("ship", 4), ("upload", 1), ("tick", 2), ("mixed", 3)]
    MIXED = ("ship", "ship", "compact", "retention")
    BURST = ("ship", "ship", "upload", "pull", "compact", "tick")

    def _choose_step(self, names: list[str]) -> tuple[list[tuple[str, str]], bool]:
        """The operations of one step, and whether it runs in lockstep."""
        ops, weights = zip(*self.OPS)
        roll = self.rng.random()
        if roll < LOCKSTEP_SHARE:  # every node at one instant, creates released together
            kinds, kind_weights = zip(*self.LOCKSTEP)
            what = self.rng.choices(kinds, kind_weights)[0]
            self.burst_target = (self.rng.choice(("a", "r")), self.rng.choice((0, 0, 0, 1, 4)))
            if what == "mixed":  # shipping into one partition while the leaders compact and drop
                return [(name, self.rng.choice(self.MIXED)) for name in names], True
            return [(name, what) for name in names], True
        if roll < LOCKSTEP_SHARE + BURST_SHARE:  # every node the same thing, at its own pace
            what = self.rng.choice(self.BURST)
            self.burst_target = (self.rng.choice(("a", "r")), self.rng.choice((0, 0, 1, 4)))
            return [(name, what) for name in names], False
        return [(self.rng.choice(names), self.rng.choices(ops, weights)[0])
                for _ in range(self.rng.randint(1, 4))], False

    async def schedule(self, nursery: trio.Nursery, steps: int) -> None:
        names = list(self.nodes)
        latency_s = self.faulty.max_latency_s
        for _ in range(steps):
            await trio.sleep(self.rng.uniform(0, 1.0))
            self.burst_target = None
            chosen, lockstep = self._choose_step(names)
            crash = self.rng.choice(names) if self.rng.random() < 0.06 else None
            crash_after = self.rng.uniform(0, 0.05)
            self.trace(f"step {'lockstep ' if lockstep else ''}{chosen} crash={crash}")
            self.result.lockstep_steps += lockstep
            self.faulty.max_latency_s = 0.0 if lockstep else latency_s
            async with trio.open_nursery() as step:
                for name, what in chosen:
                    step.start_soon(self.run_op, name, what, lockstep)
                if crash is not None:
                    async def crash_later(name: str = crash) -> None:
                        await trio.sleep(crash_after)
                        self.nodes[name].crash()
                    step.start_soon(crash_later)
            self.faulty.max_latency_s = latency_s
            if crash is not None:
                await self.restart(crash, nursery)
            self.check_one_leader_now()
            self.check_own_blocks_kept()

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


def run_schedule(backend: str, seed: int, *, bug: str | None = None, steps: int | None = None,
                 s3_env: dict[str, str] | None = None, workdir: Path | None = None) -> Result:
    """One schedule: simulate, quiesce, check. Returns the result; ``violation`` says what failed."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown planted bug {bug!r}: one of {', '.join(BUGS)}")
    if not _LOGHUB:
        _LOGHUB.extend(_lines())
    result = Result(backend, seed, bug)
    rng = random.Random(f"{backend}/{seed}/{bug}")
    tokens = SeededTokens(random.Random(f"secrets/{seed}/{bug}"))
    run_sync = inline_threads if backend == "memory" else trio.to_thread.run_sync
    base = workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"helios-fuzz-{backend}-{seed}-", dir=base))
    racy = bug in ("racy-create", "racy-create-in-thread")
    trio._core._run._r.seed(seed)  # trio shuffles its run queue: make the shuffle repeatable

    async def main() -> None:
        inner: Backend
        if backend == "memory":
            inner = RacyMemoryBackend() if racy else MemoryBackend()
        elif backend == "fs":
            fs = {"racy-create": RacyFsBackend, "racy-create-in-thread": RacyFsThreadBackend}.get(bug or "")
            inner = (fs or FsBackend)(root / "store")
        else:
            from backends.s3 import S3Backend

            assert s3_env is not None
            s3 = racy_s3_backend() if racy else S3Backend
            inner = await s3.from_url(f"s3://helios-test/fuzz-{seed}-{secrets.token_hex(4)}", s3_env)
        recorder = Recorder(NonAtomicCreate(inner) if bug == "non-atomic-cas" else inner)
        rendezvous = Rendezvous()
        faulty = FaultyBackend(recorder, seed=seed, error_rate=rng.choice([0.0, 0.02, 0.08]),
                               lost_answer_rate=rng.choice([0.0, 0.02, 0.05]),
                               max_latency_s=rng.choice([0.005, 0.02, 0.1]), reorder=REORDER,
                               rendezvous=rendezvous)
        sim = Simulation(result, rng, root, faulty, recorder, faulty, rendezvous, tokens=tokens, run_sync=run_sync)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(rng.randint(2, 4)):
                    await sim.start(f"n{i}", nursery)
                nursery.start_soon(sim.watch_leaders)
                await sim.schedule(nursery, steps or rng.randint(25, 60))
                await sim.quiesce()
                await sim.check_all()
                nursery.cancel_scope.cancel()
        except Violation as exc:
            result.violation, result.invariant = str(exc), exc.invariant
        finally:
            result.faults = sum(n for k, n in faulty.counters.snapshot().items()
                                if k.startswith(("injected", "lost")))
            result.contended, result.same_key = rendezvous.releases, rendezvous.same_key
            result.gate_timeouts = rendezvous.timeouts
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
            result.violation, result.invariant = str(found), found.invariant
        else:  # an operation raised what a node's loop would not survive: a bug
            where = traceback.extract_tb(found.__traceback__)[-1]
            result.violation = (f"unexpected {type(found).__name__}: {found} "
                                f"at {Path(where.filename).name}:{where.lineno}")
            result.invariant = "unexpected"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if result.violation:
        result.trace.append(f"VIOLATION {result.violation}")
    return result

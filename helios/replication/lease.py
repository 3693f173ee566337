"""Leader leases: one holder per job across the cluster, with fencing epochs.

Layout::

    _control/leases/<job>/<epoch>   {holder, epoch, commit, at, beat}   created with create-if-absent
    _control/beats/node.<node>      {node, beat, held: {job: epoch}}    put by a node each tick while it holds any

Taking the lease for epoch ``e + 1`` is a create-if-absent of its record: of
racing takers exactly one wins. The record names the key where its holder
beats. A node's leases share one *group*, which renews all of them with one
put of its beat object per tick (``ttl/3``): the beat counter goes up and
``held`` lists the epochs it holds. Every other node watches the holder of
each job through that object; if *what it observes* of a job (newest epoch,
holder, the holder's beat for that epoch) has not changed for ``ttl * 1.5``
of its own monotonic clock, the lease is stale and it tries to take ``e + 1``.
No wall clocks are compared across nodes, so clock skew cannot make two
leaders.

A holder considers itself leader only until ``ttl`` after the start of its
last successful renewal (its own monotonic clock), which is before anyone
else may take over (``ttl * 1.5`` after they last saw a change). A renewal
counts only if its beat write returned while the lease was still valid, and
"unchanged since" is judged at the start of the tick's reads: a slow store
answer can then never make two leaders. A holder
paused longer (SIGSTOP, a long GC) wakes up no longer leader; and whatever it
was about to commit carries its old epoch, which manifests refuse once a
newer epoch has committed there (``shared.Fenced``). A node that finds a
newer epoch than its own steps down: each tick it lists one job's records
after the newest it knows (round robin), and ``still_leader`` lists before
every leader commit.

Store requests per tick, whatever the number of jobs: one LIST (one job's new
records) plus one PUT (its beat, when it holds any lease) or one GET per
other holder it watches (usually one). At the default 30 s lease that is
two requests every 10 s.

A node with no shared store holds every lease, epoch 1. Epoch records are
kept (one small object per change of leader): they are the history that
says which node held which epoch.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import orjson
import trio

from backends import Backend, Conflict, Corrupt, NotFound, create_resolved, list_all
from helios import log, timeutil
from helios.supervisor import Health, supervise

__all__ = ["BEATS", "JOBS", "Lease", "LeaseGroup", "lease_group"]

JOBS = ("compaction", "retention", "monitors")
PREFIX = "_control/leases/"
BEATS = "_control/beats/"
STALE_FACTOR = 1.5
_NAME = re.compile(r"[0-9]{12,}(\.beat)?")  # .beat: the beat objects of an older layout, ignored
UNREADABLE = "?"  # the holder of an epoch whose record cannot be read
NOT_RENEWED = -2  # the observed beat of a holder whose beat object does not list the epoch

_log = log.get("helios.lease")


@dataclass(frozen=True)
class Observation:
    epoch: int
    holder: str
    beat: int


@dataclass
class _Record:
    epoch: int
    holder: str
    beat_key: str | None


class Lease:
    """One job's lease as this node sees it; ticks are done by its group (shared by a node's leases)."""

    def __init__(self, job: str, store: Backend | None, node_id: str, ttl_s: float, *,
                 health: Health | None = None, group: LeaseGroup | None = None,
                 clock: Callable[[], int] = timeutil.now_ns,
                 token_hex: Callable[[int], str] = secrets.token_hex) -> None:
        """``clock`` (wall ns, only written into the record) and ``token_hex`` (the record's commit id)
        are seams for the fuzzer; lease timing uses trio's clock, which the fuzzer mocks."""
        self.job = job
        self.health = health if health is not None else Health()
        self._clock = clock
        self._token_hex = token_hex
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.epoch = 1 if store is None else 0  # the epoch this node holds, 0 if none
        self._valid_until = float("inf") if store is None else -1.0
        self._newest: _Record | None = None  # the newest epoch record known
        self._seen: Observation | None = None
        self._seen_at = 0.0
        self.holder: str | None = node_id if store is None else None  # the leader as last observed
        self.group = group if group is not None else LeaseGroup(store, node_id, ttl_s, self.health,
                                                                beat_key=f"{BEATS}job.{job}.{node_id}")
        self.group.add(self)

    @property
    def is_leader(self) -> bool:
        return self.epoch > 0 and trio.current_time() < self._valid_until

    def leader(self) -> str | None:
        """The holder this node last observed (itself while it leads)."""
        if self.is_leader:
            return self.node_id
        return self.holder

    async def still_leader(self, epoch: int) -> bool:
        """Re-read the store just before a leader commit: is ``epoch`` still the newest?"""
        if self.store is None:
            return True
        newest = await self.refresh()
        return self.is_leader and newest is not None and newest.epoch == epoch

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run this lease's group (a node runs each of its groups once; see ``lease_group``)."""
        await self.group.run(task_status=task_status)

    async def tick(self) -> None:
        """One pass of this lease's group: renew what it holds, watch the rest, take over stale leases."""
        await self.group.tick()

    # -- observing the store ----------------------------------------------------

    async def refresh(self) -> _Record | None:
        """List this job's records after the newest known; read a newer one's record; step down if superseded."""
        assert self.store is not None
        known = self._newest.epoch if self._newest is not None else 0
        start_after = self._key(known) if known else ""
        newest = None
        async for info in list_all(self.store, f"{PREFIX}{self.job}/", start_after=start_after):
            name = info.key.rsplit("/", 1)[1]
            if not _NAME.fullmatch(name):
                self.health.quarantine(f"lease {self.job}", info.key, "not a lease record name")
            elif not name.endswith(".beat"):
                newest = max(newest or 0, int(name))
        if newest is not None and newest > known:
            record = await self._read_record(newest)
            if record is not None:
                self._learn(record)
        return self._newest

    async def _read_record(self, epoch: int) -> _Record | None:
        assert self.store is not None
        key = self._key(epoch)
        try:
            doc = _parse(await self.store.get(key), key, ("holder",))
        except NotFound:
            return None
        except Corrupt as exc:
            self.health.quarantine(f"lease {self.job}", exc.key, exc.reason)
            return _Record(epoch, UNREADABLE, None)
        holder = doc["holder"] if isinstance(doc["holder"], str) else UNREADABLE
        beat = doc.get("beat")
        return _Record(epoch, holder, beat if isinstance(beat, str) and beat.startswith(BEATS) else None)

    def _learn(self, record: _Record) -> None:
        """A newer epoch exists: it is the one to watch; a holder of an older one steps down."""
        if self._newest is not None and record.epoch <= self._newest.epoch:
            return
        self._newest = record
        self.holder = record.holder
        if self.epoch and record.epoch > self.epoch:
            log.log(_log, logging.INFO, "lost the lease", job=self.job, epoch=self.epoch, newer=record.epoch,
                    holder=record.holder)
            self.epoch = 0

    def _observe(self, beats: dict[str, dict[str, Any] | None]) -> Observation | None:
        """What this node sees of the job now, given the beat objects just read."""
        if self._newest is None:
            return None
        record = self._newest
        beat = NOT_RENEWED
        doc = beats.get(record.beat_key) if record.beat_key else None
        if doc is not None:
            held = doc.get("held")
            if isinstance(held, dict) and held.get(self.job) == record.epoch and isinstance(doc.get("beat"), int):
                beat = doc["beat"]
        return Observation(record.epoch, record.holder, beat)

    async def _take(self, epoch: int, started: float) -> None:
        assert self.store is not None
        record = {"holder": self.node_id, "epoch": epoch, "commit": self._token_hex(8),
                  "at": timeutil.format_ns(self._clock()), "beat": self.group.beat_key}
        try:
            await create_resolved(self.store, self._key(epoch), orjson.dumps(record))
        except Conflict:
            await self.refresh()  # someone else took it: watch them
            return
        self._newest = _Record(epoch, self.node_id, self.group.beat_key)
        self.epoch, self.holder = epoch, self.node_id
        self._valid_until = started + self.ttl_s
        self._seen = Observation(epoch, self.node_id, 0)
        log.log(_log, logging.INFO, "took the lease", job=self.job, epoch=epoch)

    def _key(self, epoch: int) -> str:
        return f"{PREFIX}{self.job}/{epoch:012d}"


class LeaseGroup:
    """The leases of one node: one beat object renews all it holds; one tick serves every job."""

    def __init__(self, store: Backend | None, node_id: str, ttl_s: float, health: Health | None = None, *,
                 beat_key: str | None = None) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.health = health if health is not None else Health()
        self.beat_key = beat_key or f"{BEATS}node.{node_id}"
        self.leases: dict[str, Lease] = {}
        self._beat = 0
        self._turn = 0
        self._started = False

    def add(self, lease: Lease) -> None:
        self.leases[lease.job] = lease

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.store is None:
            await trio.sleep_forever()
        await supervise(self.health, "leases", self.tick, interval_s=self.ttl_s / 3)

    async def tick(self) -> None:
        """Refresh one job's records (all on the first tick), renew, watch, take over what is stale."""
        assert self.store is not None
        before = trio.current_time()  # a renewal counts from before it was written: conservative
        leases = list(self.leases.values())
        if not self._started:
            for lease in leases:
                await lease.refresh()
            self._started = True
        else:
            await leases[self._turn % len(leases)].refresh()
            self._turn += 1
        for lease in leases:
            if lease.epoch and trio.current_time() >= lease._valid_until:
                # Paused beyond the lease: others may already be taking over. Do not renew a lease
                # we no longer hold for sure; compete for the next epoch like anyone.
                lease.epoch = 0
        held = {lease.job: lease.epoch for lease in leases if lease.epoch}
        if held:
            self._beat += 1
            await self.store.put(self.beat_key, orjson.dumps(
                {"node": self.node_id, "beat": self._beat, "held": held}))
            returned = trio.current_time()
            for lease in leases:
                if not lease.epoch or held.get(lease.job) != lease.epoch:
                    continue
                if returned >= lease._valid_until:
                    # The beat may have landed after the lease ran out, when another node (seeing no
                    # change for the stale period) may already hold the next epoch: step down.
                    log.log(_log, logging.INFO, "a lease renewal returned too late; stepping down",
                            job=lease.job, epoch=lease.epoch)
                    lease.epoch = 0
                else:
                    lease._valid_until = before + self.ttl_s
        beats = await self._read_beats(lease._newest.beat_key for lease in leases
                                       if lease._newest is not None and lease._newest.holder != self.node_id)
        # A change counts as seen when the read that saw it returned (``now``); "unchanged since" is
        # judged at the *start* of this tick's reads (``before``): a slow read can answer an old beat
        # after a newer one was written, so only its start is known to come after what it saw.
        now = trio.current_time()
        for lease in leases:
            if lease.epoch:
                continue
            seen = lease._observe(beats)
            if seen is None:
                await lease._take(1, trio.current_time())
                continue
            lease.holder = seen.holder
            if seen != lease._seen:
                lease._seen, lease._seen_at = seen, now
            elif before - lease._seen_at >= self.ttl_s * STALE_FACTOR:
                await lease._take(seen.epoch + 1, trio.current_time())

    async def _read_beats(self, keys: Iterable[str | None]) -> dict[str, dict[str, Any] | None]:
        """The beat objects of the holders watched (one GET each; usually one holder)."""
        assert self.store is not None
        out: dict[str, dict[str, Any] | None] = {}
        for key in sorted({k for k in keys if k is not None}):
            try:
                out[key] = _parse(await self.store.get(key), key, ("beat",))
            except NotFound:
                out[key] = None
            except Corrupt as exc:
                self.health.quarantine("leases", exc.key, exc.reason)
                out[key] = None
            else:
                held = out[key].get("held") if out[key] else None  # type: ignore[union-attr]
                if isinstance(held, dict):  # another holder's claim of a newer epoch: learn it
                    for job, epoch in held.items():
                        lease = self.leases.get(job)
                        known = lease._newest.epoch if lease is not None and lease._newest is not None else 0
                        if lease is not None and isinstance(epoch, int) and epoch > known:
                            record = await lease._read_record(epoch)
                            if record is not None:
                                lease._learn(record)
        return out


def lease_group(jobs: Iterable[str], store: Backend | None, node_id: str, ttl_s: float,
                health: Health | None = None, *, clock: Callable[[], int] = timeutil.now_ns,
                token_hex: Callable[[int], str] = secrets.token_hex) -> dict[str, Lease]:
    """The leases of one node, sharing one group (run it once: ``next(iter(leases.values())).run``).

    ``clock`` and ``token_hex`` are the fuzzer's seams (see ``Lease``)."""
    group = LeaseGroup(store, node_id, ttl_s, health)
    return {job: Lease(job, store, node_id, ttl_s, health=group.health, group=group, clock=clock, token_hex=token_hex)
            for job in jobs}


def _parse(data: bytes, key: str, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Corrupt(key, f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or any(f not in doc for f in fields):
        raise Corrupt(key, f"not a lease record (needs {', '.join(fields)})")
    return doc

"""Leader leases: one holder per job across the cluster, with fencing epochs.

Layout, per job (``compaction``, ``retention``, ``monitors``)::

    _control/leases/<job>/<epoch>        {holder, epoch, commit, at}  created with create-if-absent
    _control/leases/<job>/<epoch>.beat   {holder, epoch, beat}         put by the holder each renewal

Taking the lease for epoch ``e + 1`` is a create-if-absent of its key: of
racing takers exactly one wins. The holder renews by writing its beat every
``ttl/3``. Every other node watches the newest epoch and its beat; if *what
it observes* has not changed for ``ttl * 1.5`` of its own monotonic clock,
the lease is stale and it tries to take ``e + 1``. No wall clocks are
compared across nodes, so clock skew cannot make two leaders.

A holder considers itself leader only until ``ttl`` after its last
successful renewal (its own monotonic clock), which is before anyone else
may take over (``ttl * 1.5`` after they last saw a change). A holder paused
longer (SIGSTOP, a long GC) wakes up no longer leader; and whatever it was
about to commit carries its old epoch, which manifests refuse once a newer
epoch has committed there (``shared.Fenced``). A node that finds a newer
epoch than its own steps down.

A node with no shared store holds every lease, epoch 1. Epoch records are
kept (one small object per change of leader): they are the history that
says which node held which epoch.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import trio

from backends import Backend, Conflict, Corrupt, NotFound, create_resolved, list_all
from helios import log, timeutil
from helios.supervisor import Health, supervise

__all__ = ["JOBS", "Lease"]

JOBS = ("compaction", "retention", "monitors")
PREFIX = "_control/leases/"
STALE_FACTOR = 1.5
_NAME = re.compile(r"[0-9]{12,}(\.beat)?")
UNREADABLE = "?"  # the holder of an epoch whose record cannot be read

_log = log.get("helios.lease")


@dataclass(frozen=True)
class Observation:
    epoch: int
    holder: str
    beat: int


class Lease:
    def __init__(self, job: str, store: Backend | None, node_id: str, ttl_s: float, *,
                 health: Health | None = None, clock: Callable[[], int] = timeutil.now_ns,
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
        self._beat = 0
        self._seen: Observation | None = None
        self._seen_at = 0.0
        self.holder: str | None = node_id if store is None else None  # the leader as last observed

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
        newest = await self._observe()
        return self.is_leader and newest is not None and newest.epoch == epoch

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.store is None:
            await trio.sleep_forever()
        await supervise(self.health, f"lease {self.job}", self.tick, interval_s=self.ttl_s / 3)

    async def tick(self) -> None:
        """One pass: renew if holding; otherwise watch, and take over a stale lease."""
        assert self.store is not None
        # Timing rules (all on this node's monotonic clock; see the module docstring):
        # - a renewal counts from before it was written (``before``), and only if the write returned
        #   while the previous renewal was still valid: a beat that lands later may land after
        #   another node, seeing no change for the stale period, has taken the next epoch;
        # - a change counts as seen when the read that saw it returned (``now``), and "unchanged
        #   since" is judged at the *start* of the latest read (``before``): a slow read can return
        #   an old beat after a newer one was written, so only its start is known to be "after".
        before = trio.current_time()
        seen = await self._observe()
        now = trio.current_time()
        if seen is None:
            await self._take(1)
            return
        self.holder = seen.holder
        if seen.holder == self.node_id and seen.epoch == self.epoch:
            if now >= self._valid_until:
                # Paused beyond the lease: others may already be taking over. Do not renew a
                # lease we no longer hold for sure; compete for the next epoch like anyone.
                self.epoch = 0
            else:
                self._beat += 1
                await self.store.put(self._key(self.epoch) + ".beat", orjson.dumps(
                    {"holder": self.node_id, "epoch": self.epoch, "beat": self._beat}))
                if trio.current_time() >= self._valid_until:  # the beat may have landed too late
                    log.log(_log, logging.INFO, "a lease renewal returned too late; stepping down",
                            job=self.job, epoch=self.epoch)
                    self.epoch = 0
                    return
                self._valid_until = before + self.ttl_s
                return
        if self.epoch and seen.epoch > self.epoch:
            log.log(_log, logging.INFO, "lost the lease", job=self.job, epoch=self.epoch, newer=seen.epoch,
                    holder=seen.holder)
            self.epoch = 0
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
            return
        if before - self._seen_at >= self.ttl_s * STALE_FACTOR:
            await self._take(seen.epoch + 1)

    async def _observe(self) -> Observation | None:
        """The newest epoch, its holder and beat.

        A record or beat that cannot be parsed is quarantined (reported by
        name) and observed as held by nobody known (``UNREADABLE``): no node
        renews it, so once it has stayed unchanged for the stale period a node
        takes the next epoch and the job goes on. Unknown names under the
        job's folder are quarantined too.
        """
        assert self.store is not None
        epochs = []
        async for info in list_all(self.store, f"{PREFIX}{self.job}/"):
            name = info.key.rsplit("/", 1)[1]
            if _NAME.fullmatch(name):
                if not name.endswith(".beat"):
                    epochs.append(int(name))
            else:
                self.health.quarantine(f"lease {self.job}", info.key, "not a lease record name")
        if not epochs:
            return None
        epoch = max(epochs)
        try:
            record = _parse(await self.store.get(self._key(epoch)), self._key(epoch), ("holder",))
            holder = record["holder"] if isinstance(record["holder"], str) else UNREADABLE
        except NotFound:
            return None
        except Corrupt as exc:
            self.health.quarantine(f"lease {self.job}", exc.key, exc.reason)
            holder = UNREADABLE
        beat = 0
        try:
            beat = _parse(await self.store.get(self._key(epoch) + ".beat"), self._key(epoch) + ".beat",
                          ("beat",))["beat"]
        except NotFound:
            pass
        except Corrupt as exc:
            self.health.quarantine(f"lease {self.job}", exc.key, exc.reason)
            beat = -1
        return Observation(epoch, holder, beat)

    async def _take(self, epoch: int) -> None:
        assert self.store is not None
        started = trio.current_time()
        record = {"holder": self.node_id, "epoch": epoch, "commit": self._token_hex(8),
                  "at": timeutil.format_ns(self._clock())}
        try:
            await create_resolved(self.store, self._key(epoch), orjson.dumps(record))
        except Conflict:
            return
        self.epoch, self._beat, self.holder = epoch, 0, self.node_id
        self._valid_until = started + self.ttl_s
        self._seen = Observation(epoch, self.node_id, 0)
        log.log(_log, logging.INFO, "took the lease", job=self.job, epoch=epoch)

    def _key(self, epoch: int) -> str:
        return f"{PREFIX}{self.job}/{epoch:012d}"


def _parse(data: bytes, key: str, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Corrupt(key, f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or any(f not in doc for f in fields):
        raise Corrupt(key, f"not a lease record (needs {', '.join(fields)})")
    return doc

"""The control plane: one totally ordered, sealed, replicated log of changes.

Every change to a control-plane object (a user, an API token, a dashboard, a
monitor, the settings, a dataset's settings) is one entry of a log::

    _control/log/000000000001      sealed {kind, id, version, doc|null, by, at, node, commit}
    _control/log/000000000002
    ...
    _control/fingerprints.json     HMAC fingerprints of the control key and JWT secret,
                                   the encryption mode, and the cluster id

Entry ``n + 1`` is written with the store's create-if-absent — the same
compare-and-swap as partition manifests — by a writer that has applied entry
``n``. Of racing writers exactly one wins; a loser pulls the entries it
missed, re-checks its change against the new state (a stale version is then a
409 for its caller) and tries the next number. So the log has no gaps, every
node applies the same entries in the same order, and per-object versions are
a cluster-wide optimistic-concurrency check, never a silent overwrite.

Each entry is sealed with AES-256-GCM under the control key, with a fresh
nonce and the entry's position (``helios/control/log/<seq>``) as associated
data: entries cannot be read, altered, reordered or replayed at another
position without the key. Log keys carry only a number, so no name, title or
hash appears anywhere in plaintext. With encryption ``none`` entries are
plain JSON.

The node keeps a local mirror of the log in ``<data-dir>/control/log/`` and
the applied state in memory, so reads never touch the store and a node starts
(read-only) while the store is down. Without a shared store the local mirror
is the log itself. Changes need the log's authority: with a shared store that
is the store, so they answer 503 while it is unreachable.

The log doubles as the audit trail: every entry names who changed what, when,
from which node.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
import trio

from backends import Backend, Conflict, Corrupt, NotFound, StoreError, create_resolved, list_all
from backends import Unavailable as StoreUnavailable
from backends.fs import FsBackend
from helios import log, timeutil
from helios.control import snapshot
from helios.control.sealing import Sealer, check_fingerprints, checked_entry
from helios.control.snapshot import AuditEntry, Obj
from helios.errors import ConfigError, Unavailable
from helios.supervisor import Health, supervise

__all__ = ["KINDS", "UNCHANGED", "AuditEntry", "ControlPlane", "Obj", "Sealer"]

KINDS = ("users", "tokens", "dashboards", "monitors", "settings", "datasets", "alerts")  # alerts: helios.monitors
STORE_LOG = "_control/log/"
STORE_FINGERPRINTS = "_control/fingerprints.json"
LOCAL_LOG = "log/"
LOCAL_FINGERPRINTS = "fingerprints.json"
MAX_COMMIT_ATTEMPTS = 50
KEEP_COMMIT_IDS = 4096

UNCHANGED: Any = object()  # a mutation's answer when nothing needs writing

_log = log.get("helios.control")


def _seq_name(seq: int) -> str:
    return f"{seq:012d}"


async def _entries(backend: Backend, prefix: str, start_after: str = "") -> list[tuple[int, str]]:
    """``(seq, key)`` of the log entries under ``prefix``, in order."""
    return [(int(info.key.rsplit("/", 1)[1]), info.key)
            async for info in list_all(backend, prefix, start_after=start_after)]


Mutation = Callable[["Obj | None"], Any]


class ControlPlane:
    def __init__(self, directory: Path, sealer: Sealer, node_id: str) -> None:
        self.directory = directory
        self.sealer = sealer
        self.node_id = node_id
        self.local = FsBackend(directory)
        self.store: Backend | None = None
        self.store_label = ""
        self.attached = False  # fingerprints checked and the store's log pulled at least once
        self.cluster = ""
        self.applied = 0
        self.last_pull_ns: int | None = None
        self.audit: list[AuditEntry] = []
        self._objects: dict[tuple[str, str], Obj] = {}
        self._lock = trio.Lock()
        self._alone = False  # bootstrap_alone: the local log is the authority for a moment
        self.health = Health()  # the node's, when it runs one (helios.supervisor)
        self._commits: dict[int, str] = {}  # seq -> commit id of the newest entries (read-back after a lost answer)
        # Set by the node when a change feed carries the log's news (helios.replication.replicator):
        # ``announce(seq)`` after each entry this node writes; ``poke(seq)`` when the feed shows one.
        self.announce: Callable[[int], Awaitable[None]] | None = None
        self._poked = False
        self._announced = 0  # the newest entry the change feed announced
        self._pulled_at = -1e18  # trio time of the last pull that went through
        self.snapshot_every = snapshot.SNAPSHOT_EVERY

    # -- reads (in memory, never blocking) -----------------------------------

    def get(self, kind: str, object_id: str) -> Obj | None:
        """The live object, or None if it never existed or was deleted."""
        obj = self._objects.get((kind, object_id))
        return obj if obj is not None and obj.doc is not None else None

    def state(self, kind: str, object_id: str) -> Obj | None:
        """Like ``get`` but also returns a deleted object's tombstone."""
        return self._objects.get((kind, object_id))

    def list(self, kind: str) -> list[Obj]:
        return sorted((o for (k, _), o in self._objects.items() if k == kind and o.doc is not None),
                      key=lambda o: (o.created_ns, o.id))

    @property
    def writable(self) -> bool:
        return self.store is None or self.attached

    async def bootstrap_alone(self, commit: Callable[[], Awaitable[None]]) -> None:
        """Make a brand-new node usable while its store is unreachable: commit locally, under a fresh cluster id.

        Only for an empty local log (the first admin). The fresh id marks
        these entries as not the store's: on joining, a store with its own
        control plane replaces them; an empty store is seeded with them.
        """
        assert self.store is not None and not self.attached and self.applied == 0
        self.cluster = secrets.token_hex(8)
        await self.local.put(LOCAL_FINGERPRINTS, orjson.dumps({**self.sealer.fingerprints(), "cluster": self.cluster}))
        self._alone = True
        try:
            await commit()
        finally:
            self._alone = False

    # -- start-up ------------------------------------------------------------

    async def open(self) -> None:
        """Check the local fingerprints and replay the local mirror of the log."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mine = self.sealer.fingerprints()
        recorded = await self._read_json(self.local, LOCAL_FINGERPRINTS)
        if recorded is None:
            recorded = {**mine, "cluster": secrets.token_hex(8)}
            await self.local.put(LOCAL_FINGERPRINTS, orjson.dumps(recorded))
        check_fingerprints(mine, recorded, f"control plane in {self.directory}",
                           f"or move {self.directory} away to start this node with an empty control plane")
        self.cluster = recorded["cluster"]
        newest = await snapshot.newest(self.local, snapshot.LOCAL_SNAPSHOTS)
        if newest is not None:
            blob = await self.local.get(snapshot.key(snapshot.LOCAL_SNAPSHOTS, newest))
            self._load_snapshot(newest, blob, f"control-plane snapshot {newest} in {self.directory}")
        for seq, key in await _entries(self.local, LOCAL_LOG):
            if seq <= self.applied:
                continue  # covered by the snapshot
            if seq != self.applied + 1:
                break
            blob = await self.local.get(key)
            self._apply(seq, self.sealer.open(self._aad(seq), blob, f"control-plane entry {seq} in {self.directory}"))

    async def attach(self, store: Backend, label: str) -> None:
        """Join the store's control plane: compare fingerprints, adopt or seed its log, pull."""
        self.store, self.store_label = store, label
        async with self._lock:
            await self._attach()

    async def try_attach(self, timeout_s: float) -> bool:
        """``attach`` at start-up; an unreachable store only defers it to the sync loop."""
        assert self.store is not None
        try:
            with trio.fail_after(timeout_s):
                async with self._lock:
                    await self._attach()
            return True
        except (StoreError, trio.TooSlowError) as exc:
            self.health.fail("control sync", "", exc)  # cleared by the sync loop's first success
            log.log(_log, logging.WARNING, "could not join the shared control plane; serving the local copy "
                    "read-only until it can", error=str(exc) or type(exc).__name__)
            return False

    async def _attach(self) -> None:
        assert self.store is not None
        mine = self.sealer.fingerprints()
        theirs = await self._read_json(self.store, STORE_FINGERPRINTS)
        if theirs is None:
            proposal = {**mine, "cluster": self.cluster, "created_at": timeutil.format_ns(timeutil.now_ns()),
                        "commit": secrets.token_hex(8)}
            try:
                await create_resolved(self.store, STORE_FINGERPRINTS, orjson.dumps(proposal))
                theirs = proposal
            except Conflict:
                theirs = await self._read_json(self.store, STORE_FINGERPRINTS)
                assert theirs is not None
        check_fingerprints(mine, theirs, f"shared control plane at {self.store_label}",
                           "then start the node again")
        if theirs["cluster"] != self.cluster:
            await self._adopt(theirs["cluster"])
        await self._pull(check_snapshot=True)
        if self.applied and not await self._store_has(self.applied):
            await self._seed()
        self.attached = True

    async def _adopt(self, cluster: str) -> None:
        """This node's local log belongs to another control plane: replace it with the store's."""
        if self.applied:
            log.log(_log, logging.WARNING, "the shared store holds another control plane; this node's "
                    "local users, tokens and settings are replaced by the shared ones",
                    local_entries=self.applied)
        for _, key in await _entries(self.local, LOCAL_LOG):
            await self.local.delete(key)
        async for info in list_all(self.local, snapshot.LOCAL_SNAPSHOTS):
            await self.local.delete(info.key)
        recorded = {**self.sealer.fingerprints(), "cluster": cluster}
        await self.local.put(LOCAL_FINGERPRINTS, orjson.dumps(recorded))
        self.cluster = cluster
        self.applied = 0
        self.audit.clear()
        self._objects.clear()
        self._commits.clear()

    async def _store_has(self, seq: int) -> bool:
        assert self.store is not None
        try:
            await self.store.get(STORE_LOG + _seq_name(seq))
            return True
        except NotFound:
            return False

    async def _seed(self) -> None:
        """The store's log is behind this node's (a new or restored store): copy the missing entries up."""
        assert self.store is not None
        head = max((seq for seq, _ in await _entries(self.store, STORE_LOG)), default=0)
        local = await snapshot.newest(self.local, snapshot.LOCAL_SNAPSHOTS)
        if local is not None and head < local:  # this node's log starts after its snapshot: seed that first
            blob = await self.local.get(snapshot.key(snapshot.LOCAL_SNAPSHOTS, local))
            await create_resolved(self.store, snapshot.key(snapshot.STORE_SNAPSHOTS, local), blob)
            head = local
        for seq in range(head + 1, self.applied + 1):
            blob = await self.local.get(LOCAL_LOG + _seq_name(seq))
            await create_resolved(self.store, STORE_LOG + _seq_name(seq), blob)
        log.log(_log, logging.INFO, "seeded the shared control plane", entries=self.applied - head)

    # -- sync ----------------------------------------------------------------

    async def pull(self) -> int:
        """Apply the store's entries this node has not seen; return how many."""
        async with self._lock:
            return await self._pull()

    async def _pull(self, *, check_snapshot: bool = False) -> int:
        """Apply the store's new entries; from its newest snapshot first if the entries this node
        needs were trimmed (looked for when asked, or when the feed announced a later entry)."""
        assert self.store is not None
        before = self.applied
        while True:
            # The log has no gaps (entry n+1 is only written after n), so reading the next
            # number until it is absent finds every new entry: one GET per poll when nothing
            # changed, whatever the length of the log (a LIST would cost its whole length on fs).
            seq = self.applied + 1
            key = STORE_LOG + _seq_name(seq)
            try:
                blob = await self.store.get(key)
            except NotFound:
                if (check_snapshot or self._announced > self.applied) and await self._catch_up():
                    check_snapshot = False
                    continue
                break
            try:
                # The fingerprints matched when attaching: an entry this node cannot open is damaged.
                entry = checked_entry(KINDS, self.sealer.open(self._aad(seq), blob,
                                                        f"control-plane entry {seq} in {self.store_label}"))
            except ConfigError as exc:
                raise Corrupt(key, str(exc)) from None
            await self.local.put(LOCAL_LOG + _seq_name(seq), blob)
            self._apply(seq, entry)
            if seq % self.snapshot_every == 0:
                await self._keep_snapshot(seq, self._seal_snapshot(seq))
        self.last_pull_ns = timeutil.now_ns()
        self._pulled_at = trio.current_time()
        return self.applied - before

    def poke(self, seq: int) -> None:
        """The change feed announced log entry ``seq`` (0: look anyway): the next sync step pulls."""
        if seq == 0 or seq > self.applied:
            self._poked = True
            self._announced = max(self._announced, seq)

    async def _catch_up(self) -> bool:
        """Load the store's newest snapshot if it is past this node's state (the entries in between
        were trimmed); False when there is none."""
        assert self.store is not None
        newest = await snapshot.newest(self.store, snapshot.STORE_SNAPSHOTS, after=self.applied)
        if newest is None:
            return False
        key = snapshot.key(snapshot.STORE_SNAPSHOTS, newest)
        blob = await self.store.get(key)
        try:
            self._load_snapshot(newest, blob, f"control-plane snapshot {newest} in {self.store_label}")
        except ConfigError as exc:
            raise Corrupt(key, str(exc)) from None
        await self._keep_snapshot(newest, blob)
        log.log(_log, logging.INFO, "read the control plane from a snapshot", seq=newest)
        return True

    # -- snapshots -------------------------------------------------------------

    def _seal_snapshot(self, seq: int) -> bytes:
        """The state right after entry ``seq`` (call it then, with no checkpoint in between), sealed."""
        doc = snapshot.encode(seq, self.cluster, self._objects.values(), self.audit[-snapshot.AUDIT_KEEP:])
        return self.sealer.seal(snapshot.aad(seq), doc)

    def _load_snapshot(self, seq: int, blob: bytes, where: str) -> None:
        try:
            objects, audit = snapshot.decode(self.sealer.open(snapshot.aad(seq), blob, where), seq)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        self._objects = {(o.kind, o.id): o for o in objects}
        self.audit = audit
        self._commits.clear()
        self.applied = seq

    async def _keep_snapshot(self, seq: int, blob: bytes) -> None:
        """Keep a snapshot in the local mirror and trim the local log behind the previous one."""
        await self.local.put(snapshot.key(snapshot.LOCAL_SNAPSHOTS, seq), blob)
        await snapshot.trim(self.local, LOCAL_LOG, snapshot.LOCAL_SNAPSHOTS, seq, self.snapshot_every)

    async def _publish_snapshot(self, seq: int, blob: bytes) -> None:
        """This node committed entry ``seq``: create its snapshot in the store, then trim the store's log."""
        assert self.store is not None
        await snapshot.publish(self.store, STORE_LOG, seq, blob, self.snapshot_every)

    async def run(self, interval_s: float, on_attach: Callable[[], Awaitable[None]],
                  *, task_status: Any = trio.TASK_STATUS_IGNORED, safety_poll_s: float | None = None) -> None:
        """Pull the shared log every ``interval_s``; attach first if start-up could not.

        With ``safety_poll_s`` (a change feed pokes this plane), a step pulls
        only when poked or once that long has passed since the last pull: an
        idle node then reads nothing from the log between safety polls.
        ``on_attach`` (creating the first admin) runs after joining, and again
        after any pass that finds no user (its commit may have failed before).
        """
        task_status.started()

        async def step() -> None:
            if not self.attached:
                assert self.store is not None
                await self.attach(self.store, self.store_label)
                log.log(_log, logging.INFO, "joined the shared control plane", entries=self.applied)
            elif (safety_poll_s is None or self._poked
                  or trio.current_time() - self._pulled_at >= safety_poll_s):
                poked, self._poked = self._poked, False
                try:
                    async with self._lock:
                        await self._pull(check_snapshot=not poked)
                except BaseException:
                    self._poked = self._poked or poked  # not read yet: the next step tries again
                    raise
            if not self.list("users"):
                try:
                    await on_attach()
                except Unavailable as exc:  # the store failed while the admin was written: retried
                    raise StoreUnavailable(str(exc)) from None

        await supervise(self.health, "control sync", step, interval_s=interval_s, first_delay_s=interval_s)

    # -- changes -------------------------------------------------------------

    async def commit(self, kind: str, object_id: str, mutate: Mutation, by: str) -> Obj | None:
        """Change one object: ``mutate(current)`` returns its new doc, None to delete it, or UNCHANGED.

        ``mutate`` sees the live object (None if absent) and may raise a
        HeliosError (a stale version, a missing object, a rule broken); after
        losing a race it is called again on the newer state.
        """
        assert kind in KINDS, kind
        if not self.writable and not self._alone:
            raise Unavailable("the shared store is unreachable, so control-plane changes cannot be made "
                              "now (reads keep working); try again when it answers")
        async with self._lock:
            for _ in range(MAX_COMMIT_ATTEMPTS):
                previous = self._objects.get((kind, object_id))
                doc = mutate(previous if previous is not None and previous.doc is not None else None)
                if doc is UNCHANGED:
                    return self.get(kind, object_id)
                seq = self.applied + 1
                if self.store is not None and not self._alone:
                    # If the log moved on and was trimmed past this node's state, number ``seq`` may be
                    # free again: read the snapshot and the entries after it, then decide again.
                    try:
                        if await snapshot.newest(self.store, snapshot.STORE_SNAPSHOTS, after=self.applied):
                            await self._pull(check_snapshot=True)
                            continue
                    except StoreError as exc:
                        raise Unavailable("the shared store is unreachable, so the change was not made "
                                          f"({exc}); try again") from None
                entry = {"kind": kind, "id": object_id, "version": (previous.version if previous else 0) + 1,
                         "doc": doc, "by": by, "at": timeutil.now_ns(), "node": self.node_id,
                         "commit": secrets.token_hex(8)}
                blob = self.sealer.seal(self._aad(seq), entry)
                try:
                    await self._append(seq, blob)
                except Conflict:
                    if self.store is None or self._alone:
                        raise ConfigError(f"another process is writing the control plane in {self.directory}")
                    try:
                        await self._pull()
                    except StoreError as exc:
                        raise Unavailable(f"the shared store failed while retrying the change ({exc}); "
                                          "it may or may not have been applied: read it back") from None
                    if self._commits.get(seq) == entry["commit"]:
                        # Entry ``seq`` is ours: an earlier attempt landed and only its answer was lost.
                        break
                    continue
                except StoreError as exc:
                    raise Unavailable("the shared store did not confirm the change, which may or may not have "
                                      f"been applied; read it back before retrying ({exc})") from None
                self._apply(seq, entry)
                break
            else:
                raise Unavailable("the control plane is changing too fast to commit this change; try again")
            sealed = None
            if seq % self.snapshot_every == 0 and self.applied == seq:
                sealed = self._seal_snapshot(seq)
                await self._keep_snapshot(seq, sealed)
            result = self._objects[(kind, object_id)]
        await self._announce(seq)
        if sealed is not None and self.store is not None and not self._alone:
            await self._publish_snapshot(seq, sealed)
        return result

    async def _announce(self, seq: int) -> None:
        """Put the entry on the change feed so other nodes pull it now (a failure only delays them)."""
        if self.announce is None or self.store is None or self._alone:
            return
        try:
            await self.announce(seq)
        except StoreError as exc:
            log.log(_log, logging.WARNING, "could not announce a control-plane change; other nodes see it "
                    "at their next safety poll", seq=seq, error=str(exc))

    async def _append(self, seq: int, blob: bytes) -> None:
        if self.store is None or self._alone:
            await self.local.create(LOCAL_LOG + _seq_name(seq), blob)
            return
        await create_resolved(self.store, STORE_LOG + _seq_name(seq), blob)
        try:
            await self.local.put(LOCAL_LOG + _seq_name(seq), blob)
        except StoreError as exc:  # the store holds it; the next start pulls it again
            log.log(_log, logging.WARNING, "could not mirror a control-plane entry locally",
                    seq=seq, error=str(exc))

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _aad(seq: int) -> str:
        return f"helios/control/log/{_seq_name(seq)}"

    @staticmethod
    async def _read_json(backend: Backend, key: str) -> dict[str, Any] | None:
        try:
            return orjson.loads(await backend.get(key))
        except NotFound:
            return None
        except orjson.JSONDecodeError:
            raise ConfigError(f"{key} in the control plane is not valid JSON") from None

    def _apply(self, seq: int, entry: dict[str, Any]) -> None:
        kind, object_id, doc = entry["kind"], entry["id"], entry["doc"]
        previous = self._objects.get((kind, object_id))
        before = previous.doc if previous is not None and previous.doc is not None else None
        if doc is None:
            action = "delete"
        else:
            action = "update" if before is not None else "create"
        created = previous.created_ns if before is not None and previous is not None else entry["at"]
        self._objects[(kind, object_id)] = Obj(kind, object_id, entry["version"], doc, created,
                                               entry["at"], entry["by"])
        self._commits[seq] = entry.get("commit", "")
        self._commits.pop(seq - KEEP_COMMIT_IDS, None)  # bounded: a writer looks back at its own recent tries
        changed = sorted(k for k in set(before or {}) | set(doc or {})
                         if (before or {}).get(k) != (doc or {}).get(k))
        if len(self.audit) >= snapshot.AUDIT_KEEP + 1000:  # bounded: the newest AUDIT_KEEP (as snapshots keep)
            del self.audit[: len(self.audit) - snapshot.AUDIT_KEEP]
        self.audit.append(AuditEntry(seq, entry["at"], entry["by"], entry["node"], action, kind, object_id,
                                     entry["version"], tuple(changed)))
        self.applied = seq

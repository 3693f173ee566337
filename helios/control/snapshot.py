"""Control-plane snapshots: the whole state after log entry ``seq``, sealed like an entry.

Layout::

    _control/snapshots/<12-digit seq>        in the store; created with create-if-absent
    <data-dir>/control/snapshots/<seq>       the local mirror's

Every ``SNAPSHOT_EVERY`` entries a snapshot is taken of the state right after
that entry: every node keeps one in its local mirror (and trims its local
log), and the node that committed the entry creates it in the store, then
trims the store's log behind the *previous* snapshot. So the store holds the
newest two snapshots and between one and two periods of entries; a node that
joins reads the newest snapshot plus the entries after it, and a node that
was away reads entries when it is less than a period behind, a snapshot when
it is more. Entry ``e`` is only ever deleted while a snapshot at ``e`` or
later exists, so a trimmed entry is never needed.

A snapshot is sealed like an entry (AES-256-GCM, a fresh nonce, its
position ``helios/control/snapshot/<seq>`` as associated data). It holds
every object (with deleted ones' tombstones, so versions keep counting) and
the newest ``AUDIT_KEEP`` audit entries: the audit trail is the log, and it is
trimmed to that length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import logging

from backends import Backend, Conflict, StoreError, create_resolved, list_all
from helios import log, timeutil

_log = log.get("helios.control")

__all__ = ["AUDIT_KEEP", "LOCAL_SNAPSHOTS", "SNAPSHOT_EVERY", "STORE_SNAPSHOTS", "AuditEntry", "Obj", "aad",
           "decode", "encode", "key", "newest", "publish", "trim"]

SNAPSHOT_EVERY = 1000
AUDIT_KEEP = 10_000
STORE_SNAPSHOTS = "_control/snapshots/"
LOCAL_SNAPSHOTS = "snapshots/"


@dataclass(frozen=True)
class Obj:
    """The current state of one control-plane object; ``doc`` None once deleted."""

    kind: str
    id: str
    version: int
    doc: dict[str, Any] | None
    created_ns: int
    updated_ns: int
    updated_by: str


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at_ns: int
    by: str
    node: str
    action: str  # create, update, delete
    kind: str
    id: str
    version: int
    changed: tuple[str, ...]  # names of the fields that changed, never their values

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": timeutil.format_ns(self.at_ns), "by": self.by, "node": self.node,
                "action": self.action, "kind": self.kind, "id": self.id, "version": self.version,
                "changed": list(self.changed)}


def aad(seq: int) -> str:
    return f"helios/control/snapshot/{seq:012d}"


def encode(seq: int, cluster: str, objects: Iterable[Obj], audit: Iterable[AuditEntry]) -> dict[str, Any]:
    return {"format": 1, "seq": seq, "cluster": cluster,
            "objects": [[o.kind, o.id, o.version, o.doc, o.created_ns, o.updated_ns, o.updated_by] for o in objects],
            "audit": [[a.seq, a.at_ns, a.by, a.node, a.action, a.kind, a.id, a.version, list(a.changed)]
                      for a in audit]}


def decode(doc: Any, seq: int) -> tuple[list[Obj], list[AuditEntry]]:
    """The objects and audit entries of a snapshot document; ValueError if it is not one (for ``seq``)."""
    try:
        if not isinstance(doc, dict) or doc.get("format") != 1 or doc.get("seq") != seq:
            raise ValueError("not a format-1 snapshot of this position")
        objects = [Obj(str(k), str(i), int(v), d if isinstance(d, dict) else None, int(c), int(u), str(b))
                   for k, i, v, d, c, u, b in doc["objects"]]
        audit = [AuditEntry(int(q), int(at), str(by), str(node), str(action), str(kind), str(i), int(v),
                            tuple(str(x) for x in changed))
                 for q, at, by, node, action, kind, i, v, changed in doc["audit"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a control-plane snapshot: {exc}") from None
    return objects, audit


def key(prefix: str, seq: int) -> str:
    return f"{prefix}{seq:012d}"


async def newest(backend: Backend, prefix: str, after: int = 0) -> int | None:
    """The newest snapshot under ``prefix`` later than entry ``after`` (None if there is none)."""
    found = None
    async for info in list_all(backend, prefix, start_after=key(prefix, after) if after else ""):
        name = info.key.rsplit("/", 1)[1]
        if name.isascii() and name.isdigit():
            found = max(found or 0, int(name))
    return found


async def trim(backend: Backend, log_prefix: str, snapshots_prefix: str, seq: int, every: int) -> int:
    """After the snapshot at ``seq``: delete log entries up to the previous snapshot, and older snapshots.

    The log is listed from its oldest entry, page by page, and only as far as
    the entries to delete: about one period of keys per snapshot.
    """
    floor = seq - every
    deleted = 0
    if floor <= 0:
        return 0
    doomed = []
    start_after = ""
    while True:  # oldest first, one page at a time, no further than the floor
        page = await backend.list(log_prefix, start_after=start_after, limit=1000)
        names = [(info.key, info.key.rsplit("/", 1)[1]) for info in page]
        doomed += [k for k, n in names if n.isascii() and n.isdigit() and int(n) <= floor]
        if len(page) < 1000 or any(n.isascii() and n.isdigit() and int(n) > floor for _, n in names):
            break
        start_after = page[-1].key
    async for info in list_all(backend, snapshots_prefix):
        name = info.key.rsplit("/", 1)[1]
        if name.isascii() and name.isdigit() and int(name) < floor:
            doomed.append(info.key)
    for name in doomed:
        await backend.delete(name)
        deleted += 1
    return deleted


async def publish(store: Backend, log_prefix: str, seq: int, blob: bytes, every: int) -> None:
    """The committer of entry ``seq`` creates its snapshot in the store, then trims the store's log.

    Best effort: a store error is logged, and the next snapshot trims what this one could not.
    """
    try:
        try:
            await create_resolved(store, key(STORE_SNAPSHOTS, seq), blob)
        except Conflict:
            pass  # another node's snapshot of the same state
        trimmed = await trim(store, log_prefix, STORE_SNAPSHOTS, seq, every)
        log.log(_log, logging.INFO, "snapshotted the control plane", seq=seq, trimmed=trimmed)
    except StoreError as exc:
        log.log(_log, logging.WARNING, "could not snapshot the control plane", seq=seq, error=str(exc))

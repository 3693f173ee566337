"""The shared layout and the manifest compare-and-swap protocol.

Layout under the store root::

    parts/<dataset>/<YYYY-MM-DD>/blocks/<block-id>.parquet   immutable blocks
    parts/<dataset>/<YYYY-MM-DD>/manifest/<version>.json     immutable manifest versions
    _partitions/<dataset>/<YYYY-MM-DD>                       partition index (for discovery)
    _changes/<ns>.<dataset>.<YYYY-MM-DD>.<version>.<node>    change feed (cheap polling)
    _changes/<ns>._control.log.<seq>.<node>                  ... and the control-plane log's new entries
    _control/log/<seq>                                       control-plane log (helios.control.plane)
    _control/leases/<job>/<epoch>[.beat]                     leader leases (helios.replication.lease)

A partition's manifest is a chain of numbered versions, each the whole list
of live blocks, each created with create-if-absent (the store's CAS), each
naming its parent and carrying a unique commit id. To change it: read the
newest version (one LIST from the last known version, one GET), apply the
change, create version+1; a Conflict means another node won that number:
re-read, re-apply, try the next. An ambiguous create (store unreachable
after the request may have landed) is settled by ``create_resolved``,
which reads the version back and compares it, commit id included.
"""

from __future__ import annotations

import secrets
import copy
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

import orjson

from backends import Backend, Conflict, Corrupt, create_resolved, list_all
from helios import timeutil
from helios.storage.blocks import BlockEntry

__all__ = ["CHANGES", "CommitFn", "Fenced", "SharedManifest", "block_key", "change_key", "commit",
           "control_change_key", "list_versions", "parse_change_key", "parse_control_change", "parse_index_key",
           "partition_prefix", "read_latest", "read_version", "version_key"]

MAX_COMMIT_ATTEMPTS = 50
VERSION_DIGITS = 12


def partition_prefix(dataset: str, day: int) -> str:
    return f"parts/{dataset}/{timeutil.day_name(day)}"


def block_key(dataset: str, day: int, block_id: str) -> str:
    return f"{partition_prefix(dataset, day)}/blocks/{block_id}.parquet"


def version_key(dataset: str, day: int, version: int) -> str:
    return f"{partition_prefix(dataset, day)}/manifest/{version:0{VERSION_DIGITS}d}.json"


def index_key(dataset: str, day: int) -> str:
    return f"{INDEX}{dataset}/{timeutil.day_name(day)}"


CHANGES = "_changes/"
INDEX = "_partitions/"


def change_key(now_ns: int, dataset: str, day: int, version: int, node_id: str) -> str:
    """The change-feed key announcing that a partition reached ``version``."""
    return f"{CHANGES}{now_ns:020d}.{dataset}.{timeutil.day_name(day)}.{version}.{node_id}"


CONTROL_FEED = "_control"  # never a dataset name (those start with a letter or digit)


def control_change_key(now_ns: int, seq: int, node_id: str) -> str:
    """The change-feed key announcing control-plane log entry ``seq`` (pullers then read the log)."""
    return f"{CHANGES}{now_ns:020d}.{CONTROL_FEED}.log.{seq}.{node_id}"


def parse_control_change(key: str) -> tuple[int, int] | None:
    """``(stamp_ns, seq)`` of a control-plane change key; None for any other key (a partition's)."""
    parts = key[len(CHANGES):].split(".", 4)
    if len(parts) != 5 or parts[1] != CONTROL_FEED:
        return None
    stamp, _, log, seq, _node = parts
    if not (log == "log" and len(stamp) == 20 and stamp.isascii() and stamp.isdigit()
            and seq.isascii() and seq.isdigit()):
        raise Corrupt(key, "not a control-plane change key (<ns>._control.log.<seq>.<node>)")
    return int(stamp), int(seq)


def parse_change_key(key: str) -> tuple[int, str, int]:
    """``(stamp_ns, dataset, day)`` of a change-feed key; raises Corrupt for anything else."""
    parts = key[len(CHANGES):].split(".", 4)
    if not key.startswith(CHANGES) or len(parts) != 5:
        raise Corrupt(key, "not a change-feed key (<ns>.<dataset>.<YYYY-MM-DD>.<version>.<node>)")
    stamp, dataset, day_name, version, _node = parts
    try:
        if not (len(stamp) == 20 and stamp.isascii() and stamp.isdigit() and version.isascii()
                and version.isdigit() and dataset):
            raise ValueError("bad number or empty dataset")
        return int(stamp), dataset, _day(day_name)
    except ValueError as exc:
        raise Corrupt(key, f"not a change-feed key: {exc}") from None


def _day(name: str) -> int:
    day = timeutil.day_number(name)
    if timeutil.day_name(day) != name:
        raise ValueError(f"{name!r} is not a YYYY-MM-DD day")
    return day


def parse_index_key(key: str) -> tuple[str, int]:
    """``(dataset, day)`` of a partition-index key; raises Corrupt for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != INDEX or not parts[1]:
        raise Corrupt(key, "not a partition-index key (_partitions/<dataset>/<YYYY-MM-DD>)")
    try:
        return parts[1], _day(parts[2])
    except ValueError as exc:
        raise Corrupt(key, f"not a partition-index key: {exc}") from None


@dataclass
class SharedManifest:
    """One version of a partition's shared manifest.

    ``retired`` maps the ids of blocks replaced by compaction or dropped by
    retention to when that happened (ns): they are unreferenced, deleted from
    the store after the grace period, and never appended again (a late upload
    of a retired block is skipped). ``dropped`` marks a partition removed by
    retention: nothing is appended to it. ``epochs`` holds, per lease job, the
    highest leader epoch that committed here: a leader commit from an older
    epoch of its job is refused. ``epoch`` and ``job`` describe this version's
    own commit (0 and "" for an upload).
    """

    dataset: str
    day: int
    version: int = 0  # 0: no version exists yet
    parent: int = 0
    commit_id: str = ""
    parent_commit: str = ""
    node: str = ""
    blocks: list[BlockEntry] = field(default_factory=list)
    retired: dict[str, int] = field(default_factory=dict)
    dropped: bool = False
    epochs: dict[str, int] = field(default_factory=dict)
    epoch: int = 0
    job: str = ""  # the leader job of this commit ("compaction", "retention", "gc"), "" for uploads

    def encode(self) -> bytes:
        return orjson.dumps({"format": 1, "dataset": self.dataset, "day": self.day, "version": self.version,
                             "parent": self.parent, "commit_id": self.commit_id, "node": self.node,
                             "parent_commit": self.parent_commit, "blocks": [b.to_json() for b in self.blocks], "retired": self.retired,
                             "dropped": self.dropped, "epochs": self.epochs, "epoch": self.epoch,
                             "job": self.job})

    @classmethod
    def decode(cls, data: bytes, key: str = "manifest") -> SharedManifest:
        """Parse a version's bytes; anything unparsable is ``Corrupt(key)``, never a bare exception."""
        try:
            return cls._decode(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Corrupt(key, f"not a manifest version: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _decode(cls, data: bytes) -> SharedManifest:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not a format-1 manifest object")
        if not isinstance(doc["blocks"], list) or not isinstance(doc.get("retired", {}), dict):
            raise TypeError("blocks must be a list and retired an object")
        return cls(dataset=doc["dataset"], day=doc["day"], version=doc["version"], parent=doc["parent"],
                   commit_id=doc["commit_id"], node=doc["node"], parent_commit=doc.get("parent_commit", ""),
                   blocks=[BlockEntry.from_json(b) for b in doc["blocks"]], retired=doc.get("retired", {}),
                   dropped=doc.get("dropped", False), epochs=doc.get("epochs", {}), epoch=doc.get("epoch", 0),
                   job=doc.get("job", ""))


async def read_latest(store: Backend, dataset: str, day: int, known: int = 0) -> SharedManifest:
    """The newest manifest version (an empty one, version 0, if none exists)."""
    versions = await list_versions(store, dataset, day, known)
    newest = max(versions, default=known)
    if newest == 0:
        return SharedManifest(dataset, day)
    return await read_version(store, dataset, day, newest)


async def read_version(store: Backend, dataset: str, day: int, version: int) -> SharedManifest:
    """One manifest version, checked against its key (raises NotFound, or Corrupt)."""
    key = version_key(dataset, day, version)
    manifest = SharedManifest.decode(await store.get(key), key)
    if (manifest.dataset, manifest.day, manifest.version) != (dataset, day, version):
        raise Corrupt(key, f"holds {manifest.dataset}/{manifest.day} version {manifest.version}")
    return manifest


async def list_versions(store: Backend, dataset: str, day: int, after: int = 0) -> list[int]:
    prefix = f"{partition_prefix(dataset, day)}/manifest/"
    start_after = version_key(dataset, day, after) if after else ""
    versions = []
    async for info in list_all(store, prefix, start_after=start_after):
        name = info.key.rsplit("/", 1)[1].split(".")[0]
        if name.isascii() and name.isdigit():
            versions.append(int(name))
    return versions


# The signature of ``commit``: what ``Replicator`` and ``Maintenance`` take as their ``commit`` seam.
CommitFn = Callable[..., Awaitable[SharedManifest]]


class Fenced(Exception):
    """A leader commit from an epoch older than one already recorded in the manifest."""


async def commit(store: Backend, dataset: str, day: int, node_id: str,
                 change: Callable[[SharedManifest], SharedManifest | None],
                 known: int = 0, *, latest: SharedManifest | None = None,
                 token_hex: Callable[[int], str] = secrets.token_hex) -> SharedManifest:
    """Apply ``change`` to the newest version with compare-and-swap; returns the version now current.

    ``change`` gets the current version and returns the next one (version,
    parent, commit id and node are filled in here), or None when there is
    nothing to do (then nothing is written). It is called again, on the newer
    version, after every lost race; it may raise (e.g. ``Fenced``) to give up.
    ``latest``: the newest version, just read by the caller (saves reading it again).
    ``token_hex``: where commit ids come from (the fuzzer passes a seeded one).
    """
    current = latest if latest is not None else await read_latest(store, dataset, day, known)
    for _ in range(MAX_COMMIT_ATTEMPTS):
        proposed = change(copy.deepcopy(current))
        if proposed is None:
            return current
        proposed = replace(proposed, version=current.version + 1, parent=current.version,
                           commit_id=token_hex(12), parent_commit=current.commit_id, node=node_id)
        if current.version == 0:
            await store.put(index_key(dataset, day), b"")
        try:
            await create_resolved(store, version_key(dataset, day, proposed.version), proposed.encode())
            if not await _filled_a_hole(store, proposed):
                return proposed
        except Conflict:
            pass
        current = await read_latest(store, dataset, day, current.version)
    raise Conflict(f"{partition_prefix(dataset, day)}: gave up after {MAX_COMMIT_ATTEMPTS} lost races")


async def _filled_a_hole(store: Backend, proposed: SharedManifest) -> bool:
    """Did our create land on a number garbage collection had freed, below the newest version?

    Only a writer paused between reading the newest version and creating the
    next one for longer than the GC grace period can do that. Versions above
    ours then exist and the first of them does not name our commit as its
    parent: our commit is not in the chain, so it must be retried.
    """
    later = await list_versions(store, proposed.dataset, proposed.day, proposed.version)
    if not later:
        return False
    successor = await read_version(store, proposed.dataset, proposed.day, min(later))
    return successor.parent_commit != proposed.commit_id

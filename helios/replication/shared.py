"""The shared layout and the manifest compare-and-swap protocol.

Layout under the store root::

    parts/<dataset>/<YYYY-MM-DD>/blocks/<block-id>.parquet   immutable blocks
    parts/<dataset>/<YYYY-MM-DD>/manifest/<version>.json     immutable manifest versions
    _partitions/<dataset>/<YYYY-MM-DD>                       partition index (for discovery)
    _changes/<ns>-<node>-<rand>                              change feed (cheap polling)
    _control/                                                control plane (reserved)

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
from dataclasses import dataclass, field
from typing import Callable

import orjson

from backends import Backend, Conflict, NotFound, create_resolved
from helios import timeutil
from helios.storage.blocks import BlockEntry

__all__ = ["SharedManifest", "block_key", "change_key", "commit", "partition_prefix", "read_latest"]

MAX_COMMIT_ATTEMPTS = 50
VERSION_DIGITS = 12


def partition_prefix(dataset: str, day: int) -> str:
    return f"parts/{dataset}/{timeutil.day_name(day)}"


def block_key(dataset: str, day: int, block_id: str) -> str:
    return f"{partition_prefix(dataset, day)}/blocks/{block_id}.parquet"


def version_key(dataset: str, day: int, version: int) -> str:
    return f"{partition_prefix(dataset, day)}/manifest/{version:0{VERSION_DIGITS}d}.json"


def index_key(dataset: str, day: int) -> str:
    return f"_partitions/{dataset}/{timeutil.day_name(day)}"


def change_key(now_ns: int, node_id: str) -> str:
    return f"_changes/{now_ns:020d}-{node_id}-{secrets.token_hex(4)}"


@dataclass
class SharedManifest:
    dataset: str
    day: int
    version: int = 0  # 0: no version exists yet
    parent: int = 0
    commit_id: str = ""
    node: str = ""
    blocks: list[BlockEntry] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps({"format": 1, "dataset": self.dataset, "day": self.day, "version": self.version,
                             "parent": self.parent, "commit_id": self.commit_id, "node": self.node,
                             "blocks": [b.to_json() for b in self.blocks]})

    @classmethod
    def decode(cls, data: bytes) -> SharedManifest:
        doc = orjson.loads(data)
        return cls(dataset=doc["dataset"], day=doc["day"], version=doc["version"], parent=doc["parent"],
                   commit_id=doc["commit_id"], node=doc["node"],
                   blocks=[BlockEntry.from_json(b) for b in doc["blocks"]])


async def read_latest(store: Backend, dataset: str, day: int, known: int = 0) -> SharedManifest:
    """The newest manifest version (an empty one, version 0, if none exists)."""
    prefix = f"{partition_prefix(dataset, day)}/manifest/"
    start_after = version_key(dataset, day, known) if known else ""
    newest = known
    while True:
        page = await store.list(prefix, start_after=start_after)
        for info in page:
            name = info.key.rsplit("/", 1)[1].split(".")[0]
            if name.isdigit():
                newest = max(newest, int(name))
        if len(page) < 1000:
            break
        start_after = page[-1].key
    if newest == 0:
        return SharedManifest(dataset, day)
    try:
        return SharedManifest.decode(await store.get(version_key(dataset, day, newest)))
    except NotFound:  # listed then gone: only a retention drop does that
        return SharedManifest(dataset, day)


async def commit(store: Backend, dataset: str, day: int, node_id: str,
                 change: Callable[[list[BlockEntry]], list[BlockEntry] | None],
                 known: int = 0) -> SharedManifest:
    """Apply ``change`` to the newest block list with compare-and-swap; returns the version now current.

    ``change`` gets the current blocks and returns the new list, or None when
    there is nothing to do (then nothing is written).
    """
    current = await read_latest(store, dataset, day, known)
    for _ in range(MAX_COMMIT_ATTEMPTS):
        blocks = change(list(current.blocks))
        if blocks is None:
            return current
        proposed = SharedManifest(dataset, day, version=current.version + 1, parent=current.version,
                                  commit_id=secrets.token_hex(12), node=node_id, blocks=blocks)
        if current.version == 0:
            await store.put(index_key(dataset, day), b"")
        try:
            await create_resolved(store, version_key(dataset, day, proposed.version), proposed.encode())
            return proposed
        except Conflict:
            current = await read_latest(store, dataset, day, current.version)
    raise Conflict(f"{partition_prefix(dataset, day)}: gave up after {MAX_COMMIT_ATTEMPTS} lost races")

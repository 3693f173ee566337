"""The local manifest of one partition: its live blocks and its WAL watermark.

``wal_through`` is the highest write-ahead-log segment whose rows of this
partition are all in the manifest's blocks: replay skips this partition's
rows from segments at or below it, so a crash between recording a block and
deleting the log never counts a row twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from helios.storage.blocks import BlockEntry
from helios.storage.fsutil import write_atomic

__all__ = ["MANIFEST_NAME", "PartitionManifest"]

MANIFEST_NAME = "manifest.json"
FORMAT = 1


@dataclass
class PartitionManifest:
    dataset: str
    day: int
    wal_through: int = 0
    blocks: list[BlockEntry] = field(default_factory=list)
    # Replication state (unused without a shared store): the shared manifest
    # version this list was last merged with, and which of this node's own
    # blocks are already in the shared manifest. Own blocks not in `uploaded`
    # are pending upload; that set *is* the persistent upload queue.
    shared_version: int = 0
    uploaded: set[str] = field(default_factory=set)

    def pending(self, node_id: str) -> list[BlockEntry]:
        return [b for b in self.blocks if b.node == node_id and b.id not in self.uploaded]

    @property
    def rows(self) -> int:
        return sum(block.rows for block in self.blocks)

    @property
    def bytes(self) -> int:
        return sum(block.bytes for block in self.blocks)

    def save(self, directory: Path) -> None:
        doc = {"format": FORMAT, "dataset": self.dataset, "day": self.day,
               "wal_through": self.wal_through, "blocks": [b.to_json() for b in self.blocks],
               "shared_version": self.shared_version, "uploaded": sorted(self.uploaded)}
        write_atomic(directory / MANIFEST_NAME, orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, directory: Path) -> PartitionManifest:
        doc = orjson.loads((directory / MANIFEST_NAME).read_bytes())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{directory / MANIFEST_NAME}: unknown manifest format {doc.get('format')!r}")
        return cls(dataset=doc["dataset"], day=doc["day"], wal_through=doc["wal_through"],
                   blocks=[BlockEntry.from_json(b) for b in doc["blocks"]],
                   shared_version=doc.get("shared_version", 0), uploaded=set(doc.get("uploaded", ())))

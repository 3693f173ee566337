"""Shared by the benchmarks: a real node, and Loghub bodies with fresh timestamps.

The Loghub lines come from tests/data/loghub (tests/support.py), inside the checkout.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import Server, loghub_records  # noqa: E402


def bodies(rounds: int, batch: int = 5000) -> list[bytes]:
    """The Loghub lines replayed ``rounds`` times with fresh timestamps, as NDJSON batches."""
    records = loghub_records()
    now = time.time_ns()
    docs = []
    for round_ in range(rounds):
        for i, r in enumerate(records):
            doc = r.doc()
            doc["_time"] = now - (round_ * len(records) + i) * 1_000_000
            docs.append(orjson.dumps(doc))
    return [b"\n".join(docs[i : i + batch]) + b"\n" for i in range(0, len(docs), batch)]


def start_node(**env: str) -> Server:
    data_dir = Path(tempfile.mkdtemp(prefix="helios-bench-")) / "node"
    data_dir.mkdir()
    return Server(data_dir, env).start()

"""Decoding a block's columns into the decoded-column cache takes well under three times their size.

``BlockCache.columns`` of a whole block (a plain search's newest rows, a scan without an index)
read every column at once with Parquet's threads, then joined each into one chunk: under the
node's allocator (jemalloc, ``cli.cmd_serve``) a block of 190 MiB of columns took 673 MiB at the
peak, and the bench saw the node's peak RSS jump by ~380 MiB on its first newest-100 query. Read a
column at a time, on one thread, it takes ~1.6 times the columns (2.8 before, at this size).
Measured in a fresh process, with the node's allocator, as the rise of its peak RSS (``VmHWM``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import orjson

from helios.ingest.records import parse_ndjson
from helios.storage import blocks
from support import loghub_records

ROWS = 400_000

CHILD = """
import pickle, sys
from pathlib import Path
from helios.storage.cache import BlockCache

def peak():  # VmHWM: ru_maxrss would start at the parent's, kept across fork and exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

entry = pickle.loads(Path(sys.argv[1]).read_bytes())
path = Path(sys.argv[2])
cache = BlockCache(4 << 30)
cache.index(path, entry)
before = peak()
table = cache.columns(path, entry, None)
print(peak() - before, table.nbytes, table.num_rows)
"""


def test_a_whole_blocks_columns_decode_within_2_3_times_their_size(tmp_path: Path) -> None:
    docs = [r.doc() for r in loghub_records()]
    lines = [orjson.dumps({**docs[i % len(docs)], "_time": 1_700_000_000_000_000_000 + i * 1000})
             for i in range(ROWS)]
    tables = [parse_ndjson(b"\n".join(lines[i:i + 5000]), 0) for i in range(0, ROWS, 5000)]
    entry = blocks.build_block(tmp_path, "b", tables, dataset="default", day=0, node="n", created_ns=1,
                               index="later")
    del tables, lines
    (tmp_path / "entry").write_bytes(pickle.dumps(entry))
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "entry"), str(tmp_path / entry.filename)],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    rise, nbytes, rows = map(int, done.stdout.split())
    assert rows == ROWS and nbytes > 50 << 20
    assert rise < 2.3 * nbytes, f"decoding {nbytes >> 20} MiB of columns raised the peak RSS by {rise >> 20} MiB"

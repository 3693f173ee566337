"""Shared by the benchmarks: a real node, Loghub rows with fresh timestamps, and the machine.

The Loghub lines come from tests/data/loghub (tests/support.py), inside the checkout.
"""

from __future__ import annotations

import datetime
import http.client
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import Record, Server, loghub_records  # noqa: E402

__all__ = ["Batch", "Keepalive", "bodies", "generated_count", "machine", "peak_rss_bytes", "rare_token", "start_node",
           "token_rows", "tree_bytes", "write_ndjson"]

REPO = Path(__file__).resolve().parent.parent
_TOKEN = re.compile(r"\w+")  # maximal runs of Unicode letters, digits and _ (DESIGN section 7)


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


@dataclass(frozen=True)
class Batch:
    """One ingest body inside an NDJSON file: its byte range and row count."""

    offset: int
    length: int
    rows: int

    def read(self, fd: int) -> bytes:
        return os.pread(fd, self.length, self.offset)


def write_ndjson(path: Path, records: list[Record], rows: int, *, batch_rows: int = 5000,
                 step_ns: int = 1_000_000) -> list[Batch]:
    """Write ``rows`` NDJSON lines to ``path``: ``records`` replayed in order, one line every ``step_ns``.

    Timestamps are fresh and increasing (the last line is about now), so rows arrive in time order as
    a shipper's would. Returns the file cut into ingest bodies of ``batch_rows`` lines.
    """
    tails = []
    for record in records:  # each line is the record's JSON with a fresh "_time" first
        doc = record.doc()
        del doc["_time"]
        tails.append(orjson.dumps(doc)[1:])
    first_ns = time.time_ns() - rows * step_ns
    batches: list[Batch] = []
    offset = 0
    with open(path, "wb") as out:
        for start in range(0, rows, batch_rows):
            count = min(batch_rows, rows - start)
            body = b"".join(b'{"_time":%d,%s\n' % (first_ns + i * step_ns, tails[i % len(tails)])
                            for i in range(start, start + count))
            out.write(body)
            batches.append(Batch(offset, len(body), count))
            offset += len(body)
    return batches


def generated_count(records: list[Record], rows: int, matches: Callable[[Record], bool]) -> int:
    """How many of the ``rows`` lines that write_ndjson generates from ``records`` satisfy ``matches``."""
    whole, rest = divmod(rows, len(records))
    hits = [matches(r) for r in records]
    return whole * sum(hits) + sum(hits[:rest])


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def token_rows(records: list[Record], token: str, rows: int) -> int:
    """Rows of the generated data whose ``_msg`` holds ``token`` as a whole token (case-insensitive)."""
    token = token.lower()
    return generated_count(records, rows, lambda r: token in _tokens(r.msg))


def rare_token(records: list[Record], one_row_in: int = 12_000) -> str:
    """A word that occurs in about one row in ``one_row_in`` of the replayed records, chosen deterministically.

    The records are replayed whole, so a token's share of the generated rows is its share of
    ``records``. Among ASCII-letter tokens of 6 or more characters held by the count of rows
    nearest that share, and found by a substring search in exactly as many rows (so a whole-token
    count and an ``ILIKE '%token%'`` count agree), the first in alphabetical order.
    """
    wanted = max(1, round(len(records) / one_row_in))
    lowered = [r.msg.lower() for r in records]
    holders: dict[str, int] = {}
    for msg in lowered:
        for token in _tokens(msg):
            holders[token] = holders.get(token, 0) + 1
    for token in sorted(t for t, n in holders.items()
                        if n == wanted and len(t) >= 6 and t.isascii() and t.isalpha()):
        if sum(token in msg for msg in lowered) == wanted:
            return token
    raise AssertionError(f"no token held by exactly {wanted} of {len(records)} records")


class Keepalive:
    """One keep-alive HTTP/1.1 connection to a node (``http.client``), for the timed requests.

    The standard library's client does the least work per request, so a timed query is the node's
    time more than a client library's: httpx spent 0.7 ms of CPU on a 4.4 ms newest-100 round trip
    on an idle machine, ``http.client`` with orjson 0.3 ms, measured by the same script."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600.0)
        self._headers = headers

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one POST; a connection the node closed is opened again."""
        headers = {**self._headers, "Content-Type": content_type}
        for attempt in range(2):
            try:
                self._connection.request("POST", path, body, headers)
                reply = self._connection.getresponse()
                return reply.status, dict(reply.getheaders()), reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._connection.close()


def start_node(**env: str) -> Server:
    data_dir = Path(tempfile.mkdtemp(prefix="helios-bench-")) / "node"
    data_dir.mkdir()
    return Server(data_dir, env).start()


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of a live process (``VmHWM`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def tree_bytes(root: Path, keep: Callable[[Path], bool] = lambda p: True) -> int:
    """The summed sizes of the files under ``root`` that ``keep`` accepts (files that vanish are skipped)."""
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and keep(path):
                total += path.stat().st_size
        except FileNotFoundError:  # deleted by the node while we walk
            continue
    return total


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "absent"


def machine() -> str:
    """One line naming the machine, the software versions and the date, for a results header."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    ram = f"{int(found.group(1)) / (1 << 20):.1f} GiB RAM" if found else "RAM unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    return (f"{model}, {os.cpu_count()} cores, {ram}, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, pyarrow {_version('pyarrow')}, duckdb {_version('duckdb')}; "
            f"HeliosLogs {_version('helios')}{f' ({commit})' if commit else ''}; "
            f"{datetime.date.today().isoformat()}; load average at start {load}")

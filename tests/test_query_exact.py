"""Every query answer equals a direct Python computation over the same Loghub lines.

One real node holds the 20,000 Loghub records in two datasets, part in
blocks and part in the memtable; after a graceful restart all of it is in
blocks and every answer must stay the same.
"""

from __future__ import annotations

import math
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from support import BASE_NS, Record, Server, ndjson, wait_until

DAY_NS = 86_400 * 10**9


def dataset_of(record: Record) -> str:
    return "sys" if record.service in ("apache", "linux") else "loghub"


def word(w: str, prefix: bool = False) -> Callable[[Record], bool]:
    pattern = re.compile(rf"(?<!\w){re.escape(w)}" + ("" if prefix else r"(?!\w)"), re.IGNORECASE)
    return lambda r: bool(pattern.search(r.msg))


def phrase(p: str) -> Callable[[Record], bool]:
    return lambda r: p.lower() in r.msg.lower()


def rfc3339(ns: int) -> str:
    seconds, frac = divmod(ns, 10**9)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


# (query, predicate) pairs: the count of the query must equal the predicate's count.
FILTERS: list[tuple[str, Callable[[Record], bool]]] = [
    ("*", lambda r: True),
    ("error", word("error")),
    ("ERROR", word("error")),
    ("failed", word("failed")),
    ("exception", word("exception")),
    ("info", word("info")),
    ("10.251.73.220", word("10.251.73.220")),
    ('"connection reset"', phrase("connection reset")),
    ('"Invalid user"', phrase("invalid user")),
    ('"error state"', phrase("error state")),
    ('"nnection clos"', phrase("nnection clos")),
    ("service:hdfs", lambda r: r.service == "hdfs"),
    ("level:ERROR", lambda r: r.level == "ERROR"),
    ("host:web-3", lambda r: r.host == "web-3"),
    ("-level:INFO", lambda r: r.level != "INFO"),
    ("NOT level:INFO", lambda r: r.level != "INFO"),
    ("error -service:apache", lambda r: word("error")(r) and r.service != "apache"),
    ("(service:hdfs OR service:spark) AND info",
     lambda r: r.service in ("hdfs", "spark") and word("info")(r)),
    ("service:hdfs OR service:spark info", lambda r: r.service == "hdfs" or (r.service == "spark" and word("info")(r))),
    ("auth*", word("auth", prefix=True)),
    ("service:ha*", lambda r: r.service.startswith("ha")),
    ('_msg:~"blk_-?[0-9]+"', lambda r: bool(re.search(r"blk_-?[0-9]+", r.msg))),
    ('host:~"web-[12]"', lambda r: bool(re.search(r"web-[12]", r.host))),
    ("size:>200", lambda r: r.size > 200),
    ("size:>=200 size:<=210", lambda r: 200 <= r.size <= 210),
    ("latency:<10.5", lambda r: r.latency < 10.5),
    ('_msg:"failed password"', phrase("failed password")),
    ("level:*", lambda r: r.level is not None),
    ('level:""', lambda r: r.level is None),
    ("service:nosuch", lambda r: False),
    ("zzzznotthere", lambda r: False),
    ("dataset:sys", lambda r: dataset_of(r) == "sys"),
    ("dataset:sys OR level:FATAL", lambda r: dataset_of(r) == "sys" or r.level == "FATAL"),
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, records: list[Record]) -> Iterator[Server]:
    data_dir: Path = tmp_path_factory.mktemp("exact") / "node"
    data_dir.mkdir()
    # Blocks for the first 10,000 rows (a size-triggered flush), the memtable for the rest.
    server = Server(data_dir, {"HELIOS_MEMTABLE_ROWS": "10000", "HELIOS_FLUSH_SECS": "3600"}).start()
    try:
        for start in range(0, len(records), 5000):
            batch = records[start : start + 5000]
            for name in ("loghub", "sys"):
                part = [r for r in batch if dataset_of(r) == name]
                if part:
                    reply = server.ingest(ndjson(part), dataset=name)
                    assert reply.status_code == 200, reply.text
                    assert reply.json() == {"ingested": len(part)}
        yield server
    finally:
        if server.proc and server.proc.poll() is None:
            server.kill()


@pytest.fixture(scope="module", params=["memtable+blocks", "blocks-after-restart"])
def node(request: pytest.FixtureRequest, loaded: Server) -> Server:
    if request.param == "blocks-after-restart":
        assert loaded.stop() == 0
        loaded.start()
        stats = loaded.datasets()
        assert stats["loghub"]["blocks"] >= 1 and stats["sys"]["blocks"] >= 1
    else:  # the size-triggered flush runs in the background: await its first block
        wait_until(lambda: sum(d["blocks"] for d in loaded.datasets().values()) >= 1, what="some rows in blocks")
    return loaded


@pytest.mark.parametrize("q,predicate", FILTERS, ids=[q for q, _ in FILTERS])
def test_filter_counts(node: Server, records: list[Record], q: str, predicate: Callable[[Record], bool]) -> None:
    expected = sum(1 for r in records if predicate(r))
    assert node.count(q) == expected


def test_time_range_is_inclusive_exclusive(node: Server, records: list[Record]) -> None:
    start, end = records[100].time_ns, records[12_345].time_ns
    expected = sum(1 for r in records if start <= r.time_ns < end)
    assert node.count("*", **{"from": start, "to": end}) == expected
    assert node.count("*", **{"from": rfc3339(start), "to": rfc3339(end)}) == expected
    assert node.count("error", **{"from": start}) == sum(
        1 for r in records if r.time_ns >= start and word("error")(r))


def test_dataset_selection(node: Server, records: list[Record]) -> None:
    sys_count = sum(1 for r in records if dataset_of(r) == "sys")
    assert node.count("*", dataset="sys") == sys_count
    assert node.count("*", dataset=["sys", "loghub"]) == len(records)
    listing = node.datasets()
    assert listing["sys"]["rows"] == sys_count
    assert listing["loghub"]["rows"] == len(records) - sys_count
    assert listing["loghub"]["partitions"] == len({r.time_ns // DAY_NS for r in records if dataset_of(r) == "loghub"})


def test_stats_by_service(node: Server, records: list[Record]) -> None:
    rows = node.query("* | stats count() as n, count_distinct(host) as hosts, sum(size) as total, "
                      "avg(latency) as lat, min(size), max(size), quantile(0.5, size) as med by (service)")["rows"]
    by_service: dict[str, list[Record]] = {}
    for r in records:
        by_service.setdefault(r.service, []).append(r)
    assert [row["service"] for row in rows] == sorted(by_service)
    for row in rows:
        group = by_service[row["service"]]
        sizes = sorted(r.size for r in group)
        assert row["n"] == len(group)
        assert row["hosts"] == len({r.host for r in group})
        assert row["total"] == sum(sizes)
        assert math.isclose(row["lat"], statistics.fmean(r.latency for r in group), rel_tol=1e-9)
        assert row["min(size)"] == sizes[0] and row["max(size)"] == sizes[-1]
        assert row["med"] == pytest.approx(statistics.quantiles(sizes, n=2, method="inclusive")[0])


def test_stats_without_groups_and_empty(node: Server, records: list[Record]) -> None:
    assert node.query("* | stats count() as n")["rows"] == [{"n": len(records)}]
    assert node.query("zzzznotthere | stats count() as n")["rows"] == [{"n": 0}]
    rows = node.query("error | stats count() as n by (dataset, level) | sort -n | limit 3")["rows"]
    expected: dict[tuple[str, Any], int] = {}
    for r in records:
        if word("error")(r):
            key = (dataset_of(r), r.level)
            expected[key] = expected.get(key, 0) + 1
    top = sorted(expected.values(), reverse=True)[:3]
    assert [row["n"] for row in rows] == top


def test_newest_first_with_limit(node: Server, records: list[Record]) -> None:
    reply = node.query("error", limit=7)
    newest = sorted((r for r in records if word("error")(r)), key=lambda r: r.time_ns, reverse=True)[:7]
    assert [row["_msg"] for row in reply["rows"]] == [r.msg for r in newest]
    assert [row["_time"] for row in reply["rows"]] == [rfc3339(r.time_ns) for r in newest]
    assert reply["rows"][0]["dataset"] == dataset_of(newest[0])
    assert reply["rows"][0]["service"] == newest[0].service
    piped = node.query("error | limit 3")["rows"]
    assert [row["_msg"] for row in piped] == [r.msg for r in newest[:3]]


def test_fields_and_sort(node: Server, records: list[Record]) -> None:
    rows = node.query("service:hdfs | sort by size desc | fields size, host | limit 5")["rows"]
    sizes = sorted((r.size for r in records if r.service == "hdfs"), reverse=True)[:5]
    assert [int(row["size"]) for row in rows] == sizes
    assert all(set(row) <= {"size", "host"} for row in rows)


def test_top_and_timechart(node: Server, records: list[Record]) -> None:
    rows = node.query("* | top 3 level")["rows"]
    counts: dict[Any, int] = {}
    for r in records:
        counts[r.level] = counts.get(r.level, 0) + 1
    assert [row["count"] for row in rows] == sorted(counts.values(), reverse=True)[:3]
    chart = node.query("* | timechart 1d")["rows"]
    days: dict[int, int] = {}
    for r in records:
        days[r.time_ns // DAY_NS] = days.get(r.time_ns // DAY_NS, 0) + 1
    assert [row["count"] for row in chart] == [days[d] for d in sorted(days)]
    assert chart[0]["_time"] == rfc3339(min(days) * DAY_NS)


def test_where_after_stats(node: Server, records: list[Record]) -> None:
    rows = node.query("* | stats count() as n by (service) | where n:>1999 | sort by service")["rows"]
    assert [row["service"] for row in rows] == sorted({r.service for r in records})
    assert node.query("* | stats count() as n by (service) | where n:>2000")["rows"] == []


def test_pruning_skips_blocks(node: Server) -> None:
    # These blocks are a flush's: no token index until their first compaction (every 300 s by default),
    # so a word is scanned for; pruning by the index is tested in test_index.py. Time prunes.
    stats = node.query("zzzznotthere")["stats"]
    assert stats["blocks_indexed"] == 0 and stats["blocks_scanned"] >= 1
    early = node.query("*", **{"to": BASE_NS + 1})["stats"]
    assert early["blocks_pruned"] >= 1

"""HeliosLogs over HTTP against DuckDB in-process, on the same generated Loghub rows (issue 14).

For each size (``--rows 1000000,10000000`` by default; ``--quick``: 100 k):

1. Loghub replayed with fresh increasing timestamps (one row per ms) is written to one NDJSON file.
2. DuckDB loads that file into an in-memory table (``read_json``): its load rate is the ingest baseline.
3. A fresh ``helios serve`` node takes the file over HTTP from one client (5,000-row batches);
   fresh nodes from two concurrent clients: one with the index built at flush
   (``HELIOS_INDEX_ON_FLUSH=true``), one that compacts (and so indexes) nothing while it ingests
   (compaction every hour: the rate without index building), and one with the bench's settings;
   the last two twice, alternating, each rate the best of its two. The last node is kept: the
   bench waits until every row is flushed to blocks, every block has its token index (built by
   compaction) and compaction has settled (compaction every
   ``HELIOS_COMPACTION_INTERVAL_SECS=2`` instead of 300 s, replaced blocks deleted after
   ``HELIOS_GC_GRACE_SECS=1``; every other setting is the default), then measures its bytes on disk.
4. Each query runs once on each side (warm-up), then alternately on Helios (over HTTP, one
   keep-alive ``http.client`` connection: ``common.Keepalive``) and DuckDB, best of ``--runs``,
   each timed run a quarter second after the other engine's (``QUIET_S``: DuckDB's threads spin
   for a while after a query).
5. The node's peak RSS (VmHWM) after all of that.

The Markdown table goes to stdout and to ``--out``; progress goes to stderr. It measures whatever
node the checkout runs: only the HTTP API and ``/metrics`` are used.

    .venv/bin/python bench/query.py [--rows 1000000,10000000 | --quick] [--runs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import duckdb
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from common import (Batch, Keepalive, machine, peak_rss_bytes, rare_token, start_node, token_rows, tree_bytes,
                    write_ndjson)
from report import QueryRow, SizeResult, render
from helios.ingest.records import parse_ndjson
from support import Server, cluster, loghub_records, metric, wait_until

DATASET = "bench"
BATCH_ROWS = 5000
NODE_ENV = {"HELIOS_COMPACTION_INTERVAL_SECS": "2", "HELIOS_GC_GRACE_SECS": "1"}
DEFAULT_SYNC_S = 10.0  # HELIOS_BLOCK_SYNC_SECS: compaction leaves blocks younger than this alone
SETTLE_S = 1800.0  # failure bound on flush + compaction at the largest size
TIMECHART_STEP = "1m"


class QueryFailed(Exception):
    """The node answered a query with an error (its status and text are the message)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- ingest ---------------------------------------------------------------------------------------

def parse_rate(path: Path, batches: list[Batch], parse: Callable[[bytes], int]) -> float:
    """rows/s of ``parse`` (a body -> its row count) over each batch in this process: a parser
    alone, without HTTP, the WAL or blocks."""
    elapsed = 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        for batch in batches:
            body = batch.read(fd)
            start = time.perf_counter()
            parsed = parse(body)
            elapsed += time.perf_counter() - start
            assert parsed == batch.rows, (parsed, batch.rows)
    finally:
        os.close(fd)
    return sum(b.rows for b in batches) / elapsed


def node_parse(body: bytes) -> int:
    """The node's parse of an ingest body (``records.parse_ndjson``: the C reader where it is
    built, then normalising), on this thread as a request's worker thread does it."""
    return parse_ndjson(body, time.time_ns()).num_rows


def pyarrow_parse(body: bytes) -> int:
    """``pyarrow.json.read_json`` with default options (both cores, types inferred)."""
    return pajson.read_json(pa.BufferReader(body)).num_rows


def ingest(server: Server, path: Path, batches: list[Batch], clients: int) -> float:
    """Send every batch of ``path`` over HTTP from ``clients`` concurrent clients; rows/s acknowledged.

    A 429 or 503 (the node shedding load) is retried after its Retry-After (at most 1 s), as a
    shipper would; any other error stops the bench.
    """
    lock = threading.Lock()
    pending = iter(batches)
    done = [0]
    failures: list[str] = []
    token = server.token  # logged in before the clock starts
    fd = os.open(path, os.O_RDONLY)

    def client() -> None:
        http = Keepalive(server.url, {"Authorization": f"Bearer {token}"})
        try:
            while not failures:
                with lock:
                    batch = next(pending, None)
                if batch is None:
                    return
                body = batch.read(fd)
                for _ in range(600):  # bounded: ten minutes of shedding at most
                    status, headers, text = http.post(f"/api/v1/ingest?dataset={DATASET}", body,
                                                      "application/x-ndjson")
                    if status not in (429, 503):
                        break
                    time.sleep(min(1.0, float(headers.get("Retry-After", "0.1") or 0.1)))
                if status != 200:
                    failures.append(f"{status} {text[:300].decode(errors='replace')}")
                    return
                with lock:
                    done[0] += orjson.loads(text)["ingested"]
        finally:
            http.close()

    try:
        began = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
    finally:
        os.close(fd)
    if failures:
        raise AssertionError(f"ingest failed: {failures[0]}")
    expected = sum(b.rows for b in batches)
    assert done[0] == expected, f"{done[0]} rows acknowledged of {expected}"
    return expected / elapsed


def _memtable_rows(server: Server) -> float | None:
    try:
        return metric(server, "helios_memtable_rows")
    except AssertionError:  # a node without that gauge: judged by its block count alone
        return None


def _all_indexed(server: Server, rows: int) -> bool:
    """Every row is in a block that has its token index (read from the node's manifests)."""
    indexed = 0
    for path in (server.data_dir / "parts" / DATASET).glob("*/manifest.json"):
        try:
            doc = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):  # replaced while read: look again
            return False
        indexed += sum(b["rows"] for b in doc["blocks"] if b.get("index_bytes"))
    return indexed == rows


def _blocks(server: Server) -> int:
    return int(server.datasets()[DATASET]["blocks"])


def _compaction_passes(server: Server, count: int, interval_s: float) -> None:
    """Wait until the node's compaction stamp changed ``count`` times (or, without one, that many intervals)."""
    jobs = cluster(server).get("jobs")
    if not isinstance(jobs, dict) or "last_compaction" not in jobs:
        time.sleep(count * interval_s + 1)
        return
    for _ in range(count):
        stamp = cluster(server)["jobs"]["last_compaction"]
        wait_until(lambda: cluster(server)["jobs"]["last_compaction"] != stamp, timeout_s=SETTLE_S,
                   what="a compaction pass")


def settle(server: Server, rows: int, sync_s: float, interval_s: float) -> None:
    """Wait until all ``rows`` are in blocks and compaction leaves them alone, then for GC of replaced files."""
    wait_until(lambda: server.count(dataset=DATASET) == rows, timeout_s=SETTLE_S, what="every row readable")
    wait_until(lambda: _memtable_rows(server) in (0, None), timeout_s=SETTLE_S, what="every row flushed")
    time.sleep(sync_s + interval_s)  # blocks become old enough to compact
    deadline = time.monotonic() + SETTLE_S
    while True:  # bounded by the deadline
        before = _blocks(server)
        _compaction_passes(server, 2, interval_s)  # two: one whole pass began after `before` was read
        if _blocks(server) == before:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"compaction did not settle in {SETTLE_S:.0f} s")
    sizes: list[int] = []
    while len(sizes) < 3 or len(set(sizes[-3:])) > 1:  # replaced block files deleted: three equal samples
        if time.monotonic() > deadline:
            raise AssertionError("block files still changing")
        sizes.append(tree_bytes(server.data_dir / "parts", _is_block))
        time.sleep(1.0)


def _is_block(path: Path) -> bool:
    """A block file (or a block's side file) under parts/: not a manifest, not a temporary file."""
    name = path.name
    return not (name.startswith("manifest") or name.startswith(".") or name.endswith(".tmp"))


# -- queries --------------------------------------------------------------------------------------

QUIET_S = 0.25  # before each timed run: the other engine's threads have gone idle


def best_pair(helios: Callable[[], Any], duck: Callable[[], Any], runs: int,
              budget_s: float) -> tuple[float, float, Any, Any]:
    """One warm-up each (their answers returned), then alternate runs; the best time of each side.

    Stops after ``runs`` pairs, or after two once ``budget_s`` is spent. Each timed run starts
    ``QUIET_S`` after the other engine's: DuckDB's worker threads keep spinning after a query
    (measured here: Python work started right after one ran 1.4–1.6× slower, 50 ms later still
    1.3×, 200 ms later as fast as without DuckDB), which charged the next run to the other side.
    """
    answer_h, answer_d = helios(), duck()
    best_h = best_d = math.inf
    began = time.monotonic()
    for i in range(runs):
        time.sleep(QUIET_S)
        start = time.perf_counter()
        helios()
        best_h = min(best_h, time.perf_counter() - start)
        time.sleep(QUIET_S)
        start = time.perf_counter()
        duck()
        best_d = min(best_d, time.perf_counter() - start)
        if i >= 1 and time.monotonic() - began > budget_s:
            break
    return best_h, best_d, answer_h, answer_d


def query_rows(rare: str, one_in: int) -> list[tuple[QueryRow, str, str]]:
    """(row, Helios query, DuckDB SQL) for each timed pair; ``rare`` is held by one row in ``one_in``."""
    return [
        (QueryRow("word", "`error \\| stats count()` (whole token) vs `ILIKE '%error%'`", 1.0),
         "error | stats count() as n", "SELECT count(*) FROM logs WHERE _msg ILIKE '%error%'"),
        (QueryRow("rare", f"rare token `{rare}` (1 row in {one_in:,}) counted vs `ILIKE`", 0.1),
         f"{rare} | stats count() as n", f"SELECT count(*) FROM logs WHERE _msg ILIKE '%{rare}%'"),
        (QueryRow("level", "`* \\| stats count() by (level)` vs `GROUP BY level`", 1.0),
         "* | stats count() as n by (level)", "SELECT level, count(*) FROM logs GROUP BY level"),
        (QueryRow("timechart", f"`* \\| timechart {TIMECHART_STEP}` vs `time_bucket` `GROUP BY`", 1.0),
         f"* | timechart {TIMECHART_STEP}",
         "SELECT time_bucket(INTERVAL '1 minute', make_timestamp(_time // 1000)) AS t, count(*) "
         "FROM logs GROUP BY t ORDER BY t"),
        (QueryRow("newest", "newest 100 rows matching `exception` vs `ILIKE … ORDER BY _time DESC LIMIT 100`",
                  0.5),
         "exception | limit 100",
         "SELECT * FROM logs WHERE _msg ILIKE '%exception%' ORDER BY _time DESC LIMIT 100"),
        (QueryRow("numbers", "`* \\| stats avg(latency), quantile(0.9, latency) by (level)` vs "
                  "`avg`, `quantile_cont` `GROUP BY level`", None),
         "* | stats avg(latency) as a, quantile(0.9, latency) as p90 by (level)",
         "SELECT level, avg(latency), quantile_cont(latency, 0.9) FROM logs GROUP BY level"),
    ]


def check_answers(key: str, helios: dict[str, Any], duck: list[tuple], rows: int, rare: str,
                  records: list) -> str:
    """A note comparing the two answers of one query (and the whole-token count computed here)."""
    got = helios["rows"]
    if key in ("word", "rare"):
        word = "error" if key == "word" else rare
        expected = token_rows(records, word, rows)
        n = got[0]["n"] if got else 0
        return (f"`{word}`: Helios {n:,} rows (whole token; {expected:,} hold it as a token: "
                f"{'same' if n == expected else 'DIFFERENT'}), DuckDB `ILIKE` {duck[0][0]:,} rows (substring)")
    if key == "level":
        same = {r.get("level"): r["n"] for r in got} == {level: n for level, n in duck}
        return f"`stats by (level)`: {len(got)} groups, {'the same counts as' if same else 'DIFFERENT from'} DuckDB"
    if key == "timechart":
        counts_h = [r[next(k for k in r if k != "_time")] for r in sorted(got, key=lambda r: r["_time"])]
        same = counts_h == [n for _, n in duck]
        return f"`timechart`: {len(got)} buckets, {'the same counts as' if same else 'DIFFERENT from'} DuckDB"
    if key == "numbers":
        expected = {level: (a, p) for level, a, p in duck}
        same = len(got) == len(expected) and all(
            math.isclose(r["a"], expected[r.get("level")][0], rel_tol=1e-9)
            and math.isclose(r["p90"], expected[r.get("level")][1], rel_tol=1e-9) for r in got)
        return (f"`avg` and `quantile(0.9)` of `latency` by level: {len(got)} groups, "
                f"{'the same values as' if same else 'DIFFERENT from'} DuckDB's (within 1e-9)")
    times = [r["_time"] for r in got]
    ordered = "newest first" if times == sorted(times, reverse=True) else "NOT newest first"
    return f"newest `exception`: Helios {len(got)} rows ({ordered}, whole token), DuckDB {len(duck)} rows (substring)"


def run_size(rows: int, args: argparse.Namespace, records: list, rare: str, one_in: int,
             work: Path) -> SizeResult:
    result = SizeResult(rows)
    env = {**NODE_ENV, **dict(kv.split("=", 1) for kv in args.env)}
    sync_s = float(env.get("HELIOS_BLOCK_SYNC_SECS", DEFAULT_SYNC_S))
    interval_s = float(env["HELIOS_COMPACTION_INTERVAL_SECS"])
    path = work / f"loghub-{rows}.ndjson"
    began = time.monotonic()
    log(f"{rows:,} rows: writing {path}")
    batches = write_ndjson(path, records, rows, batch_rows=BATCH_ROWS)
    size = path.stat().st_size
    result.notes.append(f"NDJSON: {size / rows:.0f} B/row ({size / (1 << 20):,.0f} MiB), "
                        f"{len(batches):,} batches of {BATCH_ROWS:,} rows")

    con = duckdb.connect()  # in memory, default threads (one per core)
    start = time.perf_counter()
    literal = str(path).replace("'", "''")
    con.execute(f"CREATE TABLE logs AS SELECT * FROM read_json('{literal}', format = 'newline_delimited')")
    result.duck_load = rows / (time.perf_counter() - start)
    log(f"DuckDB load: {result.duck_load:,.0f} rows/s")
    assert con.execute("SELECT count(*) FROM logs").fetchone()[0] == rows
    result.ingest["parse"] = parse_rate(path, batches, node_parse)
    result.ingest["pyarrow"] = parse_rate(path, batches, pyarrow_parse)
    log(f"the node's parse alone: {result.ingest['parse']:,.0f} rows/s; pyarrow.json alone: "
        f"{result.ingest['pyarrow']:,.0f} rows/s")

    nodes: list[Server] = []
    try:
        # The two rates the index's cost compares are each the best of two runs, alternating: one
        # 10 M-row ingest varied by ±10 % from run to run, the size of the goal itself.
        no_index = ("no-index", 2, {"HELIOS_COMPACTION_INTERVAL_SECS": "3600"})
        variants = [("1", 1, {}), ("at-flush", 2, {"HELIOS_INDEX_ON_FLUSH": "true"}),
                    no_index, ("2", 2, {}), no_index, ("2", 2, {})]
        for at, (name, clients, extra) in enumerate(variants):
            node = start_node(**{**env, **extra})
            nodes.append(node)
            began_ingest = time.monotonic()
            rate = ingest(node, path, batches, clients)
            result.ingest[name] = max(rate, result.ingest.get(name, 0.0))
            log(f"ingest, {clients} client(s) {extra or ''}: {rate:,.0f} rows/s")
            if at < len(variants) - 1:
                node.kill()  # only its rate was wanted
                shutil.rmtree(node.data_dir.parent, ignore_errors=True)
        node = nodes[-1]
        start = time.monotonic()
        wait_until(lambda: _all_indexed(node, rows), timeout_s=SETTLE_S, what="every row in an indexed block")
        result.indexed = rows / (time.monotonic() - began_ingest)
        log(f"every row indexed {time.monotonic() - start:.0f} s after the ingest: {result.indexed:,.0f} rows/s")
        settle(node, rows, sync_s, interval_s)
        blocks = _blocks(node)
        result.block_bytes = tree_bytes(node.data_dir / "parts", _is_block)
        result.dir_bytes = tree_bytes(node.data_dir)
        api_bytes = node.datasets()[DATASET]["bytes"]
        result.notes.append(f"settled in {time.monotonic() - start:.0f} s after the 2-client ingest: {blocks} "
                            f"block{'s' if blocks != 1 else ''}, {result.block_bytes:,} B of block files ({api_bytes:,} B as the node "
                            f"reports them), {result.dir_bytes:,} B in the data dir")
        log(f"settled: {blocks} blocks, {result.block_bytes / rows:.1f} B/row")

        settled_rss = peak_rss_bytes(node.proc.pid)
        http = Keepalive(node.url, {"Authorization": f"Bearer {node.token}"})
        try:
            def helios(q: str) -> Callable[[], dict[str, Any]]:
                body = orjson.dumps({"q": q, "dataset": DATASET})

                def run() -> dict[str, Any]:
                    status, _, text = http.post("/api/v1/query", body, "application/json")
                    if status != 200:  # e.g. 503 past HELIOS_QUERY_TIMEOUT_SECS: reported, not fatal
                        raise QueryFailed(f"{status} {text[:200].decode(errors='replace')}")
                    answer = orjson.loads(text)
                    assert not answer["stats"].get("partial"), answer["stats"]
                    return answer
                return run

            for row, q, sql in query_rows(rare, one_in):
                duck = lambda sql=sql: con.execute(sql).fetchall()  # noqa: E731
                try:
                    h, d, answer_h, answer_d = best_pair(helios(q), duck, args.runs, args.budget_s)
                    result.notes.append(check_answers(row.key, answer_h, answer_d, rows, rare, records))
                except QueryFailed as failed:
                    h, d, _, _ = best_pair(lambda: None, duck, args.runs, args.budget_s)
                    h = math.inf
                    result.notes.append(f"`{q}` FAILED on Helios: {failed}")
                result.times[row.key] = (h, d)
                log(f"{q}: Helios {h * 1000:.1f} ms, DuckDB {d * 1000:.1f} ms ({h / d:.2f}×); "
                    f"peak RSS so far {peak_rss_bytes(node.proc.pid) / 2**20:,.0f} MiB")
        finally:
            http.close()
        result.peak_rss = peak_rss_bytes(node.proc.pid)
        result.notes.append(f"peak RSS {settled_rss / 2**20:,.0f} MiB after the ingests and settling, "
                            f"{result.peak_rss / 2**20:,.0f} MiB after the queries")
        result.notes.append(f"whole size done in {time.monotonic() - began:.0f} s")
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
            shutil.rmtree(node.data_dir.parent, ignore_errors=True)
        con.close()
        path.unlink(missing_ok=True)
    return result


def parse_rows(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        sizes.append(int(float(part[:-1] if scale > 1 else part) * scale))
    if not sizes or min(sizes) < BATCH_ROWS:
        raise argparse.ArgumentTypeError(f"sizes of at least {BATCH_ROWS} rows, e.g. 1000000,10000000 or 1M,10M")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=[1_000_000, 10_000_000],
                        help="comma-separated sizes (default 1000000,10000000; 1M,10M also works)")
    parser.add_argument("--quick", action="store_true", help="a 100 k-row smoke run (overrides --rows)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query after the warm-up (best kept)")
    parser.add_argument("--budget-s", type=float, default=30.0,
                        help="after two runs, stop timing a query once this much time went into it")
    parser.add_argument("--env", action="append", default=[], metavar="HELIOS_X=V",
                        help="an extra setting for the nodes (repeatable)")
    parser.add_argument("--out", type=Path, help="where the table is also written (default: bench/results.md, "
                        "or bench/results-quick.md with --quick)")
    args = parser.parse_args()
    sizes = [100_000] if args.quick else args.rows
    out = args.out or Path(__file__).resolve().parent / ("results-quick.md" if args.quick else "results.md")
    began = time.monotonic()
    header = machine()
    records = loghub_records()
    rare = rare_token(records)
    one_in = round(len(records) / token_rows(records, rare, len(records)))
    log(f"sizes {sizes}; rare token {rare!r}, 1 row in {one_in:,}")
    work = Path(tempfile.mkdtemp(prefix="helios-bench-query-"))
    try:
        results = [run_size(rows, args, records, rare, one_in, work) for rows in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = {**NODE_ENV, **dict(kv.split("=", 1) for kv in args.env)}
    setup = (f"Loghub (20,000 lines from 10 systems) replayed with fresh timestamps, one row per ms; "
             f"DuckDB in this process, table in memory; Helios over HTTP on loopback, one `helios serve` "
             f"with default settings except {', '.join(f'`{k}={v}`' for k, v in env.items())}; "
             f"query times best of {args.runs} after a warm-up, the two engines alternating, each timed run "
             f"{QUIET_S:g} s after the other's; Helios's queries through one keep-alive `http.client` "
             f"connection; the 2-client ingest rates with and without index building best of two "
             f"runs each, alternating. "
             f"Growth: the Helios figure at the largest size over the smallest (for rates, the time taken). "
             f"The whole run took {(time.monotonic() - began) / 60:.1f} min.")
    rows = query_rows(rare, one_in)
    text = render(header, setup, [row for row, _, _ in rows], results)
    sys.stdout.write(text)
    out.write_text(text)
    log(f"written to {out}")


if __name__ == "__main__":
    main()

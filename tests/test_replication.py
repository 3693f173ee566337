"""Several real nodes on one shared store (fs, and S3 through moto) converge, exactly."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Callable

import pytest

from backends.s3 import S3Backend
from support import SYNC_SECS, Record, Server, ndjson, settled, store_outage, typical, wait_until

# A request to a stopped S3 store hangs this long before it fails: an operation that waited
# on the store would take at least this.
S3_TIMEOUT_S = inspect.signature(S3Backend).parameters["timeout_s"].default


def test_write_on_a_is_visible_on_b_within_the_bound(server_factory: Callable[..., Server],
                                                      store_env: dict[str, str], records: list[Record]) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    lags = []
    for start in (0, 1000, 2000):
        part = records[start : start + 1000]
        assert a.ingest(ndjson(part), dataset="logs").json() == {"ingested": 1000}
        acked = time.monotonic()
        assert a.count(dataset="logs") == start + 1000  # read-your-writes on the writer
        wait_until(lambda: b.count(dataset="logs") == start + 1000, what="B to see A's rows")
        lags.append(time.monotonic() - acked)
    print(f"visibility lags (s): {[round(x, 2) for x in lags]}")
    assert typical(lags) <= SYNC_SECS + 1.0, f"visibility lags {lags}"  # + query round-trip slack
    cluster = b.request("GET", "/api/v1/cluster").json()
    assert cluster["node_id"] and cluster["shared_store"] == store_env["HELIOS_SHARED_STORE"]
    assert cluster["sync"]["last_pull"] is not None and cluster["sync"]["pending_uploads"] == 0
    token_from_a = a.token
    assert b.request("GET", "/api/v1/datasets", token=token_from_a).status_code == 200  # one JWT secret


def test_concurrent_writers_converge_exactly(server_factory: Callable[..., Server], store_env: dict[str, str],
                                             records: list[Record], tmp_path: Path) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    for start in range(0, 4000, 500):
        node = a if (start // 500) % 2 == 0 else b
        assert node.ingest(ndjson(records[start : start + 500]), dataset="both").status_code == 200
    expected = {"n": 4000}
    services = {}
    for r in records[:4000]:
        services[r.service] = services.get(r.service, 0) + 1
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="both") == 4000, what="convergence")
    for node in (a, b):
        rows = node.query("* | stats count() as n by (service)", dataset="both")["rows"]
        assert {row["service"]: row["n"] for row in rows} == services
        assert node.query("* | stats count() as n", dataset="both")["rows"] == [expected]
    # A third node with an empty data dir, the same store and secrets, sees everything (DR).
    c = server_factory("c", **store_env)
    wait_until(lambda: c.count(dataset="both") == 4000, what="the new node to catch up")
    assert c.count("service:hdfs", dataset="both") == services.get("hdfs", 0)


def test_kill9_writer_mid_stream_converges_without_loss_or_duplicates(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record]) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    acked = 0
    for start in range(0, 3000, 300):
        assert a.ingest(ndjson(records[start : start + 300]), dataset="k").status_code == 200
        acked += 300
        if start == 1500:  # let a flush happen, so uploads are under way when the kill comes
            wait_until(lambda: a.datasets()["k"]["blocks"] >= 1, what="a flushed block")
    a.kill()
    a.start()
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="k") == acked, what="convergence")
    settled([a, b])  # every flush, upload and pull since: nothing more arrives later, still exact
    assert a.count(dataset="k") == acked and b.count(dataset="k") == acked


def test_store_outage_keeps_local_work_going_then_converges(
        server_factory: Callable[..., Server], store_env: dict[str, str], records: list[Record],
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    assert a.ingest(ndjson(records[:500]), dataset="o").status_code == 200
    wait_until(lambda: b.count(dataset="o") == 500, what="initial sync")
    restore = store_outage(store_env, request)
    try:
        # Ingest and local queries do not wait on the store: none takes as long as one store timeout.
        for step in (lambda: a.ingest(ndjson(records[500:1500]), dataset="o").json() == {"ingested": 1000},
                     lambda: a.count(dataset="o") == 1500, lambda: b.count(dataset="o") == 500):
            began = time.monotonic()
            assert step()
            assert time.monotonic() - began < S3_TIMEOUT_S, "ingest and local queries must not wait on the store"
        wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] > 0,
                   what="a pending upload")
    finally:
        restore()
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="o") == 1500, what="catch-up after the outage")
    # B can pull a block between A's commit to the store and A's own record of it.
    wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0,
               what="A to record its uploads")


def test_a_node_with_data_seeds_an_empty_store(server_factory: Callable[..., Server], store_env: dict[str, str],
                                               records: list[Record]) -> None:
    local_only = {k: v for k, v in store_env.items() if k != "HELIOS_SHARED_STORE"}
    a = server_factory("a", **local_only)
    assert a.ingest(ndjson(records[:2000]), dataset="seed").status_code == 200
    assert a.stop() == 0  # its data is in blocks now, never uploaded anywhere
    a.env.update(store_env)
    a.start()
    b = server_factory("b", **store_env)
    wait_until(lambda: b.count(dataset="seed") == 2000, what="the store to be seeded")
    assert a.count(dataset="seed") == 2000

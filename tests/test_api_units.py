"""In-process checks of the API's pieces: the store→HTTP error boundary, strict parameters, the query pool."""

from __future__ import annotations

import ast as pyast
import threading
import time
from pathlib import Path
from typing import Callable

import orjson
import pyarrow as pa
import pytest
import trio

import backends.base as store
from helios import errors
from helios.api.common import _check_depth, whole_number
from helios.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable, from_store, map_store_errors
from helios.query.cancel import DEADLINE, CancelToken, QueryCancelled
from helios.query.executor import QueryResult, encode_rows
from helios.query.runner import QueryPool

HELIOS = Path(__file__).resolve().parent.parent / "helios"


@pytest.mark.parametrize("kind", [store.NotFound, store.Conflict, store.Unavailable, store.Invalid])
def test_every_store_error_reaching_http_is_503_with_its_meaning(kind: type[store.StoreError]) -> None:
    mapped = from_store(kind("key _x/1: boom"))
    assert isinstance(mapped, Unavailable) and mapped.status == 503 and mapped.retry_after_s == 1
    assert "shared store" in str(mapped) and "key _x/1: boom" in str(mapped)
    with pytest.raises(Unavailable) as caught, map_store_errors():
        raise kind("again")
    assert isinstance(caught.value.__cause__, kind)


def test_no_module_binds_one_name_to_both_error_trees() -> None:
    """The store's NotFound/Conflict/Unavailable and the HTTP ones never share a name inside one module."""
    clashing = {n for n in store.__all__ if n in errors.__all__}
    assert clashing == {"Conflict", "NotFound", "Unavailable"}  # the documented overlap
    for path in HELIOS.rglob("*.py"):
        bound: dict[str, set[str]] = {"store": set(), "http": set()}
        for node in pyast.walk(pyast.parse(path.read_text())):
            if isinstance(node, pyast.ImportFrom) and node.module:
                side = ("store" if node.module.startswith("backends")
                        else "http" if node.module == "helios.errors" else None)
                if side:
                    bound[side] |= {alias.asname or alias.name for alias in node.names}
        assert not bound["store"] & bound["http"] & clashing, path


@pytest.mark.parametrize("raw", ["²", "¹²", "٣", "1.5", "-1", "", " 1", "1" * 19, True, 2.0, None])
def test_whole_numbers_are_ascii_digits_only(raw: object) -> None:
    with pytest.raises(InvalidInput):
        whole_number(raw, "limit", 0, 10**20)


def test_whole_number_accepts_digits_and_integers() -> None:
    assert whole_number("007", "limit", 0, 10) == 7
    assert whole_number(3, "limit", 0, 10) == 3
    assert whole_number(None, "limit", 0, 10, default=5) == 5
    with pytest.raises(InvalidInput):
        whole_number("11", "limit", 0, 10)


def test_json_depth_is_bounded_without_recursion() -> None:
    deep: object = 1
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    with pytest.raises(InvalidInput):
        _check_depth({"a": deep}, 32)
    shallow: object = 1
    for _ in range(31):
        shallow = {"x": shallow}
    _check_depth(shallow, 32)  # type: ignore[arg-type]


def test_cancel_token_stops_at_its_deadline_or_when_cancelled() -> None:
    now = [0.0]
    token = CancelToken(5.0, clock=lambda: now[0])
    token.start()
    token.check()
    now[0] = 5.5
    with pytest.raises(QueryCancelled) as caught:
        token.check()
    assert caught.value.reason == DEADLINE
    other = CancelToken(None)
    other.cancel("client gone")
    other.cancel("shutdown")  # the first reason is kept
    with pytest.raises(QueryCancelled, match="client gone"):
        other.check()


def _spin_until_stopped(ended: threading.Event) -> Callable[[CancelToken], None]:
    def work(token: CancelToken) -> None:
        try:
            while True:  # never finishes by itself
                token.check()
                time.sleep(0.005)
        finally:
            ended.set()

    return work


async def test_query_pool_deadline_stops_the_worker_thread() -> None:
    pool = QueryPool(max_concurrent=2, queue_s=5.0, deadline_s=0.2)
    ended = threading.Event()
    with pytest.raises(DeadlineExceeded, match="HELIOS_QUERY_TIMEOUT_SECS"):
        await pool.run(_spin_until_stopped(ended))
    assert await trio.to_thread.run_sync(ended.wait, 30.0)
    assert pool.counters["stopped_deadline"] == 1 and pool.counters["running"] == 0
    assert await pool.run(lambda token: 42) == 42


async def test_query_pool_bound_then_shutdown() -> None:
    pool = QueryPool(max_concurrent=1, queue_s=0.1, deadline_s=600.0)
    ended = threading.Event()
    outcome: dict[str, BaseException] = {}

    async def long_query() -> None:
        try:
            await pool.run(_spin_until_stopped(ended))
        except Unavailable as exc:
            outcome["long"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_query)
        while pool.threads_busy == 0:
            await trio.sleep(0.01)
        with pytest.raises(Overloaded, match="HELIOS_MAX_CONCURRENT_QUERIES"):
            await pool.run(lambda token: 1)
        pool.close()
    assert "shutting down" in str(outcome["long"]) and not isinstance(outcome["long"], DeadlineExceeded)
    assert await trio.to_thread.run_sync(ended.wait, 30.0)
    with pytest.raises(Unavailable, match="shutting down"):
        await pool.run(lambda token: 1)


async def test_a_cancelled_caller_abandons_and_stops_its_worker() -> None:
    pool = QueryPool(max_concurrent=1, queue_s=1.0, deadline_s=600.0)
    ended = threading.Event()
    with trio.move_on_after(0.2):  # the client goes away
        await pool.run(_spin_until_stopped(ended))
    assert await trio.to_thread.run_sync(ended.wait, 30.0)
    assert pool.counters["cancelled_client_gone"] == 1


def test_encode_rows_chunks_rows_without_nulls() -> None:
    table = pa.table({"_time": pa.array([3, 2, 1], pa.timestamp("ns", tz="UTC")),
                      "b": ["x", None, "z"], "_msg": ["m3", "m2", "m1"], "dataset": ["d", "d", "d"]})
    pieces = list(encode_rows(QueryResult(table, aggregated=False), rows_per_chunk=2))
    assert len(pieces) == 2
    rows = orjson.loads(b"[" + b",".join(pieces) + b"]")
    assert rows[1] == {"_time": "1970-01-01T00:00:00.000000002Z", "_msg": "m2", "dataset": "d"}
    assert list(rows[0]) == ["_time", "_msg", "dataset", "b"]
    counted = QueryResult(pa.table({"host": ["a", None], "n": [1, 2]}), aggregated=True)
    assert orjson.loads(b"[" + b",".join(encode_rows(counted)) + b"]") == [{"host": "a", "n": 1},
                                                                            {"host": None, "n": 2}]

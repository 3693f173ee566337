"""One conformance suite over memory, fs and S3 (moto over HTTP); process races; S3 fault handling."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import trio

from backends import Conflict, Invalid, NotFound, Unavailable, create_resolved, open_backend
from backends.conformance import CHECKS, check_backend, race_create
from backends.faulty import FaultyBackend, NonAtomicCreate
from backends.memory import MemoryBackend
from backends.s3 import S3Backend, parse_s3_url
from support import MotoServer, Server


async def make_backend(kind: str, tmp_path: Path, moto: MotoServer | None) -> Any:
    if kind == "memory":
        return MemoryBackend()
    if kind == "fs":
        return await open_backend(str(tmp_path / "store"))
    assert moto is not None
    prefix = f"t-{secrets.token_hex(4)}"
    return await open_backend(f"s3://helios-test/{prefix}",
                              {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": moto.endpoint})


@pytest.fixture(params=["memory", "fs", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "s3":
        request.getfixturevalue("moto_s3")
    return request.param


async def test_conformance(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    moto = request.getfixturevalue("moto_s3") if kind == "s3" else None
    backend = await make_backend(kind, tmp_path, moto)
    ran = await check_backend(backend)
    assert ran == [name for name, _ in CHECKS]
    counts = backend.counters.snapshot()
    assert counts["GET"] > 0 and counts["PUT"] > 0 and counts["LIST"] > 0 and counts["DELETE"] > 0
    assert counts["conflicts"] > 0
    await backend.aclose()


def test_processes_racing_create_have_one_winner_fs(tmp_path: Path) -> None:
    winners = race_create(str(tmp_path / "store"), rounds=500, workers=8)
    assert all(len(w) == 1 for w in winners.values()), {r: w for r, w in winners.items() if len(w) != 1}


def test_processes_racing_create_have_one_winner_s3(moto_s3: MotoServer, s3_env: dict[str, str]) -> None:
    env = {**s3_env, "AWS_ENDPOINT_URL_S3": moto_s3.endpoint}
    winners = race_create(f"s3://helios-test/race-{secrets.token_hex(3)}", rounds=500, workers=8, environ=env)
    assert all(len(w) == 1 for w in winners.values()), {r: w for r, w in winners.items() if len(w) != 1}


def test_race_detector_catches_a_non_atomic_create_fs(tmp_path: Path) -> None:
    """Negative control: the same race, with create done as check-then-put, has double winners."""
    winners = race_create(str(tmp_path / "store"), rounds=30, workers=8, nonatomic=True)
    assert sum(len(w) > 1 for w in winners.values()) > 0


def test_race_detector_catches_a_non_atomic_create_s3(moto_s3: MotoServer, s3_env: dict[str, str]) -> None:
    env = {**s3_env, "AWS_ENDPOINT_URL_S3": moto_s3.endpoint}
    winners = race_create(f"s3://helios-test/bad-{secrets.token_hex(3)}", rounds=30, workers=8,
                          environ=env, nonatomic=True)
    assert sum(len(w) > 1 for w in winners.values()) > 0


def test_in_process_detector_catches_non_atomic_memory() -> None:
    async def main() -> int:
        backend = NonAtomicCreate(MemoryBackend())
        doubles = 0
        for round_ in range(10):
            wins: list[int] = []

            async def attempt(i: int, key: str = f"k{round_}") -> None:
                try:
                    await backend.create(key, str(i).encode())
                    wins.append(i)
                except Conflict:
                    pass

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(attempt, i)
            doubles += len(wins) > 1
        return doubles

    assert trio.run(main) > 0


# -- S3 faults, injected at the HTTP transport between the backend and moto ------------------


class FaultTransport(httpx.AsyncBaseTransport):
    """Forwards to moto, except for scripted faults: ("status", 503), ("lost",), ("timeout",), ("call", fn),
    ("no-range",) (the Range header dropped: a server that ignores it), ("content-range", value)."""

    def __init__(self, script: list[tuple[Any, ...]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.script = list(script)
        self.requests: list[str] = []
        self.statuses: list[int] = []  # of the answers that came from moto

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.method)
        fault = self.script.pop(0) if self.script else ("pass",)
        if fault[0] == "no-range":
            del request.headers["Range"]
        if fault[0] == "status":
            body = f"<Error><Code>{fault[2] if len(fault) > 2 else 'InternalError'}</Code><Message>injected</Message></Error>"
            return httpx.Response(fault[1], content=body.encode())
        if fault[0] == "timeout":  # never reaches the server
            if len(fault) > 1:
                await fault[1]()
            raise httpx.ReadTimeout("injected timeout", request=request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self.statuses.append(response.status_code)
        if fault[0] == "content-range":
            response.headers["Content-Range"] = fault[1]
        if fault[0] == "lost":  # reached the server, answer lost
            raise httpx.ReadTimeout("injected: answer lost", request=request)
        return response


def s3_backend(moto: MotoServer, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> S3Backend:
    import botocore.session

    credentials = botocore.session.get_session().get_credentials()
    return S3Backend("helios-test", f"f-{secrets.token_hex(4)}/", region="us-east-1", endpoint=moto.endpoint,
                     credentials=credentials, transport=transport, seed=1, **kwargs)


async def test_s3_retries_5xx_and_throttling(moto_s3: MotoServer) -> None:
    transport = FaultTransport([("status", 503, "SlowDown"), ("status", 500), ("status", 429)])
    backend = s3_backend(moto_s3, transport)
    await backend.put("k", b"v")
    assert await backend.get("k") == b"v"
    assert backend.counters.snapshot()["retries"] == 3
    await backend.aclose()


async def test_s3_ranged_reads_retry_like_get_and_check_the_answer(moto_s3: MotoServer) -> None:
    data = bytes(range(256)) * 4
    transport = FaultTransport([("pass",), ("status", 503, "SlowDown"), ("status", 500), ("pass",)])
    backend = s3_backend(moto_s3, transport)
    await backend.put("k", data)
    assert await backend.get_range("k", 10, 20) == data[10:30]  # two retries, then 206
    assert backend.counters.snapshot()["retries"] == 2 and transport.statuses[-1] == 206
    assert await backend.get_range("k", 1000, 50) == data[1000:]  # the range runs past the end
    assert await backend.get_range("k", 1024, 5) == b"" and transport.statuses[-1] == 416
    transport.script = [("no-range",)]  # a server that ignores Range answers 200 with the whole object
    assert await backend.get_range("k", 300, 4) == data[300:304] and transport.statuses[-1] == 200
    transport.script = [("content-range", "bytes 0-3/1024")]  # an answer for another range is refused
    with pytest.raises(Unavailable, match="Content-Range"):
        await backend.get_range("k", 300, 4)
    with pytest.raises(NotFound):
        await backend.get_range("missing", 0, 4)
    sent = len(transport.requests)
    assert await backend.get_range("k", 5, 0) == b"" and len(transport.requests) == sent  # no request
    await backend.aclose()


async def test_s3_lost_create_answer_is_resolved_by_reading_back(moto_s3: MotoServer) -> None:
    transport = FaultTransport([("lost",)])
    backend = s3_backend(moto_s3, transport)
    await backend.create("v-1", b"commit-abc")  # landed; the answer was lost; read back → ours
    assert await backend.get("v-1") == b"commit-abc"
    assert transport.requests[:2] == ["PUT", "GET"]
    with pytest.raises(Conflict):
        await backend.create("v-1", b"commit-def")
    await backend.aclose()


async def test_s3_timeout_while_another_writer_wins_is_a_conflict(moto_s3: MotoServer) -> None:
    other = s3_backend(moto_s3, httpx.AsyncHTTPTransport())
    backend = s3_backend(moto_s3, FaultTransport([]))
    backend.prefix = other.prefix

    async def rival() -> None:
        await other.create("v-2", b"rival-commit")

    backend._client = httpx.AsyncClient(transport=FaultTransport([("timeout", rival)]))
    with pytest.raises(Conflict):
        await backend.create("v-2", b"my-commit")
    assert await backend.get("v-2") == b"rival-commit"
    await other.aclose()
    await backend.aclose()


async def test_s3_gives_up_after_bounded_attempts(moto_s3: MotoServer) -> None:
    transport = FaultTransport([("status", 503)] * 100)
    backend = s3_backend(moto_s3, transport, max_attempts=4)
    with pytest.raises(Unavailable):
        await backend.put("k", b"v")
    assert len(transport.requests) == 4
    await backend.aclose()


async def test_s3_bad_credentials_fail_at_once(moto_s3: MotoServer) -> None:
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
        transport = FaultTransport([("status", 403, code)] * 100)
        backend = s3_backend(moto_s3, transport)
        with pytest.raises(Invalid, match=code):
            await backend.get("k")
        assert len(transport.requests) == 1, "no retry storm on bad credentials"
        await backend.aclose()


async def test_faulty_wrapper_and_create_resolved(tmp_path: Path) -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, seed=7, lost_answer_rate=1.0)
    with pytest.raises(Unavailable):
        await faulty.create("a", b"mine")
    assert inner.objects["a"] == b"mine", "a lost answer still lands"
    await create_resolved(faulty, "b", b"mine-b")  # lost answer, then read back: ours
    assert inner.objects["b"] == b"mine-b"
    await inner.create("c", b"theirs")
    with pytest.raises(Conflict):
        await create_resolved(faulty, "c", b"mine-c")
    async def outcomes_for(seed: int) -> list[bool]:
        flaky = FaultyBackend(inner, seed=seed, error_rate=0.5)
        outcomes = []
        for _ in range(40):
            try:
                await flaky.get("a")
                outcomes.append(True)
            except Unavailable:
                outcomes.append(False)
        return outcomes

    outcomes = await outcomes_for(3)
    assert 5 < outcomes.count(False) < 35
    again = await outcomes_for(3)
    assert again == outcomes, "a seed replays the same faults"
    flaky = FaultyBackend(inner, seed=3, error_rate=0.5)  # ranged reads are injected the same way
    ranged = []
    for _ in range(40):
        try:
            ranged.append(await flaky.get_range("a", 1, 2) == b"in")
        except Unavailable:
            ranged.append(False)
    assert ranged == outcomes


def test_s3_urls() -> None:
    assert parse_s3_url("s3://b") == ("b", "")
    assert parse_s3_url("s3://b/") == ("b", "")
    assert parse_s3_url("s3://b/p/q") == ("b", "p/q/")
    for bad in ("s3://", "s3:///x", "http://b"):
        with pytest.raises(Invalid):
            parse_s3_url(bad)


async def test_open_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="unsupported"):
        await open_backend("ftp://host/x")
    with pytest.raises(Invalid, match="AWS_REGION"):
        await open_backend("s3://bucket/p", {"AWS_CONFIG_FILE": "/nonexistent"})
    with pytest.raises(NotFound):
        await (await open_backend(str(tmp_path / "s"))).get("nothing")


def test_serve_with_s3_and_no_region_fails_naming_aws_region(server_factory: Callable[..., Server]) -> None:
    with pytest.raises(AssertionError, match="AWS_REGION"):
        server_factory(HELIOS_SHARED_STORE="s3://helios-test/p", AWS_CONFIG_FILE="/nonexistent",
                       AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                       AWS_REGION="", AWS_DEFAULT_REGION="")


def test_serve_with_s3_region_and_endpoint_starts(server_factory: Callable[..., Server], moto_s3: MotoServer,
                                                  s3_env: dict[str, str]) -> None:
    server = server_factory(HELIOS_SHARED_STORE="s3://helios-test/node", AWS_ENDPOINT_URL_S3=moto_s3.endpoint,
                            **s3_env)
    assert server.request("GET", "/healthz", token=None).status_code == 200
    assert any("shared store" in line for line in server.logs)
    assert server.stop() == 0


def test_serve_with_fs_store_starts(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory(HELIOS_SHARED_STORE=str(tmp_path / "shared"))
    assert server.request("GET", "/healthz", token=None).status_code == 200
    metrics = server.request("GET", "/metrics").text
    assert 'helios_store_requests_total{backend="fs",op="LIST"} ' in metrics
    assert server.stop() == 0


def test_serve_with_unreachable_s3_still_starts(server_factory: Callable[..., Server], s3_env: dict[str, str]) -> None:
    """Local-primary: a store that is down delays replication, not the node."""
    server = server_factory(HELIOS_SHARED_STORE="s3://helios-test/p", AWS_ENDPOINT_URL_S3="http://127.0.0.1:9",
                            **s3_env)
    assert any("unreachable" in line for line in server.logs)
    assert server.ingest(b'{"_msg": "still works"}\n').json() == {"ingested": 1}
    assert server.count("works") == 1
    assert server.stop() == 0

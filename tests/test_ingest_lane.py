"""``POST /api/v1/ingest`` with a body of known length is answered without Quart
(``helios.api.ingest_lane``); every other request for it through Quart. Both must answer alike.

Each case is sent to one real node twice, into two datasets: as a body of known length (the lane)
and as the same body chunked (no length: Quart). The statuses, the JSON answers, the headers that
carry meaning and the rows each dataset then holds must be the same.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import urllib.parse
from typing import Any, Iterator

import orjson
import pytest

from helios.api.ingest_lane import _QUERY
from support import Record, Server, metric, ndjson

MAX_BODY = 512 << 10
MEANING = ("content-type", "retry-after", "x-content-type-options", "cache-control", "connection")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("ingest-lane") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_BODY_TIMEOUT_SECS": "2", "HELIOS_MAX_BODY_BYTES": str(MAX_BODY),
                               "HELIOS_MAX_DECODED_BYTES": str(1 << 20)}).start()
    yield server
    server.kill()


def _send(node: Server, body: bytes, dataset: str, token: str | None, headers: dict[str, Any], *,
          chunked: bool) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/x-ndjson", **headers}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content: Any = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body
    reply = node.request("POST", f"/api/v1/ingest?dataset={dataset}", token=None, headers=headers,
                         content=content)
    assert ("transfer-encoding" in reply.request.headers) == chunked
    return reply.status_code, dict(reply.headers), orjson.loads(reply.content)


def _held(node: Server, dataset: str) -> list[dict[str, Any]]:
    rows = node.rows(dataset, "* | sort by (_msg, _time)")
    for row in rows:
        row.pop("dataset", None)
        if not row["_msg"].startswith("loghub"):  # rows without _time: stamped on arrival
            row.pop("_time")
    return rows


_TOKENS: dict[str, str] = {}


def _token(node: Server, role: str | None) -> str | None:
    if role in (None, "x.y.z"):
        return role
    if role == "admin":
        return node.token
    if role not in _TOKENS:
        _TOKENS[role] = node.api_token(role, name=f"ingest lane {role}")
    return _TOKENS[role]


def _cases(records: list[Record]) -> list[tuple[str, bytes, dict[str, Any], str | None, int]]:
    loghub = b"".join(orjson.dumps({**r.doc(), "_msg": "loghub " + r.msg}) + b"\n" for r in records[:300])
    return [
        ("ndjson", loghub, {}, "admin", 200),
        ("ingest-token", ndjson(records[300:400]), {}, "ingest", 200),
        ("text", b"first line\n\nsecond line\r\n", {"Content-Type": "text/plain; charset=utf-8"}, "admin", 200),
        ("not-text", loghub, {"Content-Type": b"text/plain\xa0"}, "admin", 200),  # not text/plain: NDJSON
        ("gzip", gzip.compress(loghub), {"Content-Encoding": "gzip"}, "admin", 200),
        ("empty", b"", {}, "admin", 200),
        ("bad-json", b'{"_msg":"a"}\n{"_msg":"b"}\n{"_msg":\n', {}, "admin", 400),
        ("not-utf8", b'{"_msg":"a"}\n{"_msg":"\xff"}\n', {}, "admin", 400),
        ("bad-time", b'{"_msg":"a","_time":"yesterday"}\n', {}, "admin", 400),
        ("bad-encoding", b"xx", {"Content-Encoding": "brotli-ish"}, "admin", 400),
        ("bomb", gzip.compress(b" " * (2 << 20)), {"Content-Encoding": "gzip"}, "admin", 413),
        ("too-large", b'{"_msg":"' + b"x" * MAX_BODY + b'"}\n', {}, "admin", 413),
        ("stranger", loghub, {}, None, 401),
        ("bad-token", loghub, {}, "x.y.z", 401),
        ("viewer", loghub, {}, "viewer", 403),
    ]


def test_the_lane_and_quart_answer_alike_and_store_alike(node: Server, records: list[Record]) -> None:
    before = metric(node, "helios_http_direct_requests_total")
    cases = _cases(records)
    for name, body, headers, role, status in cases:
        token = _token(node, role)
        lane = _send(node, body, f"lane-{name}", token, headers, chunked=False)
        quart = _send(node, body, f"quart-{name}", token, headers, chunked=True)
        assert lane[0] == quart[0] == status, (name, lane, quart)
        assert lane[2] == quart[2], (name, lane, quart)
        for header in MEANING:
            if header != "connection":
                assert lane[1].get(header) == quart[1].get(header), (name, header, lane[1], quart[1])
        if status == 200:
            assert _held(node, f"lane-{name}") == _held(node, f"quart-{name}"), name
    assert node.datasets().keys() >= {"lane-ndjson", "lane-text", "lane-gzip"}
    assert "lane-bad-json" not in node.datasets()  # all or nothing
    # Every body of known length was read straight from the socket (helios.api.direct) but the one
    # over HELIOS_MAX_BODY_BYTES, which the lane leaves to Quart (413).
    assert metric(node, "helios_http_direct_requests_total") == before + len(cases) - 1


def test_a_bad_dataset_name_is_refused_alike(node: Server) -> None:
    for dataset in ("Bad", "-x", "x" * 65, ""):
        lane = _send(node, b'{"_msg":"a"}\n', dataset, node.token, {}, chunked=False)
        quart = _send(node, b'{"_msg":"a"}\n', dataset, node.token, {}, chunked=True)
        assert lane[0] == quart[0] == 400 and lane[2] == quart[2], (dataset, lane, quart)


def test_a_stranger_is_refused_before_its_body_has_come(node: Server) -> None:
    parts = urllib.parse.urlsplit(node.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = ("POST /api/v1/ingest?dataset=x HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                "Content-Length: 100000\r\n\r\n")
        sock.sendall(head.encode() + b'{"_msg":"a"}\n')  # then nothing
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 401, reply.status
        assert "error" in orjson.loads(reply.read())
        assert reply.getheader("connection") == "close"


def test_a_bad_dataset_is_refused_before_its_body_has_come(node: Server) -> None:
    """As the route does: the dataset is checked before the body is read (400 at once, not 408)."""
    parts = urllib.parse.urlsplit(node.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (f"POST /api/v1/ingest?dataset=Bad.Name HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {node.token}\r\nContent-Length: 100000\r\n\r\n")
        sock.sendall(head.encode() + b'{"_msg":"a"}\n')  # then nothing: the body timeout is 2 s
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 400, reply.status
        assert "dataset name" in orjson.loads(reply.read())["error"]


def test_a_body_that_stops_coming_is_answered_408_and_nothing_is_stored(node: Server) -> None:
    parts = urllib.parse.urlsplit(node.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (f"POST /api/v1/ingest?dataset=slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                f"Authorization: Bearer {node.token}\r\nContent-Length: 100000\r\n\r\n")
        sock.sendall(head.encode() + b'{"_msg":"a"}\n')  # HELIOS_BODY_TIMEOUT_SECS is 2 s
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 408, reply.status
        assert "HELIOS_BODY_TIMEOUT_SECS" in orjson.loads(reply.read())["error"]
    assert "slow" not in node.datasets()


def test_which_requests_take_the_lane() -> None:
    for query in (b"", b"dataset=app", b"dataset=a_b-c.9", b"dataset="):
        assert _QUERY.fullmatch(query), query
    for query in (b"dataset=a&x=1", b"x=1", b"dataset=a%20b", b"dataset=a b", b"dataset=a&dataset=b"):
        assert not _QUERY.fullmatch(query), query

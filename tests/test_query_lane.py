"""``POST /api/v1/query`` with a small body of known length is answered without Quart
(``helios.api.lane``); every other request for it through Quart. Both must answer alike.

Each case is sent three ways to one real node: as a JSON body of known length (the lane), as the
same body chunked (no length: Quart), and where it can be, as a GET (Quart). The statuses, the
JSON bodies (but a query's elapsed time) and the headers that carry meaning must be the same.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse
from typing import Any, Iterator

import orjson
import pytest

from support import Record, Server, ndjson

ADMIN = "admin"
MAX_BODY = 512 << 10  # below the lane's own bound (1 MiB): a larger body is Quart's 413


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, records: list[Record]) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("lane") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_BODY_TIMEOUT_SECS": "2",
                               "HELIOS_MAX_BODY_BYTES": str(MAX_BODY)}).start()
    _ingest(server, records[:2000], "lane")
    yield server
    server.kill()


def _ingest(node: Server, records: list[Record], dataset: str) -> None:
    for start in range(0, len(records), 1000):  # bodies within HELIOS_MAX_BODY_BYTES
        assert node.ingest(ndjson(records[start:start + 1000]), dataset=dataset).status_code == 200


def _send(node: Server, body: bytes, token: str | None, *,
          chunked: bool) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content: Any = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if chunked else body
    reply = node.request("POST", "/api/v1/query", token=None, headers=headers, content=content)
    if chunked:
        assert reply.request.headers.get("transfer-encoding") == "chunked"
    else:
        assert reply.request.headers.get("content-length") == str(len(body))
    return reply.status_code, dict(reply.headers), _doc(reply.content)


def _doc(raw: bytes) -> Any:
    doc = orjson.loads(raw)
    if isinstance(doc, dict) and isinstance(doc.get("stats"), dict):
        doc["stats"].pop("elapsed_ms", None)  # the one part that differs between two runs
    return doc


MEANING = ("content-type", "retry-after", "x-content-type-options", "cache-control",
           "content-security-policy", "referrer-policy", "x-frame-options")


@pytest.mark.parametrize("body,role,status", [
    (b'{"q": "* | stats count() as n by (level)", "dataset": "lane"}', ADMIN, 200),
    (b'{"q": "* | limit 3", "dataset": "lane"}', ADMIN, 200),
    (b'{"q": "* | sort by (size desc) | limit 5", "dataset": ["lane"], "limit": "4"}', ADMIN, 200),
    (b'{"q": "error", "dataset": "lane", "from": "2023-11-14T00:00:00Z", '
     b'"to": "2023-11-15T00:00:00Z"}', ADMIN, 200),
    (b'{"q": "error | limit", "dataset": "lane"}', ADMIN, 400),  # a syntax error, with its column
    (b'{"q": "error", "dataset": "Bad Name"}', ADMIN, 400),
    (b'{"q": "error", "limit": -1}', ADMIN, 400),
    (b'{"q": 5}', ADMIN, 400),
    (b'{"q": "error", "from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"}', ADMIN, 400),
    (b'{"q": "error", "from": "-100000000000000000000", "to": "5"}', ADMIN, 400),  # past int64
    (b'{"q": "error", "from": "' + b"1" * 5000 + b'"}', ADMIN, 400),  # past Python's digit limit
    (b'{"q": "* | timechart 1h", "from": "-9223372036854775808"}', ADMIN, 200),  # int64's edge
    (b'{"q": "error"', ADMIN, 400),  # not JSON
    (b'["q", "error"]', ADMIN, 400),  # not an object
    (b'{"q": ' + b"[" * 40 + b"]" * 40 + b"}", ADMIN, 400),  # nested too deep
    (b'{"q": "error", "pad": "' + b"x" * MAX_BODY + b'"}', ADMIN, 413),  # past the body limit
    (b'{"q": "error"}', None, 401),
    (b'{"q": "error"}', "bad-token", 401),
    (b'{"q": "error"}', "ingest", 403),
])
def test_the_lane_and_quart_answer_alike(node: Server, body: bytes, role: str | None,
                                         status: int) -> None:
    tokens = {ADMIN: node.token, "ingest": _ingest_token(node), "bad-token": "x.y.z", None: None}
    token = tokens[role]
    lane = _send(node, body, token, chunked=False)
    quart = _send(node, body, token, chunked=True)
    assert lane[0] == quart[0] == status, (lane, quart)
    assert lane[2] == quart[2], (lane, quart)
    for name in MEANING:
        assert lane[1].get(name) == quart[1].get(name), (name, lane[1], quart[1])
    if status == 200:
        doc = orjson.loads(body)
        params = {k: ",".join(v) if isinstance(v, list) else v for k, v in doc.items()}
        got = node.request("GET", "/api/v1/query?" + urllib.parse.urlencode(params))
        assert got.status_code == 200 and _doc(got.content) == lane[2]


_TOKENS: dict[str, str] = {}


def _ingest_token(node: Server) -> str:
    if "ingest" not in _TOKENS:
        _TOKENS["ingest"] = node.api_token("ingest", name="lane ingest")
    return _TOKENS["ingest"]


def test_a_query_body_that_stops_coming_is_answered_408_and_the_connection_closed(
        node: Server) -> None:
    parts = urllib.parse.urlsplit(node.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        body = b'{"q": "error", "dataset": "lane"}'
        head = (f"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {node.token}\r\nContent-Length: {len(body)}\r\n\r\n")
        sock.sendall(head.encode() + body[:10])  # then nothing: HELIOS_BODY_TIMEOUT_SECS is 2 s
        began = time.monotonic()
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 408, reply.status
        assert "HELIOS_BODY_TIMEOUT_SECS" in orjson.loads(reply.read())["error"]
        assert reply.getheader("connection") == "close"
        assert reply.getheader("x-content-type-options") == "nosniff"
        assert time.monotonic() - began < 25
        assert sock.recv(1) == b""  # closed by the server
    still = node.query("* | stats count() as n", dataset="lane")["rows"]  # the node still serves
    assert still[0]["n"] == 2000


def _raw_post(sock: socket.socket, body: bytes, token: str | None, *, declared: int | None = None,
              sent: int | None = None) -> None:
    auth = "" if token is None else f"Authorization: Bearer {token}\r\n"
    head = (f"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n")
    sock.sendall(head.encode() + body[:sent])


def test_a_stranger_is_refused_before_its_body_has_come(node: Server) -> None:
    """As the route does: who the caller is is known from the headers, so a body that never comes
    is not waited for (a 401, not the body timeout's 408), and the connection is closed."""
    parts = urllib.parse.urlsplit(node.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        _raw_post(sock, b'{"q": "error", "dataset": "lane"}', None, declared=100, sent=10)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 401, reply.status
        assert "error" in orjson.loads(reply.read())
        assert reply.getheader("connection") == "close"
        assert sock.recv(1) == b""  # closed by the server


def test_an_answer_before_the_body_keeps_the_connection_once_the_body_has_come(
        node: Server) -> None:
    """A refused caller whose body was all sent: the lane reads it (and drops it), so the connection
    stays open and the next request on it is answered."""
    parts = urllib.parse.urlsplit(node.url)
    body = b'{"q": "* | stats count() as n", "dataset": "lane"}'
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        for token, status in (("not-a-token", 401), (_ingest_token(node), 403), (node.token, 200)):
            _raw_post(sock, body, token)
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            doc = orjson.loads(reply.read())
            assert reply.status == status, (reply.status, doc)
            assert reply.getheader("connection") != "close", token
        assert doc["rows"] == [{"n": 2000}]


def test_a_large_answer_streams_through_the_lane_whole(node: Server, records: list[Record]) -> None:
    """An answer past what is encoded in the query's slot (8 MiB) is streamed: no Content-Length."""
    for _ in range(3):
        _ingest(node, records, "large")
    rows = 3 * len(records)
    query = orjson.dumps({"q": "*", "dataset": "large", "limit": rows})
    lane = _send(node, query, node.token, chunked=False)
    quart = _send(node, query, node.token, chunked=True)
    assert lane[0] == 200 and len(lane[2]["rows"]) == rows
    assert "content-length" not in lane[1], lane[1]
    assert lane[1].get("transfer-encoding") == "chunked", lane[1]
    # Rows, not every stat: a flush between the two queries moves rows into blocks (blocks_scanned).
    assert lane[2]["rows"] == quart[2]["rows"]
    assert lane[2]["stats"]["rows_scanned"] == quart[2]["stats"]["rows_scanned"] == rows


def test_which_requests_take_the_lane() -> None:
    from helios.api.lane import LANE_BODY_BYTES, _length

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"headers": list(headers)}

    assert _length(scope((b"Content-Length", b"42")), LANE_BODY_BYTES) == 42
    assert _length(scope((b"content-length", str(LANE_BODY_BYTES).encode())),
                   LANE_BODY_BYTES) == LANE_BODY_BYTES
    assert _length(scope((b"content-length", b"43")), 42) is None
    for refused in (scope(), scope((b"content-length", str(LANE_BODY_BYTES + 1).encode())),
                    scope((b"transfer-encoding", b"chunked")),
                    scope((b"content-length", b"4"), (b"transfer-encoding", b"chunked")),
                    scope((b"content-length", b"4"), (b"content-length", b"4")),
                    scope((b"content-length", b"-4")), scope((b"content-length", b"4 "))):
        assert _length(refused, LANE_BODY_BYTES) is None, refused


def test_a_query_of_a_thousand_wheres_is_answered(node: Server) -> None:
    """Leading ``where``s fold into the filter as one ``and`` (a chain of them once nested one
    ``and`` a ``where``, and past ~1,000 the filter's walks overflowed the stack: a 500)."""
    words = [a + b + c for a in "abcdefghij" for b in "abcdefghij" for c in "abcdefghijkl"]
    text = "*" + "".join(f"|where -zz{word}" for word in words) + " | stats count() as n"
    assert len(text) < 16_384
    for chunked in (False, True):
        status, _, doc = _send(node, orjson.dumps({"q": text, "dataset": "lane"}), node.token,
                               chunked=chunked)
        assert status == 200, doc
        assert doc["rows"] == [{"n": 2000}]

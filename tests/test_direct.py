"""A shipper's ``POST /api/v1/ingest`` body is read straight from the socket (``helios.api.direct``);
every other request, and every request the direct path declines, is hypercorn's. On raw sockets:
pipelined requests, bodies in many pieces, clients that go mid-body, bytes that are not HTTP after
a body, and any split of a stream of requests across reads must be answered as hypercorn answers
them, in order, and store exactly the bodies that were whole.

``tests/test_ingest_lane.py`` compares the direct path's answers with Quart's for every kind of
body (bad JSON, gzip bombs, strangers, stalled bodies...).
"""

from __future__ import annotations

import itertools
import socket
import time
import urllib.parse
from typing import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Record, Server, metric, ndjson

DIRECT = "helios_http_direct_requests_total"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("direct") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_BODY_TIMEOUT_SECS": "5", "HELIOS_MAX_BODY_BYTES": str(4 << 20)}).start()
    yield server
    server.kill()


def _connect(node: Server) -> socket.socket:
    parts = urllib.parse.urlsplit(node.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _ingest(node: Server, body: bytes, dataset: str, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST /api/v1/ingest?dataset={dataset} HTTP/{version}", "Host: x",
            f"Authorization: Bearer {node.token}", "Content-Type: application/x-ndjson",
            f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _get(node: Server, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.token}\r\n\r\n".encode()


class Reader:
    """Answers read off a raw socket, one after another (each has a Content-Length)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buffer += data
        return bool(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"the connection closed before an answer: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "the connection closed inside an answer"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split(" ")[1]), headers, body

    def closed(self) -> bool:
        """Whether the node closes the connection with nothing more to say."""
        while self._fill():
            pass
        return self.buffer == b""


def test_pipelined_requests_are_answered_in_order(node: Server, records: list[Record]) -> None:
    before = metric(node, DIRECT)
    body = ndjson(records[:50])
    with _connect(node) as sock:
        sock.sendall(_ingest(node, body, "pipe") * 3 + _get(node, "/api/v1/datasets") + _ingest(node, body, "pipe"))
        reader = Reader(sock)
        answers = [reader.answer() for _ in range(5)]
        assert [status for status, _, _ in answers] == [200] * 5, answers
        for index in (0, 1, 2, 4):
            assert orjson.loads(answers[index][2]) == {"ingested": 50}
            headers = answers[index][1]
            assert headers["server"] == "hypercorn-h11" and headers["date"] and headers["x-frame-options"] == "DENY"
        assert b'"pipe"' in answers[3][2]  # the datasets, on the same connection, after three bodies
        # the connection is kept: one more on it
        sock.sendall(_ingest(node, body, "pipe"))
        assert reader.answer()[0] == 200
    assert metric(node, DIRECT) >= before + 3  # the three (the others may come while hypercorn recycles)
    assert node.count("*", dataset="pipe") == 250


def test_a_body_sent_in_many_small_pieces_is_stored_whole(node: Server, records: list[Record]) -> None:
    before = metric(node, DIRECT)
    body = ndjson(records[:400])
    request = _ingest(node, body, "pieces")
    with _connect(node) as sock:
        for start in range(0, len(request), 1500):
            sock.sendall(request[start:start + 1500])
        status, _, answer = Reader(sock).answer()
    assert status == 200 and orjson.loads(answer) == {"ingested": 400}
    assert metric(node, DIRECT) == before + 1
    assert sorted(row["_msg"] for row in node.rows("pieces")) == sorted(r.msg for r in records[:400])


def test_a_client_that_goes_mid_body_stores_nothing(node: Server, records: list[Record]) -> None:
    request = _ingest(node, ndjson(records[:400]), "gone")
    with _connect(node) as sock:
        sock.sendall(request[: len(request) // 2])
    # The node goes on: the next request, on a new connection, is answered; the half body is not rows.
    assert node.ingest(ndjson(records[:3]), dataset="after-gone").status_code == 200
    assert node.count("*", dataset="after-gone") == 3
    assert "gone" not in node.datasets()


def test_bytes_after_a_body_that_are_not_http_are_refused_and_the_connection_closed(
        node: Server, records: list[Record]) -> None:
    with _connect(node) as sock:
        sock.sendall(_ingest(node, ndjson(records[:5]), "garbage") + b"\x00\x01 not http at all\r\n\r\n")
        reader = Reader(sock)
        status, _, answer = reader.answer()
        assert status == 200 and orjson.loads(answer) == {"ingested": 5}
        status, headers, _ = reader.answer()
        assert status == 400 and headers["connection"] == "close"
        assert reader.closed()
    assert node.count("*", dataset="garbage") == 5


def test_connection_close_is_honoured(node: Server, records: list[Record]) -> None:
    with _connect(node) as sock:
        sock.sendall(_ingest(node, ndjson(records[:2]), "close", "Connection: close"))
        reader = Reader(sock)
        status, headers, _ = reader.answer()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


def test_requests_the_direct_path_declines_are_answered_by_hypercorn(node: Server, records: list[Record]) -> None:
    before = metric(node, DIRECT)
    body = ndjson(records[:5])
    with _connect(node) as sock:  # HTTP/1.0: hypercorn's, closed after its answer
        sock.sendall(_ingest(node, body, "declined", version="1.0"))
        reader = Reader(sock)
        assert reader.answer()[0] == 200
        assert reader.closed()
    with _connect(node) as sock:  # Expect: 100-continue (curl, for a body over 1 MiB): hypercorn's
        head, _, _ = _ingest(node, body, "declined", "Expect: 100-continue").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        reader = Reader(sock)
        while b"\r\n\r\n" not in reader.buffer:
            assert reader._fill()
        interim, reader.buffer = reader.buffer.split(b"\r\n\r\n", 1)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body)
        assert reader.answer()[0] == 200
    assert metric(node, DIRECT) == before  # neither was read directly
    assert node.count("*", dataset="declined") == 10


def test_a_head_whose_lines_end_in_a_bare_lf_is_read_where_h11_ends_it(node: Server, records: list[Record]) -> None:
    """h11 ends a head at its first blank line, LF or CRLF; the first blank CRLF line may come later
    (here: after the pipelined GET). Such a request is hypercorn's, and both are answered."""
    body = ndjson(records[:1])
    head = (f"POST /api/v1/ingest?dataset=bare-lf HTTP/1.1\nHost: x\nAuthorization: Bearer {node.token}\n"
            f"Content-Length: {len(body)}\n\n").encode()
    with _connect(node) as sock:
        sock.sendall(head + body + _get(node, "/api/v1/datasets"))
        reader = Reader(sock)
        status, _, answer = reader.answer()
        assert status == 200 and orjson.loads(answer) == {"ingested": 1}
        status, _, answer = reader.answer()
        assert status == 200 and b'"bare-lf"' in answer
    assert node.count("*", dataset="bare-lf") == 1


def test_a_body_longer_than_the_limit_is_refused_without_waiting_for_it(node: Server) -> None:
    with _connect(node) as sock:
        head = _ingest(node, b"", "huge").replace(b"Content-Length: 0", b"Content-Length: %d" % (1 << 40))
        sock.sendall(head + b'{"_msg":"a"}\n')
        reader = Reader(sock)
        status, headers, answer = reader.answer()
        assert status == 413 and headers["connection"] == "close", (status, headers, answer)
        assert reader.closed()
    assert "huge" not in node.datasets()


@pytest.fixture(scope="module")
def twenty(records: list[Record]) -> bytes:
    return ndjson(records[:20])


_EXAMPLES = itertools.count()
_STREAM_CASES = st.lists(st.sampled_from(["ok", "bad", "get", "ok-close"]), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=_STREAM_CASES, cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=6))
def test_any_split_of_a_stream_of_requests_is_answered_alike(node: Server, twenty: bytes, kinds: list[str],
                                                             cuts: list[int]) -> None:
    """However the bytes of pipelined requests fall into reads, each is answered as it would be alone,
    in order; a body is stored if and only if it was answered 200."""
    dataset, body = f"split-{next(_EXAMPLES)}", twenty
    requests = {"ok": _ingest(node, body, dataset), "bad": _ingest(node, b'{"_msg":\n', dataset),
                "get": _get(node, "/api/v1/datasets"), "ok-close": _ingest(node, body, dataset, "Connection: close")}
    expected = {"ok": 200, "bad": 400, "get": 200, "ok-close": 200}
    if "ok-close" in kinds:
        kinds = kinds[: kinds.index("ok-close") + 1]  # nothing after a close is read
    stream = b"".join(requests[kind] for kind in kinds)
    points = sorted({cut % len(stream) for cut in cuts} - {0})
    with _connect(node) as sock:
        for start, end in zip([0, *points], [*points, len(stream)]):
            sock.sendall(stream[start:end])
            time.sleep(0.002)  # shaping the input (each piece likely its own read), not waiting for a state
        reader = Reader(sock)
        statuses = [reader.answer()[0] for _ in kinds]
        assert statuses == [expected[kind] for kind in kinds]
        if kinds[-1] == "ok-close":
            assert reader.closed()
    assert node.count("*", dataset=dataset) == 20 * sum(kind.startswith("ok") for kind in kinds)

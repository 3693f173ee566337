"""Fluent forward listener: fluent-logger's FluentSender, packed modes with acks, handshake, msgpack bombs."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
from pathlib import Path
from typing import Any

import msgpack
import orjson
from fluent.sender import EventTime, FluentSender

from support import BASE_NS, Server, wait_until

ROWS = 300


def address(server: Server) -> tuple[str, int]:
    for line in server.logs:
        if "forward listener started" in line:
            host, port = orjson.loads(line)["address"].split("://", 1)[1].rsplit(":", 1)
            return host, int(port)
    raise AssertionError("no forward listener in the log:\n" + "\n".join(server.logs))


def all_rows(server: Server, dataset: str) -> list[dict[str, Any]]:
    return server.query("*", dataset=dataset, limit=100_000)["rows"]


def receive(conn: socket.socket) -> Any:
    feed = msgpack.Unpacker(raw=False)
    while True:
        data = conn.recv(65536)
        if not data:
            return None
        feed.feed(data)
        for item in feed:
            return item


def test_fluent_logger_events_arrive_once_with_their_fields(server_factory: Any) -> None:
    server = server_factory(HELIOS_FORWARD_LISTEN="127.0.0.1:0")
    host, port = address(server)
    sender = FluentSender("shop", host=host, port=port, nanosecond_precision=True)
    try:
        for i in range(ROWS):
            key = "message" if i % 2 else "log"
            assert sender.emit_with_time("web", EventTime(BASE_NS / 1e9 + i), {
                key: f"request {i} served", "http": {"status": 200 + i % 2, "path": "/cart"},
                "dataset": "inner", "tags": ["a", "b"]}), sender.last_error
    finally:
        sender.close()
    wait_until(lambda: len(all_rows(server, "shop")) >= ROWS, what="the forwarded events")
    rows = {r["_msg"]: r for r in all_rows(server, "shop")}
    assert len(all_rows(server, "shop")) == ROWS and set(rows) == {f"request {i} served" for i in range(ROWS)}
    row = rows["request 5 served"]
    assert row["tag"] == "shop.web" and row["http.status"] == "201" and row["http.path"] == "/cart"
    assert row["_dataset"] == "inner" and orjson.loads(row["tags"]) == ["a", "b"]
    assert row["_time"] == "2023-11-14T22:13:25.000000000Z"
    assert server.count("http.status:201 tag:shop.web", dataset="shop") == ROWS // 2

    metrics = server.request("GET", "/metrics").text
    assert f'helios_compat_rows_total{{protocol="forward"}} {ROWS}' in metrics


def _entries(prefix: str, count: int) -> bytes:
    out = b""
    for i in range(count):
        when = msgpack.ExtType(0, struct.pack(">II", BASE_NS // 10**9 + i, 7))
        out += msgpack.packb([when, {"log": f"{prefix} {i}", "pod": {"name": f"p{i % 3}"}}])
    return out


def test_packed_and_compressed_modes_with_chunk_acks(server_factory: Any) -> None:
    server = server_factory(HELIOS_FORWARD_LISTEN="127.0.0.1:0")
    with socket.create_connection(address(server)) as conn:
        conn.sendall(msgpack.packb(["k8s.app", _entries("packed", 100), {"chunk": "c1", "size": 100}]))
        assert receive(conn) == {"ack": "c1"}
        # The ack follows the WAL commit: the rows are readable at once, without waiting.
        assert len(all_rows(server, "k8s")) == 100
        blob = gzip.compress(_entries("gz-a", 60)) + gzip.compress(_entries("gz-b", 40))  # two members
        conn.sendall(msgpack.packb(["k8s.app", blob, {"chunk": "c2", "compressed": "gzip"}]))
        assert receive(conn) == {"ack": "c2"}
        forward_mode = [[BASE_NS // 10**9, {"message": f"fwd {i}"}] for i in range(20)]
        conn.sendall(msgpack.packb(["k8s.app", forward_mode, {"chunk": "c3"}]))
        assert receive(conn) == {"ack": "c3"}
    rows = {r["_msg"]: r for r in all_rows(server, "k8s")}
    expected = ({f"packed {i}" for i in range(100)} | {f"gz-a {i}" for i in range(60)}
                | {f"gz-b {i}" for i in range(40)} | {f"fwd {i}" for i in range(20)})
    assert len(all_rows(server, "k8s")) == 220 and set(rows) == expected
    assert rows["packed 4"]["_time"] == "2023-11-14T22:13:24.000000007Z" and rows["packed 4"]["pod.name"] == "p1"


def _ping(conn: socket.socket, key: bytes) -> Any:
    helo = receive(conn)
    assert helo[0] == "HELO"
    nonce, salt, client = helo[1]["nonce"], b"salt-123", "test-client"
    digest = hashlib.sha512(salt + client.encode() + nonce + key).hexdigest()
    conn.sendall(msgpack.packb(["PING", client, salt, digest, "", ""]))
    return receive(conn), nonce, salt


def test_shared_key_handshake(server_factory: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "forward.key"
    key_file.write_bytes(b"s3cret-shared-key\n")
    server = server_factory(HELIOS_FORWARD_LISTEN="127.0.0.1:0", HELIOS_FORWARD_SHARED_KEY_PATH=str(key_file))
    target = address(server)
    with socket.create_connection(target) as conn:
        pong, nonce, salt = _ping(conn, b"s3cret-shared-key")
        assert pong[:3] == ["PONG", True, ""]
        assert pong[4] == hashlib.sha512(salt + pong[3].encode() + nonce + b"s3cret-shared-key").hexdigest()
        conn.sendall(msgpack.packb(["team.a", BASE_NS // 10**9, {"message": "trusted"}, {"chunk": "k1"}]))
        assert receive(conn) == {"ack": "k1"}
    with socket.create_connection(target) as conn:
        pong, _, _ = _ping(conn, b"wrong key")
        assert pong[:2] == ["PONG", False]
        assert receive(conn) is None  # closed
    sender = FluentSender("team", host=target[0], port=target[1], timeout=5)  # no handshake support
    sender.emit("b", {"message": "untrusted"})
    sender.close()
    wait_until(lambda: 'reason="auth_failed"} 2' in server.request("GET", "/metrics").text, what="2 failures")
    assert [r["_msg"] for r in all_rows(server, "team")] == ["trusted"]


def test_bombs_and_garbage_close_the_connection_and_change_nothing(server_factory: Any) -> None:
    server = server_factory(HELIOS_FORWARD_LISTEN="127.0.0.1:0")
    target = address(server)
    pid = server.proc.pid
    with socket.create_connection(target) as conn:
        conn.sendall(msgpack.packb(["app.x", BASE_NS // 10**9, {"message": "kept"}, {"chunk": "ok"}]))
        assert receive(conn) == {"ack": "ok"}
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"k": deep}
    bad = [
        b"\x94\xa5app.x" + b"\xdd\xff\xff\xff\xff",  # an array that claims 4 billion elements
        b"\xdf\xff\xff\xff\xff",  # a map that claims 4 billion pairs
        b"\xc1\xc1\xc1",  # never-used msgpack bytes
        msgpack.packb(["app.x", b"\x92\xc1\xc1", {"chunk": "never"}]),  # packed entries that are not msgpack
        msgpack.packb(["app.x", b"\x92\xdd\xff\xff\xff\xff"]),  # packed entries with a huge array
        msgpack.packb(["app.x"]),  # not a forward message
    ]
    waiting = [  # declared sizes the server waits for (its buffer is bounded); closed at end of input
        b"\x93\xa5app.x\xdb\xff\xff\xff\xf0",  # a string that claims 4 GB
        b"\xdd\x00\x00\x27\x10" * 1000,  # nested arrays of 10,000 each, 1000 deep (bounded allocations)
    ]
    for payload in bad + waiting:
        with socket.create_connection(target) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            assert receive(conn) is None  # the server closed the connection
    with socket.create_connection(target) as conn:  # an event too deep and a bad tag: dropped, acked
        conn.sendall(msgpack.packb(["app.x", BASE_NS // 10**9, {"message": "deep", "d": deep}, {"chunk": "d"}]))
        assert receive(conn) == {"ack": "d"}
        conn.sendall(msgpack.packb(["Not A Dataset!", BASE_NS // 10**9, {"message": "x"}, {"chunk": "t"}]))
        assert receive(conn) == {"ack": "t"}
    assert server.proc.poll() is None and server.proc.pid == pid
    assert [r["_msg"] for r in all_rows(server, "app")] == ["kept"]
    metrics = server.request("GET", "/metrics").text
    assert f'helios_compat_dropped_total{{protocol="forward",reason="malformed"}} {len(bad)}' in metrics
    assert 'helios_compat_dropped_total{protocol="forward",reason="invalid_event"} 1' in metrics
    assert 'helios_compat_dropped_total{protocol="forward",reason="bad_tag"} 1' in metrics
    assert any("forward: dropped" in line for line in server.logs)

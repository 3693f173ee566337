"""Loki push: python-logging-loki's LokiHandler, and snappy protobuf pushes as Promtail/Alloy send them."""

from __future__ import annotations

import base64
import gzip
import logging

from typing import Any

import cramjam
import orjson
from logging_loki import LokiHandler

from support import BASE_NS, Server

ROWS = 300


def ingest_token(server: Server) -> str:
    return server.api_token("ingest", "promtail")


def all_rows(server: Server, dataset: str) -> list[dict[str, Any]]:
    return server.rows(dataset)


# -- a hand-written protobuf encoder for Loki's pkg/push/push.proto (independent of the server's) --

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:  # wire type 0: varint
    return _varint(number << 3) + _varint(value)


def push_request(streams: list[tuple[str, list[tuple[int, str, dict[str, str]]]]]) -> bytes:
    """PushRequest{streams=1: StreamAdapter{labels=1, entries=2: EntryAdapter{timestamp=1, line=2,
    structuredMetadata=3: LabelPairAdapter{name=1, value=2}}}}; Timestamp{seconds=1, nanos=2}."""
    out = b""
    for labels, entries in streams:
        stream = _field(1, labels.encode())
        for ns, line, metadata in entries:
            stamp = _int_field(1, ns // 1_000_000_000) + _int_field(2, ns % 1_000_000_000)
            entry = _field(1, stamp) + _field(2, line.encode())
            for name, value in metadata.items():
                entry += _field(3, _field(1, name.encode()) + _field(2, value.encode()))
            stream += _field(2, entry)
        out += _field(1, stream)
    return out


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def test_logging_loki_handler_lines_arrive_once_with_their_labels(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    handler = LokiHandler(url=f"{server.url}/loki/api/v1/push", tags={"app": "shop"}, auth=("helios", token),
                          version="1")
    logger = logging.getLogger("compat.loki.test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    failures: list[str] = []
    handler.handleError = lambda record: failures.append(record.getMessage())  # type: ignore[method-assign]
    try:
        for i in range(ROWS):
            level = logging.WARNING if i % 10 == 0 else logging.INFO
            logger.log(level, "checkout step %d done", i, extra={"tags": {"service.name": "checkout"}})
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert failures == []  # the handler treats any status but 204 as a failure

    rows = all_rows(server, "loki")
    assert sorted(r["_msg"] for r in rows) == sorted(f"checkout step {i} done" for i in range(ROWS))
    row = next(r for r in rows if r["_msg"] == "checkout step 10 done")
    assert row["app"] == "shop" and row["severity"] == "warning" and row["logger"] == "compat.loki.test"
    assert server.count("severity:warning", dataset="loki") == ROWS // 10
    # The handler sanitises label names as Loki requires; the query reads them as sent.
    assert server.count("service_name:checkout", dataset="loki") == ROWS


def test_snappy_protobuf_and_json_pushes(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    streams = [
        ('{app="api", env="prod", path="C:\\\\logs\\"x\\""}',
         [(BASE_NS + i, f"api line {i}", {"trace_id": f"t{i}"} if i % 2 else {}) for i in range(150)]),
        ('{app="web",dataset="web-ds"}', [(BASE_NS + 10**9 + i, f"web line {i}", {}) for i in range(150)]),
    ]
    reply = server.request("POST", "/loki/api/v1/push", token=token, content=snappy(push_request(streams)),
                           headers={"Content-Type": "application/x-protobuf"})
    assert reply.status_code == 204, reply.text
    rows = {r["_msg"]: r for r in all_rows(server, "loki")}
    assert len(rows) == 300 and set(rows) == {f"{k} line {i}" for k in ("api", "web") for i in range(150)}
    api = rows["api line 3"]
    assert api["_time"] == "2023-11-14T22:13:20.000000003Z"
    assert api["env"] == "prod" and api["path"] == 'C:\\logs"x"' and api["trace_id"] == "t3"
    assert "trace_id" not in rows["api line 4"] and rows["web line 0"]["_dataset"] == "web-ds"

    doc = {"streams": [{"stream": {"app": "json"}, "values": [
        [str(BASE_NS + i), f"json line {i}", {"user": f"u{i}"}] if i % 2 else [str(BASE_NS + i), f"json line {i}"]
        for i in range(100)]}]}
    reply = server.request("POST", "/loki/api/v1/push?dataset=loki-json", token=token,
                           content=gzip.compress(orjson.dumps(doc)),
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status_code == 204, reply.text
    rows = {r["_msg"]: r for r in all_rows(server, "loki-json")}
    assert len(rows) == 100 and rows["json line 7"]["user"] == "u7" and rows["json line 7"]["app"] == "json"


def test_bad_pushes_get_loki_errors_and_change_nothing(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    pid = server.proc.pid
    good = snappy(push_request([('{app="a"}', [(BASE_NS, "kept", {})])]))
    assert server.request("POST", "/loki/api/v1/push", token=token, content=good,
                          headers={"Content-Type": "application/x-protobuf"}).status_code == 204
    whole = push_request([('{app="a"}', [(BASE_NS + i, f"lost {i}", {}) for i in range(20)])])
    bomb = _varint(1 << 30) + b"\x00" * 16  # a snappy header that declares a 1 GiB body
    cases = [
        (snappy(whole[: len(whole) - 7]), "application/x-protobuf", 400),  # truncated protobuf
        (whole, "application/x-protobuf", 400),  # not snappy-compressed
        (bomb, "application/x-protobuf", 413),
        (snappy(push_request([('app="no braces"', [(BASE_NS, "lost", {})])])), "application/x-protobuf", 400),
        (b'{"streams": [{"stream": {"a": "b"}, "values": [["not-a-number", "lost"]]}]}', "application/json", 400),
        (b'{"streams": [', "application/json", 400),
        (b"lost line", "text/plain", 415),
    ]
    for body, kind, status in cases:
        reply = server.request("POST", "/loki/api/v1/push", token=token, content=body,
                               headers={"Content-Type": kind})
        assert reply.status_code == status, (kind, reply.text)
        assert reply.headers["Content-Type"].startswith("text/plain") and reply.text.strip()
    assert server.request("POST", "/loki/api/v1/push", token=None, content=good,
                          headers={"Content-Type": "application/x-protobuf"}).status_code == 401

    assert server.proc.poll() is None and server.proc.pid == pid
    assert [r["_msg"] for r in all_rows(server, "loki")] == ["kept"]
    metrics = server.request("GET", "/metrics").text
    assert 'helios_compat_rows_total{protocol="loki"} 1' in metrics
    assert f'helios_compat_dropped_total{{protocol="loki",reason="rejected"}} {len(cases) + 1}' in metrics



def test_roles_and_credentials_on_every_http_path(server_factory: Any) -> None:
    """Bearer or Basic (API token as the password); ingest and admin may push, editor and viewer may not."""
    server = server_factory()
    paths = [
        ("/loki/api/v1/push", "application/json", b'{"streams": [{"stream": {"a": "b"}, "values": []}]}'),
        ("/v1/logs", "application/json", b"{}"),
        ("/es/_bulk", "application/x-ndjson", b'{"index": {"_index": "roles"}}\n{"message": "m"}\n'),
    ]
    for role, allowed in [("admin", True), ("ingest", True), ("editor", False), ("viewer", False)]:
        reply = server.request("POST", "/api/v1/tokens", json={"name": f"r {role}", "role": role})
        token = reply.json()["token"]
        basic = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
        for path, kind, body in paths:
            for header in (f"Bearer {token}", basic):
                reply = server.request("POST", path, token=None, content=body,
                                       headers={"Content-Type": kind, "Authorization": header})
                assert (reply.status_code < 300) if allowed else reply.status_code == 403, (role, path, reply.text)
    for header in ("Basic bm90LWJhc2U2NA", "Basic " + base64.b64encode(b"u:not-a-token").decode()):
        for path, kind, body in paths:
            reply = server.request("POST", path, token=None, content=body,
                                   headers={"Content-Type": kind, "Authorization": header})
            assert reply.status_code == 401, (path, header)

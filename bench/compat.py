"""Compatible ingest throughput: rows/s through each protocol path, one line per protocol.

Loghub lines are sent in batches with realistic framing — what the shippers
send, built here so the client's own overhead is not what is measured:
OTLP protobuf requests, Loki snappy protobuf pushes, Elasticsearch bulk
NDJSON, RFC 5424 syslog over TCP (octet counting), Fluent PackedForward
with a chunk ack. HTTP paths and forward are timed to the last
acknowledgement; syslog (no acks) to the moment /metrics counts every row.

    .venv/bin/python bench/compat.py [--rows 20000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import re
import socket
import time
from typing import Callable

import cramjam
import httpx
import msgpack
import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from common import start_node
from helios.ingest.loki import PushRequest
from support import loghub_records


def otlp(lines: list[str], now: int) -> bytes:
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for i, line in enumerate(lines):
        record = scope.log_records.add()
        record.time_unix_nano = now + i
        record.body.string_value = line
        record.severity_text = "INFO"
        attribute = record.attributes.add()
        attribute.key, attribute.value.string_value = "service.name", "bench"
    return request.SerializeToString()


def loki(lines: list[str], now: int) -> bytes:
    request = PushRequest()
    stream = request.streams.add()
    stream.labels = '{app="bench", env="prod"}'
    for i, line in enumerate(lines):
        entry = stream.entries.add()
        entry.timestamp.seconds, entry.timestamp.nanos = divmod(now + i, 1_000_000_000)
        entry.line = line
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def bulk(lines: list[str], now: int) -> bytes:
    out = []
    for i, line in enumerate(lines):
        out.append(b'{"create": {}}')
        out.append(orjson.dumps({"@timestamp": (now + i) // 1_000_000, "message": line, "service": {"name": "bench"}}))
    return b"\n".join(out) + b"\n"


def http_path(url: str, token: str, path: str, headers: dict[str, str],
              build: Callable[[list[str], int], bytes], batches: list[list[str]]) -> float:
    bodies = [build(batch, time.time_ns()) for batch in batches]
    began = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=120) as http:
        for body in bodies:
            reply = http.post(path, content=body)
            assert reply.status_code in (200, 204), reply.text
    return sum(map(len, batches)) / (time.perf_counter() - began)


def listener(server, name: str) -> tuple[str, int]:
    for line in server.logs:
        if name in line:
            host, port = orjson.loads(line)["address"].split("://", 1)[1].rsplit(":", 1)
            return host, int(port)
    raise SystemExit(f"no {name} in the node's log")


def stored(server, protocol: str) -> int:
    text = server.request("GET", "/metrics").text
    match = re.search(rf'helios_compat_rows_total{{protocol="{protocol}"}} (\d+)', text)
    return int(match.group(1)) if match else 0


def syslog_tcp(server, batches: list[list[str]]) -> float:
    frames = []
    for batch in batches:
        for line in batch:
            message = f"<14>1 - bench-host bench - - - {line}".encode()
            frames.append(str(len(message)).encode() + b" " + message)
    total = sum(map(len, batches))
    began = time.perf_counter()
    with socket.create_connection(listener(server, "syslog TCP listener started")) as conn:
        conn.sendall(b"".join(frames))
    while stored(server, "syslog") < total:
        time.sleep(0.01)
    return total / (time.perf_counter() - began)


def forward(server, batches: list[list[str]]) -> float:
    messages = []
    for n, batch in enumerate(batches):
        entries = b"".join(msgpack.packb([int(time.time()), {"log": line, "pod": "bench"}]) for line in batch)
        messages.append(msgpack.packb(["bench.app", entries, {"chunk": str(n)}]))
    began = time.perf_counter()
    with socket.create_connection(listener(server, "forward listener started")) as conn:
        feed = msgpack.Unpacker()
        for message in messages:
            conn.sendall(message)
            while next(feed, None) is None:
                feed.feed(conn.recv(4096))
    return sum(map(len, batches)) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000, help="rows per protocol")
    parser.add_argument("--batch", type=int, default=1000, help="rows per request or message")
    args = parser.parse_args()
    lines = [r.msg for r in loghub_records()]
    lines = (lines * (args.rows // len(lines) + 1))[: args.rows]
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    server = start_node(HELIOS_SYSLOG_LISTEN="tcp://127.0.0.1:0", HELIOS_FORWARD_LISTEN="127.0.0.1:0")
    try:
        token = server.request("POST", "/api/v1/tokens", json={"name": "bench", "role": "ingest"}).json()["token"]
        results = {
            "otlp (protobuf)": http_path(server.url, token, "/v1/logs", {"Content-Type": "application/x-protobuf"},
                                         otlp, batches),
            "loki (snappy protobuf)": http_path(server.url, token, "/loki/api/v1/push",
                                                {"Content-Type": "application/x-protobuf"}, loki, batches),
            "elasticsearch _bulk": http_path(server.url, token, "/es/bench/_bulk",
                                             {"Content-Type": "application/x-ndjson"}, bulk, batches),
            "syslog tcp (rfc5424)": syslog_tcp(server, batches),
            "fluent forward (packed, acked)": forward(server, batches),
        }
    finally:
        server.stop()
    for name, rate in results.items():
        print(f"{name:32s} {rate:12,.0f} rows/s  ({args.rows} rows, batches of {args.batch})")


if __name__ == "__main__":
    main()

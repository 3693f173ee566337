"""OTLP/HTTP logs: the OpenTelemetry SDK's OTLPLogExporter, and hand-made protobuf and JSON requests."""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from support import BASE_NS, Server

ROWS = 300


def ingest_token(server: Server) -> str:
    return server.api_token("ingest", "otel")


def all_rows(server: Server, dataset: str) -> list[dict[str, Any]]:
    return server.rows(dataset)


def test_otel_sdk_exporter_records_arrive_once_with_their_fields(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout", "k8s.pod.name": "pod-7"}))
    exporter = OTLPLogExporter(endpoint=f"{server.url}/v1/logs", headers={"Authorization": f"Bearer {token}"},
                               compression=Compression.Gzip, timeout=30)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=64))
    otel_logger = provider.get_logger("compat.otlp.test")
    tracer = TracerProvider().get_tracer("compat-test")
    trace_ids: dict[int, str] = {}

    def emit(i: int) -> None:
        if i % 5 == 0:  # no severity text: the level comes from the number's range
            otel_logger.emit(timestamp=BASE_NS + i, severity_number=SeverityNumber.ERROR2,
                             body=f"order {i} paid", attributes={"order.id": i, "dataset": "shadow"})
        else:
            otel_logger.emit(timestamp=BASE_NS + i, severity_number=SeverityNumber.INFO, severity_text="INFO",
                             body=f"order {i} paid", attributes={"order.id": i, "dataset": "shadow"})

    try:
        for i in range(ROWS):
            if i % 3 == 0:
                with tracer.start_as_current_span("order") as span:
                    trace_ids[i] = format(span.get_span_context().trace_id, "032x")
                    emit(i)
            else:
                emit(i)
        assert provider.force_flush(30_000)
    finally:
        provider.shutdown()

    rows = {r["_msg"]: r for r in all_rows(server, "otel")}
    assert len(all_rows(server, "otel")) == ROWS and set(rows) == {f"order {i} paid" for i in range(ROWS)}
    row = rows["order 15 paid"]
    assert row["service.name"] == "checkout" and row["k8s.pod.name"] == "pod-7"
    assert row["level"] == "ERROR" and row["order.id"] == "15" and row["_dataset"] == "shadow"
    assert row["trace_id"] == trace_ids[15] and len(row["span_id"]) == 16
    assert row["_time"] == "2023-11-14T22:13:20.000000015Z" and rows["order 16 paid"]["level"] == "INFO"
    assert "trace_id" not in rows["order 16 paid"]
    assert server.count("service.name:checkout", dataset="otel") == ROWS
    assert server.count('"k8s.pod.name":"pod-7" level:ERROR', dataset="otel") == ROWS // 5


def _request(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeLogs": [{"scope": {"name": "s"}, "logRecords": records}]}]}


def test_json_and_protobuf_mapping_and_partial_success(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    deep: dict[str, Any] = {"stringValue": "bottom"}
    for _ in range(40):  # arrays: protobuf's own limit of 100 message levels allows 47 of them
        deep = {"arrayValue": {"values": [deep]}}
    records = [
        {"timeUnixNano": str(BASE_NS + 5), "severityNumber": 13, "body": {"stringValue": "plain"},
         "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "attributes": [{"key": "http.status", "value": {"intValue": "503"}},
                        {"key": "ok", "value": {"boolValue": False}},
                        {"key": "ratio", "value": {"doubleValue": 0.25}},
                        {"key": "user", "value": {"kvlistValue": {"values": [
                            {"key": "id", "value": {"stringValue": "u1"}}]}}},
                        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}]},
        {"observedTimeUnixNano": str(BASE_NS + 6), "severityText": "notice",
         "body": {"kvlistValue": {"values": [{"key": "event", "value": {"stringValue": "login"}}]}}},
        {"timeUnixNano": str(BASE_NS + 7), "body": {"stringValue": "too deep"},
         "attributes": [{"key": "nested", "value": deep}]},
    ]
    reply = server.request("POST", "/v1/logs", token=token, content=orjson.dumps(_request(records)),
                           headers={"Content-Type": "application/json", "X-Helios-Dataset": "otel-json"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["partialSuccess"]["rejectedLogRecords"] == "1"
    assert "deeper" in reply.json()["partialSuccess"]["errorMessage"]
    rows = {r["_msg"]: r for r in all_rows(server, "otel-json")}
    assert set(rows) == {"plain", '{"event":"login"}'}
    plain = rows["plain"]
    assert plain["_time"] == "2023-11-14T22:13:20.000000005Z" and plain["level"] == "WARN"
    assert plain["trace_id"] == "5b8efff798038103d269b633813fc60c" and plain["span_id"] == "eee19b7ec3c1b174"
    assert (plain["http.status"], plain["ok"], plain["ratio"], plain["user.id"]) == ("503", "false", "0.25", "u1")
    assert orjson.loads(plain["tags"]) == ["a"] and plain["service.name"] == "billing"
    assert rows['{"event":"login"}']["level"] == "notice"
    assert rows['{"event":"login"}']["_time"] == "2023-11-14T22:13:20.000000006Z"

    message = ExportLogsServiceRequest()
    resource = message.resource_logs.add()
    for i in range(50):
        record = resource.scope_logs.add().log_records.add()
        record.time_unix_nano = BASE_NS + i
        record.severity_number = 21
        record.body.string_value = f"proto {i}"
    reply = server.request("POST", "/v1/logs?dataset=otel-proto", token=token, content=message.SerializeToString(),
                           headers={"Content-Type": "application/x-protobuf"})
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/x-protobuf"
    assert not ExportLogsServiceResponse.FromString(reply.content).HasField("partial_success")
    rows = all_rows(server, "otel-proto")
    assert sorted(r["_msg"] for r in rows) == sorted(f"proto {i}" for i in range(50))
    assert {r["level"] for r in rows} == {"FATAL"}


def test_bad_otlp_requests_get_status_errors_and_change_nothing(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    pid = server.proc.pid
    message = ExportLogsServiceRequest()
    for i in range(10):
        message.resource_logs.add().scope_logs.add().log_records.add().body.string_value = f"lost {i}"
    whole = message.SerializeToString()
    good = ExportLogsServiceRequest()
    good.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "kept"
    assert server.request("POST", "/v1/logs", token=token, content=good.SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"}).status_code == 200
    cases = [
        (whole[:-3], "application/x-protobuf", 400),  # truncated protobuf
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}', "application/json", 400),
        (b'{"resourceLogs": 5}', "application/json", 400),
        (b"[" * 5000, "application/json", 400),
        (whole, "text/plain", 415),
    ]
    for body, kind, status in cases:
        reply = server.request("POST", "/v1/logs", token=token, content=body, headers={"Content-Type": kind})
        assert reply.status_code == status, (kind, reply.text)
        if kind == "application/json":
            assert reply.json()["code"] == 3 and reply.json()["message"]
        else:
            assert reply.headers["Content-Type"] == "application/x-protobuf" and reply.content
    reply = server.request("POST", "/v1/logs", token=None, content=whole,
                           headers={"Content-Type": "application/x-protobuf"})
    assert reply.status_code == 401

    assert server.proc.poll() is None and server.proc.pid == pid
    assert [r["_msg"] for r in all_rows(server, "otel")] == ["kept"]
    metrics = server.request("GET", "/metrics").text
    assert 'helios_compat_rows_total{protocol="otlp"} 1' in metrics
    assert f'helios_compat_dropped_total{{protocol="otlp",reason="rejected"}} {len(cases) + 1}' in metrics

"""OTLP/HTTP logs (``POST /v1/logs``) → rows, with the published ``opentelemetry-proto`` messages.

Bodies: ``application/x-protobuf`` (an ``ExportLogsServiceRequest``) or
``application/json`` (OTLP's JSON encoding: lowerCamelCase or original field
names, 64-bit integers as strings, ``traceId``/``spanId`` as hex, enums as
numbers). Either may be gzip-compressed (decoded by the route).

Mapping of one log record:

| OTLP | field |
| --- | --- |
| body | ``_msg`` (a string as is; any other value as its JSON text) |
| time_unix_nano, else observed_time_unix_nano | ``_time`` (else the ingest time) |
| severity_text, else severity_number's range | ``level`` (``TRACE`` ``DEBUG`` ``INFO`` ``WARN`` ``ERROR`` ``FATAL``) |
| resource attributes, then log attributes | fields under their own names (``service.name``); maps flattened with dots, arrays as JSON text |
| trace_id, span_id | ``trace_id``, ``span_id`` (lowercase hex) |

A record that cannot be stored (nesting over ``shipper.MAX_DEPTH``, an empty
or too long attribute name, a time out of range) is rejected alone and
reported in the answer's ``partial_success``; a body that does not decode
is rejected whole (400 with a ``google.rpc.Status``), storing nothing.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from helios.errors import InvalidInput
from helios.ingest import shipper

__all__ = ["Export", "Status", "parse_json", "parse_protobuf", "response", "status"]

_LEVELS = ((1, "TRACE"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL"))
# A JSON request's nesting: the envelope, then 3-4 JSON levels per nested AnyValue. Deeper messages
# also meet protobuf's own limit of 100 message levels (a whole-request 400).
JSON_DEPTH = 4 * shipper.MAX_DEPTH + 32


def _status_class() -> Any:
    """``google.rpc.Status`` (code = 1, message = 2; details left out), the OTLP error body."""
    T = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="helios_rpc_status.proto", package="google.rpc", syntax="proto3")
    msg = file.message_type.add(name="Status")
    msg.field.add(name="code", number=1, type=T.TYPE_INT32, label=T.LABEL_OPTIONAL)
    msg.field.add(name="message", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


Status = _status_class()
INVALID_ARGUMENT = 3


class Export:
    """The rows of one request and what was rejected of it."""

    def __init__(self) -> None:
        self.rows: list[shipper.Row] = []
        self.rejected = 0
        self.first_error = ""


def parse_protobuf(data: bytes) -> Export:
    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"the body is not a valid ExportLogsServiceRequest: {exc}") from None
    return _rows(request)


def parse_json(data: bytes) -> Export:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object (an ExportLogsServiceRequest)")
    shipper.check_depth(doc, JSON_DEPTH)
    _hex_ids_to_base64(doc)
    request = ExportLogsServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidInput(f"the body is not a valid ExportLogsServiceRequest: {exc}") from None
    return _rows(request)


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    """OTLP JSON writes trace and span ids as hex; protobuf's JSON mapping reads bytes as base64."""
    for resource in _list(doc, "resourceLogs", "resource_logs"):
        for scope in _list(resource, "scopeLogs", "scope_logs"):
            for record in _list(scope, "logRecords", "log_records"):
                if not isinstance(record, dict):
                    continue
                for key in ("traceId", "trace_id", "spanId", "span_id"):
                    value = record.get(key)
                    if isinstance(value, str):
                        try:
                            record[key] = base64.b64encode(bytes.fromhex(value)).decode()
                        except ValueError:
                            raise InvalidInput(f"{key} {value[:40]!r} is not hex") from None


def _list(doc: Any, *keys: str) -> list[Any]:
    if not isinstance(doc, dict):
        return []
    for key in keys:
        value = doc.get(key)
        if isinstance(value, list):
            return value
    return []


def _rows(request: Message) -> Export:
    export = Export()
    for resource_logs in request.resource_logs:  # type: ignore[attr-defined]
        try:
            resource = _attributes(resource_logs.resource.attributes)
        except InvalidInput as exc:  # every record of this resource is rejected
            count = sum(len(scope.log_records) for scope in resource_logs.scope_logs)
            _reject(export, count, f"resource attributes: {exc}")
            continue
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                try:
                    export.rows.append(_row(resource, record))
                except InvalidInput as exc:
                    _reject(export, 1, str(exc))
    return export


def _reject(export: Export, count: int, message: str) -> None:
    export.rejected += count
    export.first_error = export.first_error or message


def _row(resource: shipper.Row, record: Any) -> shipper.Row:
    row = dict(resource)
    row.update(_attributes(record.attributes))
    stamp = record.time_unix_nano or record.observed_time_unix_nano
    if stamp:
        row["_time"] = shipper.time_ns(stamp)
    body = _plain(record.body, 0) if record.HasField("body") else None
    row["_msg"] = body if isinstance(body, str) else "" if body is None else orjson.dumps(body).decode()
    level = record.severity_text or _level_of(record.severity_number)
    if level:
        row["level"] = level
    if record.trace_id:
        row["trace_id"] = record.trace_id.hex()
    if record.span_id:
        row["span_id"] = record.span_id.hex()
    return row


def _level_of(number: int) -> str | None:
    name = None
    for start, level in _LEVELS:
        if number >= start:
            name = level
    return name if 0 < number <= 24 else None


def _attributes(pairs: Any) -> shipper.Row:
    row: shipper.Row = {}
    for pair in pairs:
        shipper.flatten_into(row, pair.key, _plain(pair.value, 1), 1)
    return row


def _plain(value: Any, depth: int) -> Any:
    """An ``AnyValue`` as plain JSON data; nesting bounded by ``shipper.MAX_DEPTH``."""
    if depth > shipper.MAX_DEPTH:
        raise InvalidInput(f"a value nests deeper than {shipper.MAX_DEPTH} levels")
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return [_plain(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {pair.key: _plain(pair.value, depth + 1) for pair in value.kvlist_value.values}
    return None


def response(export: Export, as_json: bool) -> bytes:
    """The ``ExportLogsServiceResponse``, with ``partial_success`` when records were rejected."""
    answer = ExportLogsServiceResponse()
    if export.rejected:
        answer.partial_success.rejected_log_records = export.rejected
        answer.partial_success.error_message = export.first_error
    if as_json:
        return orjson.dumps(json_format.MessageToDict(answer))
    return answer.SerializeToString()


def status(message: str, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` (INVALID_ARGUMENT) for a rejected request."""
    if as_json:
        return orjson.dumps({"code": INVALID_ARGUMENT, "message": message})
    return Status(code=INVALID_ARGUMENT, message=message).SerializeToString()


"""Loki push API (``POST /loki/api/v1/push``) → rows.

Two bodies, as Loki takes them:

- ``application/x-protobuf``: a snappy-compressed (block format) ``PushRequest``
  of Loki's ``pkg/push/push.proto`` — what Promtail and Alloy send. The
  messages are declared here as protobuf descriptors built in code (field
  numbers and types as published), so no generated code is vendored.
- ``application/json``: ``{"streams": [{"stream": {label: value}, "values":
  [["<unix ns>", "<line>", {structured metadata}?], ...]}]}`` (gzip allowed).

Mapping: stream labels and structured metadata → fields (metadata wins on a
name clash); the line → ``_msg``; the timestamp → ``_time``. The route
answers 204 on success, and a plain-text message with 400/415 otherwise
(Loki's error shape); a rejected request stores nothing.
"""

from __future__ import annotations

import re
from typing import Any

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from helios.errors import InvalidInput, PayloadTooLarge
from helios.ingest import shipper

__all__ = ["PushRequest", "parse_json", "parse_labels", "parse_protobuf", "unsnappy"]


def _build_messages() -> dict[str, Any]:
    """``logproto`` messages, numbered as Loki's push.proto (Timestamp declared wire-identically)."""
    T = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="helios_loki_push.proto", package="logproto", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            msg.field.add(name=field_name, number=number, type=kind, label=label,
                          **({"type_name": type_name} if type_name else {}))

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    message("Timestamp", ("seconds", 1, T.TYPE_INT64, opt, ""), ("nanos", 2, T.TYPE_INT32, opt, ""))
    message("LabelPairAdapter", ("name", 1, T.TYPE_STRING, opt, ""), ("value", 2, T.TYPE_STRING, opt, ""))
    message("EntryAdapter", ("timestamp", 1, T.TYPE_MESSAGE, opt, ".logproto.Timestamp"),
            ("line", 2, T.TYPE_STRING, opt, ""),
            ("structuredMetadata", 3, T.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"),
            ("parsed", 4, T.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"))
    message("StreamAdapter", ("labels", 1, T.TYPE_STRING, opt, ""),
            ("entries", 2, T.TYPE_MESSAGE, rep, ".logproto.EntryAdapter"), ("hash", 3, T.TYPE_UINT64, opt, ""))
    message("PushRequest", ("streams", 1, T.TYPE_MESSAGE, rep, ".logproto.StreamAdapter"),
            ("format", 2, T.TYPE_STRING, opt, ""))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"logproto.{m.name}"))
            for m in file.message_type}


PushRequest = _build_messages()["PushRequest"]

# Prometheus label-set text, as Promtail writes it: {name="value", ...} with Go string escapes.
_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\})', re.S)
_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)', re.S)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, code)

    return _ESCAPE.sub(one, text) if "\\" in text else text


def parse_labels(text: str) -> dict[str, str]:
    """``{a="1", b="x\\"y"}`` → ``{"a": "1", "b": 'x"y'}``; InvalidInput if it is not a label set."""
    text = text.strip()
    if not text.startswith("{") or not text.endswith("}"):
        raise InvalidInput(f"error parsing labels {text[:80]!r}: expected {{name=\"value\", ...}}")
    out: dict[str, str] = {}
    position = 1
    if text[1:-1].strip() == "":
        return out
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            raise InvalidInput(f"error parsing labels {text[:80]!r} at character {position}")
        out[match.group(1)] = _unescape(match.group(2))
        position = match.end()
        if match.group(3) == "}":
            break
    if position != len(text):
        raise InvalidInput(f"error parsing labels {text[:80]!r}: text after the closing brace")
    return out


def unsnappy(body: bytes, limit: int) -> bytes:
    """Snappy block format, refusing a declared size over ``limit`` before decompressing."""
    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except Exception as exc:  # cramjam raises its own DecompressionError type
        raise InvalidInput(f"the body is not snappy-compressed: {exc}") from None
    if size > limit:
        raise PayloadTooLarge(f"the decompressed body would be {size} bytes; the limit is {limit}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:
        raise InvalidInput(f"the body is not valid snappy data: {exc}") from None


def _stream_row(labels: dict[str, str]) -> shipper.Row:
    row: shipper.Row = {}
    for name, value in labels.items():
        row[shipper.field_name(name)] = value
    return row


def parse_protobuf(data: bytes) -> list[shipper.Row]:
    """A decompressed ``PushRequest`` → rows."""
    request = PushRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"the body is not a valid PushRequest: {exc}") from None
    rows: list[shipper.Row] = []
    for stream in request.streams:
        base = _stream_row(parse_labels(stream.labels))
        for entry in stream.entries:
            row = dict(base)
            for pair in entry.structuredMetadata:
                row[shipper.field_name(pair.name)] = pair.value
            row["_time"] = shipper.time_ns(entry.timestamp.seconds * 1_000_000_000 + entry.timestamp.nanos)
            row["_msg"] = entry.line
            rows.append(row)
    return rows


def parse_json(data: bytes) -> list[shipper.Row]:
    """Loki's JSON push body → rows."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    shipper.check_depth(doc, 8)  # {"streams": [{"values": [[ts, line, {metadata}]]}]} is 5 deep
    streams = doc.get("streams") if isinstance(doc, dict) else None
    if not isinstance(streams, list):
        raise InvalidInput('expected {"streams": [{"stream": {...}, "values": [[ts, line], ...]}]}')
    rows: list[shipper.Row] = []
    for number, stream in enumerate(streams, 1):
        labels = stream.get("stream") if isinstance(stream, dict) else None
        values = stream.get("values") if isinstance(stream, dict) else None
        if not isinstance(labels, dict) or not isinstance(values, list):
            raise InvalidInput(f"stream {number}: expected {{\"stream\": {{...}}, \"values\": [...]}}")
        if not all(isinstance(v, str) for v in labels.values()):
            raise InvalidInput(f"stream {number}: label values must be strings")
        base = _stream_row(labels)
        for entry in values:
            rows.append(_json_entry(base, entry, number))
    return rows


def _json_entry(base: shipper.Row, entry: Any, number: int) -> shipper.Row:
    if not isinstance(entry, list) or len(entry) not in (2, 3):
        raise InvalidInput(f"stream {number}: each value is [\"<unix ns>\", \"<line>\"] or with metadata")
    stamp, line = entry[0], entry[1]
    if not isinstance(stamp, str) or not stamp.isdigit() or not isinstance(line, str):
        raise InvalidInput(f"stream {number}: a timestamp is a string of unix nanoseconds and a line is a string")
    row = dict(base)
    if len(entry) == 3:
        metadata = entry[2]
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise InvalidInput(f"stream {number}: structured metadata is an object of strings")
        for name, value in metadata.items():
            row[shipper.field_name(name)] = value
    row["_time"] = shipper.time_ns(int(stamp))
    row["_msg"] = line
    return row

"""Fluent forward protocol v1 (msgpack over TCP) → rows, and its listener.

Modes (the second element of each message decides): Message ``[tag, time,
record, option?]``, Forward ``[tag, [[time, record], ...], option?]``,
PackedForward ``[tag, <msgpack entries as bin/str>, option?]`` and
CompressedPackedForward (the same, ``option.compressed == "gzip"``). A time is
integer seconds, a float, the ``EventTime`` extension (type 0: u32 seconds,
u32 nanoseconds) or a msgpack timestamp.

Mapping: dataset = the tag's first dot-separated part, lowercased
(``app.web`` → ``app``; a part that is not a dataset name drops the message,
counted as ``bad_tag``); the whole tag → field ``tag``; ``message``, else
``log`` → ``_msg``; the event time → ``_time``; other keys flattened with dots.

Acknowledgement: a message whose option carries ``chunk`` is committed to the
WAL and only then answered ``{"ack": chunk}``; a message without it goes to
the batching sink (no answer, as the protocol says).

Bounds: one message at most ``MAX_MESSAGE_BYTES`` (msgpack's
``max_buffer_size``), arrays and maps at most ``MAX_ITEMS`` elements (msgpack
allocates a declared array before reading it: this is what defuses a
"bomb" of huge headers), nesting at most ``shipper.MAX_DEPTH``, a gzip blob at
most ``MAX_MESSAGE_BYTES`` decompressed, ``MAX_CONNECTIONS`` connections. A
message that breaks a bound or is not msgpack closes the connection (the
stream cannot be resynchronised); it is logged and counted in ``/metrics``.

Security: no token. With a shared key (``--forward-shared-key-path``) each
connection must first pass the handshake (HELO → PING → PONG, SHA-512 over
salt, hostname, nonce and key); user/password auth is not offered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import zlib
from typing import Any

import msgpack
import trio

from helios import log, names, timeutil
from helios.errors import HeliosError, InvalidInput
from helios.ingest import shipper
from helios.ingest.sink import DropLog, Ingest, Sink

__all__ = ["MAX_ITEMS", "MAX_MESSAGE_BYTES", "decode_message", "serve"]

MAX_MESSAGE_BYTES = 64 << 20
MAX_ITEMS = 10_000
MAX_CONNECTIONS = 128
HANDSHAKE_TIMEOUT_S = 30.0
_log = log.get("helios.forward")


class _EventTime(int):
    """Nanoseconds decoded from the EventTime extension."""


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        seconds, nanos = struct.unpack(">II", data)
        return _EventTime(seconds * 1_000_000_000 + nanos)
    return msgpack.ExtType(code, data)


def unpacker() -> msgpack.Unpacker:
    """A bounded streaming unpacker (see the module docstring)."""
    # surrogateescape: a PackedForward blob sent as str comes back byte for byte; text with invalid
    # UTF-8 is repaired when the table is built (shipper).
    return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False, ext_hook=_ext_hook,
                            max_buffer_size=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES,
                            max_bin_len=MAX_MESSAGE_BYTES, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS,
                            max_ext_len=64)


def _time_ns(value: Any) -> int:
    if isinstance(value, _EventTime):
        return int(value)
    if isinstance(value, msgpack.Timestamp):
        return shipper.time_ns(value.to_unix_nano())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"an event time must be a number or EventTime, not {type(value).__name__}")
    if value != value or not 0 <= value < 9.2e9:
        raise InvalidInput(f"the event time {value} is out of range")
    return shipper.time_ns(int(value * 1_000_000_000) if isinstance(value, float) else value * 1_000_000_000)


def _row(tag: str, when: Any, record: Any) -> shipper.Row:
    if not isinstance(record, dict):
        raise InvalidInput("a record must be a map")
    shipper.check_depth(record)
    record = dict(record)
    row: shipper.Row = {"_time": _time_ns(when)}
    for key in ("message", "log"):
        value = record.get(key)
        if isinstance(value, (str, bytes)):
            del record[key]
            row["_msg"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            break
    shipper.flatten_into(row, "", record)
    row["tag"] = tag
    return row


def _gunzip(blob: bytes) -> bytes:
    """Concatenated gzip members, bounded by ``MAX_MESSAGE_BYTES`` decompressed."""
    out = bytearray()
    while blob:
        inflater = zlib.decompressobj(31)
        try:
            out += inflater.decompress(blob, MAX_MESSAGE_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise InvalidInput(f"the compressed entries are not gzip: {exc}") from None
        if len(out) > MAX_MESSAGE_BYTES or inflater.unconsumed_tail:
            raise InvalidInput(f"the entries decompress to more than {MAX_MESSAGE_BYTES} bytes")
        if not inflater.eof:
            raise InvalidInput("the compressed entries are truncated")
        blob = inflater.unused_data
    return bytes(out)


def decode_message(message: Any) -> tuple[str, list[shipper.Row], int, str | None]:
    """One forward message → (tag, rows, events rejected, chunk id to acknowledge or None).

    InvalidInput if the message itself is malformed (not an event's content).
    """
    if not isinstance(message, list) or not 2 <= len(message) <= 4 or not isinstance(message[0], str):
        raise InvalidInput("a forward message is [tag, time, record, option?] or [tag, entries, option?]")
    tag, second = message[0], message[1]
    option = message[-1] if len(message) == (4 if isinstance(second, (int, float, msgpack.Timestamp)) else 3) else {}
    if not isinstance(option, dict):
        raise InvalidInput("the option of a forward message must be a map")
    chunk = option.get("chunk")
    chunk = chunk if isinstance(chunk, str) else None
    if isinstance(second, (bytes, str)):  # PackedForward, maybe compressed
        blob = _bytes(second)
        if option.get("compressed") == "gzip":
            blob = _gunzip(blob)
        feed = unpacker()
        try:
            feed.feed(blob)
            entries: Any = list(feed)  # bounded: the blob is at most MAX_MESSAGE_BYTES
        except (ValueError, msgpack.UnpackException) as exc:
            raise InvalidInput(f"the packed entries are not a bounded msgpack stream: {exc!r}") from None
    elif isinstance(second, list):
        entries = second
    else:
        if len(message) < 3:
            raise InvalidInput("a Message-mode message needs [tag, time, record]")
        entries = [[second, message[2]]]
    rows: list[shipper.Row] = []
    rejected = 0
    for entry in entries:
        try:
            if not isinstance(entry, list) or len(entry) != 2:
                raise InvalidInput("an entry is [time, record]")
            rows.append(_row(tag, entry[0], entry[1]))
        except InvalidInput:
            rejected += 1
    return tag, rows, rejected, chunk


def dataset_of(tag: str) -> str | None:
    name = tag.split(".", 1)[0].lower()
    return name if names.DATASET.ok(name) else None


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


async def _handshake(stream: trio.SocketStream, feed: msgpack.Unpacker, key: bytes, drops: DropLog,
                     counters: Any) -> bool:
    """Shared-key handshake (HELO, PING, PONG). False: the client failed it and was answered so."""
    nonce = os.urandom(16)
    hostname = socket.gethostname()
    await stream.send_all(msgpack.packb(["HELO", {"nonce": nonce, "auth": b"", "keepalive": True}]))
    ping = None
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        while ping is None:
            data = await stream.receive_some(65536)
            if not data:
                return False
            try:
                feed.feed(data)
                ping = next(feed, None)
            except (ValueError, msgpack.UnpackException):
                break
    ok = (isinstance(ping, list) and len(ping) >= 4 and ping[0] == "PING"
          and all(isinstance(v, (str, bytes)) for v in ping[1:4]))
    reason = "shared key mismatch"
    if ok:
        client, salt, digest = (_bytes(v) for v in ping[1:4])
        expected = hashlib.sha512(salt + client + nonce + key).hexdigest().encode()
        ok = len(digest) == len(expected) and digest == expected
    if not ok:
        drops.drop(counters, "auth_failed", "a forward client failed the shared-key handshake")
        await stream.send_all(msgpack.packb(["PONG", False, reason, hostname, ""]))
        return False
    salt = _bytes(ping[2])
    answer = hashlib.sha512(salt + hostname.encode() + nonce + key).hexdigest()
    await stream.send_all(msgpack.packb(["PONG", True, "", hostname, answer]))
    return True


async def serve(sink: Sink, ingest: Ingest, host: str, port: int, shared_key: bytes | None, *,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept forward connections until cancelled; ``task_status.started(("forward", host, port))``."""
    drops = DropLog(_log, "forward")
    counters = sink.counters
    active = [0]

    async def commit(dataset: str, rows: list[shipper.Row]) -> None:
        table = await trio.to_thread.run_sync(shipper.to_table, rows, timeutil.now_ns())
        shipper.count_rows(counters, "forward", await ingest(dataset, table))

    async def handle_message(stream: trio.SocketStream, message: Any) -> None:
        tag, rows, rejected, chunk = decode_message(message)
        if rejected:
            drops.drop(counters, "invalid_event", f"events of tag {tag!r} that are not [time, map]", rejected)
        dataset = dataset_of(tag)
        if dataset is None:
            drops.drop(counters, "bad_tag", f"the tag {tag[:80]!r} does not start with a dataset name", len(rows))
            rows = []
        if chunk is None:
            await sink.put(dataset or "", rows)
            return
        if rows:
            try:
                await commit(dataset or "", rows)
            except InvalidInput as exc:
                drops.drop(counters, "invalid_event", str(exc), len(rows))
        await stream.send_all(msgpack.packb({"ack": chunk}))  # after the WAL commit

    async def handle(stream: trio.SocketStream) -> None:
        if active[0] >= MAX_CONNECTIONS:
            drops.drop(counters, "connections", "too many forward connections; closing a new one")
            await stream.aclose()
            return
        active[0] += 1
        try:
            async with stream:
                feed = unpacker()
                if shared_key is not None and not await _handshake(stream, feed, shared_key, drops, counters):
                    return
                while True:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        return
                    try:
                        feed.feed(data)
                        messages = list(feed)
                    except (ValueError, msgpack.UnpackException) as exc:
                        drops.drop(counters, "malformed", f"not a bounded msgpack stream ({exc!r}); "
                                   "closing the connection")
                        return
                    for message in messages:
                        try:
                            await handle_message(stream, message)
                        except InvalidInput as exc:
                            drops.drop(counters, "malformed", f"{exc}; closing the connection")
                            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, HeliosError) as exc:
            log.log(_log, logging.DEBUG, "forward connection ended", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must end this connection, not the node
            _log.error("forward connection failed", exc_info=exc)
            shipper.count_drop(counters, "forward", "internal")
        finally:
            active[0] -= 1

    listeners = await trio.open_tcp_listeners(port, host=host or None)
    async with trio.open_nursery() as nursery:
        address = listeners[0].socket.getsockname()
        log.log(_log, logging.INFO, "forward listener started", address=f"tcp://{address[0]}:{address[1]}",
                shared_key=shared_key is not None)
        task_status.started(("forward", address[0], address[1]))
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)

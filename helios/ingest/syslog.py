"""Syslog (RFC 5424 and RFC 3164) → rows, TCP framing (RFC 6587), and the TCP/UDP listeners.

Mapping into dataset ``syslog``:

| syslog | field |
| --- | --- |
| MSG | ``_msg`` (a UTF-8 BOM dropped) |
| TIMESTAMP | ``_time`` (RFC 3164: no year or zone — the receiver's year and local zone) |
| HOSTNAME, APP-NAME (3164: TAG), PROCID (3164: ``TAG[pid]``), MSGID | ``hostname``, ``app_name``, ``procid``, ``msgid`` |
| PRI | ``facility`` (``kern`` … ``local7``), ``severity`` (``emerg`` … ``debug``), ``level`` |
| STRUCTURED-DATA ``[id name="value"]`` | ``sd.<id>.<name>`` |

NILVALUE (``-``) fields are left out. A message that does not parse is kept
whole as ``_msg`` with ``parse_error`` saying why — never dropped. A message
over ``MAX_MESSAGE_BYTES`` is dropped (it cannot be kept bounded), logged and
counted in ``/metrics`` (``helios_compat_dropped_total{protocol="syslog"}``).

TCP frames are octet-counted (``LEN SP MSG``) or newline-terminated, decided
per frame by its first byte (a digit means a count), as RFC 6587 receivers do.
UDP is one message a datagram. Neither acknowledges anything: rows go to the
listener's batching sink, which commits them to the WAL within a fraction of
a second.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import trio

from helios import log
from helios.ingest import shipper
from helios.ingest.sink import DropLog, Sink

__all__ = ["DATASET", "MAX_MESSAGE_BYTES", "Framer", "parse_message", "serve_tcp", "serve_udp"]

DATASET = "syslog"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CONNECTIONS = 1024
UDP_RECEIVE_BUFFER_BYTES = 8 << 20
_log = log.get("helios.syslog")

FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
              "ftp", "ntp", "security", "console", "solaris-cron",
              "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
LEVELS = ("FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG")

_PRI = re.compile(r"<([0-9]{1,3})>")
_HEADER_5424 = re.compile(r"1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_SD_NAME = r'[^\s="\]]{1,32}'
_SD_ELEMENT = re.compile(rf"\[({_SD_NAME})((?: {_SD_NAME}=\"(?:[^\"\\]|\\.)*\")*)\]", re.S)
_SD_PARAM = re.compile(rf" ({_SD_NAME})=\"((?:[^\"\\]|\\.)*)\"", re.S)
_SD_UNESCAPE = re.compile(r"\\([\"\\\]])")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), 1)}
_HEADER_3164 = re.compile(r"([A-Z][a-z]{2}) ([ 0-9][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ")
_ISO_3164 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T\S+) ")  # rsyslog's forward format
_TAG = re.compile(r"([^\s:\[\]]{1,128})(?:\[([^\]\s]{1,128})\])?: ?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _rfc3339_ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return _ns(moment)


def parse_message(data: bytes, now_s: float | None = None) -> shipper.Row:
    """One syslog message → a row; a malformed one → ``_msg`` = the text, ``parse_error`` = why."""
    text = data.decode("utf-8", "replace").rstrip("\r\n\x00")
    match = _PRI.match(text)
    if match is None or int(match.group(1)) > 191:
        return {"_msg": text, "parse_error": "no <PRI> header (0-191) at the start"}
    pri = int(match.group(1))
    row: shipper.Row = {"facility": FACILITIES[pri >> 3], "severity": SEVERITIES[pri & 7], "level": LEVELS[pri & 7]}
    rest = text[match.end():]
    try:
        if rest.startswith("1 "):
            row.update(_rfc5424(rest))
        else:
            row.update(_rfc3164(rest, now_s if now_s is not None else time.time()))
    except ValueError as exc:
        row.update({"_msg": text, "parse_error": str(exc)})
    return row


def _rfc5424(text: str) -> shipper.Row:
    header = _HEADER_5424.match(text)
    if header is None:
        raise ValueError("RFC 5424: the header needs VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID")
    row: shipper.Row = {}
    stamp, host, app, procid, msgid = header.groups()
    if stamp != "-":
        try:
            row["_time"] = _rfc3339_ns(stamp)
        except ValueError:
            raise ValueError(f"RFC 5424: the timestamp {stamp[:40]!r} is not RFC 3339") from None
    for name, value in (("hostname", host), ("app_name", app), ("procid", procid), ("msgid", msgid)):
        if value != "-":
            row[name] = value
    rest = text[header.end():]
    if rest.startswith("-"):
        rest = rest[1:]
    elif rest.startswith("["):
        position = 0
        while position < len(rest) and rest[position] == "[":
            element = _SD_ELEMENT.match(rest, position)
            if element is None:
                raise ValueError("RFC 5424: malformed STRUCTURED-DATA")
            for param in _SD_PARAM.finditer(element.group(2)):
                value = _SD_UNESCAPE.sub(r"\1", param.group(2))
                row[shipper.field_name(f"sd.{element.group(1)}.{param.group(1)}")] = value
            position = element.end()
        rest = rest[position:]
    else:
        raise ValueError("RFC 5424: STRUCTURED-DATA must be '-' or [elements]")
    if rest and not rest.startswith(" "):
        raise ValueError("RFC 5424: no space between STRUCTURED-DATA and MSG")
    row["_msg"] = rest[1:].removeprefix("\ufeff")
    return row


def _rfc3164(text: str, now_s: float) -> shipper.Row:
    row: shipper.Row = {}
    header = _HEADER_3164.match(text)
    iso = None if header else _ISO_3164.match(text)
    if header is not None:
        month = _MONTHS.get(header.group(1))
        if month is None:
            raise ValueError(f"RFC 3164: {header.group(1)!r} is not a month")
        day, hour, minute, second = (int(header.group(i)) for i in range(2, 6))
        year = time.localtime(now_s).tm_year
        moment = datetime(year, month, day, hour, minute, second).astimezone()
        if moment.timestamp() > now_s + 86_400:  # December's message read in January
            moment = moment.replace(year=year - 1)
        row["_time"] = _ns(moment)
        rest = text[header.end():]
    elif iso is not None:
        try:
            row["_time"] = _rfc3339_ns(iso.group(1))
        except ValueError:
            raise ValueError(f"RFC 3164: the timestamp {iso.group(1)[:40]!r} is not RFC 3339") from None
        rest = text[iso.end():]
    else:
        raise ValueError("RFC 3164: no 'Mmm dd hh:mm:ss' timestamp after <PRI>")
    first = rest.split(" ", 1)[0]
    if first.endswith(":"):  # a TAG right after the timestamp: the sender left out its HOSTNAME
        after = rest
    else:
        host, _, after = rest.partition(" ")
        if not host:
            raise ValueError("RFC 3164: no HOSTNAME after the timestamp")
        row["hostname"] = host
    tag = _TAG.match(after)
    if tag is not None:
        row["app_name"] = tag.group(1)
        if tag.group(2):
            row["procid"] = tag.group(2)
        after = after[tag.end():]
    row["_msg"] = after
    return row


class Framer:
    """RFC 6587 TCP framing with a bound: ``feed(bytes)`` → complete messages and a count of drops.

    A frame over ``max_bytes`` is dropped, not buffered: an octet count over the
    bound skips that many bytes; a newline frame is discarded up to its newline.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._skip = 0  # bytes of an over-long octet-counted frame still to discard
        self._discarding = False  # inside an over-long newline frame

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        self._buffer += data
        messages: list[bytes] = []
        dropped = 0
        buffer = self._buffer
        while buffer:
            if self._skip:
                cut = min(self._skip, len(buffer))
                del buffer[:cut]
                self._skip -= cut
                continue
            if self._discarding:
                end = buffer.find(b"\n")
                if end < 0:
                    buffer.clear()
                    break
                del buffer[: end + 1]
                self._discarding = False
                continue
            if buffer[0] in b"\r\n ":
                del buffer[:1]
                continue
            if 0x30 <= buffer[0] <= 0x39:  # octet counting: LEN SP MSG
                space = buffer.find(b" ", 0, 11)
                if space < 0:
                    if len(buffer) < 11:
                        break  # the count is not complete yet
                    space = 0  # not a count: read it as a newline frame
                if space > 0 and buffer[:space].isdigit():
                    size = int(buffer[:space])
                    if size > self.max_bytes:
                        dropped += 1
                        del buffer[: space + 1]
                        self._skip = size
                        continue
                    if len(buffer) < space + 1 + size:
                        break
                    messages.append(bytes(buffer[space + 1 : space + 1 + size]))
                    del buffer[: space + 1 + size]
                    continue
            end = buffer.find(b"\n", 0, self.max_bytes + 1)
            if end < 0:
                if len(buffer) > self.max_bytes:
                    dropped += 1
                    buffer.clear()
                    self._discarding = True
                break
            messages.append(bytes(buffer[:end]).rstrip(b"\r"))
            del buffer[: end + 1]
        return messages, dropped


async def serve_tcp(sink: Sink, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept syslog over TCP until cancelled; ``task_status.started(address)``."""
    drops = DropLog(_log, "syslog")
    active = [0]

    async def handle(stream: trio.SocketStream) -> None:
        if active[0] >= MAX_CONNECTIONS:
            drops.drop(sink.counters, "connections", "too many syslog connections; closing a new one")
            await stream.aclose()
            return
        active[0] += 1
        try:
            framer = Framer()
            async with stream:
                while True:
                    try:
                        data = await stream.receive_some(MAX_MESSAGE_BYTES)
                    except trio.BrokenResourceError:
                        return
                    if not data:
                        return
                    messages, dropped = framer.feed(data)
                    if dropped:
                        drops.drop(sink.counters, "too_long", f"a syslog frame over {MAX_MESSAGE_BYTES} bytes",
                                   dropped)
                    if messages:
                        now = time.time()
                        await sink.put(DATASET, [parse_message(m, now) for m in messages])
        except Exception as exc:  # noqa: BLE001 - a bug must end this connection, not the node
            _log.error("syslog connection failed", exc_info=exc)
            shipper.count_drop(sink.counters, "syslog", "internal")
        finally:
            active[0] -= 1

    listeners = await trio.open_tcp_listeners(port, host=host or None)
    async with trio.open_nursery() as nursery:
        address = listeners[0].socket.getsockname()
        log.log(_log, logging.INFO, "syslog TCP listener started", address=f"tcp://{address[0]}:{address[1]}")
        task_status.started(("tcp", address[0], address[1]))
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


def _grow_receive_buffer(sock: Any) -> None:
    """A bigger socket buffer absorbs bursts of datagrams (the kernel caps it at net.core.rmem_max
    unless the process may force it)."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER_BYTES)
            return
        except OSError:
            continue


async def serve_udp(sink: Sink, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Receive one syslog message per datagram until cancelled."""
    drops = DropLog(_log, "syslog")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        _grow_receive_buffer(sock)
        await sock.bind((host or "0.0.0.0", port))
        address = sock.getsockname()
        log.log(_log, logging.INFO, "syslog UDP listener started", address=f"udp://{address[0]}:{address[1]}")
        task_status.started(("udp", address[0], address[1]))
        while True:
            data, _ = await sock.recvfrom(MAX_MESSAGE_BYTES + 1)
            if len(data) > MAX_MESSAGE_BYTES:
                drops.drop(sink.counters, "too_long", f"a syslog datagram over {MAX_MESSAGE_BYTES} bytes")
                continue
            try:
                row = parse_message(data)
            except Exception as exc:  # noqa: BLE001 - a bug must drop this datagram, not stop the node
                _log.error("syslog datagram failed", exc_info=exc)
                shipper.count_drop(sink.counters, "syslog", "internal")
                continue
            if not sink.put_nowait(DATASET, [row]):
                drops.drop(sink.counters, "overload", "the syslog queue is full; a UDP message was dropped")

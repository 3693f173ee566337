"""Ingest bodies read straight from the socket: hypercorn's connection, without h11 for the body.

hypercorn hands every read of a request body to h11 (appended to its buffer, cut out again), then
to its HTTP stream (``bytes()`` once more), then through a memory channel to the request's own
task, and the app joins the pieces: four copies of a 1.3 MB shipper batch, and a dozen Python
calls and two task switches a read, all on the event loop that every request shares. Measured on
a node answering ingest requests without parsing them, that was ~0.9 µs of CPU a row, a third of
what the node spent on an ingested row (docs/architecture.md, "A direct body path").

So a connection's requests are still hypercorn's, except the common shipper request, which is
read here: at a request boundary (no request in flight, h11 idle, nothing buffered), a read that
holds a whole request head for

    POST /api/v1/ingest[?query]  HTTP/1.1 with a Content-Length,
    no Transfer-Encoding, no Expect, no Upgrade (Connection: keep-alive or close is fine)

is parsed by its own ``h11.Connection`` (the same parser and the same rules as hypercorn's; a head
it refuses goes to hypercorn, which answers it as before), then the app -- the whole ASGI chain:
``ConnectionGuard``, the lanes, Quart -- runs on this task with a ``receive`` that reads the body
from the socket as the app asks for it (the caller is still checked before a byte of it is read),
in reads of up to 1 MiB joined once, and a ``send`` that writes the answer through the same
``h11.Connection`` (hypercorn's framing, date and server headers). Memory follows the bytes that
came, not the length declared: a body past HELIOS_MAX_BODY_BYTES is refused by the app (413)
before it is read, and a client that declares 1 TB and sends nothing holds nothing. Anything else -- another path
or method, a head split across reads, a head h11 ends at a bare-LF blank line before the first
CRLF one, HTTP/1.0, ``Expect: 100-continue`` (curl sends it for bodies over 1 MiB), chunked
bodies -- goes to hypercorn unchanged, with the bytes already read.

After the answer the connection is kept for the next request only if the body was read to its
end, the answer was sent whole, it did not say ``Connection: close`` (``ConnectionGuard`` says so
when a refused body did not come) and the server is not shutting down, as hypercorn decides; else
it is closed. Bytes read past the body are the next request's (pipelining). hypercorn's limits
still hold: its read timeout bounds each read, the keep-alive timer is stopped while a request
runs and restarted after, the ``keep_alive_max_requests`` count includes these requests.
"""

from __future__ import annotations

from math import inf
from urllib.parse import unquote

import h11
import hypercorn.protocol.h11
import hypercorn.trio.tcp_server
import trio

from helios.api.guard import Message
from helios.api.lane import joined

__all__ = ["DIRECT", "PATH", "DirectTCPServer"]

DIRECT = "helios.direct"  # the scope extension that marks a request read here (counted by the lane)
PATH = b"/api/v1/ingest"
# The most one read of a body asks for (allocated, then shrunk to what came): hypercorn's own read
# size. Under glibc's mmap threshold (node.MALLOC_MMAP_BYTES, 4 MiB), so a read's buffer comes from
# the heap, not from fresh pages faulted in one by one.
READ_BYTES = 1 << 20
_LINE = b"POST " + PATH
_REFUSED = {b"transfer-encoding", b"expect", b"upgrade"}


class DirectTCPServer(hypercorn.trio.tcp_server.TCPServer):
    """hypercorn's TCP connection (``hypercorn.trio.run`` makes one a connection), with the
    shipper's ingest request read here."""

    async def _read_data(self) -> None:
        # hypercorn's loop (tcp_server.TCPServer._read_data), with the direct requests taken out of
        # each read before h11 sees it.
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or inf):
                    data = await self.stream.receive_some(hypercorn.trio.tcp_server.MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if data and self._at_boundary():
                rest = await self._direct(data)
                if rest is None:  # the connection is to close
                    break
                if not rest:
                    continue
                data = rest
            await self.protocol.handle(hypercorn.trio.tcp_server.RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(hypercorn.trio.tcp_server.Closed())

    def _at_boundary(self) -> bool:
        """No request in flight on this connection and nothing left in h11's buffer."""
        protocol = getattr(self.protocol, "protocol", None)
        if type(protocol) is not hypercorn.protocol.h11.H11Protocol or protocol.stream is not None:
            return False
        connection = protocol.connection
        return (type(connection) is h11.Connection and connection.our_state is h11.IDLE
                and connection.their_state is h11.IDLE and not connection.trailing_data[0])

    async def _direct(self, data: bytes) -> bytes | None:
        """Answer each direct request at the start of ``data``; the bytes left for hypercorn
        (b"" when none), or None when the connection is to close. Pipelined requests are walked
        with an offset: what is left is copied once, at the end."""
        at = 0
        while data.startswith(_LINE, at):
            end = data.find(b"\r\n\r\n", at, at + self.config.h11_max_incomplete_size)
            if end < 0:
                break
            parser, request = _head(data[at:end + 4])
            length = None if request is None else self._length(request)
            if length is None:
                break
            assert request is not None
            exchange = _Exchange(self, parser, request, memoryview(data)[end + 4:], length)
            await self.idle_task.stop()
            if not await exchange.run():
                return None
            await self.idle_task.restart(self._task_group, self._idle_timeout)
            at = end + 4 + exchange.taken
        return data[at:] if at else data

    def _length(self, request: h11.Request) -> int | None:
        """The body length of a request taken here, or None (then hypercorn's)."""
        if request.http_version != b"1.1":
            return None
        length = None
        for name, value in request.headers:
            if name in _REFUSED or (name == b"connection" and b"upgrade" in value.lower()):
                return None
            if name == b"content-length":
                length = int(value)  # h11 checked it: digits, one value
        return length


def _head(head: bytes) -> tuple[h11.Connection, h11.Request | None]:
    """The request in ``head`` (a whole head, blank line included), None if h11 refuses it, and
    the ``h11.Connection`` that read it (it frames the answer)."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return connection, None
    if not isinstance(event, h11.Request) or connection.trailing_data[0]:
        # Bytes left over: h11 ended the head sooner than the first blank CRLF line (its heads may
        # end in a bare LF), so where the body starts is h11's to say: hypercorn's request.
        return connection, None
    return connection, event


class _Exchange:
    """One direct request: its scope, its body read from the socket, its answer written."""

    def __init__(self, server: DirectTCPServer, writer: h11.Connection, request: h11.Request,
                 start: memoryview, length: int) -> None:
        self.server = server
        self.request = request
        self.length = length
        body = start[:length]
        self.pieces: list[bytes | memoryview] = [body] if len(body) else []
        self.received = len(body)
        self.taken = len(body)  # bytes of the read that holds the head that were this body's
        self.body_read = False  # the app has been given the whole body
        self.gone = False  # the client went, or a read failed: the connection closes
        self.writer = writer  # the parser of the head frames the answer, as hypercorn's would
        self.started = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.done = False
        self.finished = trio.Event()

    async def run(self) -> bool:
        """Run the app on this request; whether the connection is kept for the next one."""
        server = self.server
        protocol = server.protocol.protocol
        protocol.keep_alive_requests += 1
        await server.context.mark_request()
        try:
            await server.app(self._scope(), self.receive, self.send, trio.to_thread.run_sync,
                             trio.from_thread.run)
        except trio.Cancelled:
            raise
        except BaseExceptionGroup as group:  # as hypercorn's task_group._handle
            if group.split(trio.Cancelled)[1] is None:
                raise
            await server.config.log.exception("Error in ASGI Framework")
        except Exception:  # noqa: BLE001 -- as hypercorn: logged, answered 500 if not started
            await server.config.log.exception("Error in ASGI Framework")
        if not self.started and not self.gone:
            await self._error(500)
        self.finished.set()
        # The writer is DONE (not MUST_CLOSE) only after a whole answer that keeps the connection:
        # neither the request nor the answer said Connection: close (the guard's, the one of
        # keep_alive_max_requests, a 500's).
        return (not self.gone and self.received == self.length and self.writer.our_state is h11.DONE
                and not server.context.terminated.is_set())

    def _scope(self) -> Message:
        server, request = self.server, self.request
        path, _, query = request.target.partition(b"?")
        protocol = server.protocol.protocol
        return {
            "type": "http", "http_version": "1.1", "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": request.method.decode("ascii").upper(), "scheme": "http",
            "path": unquote(path.decode("ascii")), "raw_path": path, "query_string": query,
            "root_path": server.config.root_path, "headers": list(request.headers),
            "client": protocol.client, "server": protocol.server,
            "state": protocol.connection_state.copy(), "extensions": {"http.response.trailers": {}, DIRECT: {}},
        }

    async def receive(self) -> Message:
        """The whole body in one message; then, once answered, a disconnect (ASGI's order)."""
        if self.gone:
            return {"type": "http.disconnect"}
        if self.body_read:
            await self.finished.wait()
            return {"type": "http.disconnect"}
        stream = self.server.stream
        while self.received < self.length:
            try:
                with trio.fail_after(self.server.config.read_timeout or inf):
                    piece = await stream.receive_some(min(self.length - self.received, READ_BYTES))
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                piece = b""
            if not piece:
                self.gone = True
                return {"type": "http.disconnect"}
            self.pieces.append(piece)
            self.received += len(piece)
        self.body_read = True
        pieces, self.pieces = self.pieces, []
        return {"type": "http.request", "body": joined(pieces), "more_body": False}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            headers = [(bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())]
            headers += self.server.config.response_headers("h11")
            if self.server.protocol.protocol.keep_alive_requests >= self.server.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            self.status, self.headers = int(message["status"]), headers
        elif kind == "http.response.body" and self.started and not self.done:
            out = b""
            if self.headers is not None:
                out = self.writer.send(h11.Response(status_code=self.status, headers=self.headers))
                self.headers = None
            body = bytes(message.get("body", b""))
            if body:
                out += self.writer.send(h11.Data(data=body))
            if not message.get("more_body", False):
                out += self.writer.send(h11.EndOfMessage())
                self.done = True
            await self._write(out)
            if self.done:
                self.finished.set()  # the answer is whole: a receive now hears http.disconnect

    async def _error(self, status: int) -> None:
        """hypercorn's answer to an app that ended without one."""
        headers = [(b"content-length", b"0"), (b"connection", b"close"),
                   *self.server.config.response_headers("h11")]
        out = self.writer.send(h11.Response(status_code=status, headers=headers))
        await self._write(out + self.writer.send(h11.EndOfMessage()))

    async def _write(self, data: bytes) -> None:
        if not data or self.gone:
            return
        try:
            with trio.CancelScope(shield=True):
                await self.server.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True


"""``POST /api/v1/query`` answered straight from ASGI: the Quart route's answer, ~0.5 ms sooner.

Quart costs a request 0.2 ms of CPU on a warm node and 0.45–0.5 ms after a pause (its request
object, contexts, routing, response object), more than the engine needs to find the newest 100
rows of 10 M. Queries are what people and dashboards wait on, so the common request — a POST
with a JSON body of known length, at most ``LANE_BODY_BYTES`` and ``HELIOS_MAX_BODY_BYTES``
(a larger one is Quart's to refuse, 413) — skips it:

    ConnectionGuard → QueryLane ┬ POST /api/v1/query, Content-Length ≤ 1 MiB and the limit: here
                                └ GET, chunked or larger bodies, other paths → Quart

Nothing is decided twice: the caller is checked by ``Auth.authenticate`` and the permission
``query`` (``principal``'s two steps) before the body is read, as the route does; the body by
``common.json_object`` (``json_body``'s rules), the query by ``query.answer_query``, and errors
become answers through ``common.error_parts`` (the app's error handlers'). What Quart did besides
is done here: the body must arrive within ``HELIOS_BODY_TIMEOUT_SECS`` (else 408, Quart's
message), an answer given before the body has all come (401, 403, 408) goes on reading it and
drops it, a client that disconnects cancels its query (a task watches ``receive`` for
``http.disconnect``, as quart-trio's does), and a large answer streams chunk by chunk
(``query.stream``). ``ConnectionGuard`` still wraps every answer: security headers, and an answer
sent before the body ended closes the connection unless the body comes within its wait.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import orjson
import trio

from helios.api.common import NodeApi, error_parts, json_object
from helios.api.guard import App, Message, Receive, Send
from helios.api.query import answer_query, head, stream, tail
from helios.query.runner import QueryPool

__all__ = ["LANE_BODY_BYTES", "QueryLane", "joined"]

LANE_BODY_BYTES = 1 << 20  # a query's JSON body is a few hundred bytes; larger go through Quart
PATH = "/api/v1/query"
_JSON = (b"content-type", b"application/json")


def _length(scope: Message, bound: int) -> int | None:
    """The declared body length of a request the lane takes (at most ``bound``), or None (then
    Quart answers it: a larger body may be one Quart refuses, 413, past HELIOS_MAX_BODY_BYTES)."""
    length = None
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
    return length if length is not None and length <= bound else None


class QueryLane:
    def __init__(self, app: App, node: NodeApi, pool: QueryPool, *, body_timeout_s: float,
                 max_body_bytes: int) -> None:
        self.app = app
        self.node = node
        self.pool = pool
        self.body_timeout_s = body_timeout_s
        self.bound = min(LANE_BODY_BYTES, max_body_bytes)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH
                or _length(scope, self.bound) is None):
            await self.app(scope, receive, send)
            return
        body = await allowed_body(self.node, "query", scope, receive, send, self.body_timeout_s)
        if body is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, receive, nursery.cancel_scope)
            await self._respond(body, send)
            nursery.cancel_scope.cancel()

    async def _respond(self, body: bytes, send: Send) -> None:
        try:
            chunks, rest, stats = await answer_query(self.node, self.pool, json_object(body))
        except Exception as error:  # noqa: BLE001 -- every error is answered, as the app does
            status, doc, headers = error_parts(error, PATH)
            await _answer(send, status, orjson.dumps(doc), headers)
            return
        if rest is None:  # all of it encoded: one body, sent at once with its length
            await _answer(send, 200, head(chunks) + tail(stats))
            return
        await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
        async with contextlib.aclosing(stream(chunks, rest, stats, self.pool)) as pieces:
            async for piece in pieces:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def allowed_body(node: NodeApi, permission: str, scope: Message, receive: Receive, send: Send,
                       timeout_s: float, check: Callable[[], Any] | None = None) -> bytes | None:
    """The whole body of a request whose caller holds ``permission``, or None once answered.

    The caller first, as the routes do (``principal``'s two steps: who the caller is, and that
    they hold the permission), then ``check`` (what the route decides before it reads the body):
    a refused request's body is not waited for, it is answered (401, 403, 400) and the body read
    and dropped; then ``receive_body``."""
    authorization = next((value.decode("latin-1") for name, value in scope["headers"]
                          if name.lower() == b"authorization"), None)
    try:
        node.auth.authenticate(authorization).require(permission)
        if check is not None:
            check()
    except Exception as error:  # noqa: BLE001 -- answered as the app does
        await _early(receive, send, *error_parts(error, scope["path"]))
        return None
    return await receive_body(receive, send, timeout_s)


async def receive_body(receive: Receive, send: Send, timeout_s: float) -> bytes | None:
    """The whole body, or None: the client went, or it did not all come within ``timeout_s``
    (answered 408 with Quart's words, ``helios.api.app``).

    Its pieces are joined once at the end (a body that came in one piece is not copied at all):
    appending each to a ``bytearray`` moved the body as it grew, one more copy of every byte on
    the event loop."""
    pieces: list[bytes] = []
    with trio.move_on_after(timeout_s) as timer:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            if piece:
                pieces.append(piece)
            if not message.get("more_body", False):
                return joined(pieces)
    assert timer.cancelled_caught
    late = f"the request body did not arrive within {timeout_s:g} s (HELIOS_BODY_TIMEOUT_SECS)"
    await _early(receive, send, 408, {"error": late}, {})
    return None


def joined(pieces: list[Any]) -> bytes:
    """A body's pieces as one bytes object, joined once; a body that came as one bytes piece is
    not copied (``receive_body``, ``helios.api.direct``)."""
    return pieces[0] if len(pieces) == 1 and type(pieces[0]) is bytes else b"".join(pieces)


async def _answer(send: Send, status: int, body: bytes,
                  headers: dict[str, str] | None = None) -> None:
    fields = [_JSON, (b"content-length", str(len(body)).encode()),
              *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _early(receive: Receive, send: Send, status: int, doc: Any,
                 headers: dict[str, str]) -> None:
    """An answer given before the body has all come (401, 403, 408): the rest is read and dropped
    meanwhile, as Quart does, so ``ConnectionGuard`` keeps the connection once it has all come, or
    closes it after its wait."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, receive)
        await _answer(send, status, orjson.dumps(doc), headers)
        nursery.cancel_scope.cancel()


async def _drain(receive: Receive) -> None:
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _watch(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel the request's work once its client has gone (``http.disconnect``)."""
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return

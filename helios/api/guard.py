"""An ASGI wrapper around the app: security headers on every answer, and no connection left hanging.

Security headers: every HTTP answer carries ``X-Content-Type-Options:
nosniff``, ``Cache-Control: no-store`` (tokens, logs and settings must not
be cached by a browser or a proxy), ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and a ``Content-Security-Policy`` that lets an
API answer opened in a browser load nothing and be framed nowhere, unless
the route set its own value (the web UI sets its own, ``helios.api.ui``).

Early answers: a handler may answer (401, 403, 400, 413, 408) before the
client has sent its whole body; httpx, for one, sends the body after the
headers. hypercorn then closes the connection from inside the app's final
``send``, and quart-trio cancels that very task as soon as the app has
answered, so the close was cut off at its first checkpoint: the socket stayed
open, the client's next request on it was never read (a kept-alive client
hung). Here, before the answer starts, the rest of the body is awaited for
at most ``drain_s`` (quart keeps reading it, up to the body limit, and
discards it); if it has not all come, the answer says ``Connection: close``.
The final ``send`` is shielded from cancellation, so hypercorn either
recycles the connection (body complete) or really closes it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

__all__ = ["SECURITY_HEADERS", "ConnectionGuard"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)


def _declared_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ConnectionGuard:
    def __init__(self, app: App, *, drain_s: float, max_body_bytes: int) -> None:
        self.app = app
        self.drain_s = drain_s
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = trio.Event()
        declared = _declared_length(scope)
        if declared == 0 or (declared is None and not _has_chunked_body(scope)):
            body_done.set()
        too_big = declared is not None and declared > self.max_body_bytes

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" or (
                    message["type"] == "http.request" and not message.get("more_body", False)):
                body_done.set()
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not body_done.is_set() and not too_big:
                    with trio.move_on_after(self.drain_s):
                        await body_done.wait()
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if not body_done.is_set():
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):  # hypercorn recycles or closes the connection in here
                    await send(message)
                return
            await send(message)

        await self.app(scope, tracked_receive, guarded_send)


def _has_chunked_body(scope: Message) -> bool:
    return any(name.lower() == b"transfer-encoding" for name, _ in scope.get("headers", ()))

"""``POST /api/v1/ingest`` answered straight from ASGI: the Quart route's answer, without Quart.

An ingest body is large (a shipper's batch: 1.3 MB for 5,000 Loghub rows), and Quart copies it
twice on its way in (``Body.append`` a chunk at a time, ``bytes()`` at the end) and builds its
request, contexts and response around it: ~0.75 ms of CPU a request in a minimal app, a twentieth
of what the node spends on such a request. So the common request -- a POST with a known length
within ``HELIOS_MAX_BODY_BYTES`` and at most a ``dataset`` in its query -- skips it, as queries do
(``helios.api.lane``):

    ConnectionGuard → IngestLane ┬ POST /api/v1/ingest[?dataset=name], Content-Length ≤ the limit: here
                                 └ anything else → QueryLane → Quart

Nothing is decided twice: the caller (``principal("ingest")``'s two steps) and then the dataset
(``validate_dataset``) are checked before the body is read (``lane.allowed_body``), the body is
stored by ``ingest.store_body``, and errors become answers through ``common.error_parts``, as on
the route. A body that does not come
within ``HELIOS_BODY_TIMEOUT_SECS`` is answered 408, and one answered early (401, 403) is read and
dropped, as Quart does. A client that goes after sending its whole body does not stop its rows:
the request is all or nothing, so they are stored and the answer is dropped.
"""

from __future__ import annotations

import re

import orjson

from helios.api.common import NodeApi, error_parts, validate_dataset
from helios.api.direct import DIRECT
from helios.api.guard import App, Message, Receive, Send
from helios.api.ingest import store_body
from helios.api.lane import _answer, _length, allowed_body

__all__ = ["IngestLane"]

PATH = "/api/v1/ingest"
# The query strings the lane reads: none, or one dataset name in the characters names allow
# (validate_dataset has the last word); anything else is Quart's to parse.
_QUERY = re.compile(rb"(?:dataset=([A-Za-z0-9_.\-]*))?")


class IngestLane:
    def __init__(self, app: App, node: NodeApi, *, body_timeout_s: float, max_body_bytes: int) -> None:
        self.app = app
        self.node = node
        self.body_timeout_s = body_timeout_s
        self.bound = max_body_bytes

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        query = _QUERY.fullmatch(scope.get("query_string", b"")) if scope["type"] == "http" else None
        if (query is None or scope["method"] != "POST" or scope["path"] != PATH
                or _length(scope, self.bound) is None):
            await self.app(scope, receive, send)
            return
        if DIRECT in scope.get("extensions", ()):
            self.node.counters["http_direct_requests"] += 1
        dataset = "default" if query.group(1) is None else query.group(1).decode()
        # The dataset before the body, as the route decides it (400 at once, not a body timeout).
        body = await allowed_body(self.node, "ingest", scope, receive, send, self.body_timeout_s,
                                  check=lambda: validate_dataset(dataset))
        if body is None:
            return
        headers = _headers(scope)
        # Werkzeug's mimetype: before ";", blanks (space, tab) stripped, lower-cased.
        mimetype = (headers.get(b"content-type") or "").split(";", 1)[0].strip(" \t").lower()
        try:
            count = await store_body(self.node, dataset, body, headers.get(b"content-encoding"),
                                     text=mimetype == "text/plain")
        except Exception as error:  # noqa: BLE001 -- every error is answered, as the app does
            status, doc, extra = error_parts(error, PATH)
            await _answer(send, status, orjson.dumps(doc), extra)
            return
        await _answer(send, 200, orjson.dumps({"ingested": count}))


def _headers(scope: Message) -> dict[bytes, str]:
    """The request's headers by lower-cased name, the first of each (as Quart's ``get``)."""
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        found.setdefault(name.lower(), value.decode("latin-1"))
    return found

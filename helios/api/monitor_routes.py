"""Routes of monitor evaluation: history, test notifications, secret rotation.

The monitors themselves (list, create, get, change, delete) are control-plane
objects served by ``helios.api.control_api``; these routes are about what
the evaluator did with them (``helios.monitors``).

- ``GET /api/v1/monitors/{id}/history`` (monitors.read): the transitions,
  newest first, with their value, window and delivery (status, attempts).
- ``POST /api/v1/monitors/{id}/test`` (monitors.write): one signed test
  notification now, from this node, headed ``X-Helios-Test: 1``; answers
  ``{"id", "delivered", "status", "error"}`` and commits nothing.
- ``POST /api/v1/monitors/{id}/secret`` (monitors.write): a new webhook
  secret, shown in this answer only.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from quart import Response
from quart_trio import QuartTrio

from helios.control.auth import Principal
from helios.control.objects import MONITORS

__all__ = ["register"]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status=status, mimetype="application/json")


def register(app: QuartTrio, node: Any, principal: Callable[[str], Awaitable[Principal]]) -> None:
    """Add the routes to ``app`` for ``node`` (``helios.node.Node``: ``control``, ``monitors``)."""

    @app.get("/api/v1/monitors/<monitor_id>/history")
    async def monitor_history(monitor_id: str) -> Response:
        await principal("monitors.read")
        obj = MONITORS.get(node.control, monitor_id)
        return _json(node.monitors.history(obj.id))

    @app.post("/api/v1/monitors/<monitor_id>/test")
    async def monitor_test(monitor_id: str) -> Response:
        await principal("monitors.write")
        obj = MONITORS.get(node.control, monitor_id)
        notification_id, outcome = await node.monitors.send_test(obj)
        return _json({"id": notification_id, "delivered": outcome.ok, "status": outcome.status,
                      "error": outcome.error})

    @app.post("/api/v1/monitors/<monitor_id>/secret")
    async def monitor_secret(monitor_id: str) -> Response:
        who = await principal("monitors.write")
        obj, secret = await MONITORS.rotate_secret(node.control, monitor_id, who)
        return _json({"id": obj.id, "version": obj.version, "secret": secret})

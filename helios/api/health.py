"""Health, readiness, metrics, the API document and the version."""

from __future__ import annotations

from collections import Counter

from quart import Blueprint, Response

from helios import __version__
from helios.api.common import answer, node, principal, queries
from helios.api.openapi import OPENAPI

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    return answer({"status": "ok"})


@bp.get("/readyz")
async def readyz() -> Response:
    if not node().ready:
        return answer({"status": "starting"}, 503)
    # Ready means serving: a failing partition or job degrades the node but does not take it out of a
    # load balancer (its other partitions and jobs work). This endpoint needs no token, so it names
    # the failing tasks and counts their subjects; /api/v1/cluster names the partitions and objects.
    failing = Counter(task for task, _ in node().health.problems)
    return answer({"status": "degraded" if failing else "ready", "failing": dict(sorted(failing.items()))})


@bp.get("/metrics")
async def metrics() -> Response:
    await principal("metrics")
    text = node().metrics_text() + "\n".join(queries().metrics_lines()) + "\n"
    return Response(text, mimetype="text/plain; version=0.0.4")


@bp.get("/api/openapi.json")
async def openapi() -> Response:
    await principal("query")
    return answer(OPENAPI)


@bp.get("/api/v1/version")
async def version() -> Response:
    await principal("query")
    return answer({"version": __version__, "node_id": node().node_id})

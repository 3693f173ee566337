"""Health, readiness, metrics, the API document and the version."""

from __future__ import annotations

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
    return answer({"status": "ready"})


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

"""The HTTP app of one node: blueprints by concern, one place where errors become statuses.

    create_app(node)
    ├── ConnectionGuard (ASGI)   security headers; drain-or-close after early answers
    ├── IngestLane (ASGI)        POST /api/v1/ingest with a known length, answered without Quart
    ├── QueryLane (ASGI)         POST /api/v1/query with a small body, answered without Quart
    ├── error handlers           HeliosError → its status; store error → 503 (helios.errors.from_store);
    │                            framework HTTP error → its status, JSON; anything else → 500, logged
    ├── BLUEPRINTS               health · ingest · query · cluster · session · users · resources · ui
    └── fallback                 any other path → JSON 404

Routes reach the node through ``helios.api.common.node()``, typed by the
``NodeApi`` protocol. Adding a group of routes is one blueprint and one
entry in ``BLUEPRINTS`` (or ``app.register_blueprint(bp)`` on the result).
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from backends.base import StoreError
from helios.api import cluster, compat, health, ingest, monitor_routes, query, resources, session, tail, ui, users
from helios.api.common import (NODE_KEY, QUERIES_KEY, NodeApi, answer, error_parts, principal,
                               validate_dataset)
from helios.api.guard import ConnectionGuard
from helios.api.ingest_lane import IngestLane
from helios.api.lane import QueryLane
from helios.errors import HeliosError, NotFound
from helios.query.runner import QueryPool

__all__ = ["BLUEPRINTS", "DRAIN_S", "create_app", "validate_dataset"]

BLUEPRINTS: tuple[Blueprint, ...] = (
    health.bp, ingest.bp, query.bp, cluster.bp, session.bp, users.bp, resources.bp,
    ui.bp,  # the web UI: its pages and files (helios/ui)
)
DRAIN_S = 5.0  # how long an early answer waits for the rest of the request body before closing instead


def create_app(node: NodeApi, *, shutdown: trio.Event | None = None) -> QuartTrio:
    """The app for one node; once ``shutdown`` is set, running queries are stopped (503) at once."""
    config = node.config
    app = QuartTrio("helios")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["BODY_TIMEOUT"] = config.body_timeout_secs
    app.config["JSON_SORT_KEYS"] = False
    pool = QueryPool(max_concurrent=config.max_concurrent_queries, queue_s=config.query_queue_secs,
                     deadline_s=config.query_timeout_secs)
    app.extensions[NODE_KEY] = node
    app.extensions[QUERIES_KEY] = pool
    # Most queries are answered without Quart (helios.api.lane); the rest of the app through it.
    lane = QueryLane(app.asgi_app, node, pool, body_timeout_s=config.body_timeout_secs,
                     max_body_bytes=config.max_body_bytes)
    # So are most ingest requests (helios.api.ingest_lane).
    lane = IngestLane(lane, node, body_timeout_s=config.body_timeout_secs, max_body_bytes=config.max_body_bytes)
    app.asgi_app = ConnectionGuard(lane, drain_s=DRAIN_S,  # type: ignore[method-assign]
                                   max_body_bytes=config.max_body_bytes)
    _register_errors(app, config.max_body_bytes, config.body_timeout_secs)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.register_blueprint(compat.blueprint(node))  # OTLP, Loki push, Elasticsearch bulk
    monitor_routes.register(app, node, principal)  # history, test notification, secret rotation
    tail.register(app, node, principal, validate_dataset, pool)  # GET /api/v1/tail (SSE)
    app.add_url_rule("/<path:rest>", "unknown", _unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    if shutdown is not None:
        @app.before_serving
        async def _stop_queries_at_shutdown() -> None:
            async def watch() -> None:
                await shutdown.wait()
                pool.close()

            app.nursery.start_soon(watch)
    return app


def _error_answer(error: Exception) -> Response:
    status, doc, headers = error_parts(error, request.path)
    response = answer(doc, status)
    response.headers.update(headers)
    return response


def _register_errors(app: QuartTrio, max_body_bytes: int, body_timeout_s: float) -> None:
    framework_messages = {
        413: f"the request body is larger than {max_body_bytes} bytes (HELIOS_MAX_BODY_BYTES)",
        408: f"the request body did not arrive within {body_timeout_s:g} s (HELIOS_BODY_TIMEOUT_SECS)",
    }

    @app.errorhandler(HeliosError)
    async def _helios_error(error: HeliosError) -> Response:
        return _error_answer(error)

    @app.errorhandler(StoreError)
    async def _store_error(error: StoreError) -> Response:
        return _error_answer(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        return answer({"error": framework_messages.get(code, error.description or error.name)}, code)

    @app.errorhandler(Exception)
    async def _bug(error: Exception) -> Response:
        return _error_answer(error)


async def _unknown(rest: str) -> Response:
    raise NotFound(f"no such endpoint: /{rest}")

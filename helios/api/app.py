"""Routes of the HTTP API. Every handler: authenticate, validate, act, answer JSON.

Errors are mapped to statuses once, here: a ``HeliosError`` answers with its
own status and payload; a framework HTTP error keeps its status with a JSON
body; anything else is a bug, logged with its traceback and answered 500.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, AsyncIterator

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from helios import __version__, log, timeutil
from helios.api import control_api
from helios.api.openapi import OPENAPI
from helios.control.auth import Principal
from helios.errors import HeliosError, InvalidInput, NotFound
from helios.ingest.decode import decode_body
from helios.ingest.records import parse_ndjson, parse_text
from helios.query.executor import execute, to_rows
from helios.query.filters import may_match
from helios.query.parser import parse
from helios.storage.engine import Source
from helios.storage.fetch import query_blocks

__all__ = ["DATASET_NAME", "MAX_LIMIT", "create_app", "validate_dataset"]

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 1_000_000
_log = log.get("helios.api")


def validate_dataset(name: object) -> str:
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise InvalidInput(f"invalid dataset name {name!r}: use 1-64 of a-z 0-9 _ -, "
                           "starting with a letter or digit")
    return name


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status=status, mimetype="application/json")


def create_app(node: Any) -> QuartTrio:
    """The app for one node (``helios.node.Node``: config, engine, auth)."""
    app = QuartTrio("helios")
    app.config["MAX_CONTENT_LENGTH"] = node.config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False

    async def principal(permission: str) -> Principal:
        who = node.auth.authenticate(request.headers.get("Authorization"))
        who.require(permission)
        return who

    async def json_body() -> dict[str, Any]:
        raw = await request.get_data(cache=False)
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object")
        return doc

    @app.errorhandler(HeliosError)
    async def _helios_error(error: HeliosError) -> Response:
        return _json(error.payload(), error.status)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        message = {413: f"the request body is larger than {node.config.max_body_bytes} bytes"}.get(
            error.code or 500, error.description or error.name)
        return _json({"error": message}, error.code or 500)

    @app.errorhandler(Exception)
    async def _bug(error: Exception) -> Response:
        _log.error("unhandled error", exc_info=error, extra={"fields": {"path": request.path}})
        return _json({"error": "internal error; see the node's log"}, 500)

    # -- health ------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if not node.ready:
            return _json({"status": "starting"}, 503)
        # Ready means serving: a failing partition or job degrades the node but does not take it out of a
        # load balancer (its other partitions and jobs work). This endpoint needs no token, so it names
        # the failing tasks and counts their subjects; /api/v1/cluster names the partitions and objects.
        failing = Counter(task for task, _ in node.health.problems)
        return _json({"status": "degraded" if failing else "ready", "failing": dict(sorted(failing.items()))})

    @app.get("/metrics")
    async def metrics() -> Response:
        await principal("metrics")
        return Response(node.metrics_text(), mimetype="text/plain; version=0.0.4")

    @app.get("/api/openapi.json")
    async def openapi() -> Response:
        await principal("query")
        return _json(OPENAPI)

    # -- auth --------------------------------------------------------------

    @app.post("/api/v1/auth/login")
    async def login() -> Response:
        doc = await json_body()
        username, password = doc.get("username"), doc.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise InvalidInput("send {\"username\": ..., \"password\": ...} as strings")
        token, expires = await node.auth.login(username, password)
        return _json({"token": token, "expires_at": timeutil.format_ns(expires * 1_000_000_000)})

    # -- ingest ------------------------------------------------------------

    @app.post("/api/v1/ingest")
    async def ingest() -> Response:
        await principal("ingest")
        dataset = validate_dataset(request.args.get("dataset", "default"))
        # text/plain is one message a line; any other type is read as NDJSON (as
        # VictoriaLogs does), so `curl --data-binary @file` works unchanged.
        kind = (request.mimetype or "").lower()
        body = await request.get_data(cache=False)
        limit = node.config.max_decoded_bytes
        encoding = request.headers.get("Content-Encoding")
        parser = parse_text if kind == "text/plain" else parse_ndjson
        now = timeutil.now_ns()

        def decode_and_parse() -> Any:
            return parser(decode_body(body, encoding, limit), now)

        table = await trio.to_thread.run_sync(decode_and_parse)
        count = await node.engine.ingest(dataset, table)
        node.counters["ingested_rows"] += count
        node.counters["ingest_requests"] += 1
        return _json({"ingested": count})

    # -- query -------------------------------------------------------------

    @app.route("/api/v1/query", methods=["GET", "POST"])
    async def query() -> Response:
        await principal("query")
        doc: dict[str, Any] = await json_body() if request.method == "POST" else dict(request.args)
        if request.method == "GET" and "dataset" in doc and "," in doc["dataset"]:
            doc["dataset"] = doc["dataset"].split(",")
        text = doc.get("q")
        if not isinstance(text, str):
            raise InvalidInput("'q' (the query text) is required and must be a string")
        parsed = parse(text)
        datasets = _datasets_of(doc.get("dataset"))
        start = timeutil.parse_instant(doc.get("from"), "from")
        end = timeutil.parse_instant(doc.get("to"), "to")
        if start is not None and end is not None and start >= end:
            raise InvalidInput("'from' must be before 'to'")
        limit = _limit_of(doc.get("limit"))
        sources = node.engine.sources(datasets, start, end)
        cache = node.engine.cache

        def may_need(source: Source) -> bool:  # fetch ahead only blocks the known index cannot rule out
            assert source.block is not None
            return may_match(parsed.filter, cache.known_index(source.block.id), source.dataset)

        # The blocks are held (garbage collection and eviction keep them) and fetched as needed.
        async with query_blocks(node.engine.blocks, sources, start_ns=start, end_ns=end, wanted=may_need,
                                deadline_s=node.config.fetch_deadline_secs) as blocks:
            def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
                result = execute(parsed, sources, cache, start_ns=start, end_ns=end, limit=limit,
                                 fetch=blocks.open if node.engine.blocks.store is not None else None)
                return to_rows(result), result.stats

            rows, stats = await trio.to_thread.run_sync(run)
        node.counters["queries"] += 1
        return Response(_stream(rows, stats), mimetype="application/json")

    # -- datasets ----------------------------------------------------------

    @app.get("/api/v1/datasets")
    async def datasets() -> Response:
        await principal("datasets.read")
        stats = node.engine.dataset_stats()
        return _json([{"name": s.name, "retention_days": node.retention_days(s.name), "rows": s.rows,
                       "bytes": s.bytes, "partitions": s.partitions, "blocks": s.blocks}
                      for s in sorted(stats.values(), key=lambda s: s.name)])

    @app.get("/api/v1/cluster")
    async def cluster() -> Response:
        await principal("cluster.read")
        return _json(node.cluster())

    @app.get("/api/v1/version")
    async def version() -> Response:
        await principal("query")
        return _json({"version": __version__, "node_id": node.node_id})

    control_api.register(app, node, principal, json_body, validate_dataset)

    @app.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str) -> Response:
        raise NotFound(f"no such endpoint: /{rest}")

    return app


def _datasets_of(value: object) -> set[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return {validate_dataset(value)}
    if isinstance(value, list) and value:
        return {validate_dataset(v) for v in value}
    raise InvalidInput("'dataset' is a name or a non-empty list of names")


def _limit_of(value: object) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT:
        raise InvalidInput(f"'limit' must be a whole number from 0 to {MAX_LIMIT}")
    return value


async def _stream(rows: list[dict[str, Any]], stats: dict[str, Any]) -> AsyncIterator[bytes]:
    """``{"rows": [...], "stats": {...}}`` in chunks, so a large result never sits in one buffer."""
    yield b'{"rows":['
    step = 2000
    for start in range(0, len(rows), step):
        chunk = b",".join(orjson.dumps(row) for row in rows[start : start + step])
        yield (b"," if start else b"") + chunk
    yield b'],"stats":' + orjson.dumps(stats) + b"}"

"""HTTP routes of the compatible ingest protocols: OTLP/HTTP logs, Loki push, Elasticsearch bulk.

Every route: authenticate (``Authorization: Bearer <token>``, or HTTP Basic
with an API token as the password — what Loki and Elasticsearch clients
send; the ``ingest`` permission), choose the dataset (``?dataset=``, else
``X-Helios-Dataset``, else the protocol's default), read the bounded body,
decode and map it in a worker thread (``helios.ingest.<protocol>``), then
``engine.ingest`` per dataset, which returns after the WAL commit. Errors
answer in the protocol's own shape (``google.rpc.Status``, Loki's plain
text, Elasticsearch's ``{"error": {...}, "status"}``) and store nothing of
the request; they are counted in ``/metrics`` as
``helios_compat_dropped_total{reason="rejected"}``.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Awaitable, Callable, Protocol

import orjson
from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from helios import names, timeutil
from helios.control.auth import TOKEN_PREFIX, Auth
from helios.errors import HeliosError, InvalidInput, Unauthorized
from helios.ingest import elastic, loki, otlp, shipper

__all__ = ["CompatNode", "MediaTypeNotAcceptable", "UnsupportedMediaType", "bearer_header", "blueprint"]

ELASTIC_HEADERS = {"X-Elastic-Product": "Elasticsearch"}


class CompatNode(Protocol):
    """What these routes use of ``helios.node.Node``."""

    node_id: str
    auth: Auth
    engine: Any
    config: Any
    control: Any
    counters: Any
    ingest_reader: Any  # helios.ingest.request.BodyReader: the limits and budget of every ingest path


def bearer_header(header: str | None) -> str | None:
    """HTTP Basic whose password is an API token → ``Bearer <token>``; anything else unchanged."""
    if not header or header[:6].lower() != "basic ":
        return header
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed HTTP Basic credentials") from None
    _, _, password = decoded.partition(":")
    if not password.startswith(TOKEN_PREFIX):
        raise Unauthorized(f"HTTP Basic: the password must be an API token ({TOKEN_PREFIX}…)")
    return f"Bearer {password}"


class UnsupportedMediaType(InvalidInput):
    """A Content-Type the protocol does not define (OTLP and Loki answer 415)."""

    status = 415


class MediaTypeNotAcceptable(InvalidInput):
    """Elasticsearch answers a Content-Type it does not take with 406."""

    status = 406


Render = Callable[[int, str], Response]


def blueprint(node: CompatNode) -> Blueprint:
    """The routes for one node; registered by ``helios.api.app.create_app``."""
    bp = Blueprint("compat", __name__)

    def authorise() -> None:
        node.auth.authenticate(bearer_header(request.headers.get("Authorization"))).require("ingest")

    def dataset(default: str | None) -> str | None:
        name = request.args.get("dataset") or request.headers.get("X-Helios-Dataset") or default
        if name is not None and not names.DATASET.ok(name):
            raise InvalidInput(f"invalid dataset name {name!r}: use 1-64 of a-z 0-9 _ -, "
                               "starting with a letter or digit")
        return name

    async def body() -> bytes:
        return await request.get_data(cache=False)

    async def store(protocol: str, tables: dict[str, Any]) -> int:
        total = 0
        for name, table in tables.items():
            total += await node.engine.ingest(name, table)
        shipper.count_rows(node.counters, protocol, total)
        return total

    async def guarded(protocol: str, render: Render, handler: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await handler()
        except HeliosError as exc:
            if exc.status < 500:
                shipper.count_drop(node.counters, protocol, "rejected")
            return render(exc.status, str(exc))
        except HTTPException as exc:
            shipper.count_drop(node.counters, protocol, "rejected")
            message = (f"the request body is larger than {node.config.max_body_bytes} bytes"
                       if exc.code == 413 else exc.description or exc.name)
            return render(exc.code or 400, message)

    # -- OTLP/HTTP ------------------------------------------------------------

    @bp.post("/v1/logs")
    async def otlp_logs() -> Response:
        as_json = (request.mimetype or "").lower() == "application/json"

        def render(status: int, message: str) -> Response:
            return Response(otlp.status(message, as_json), status=status,
                            content_type="application/json" if as_json else "application/x-protobuf")

        async def handle() -> Response:
            authorise()
            kind = (request.mimetype or "").lower()
            if kind not in ("application/x-protobuf", "application/json"):
                raise UnsupportedMediaType(f"unsupported Content-Type {kind or 'none'!r}: "
                                           "send application/x-protobuf or application/json")
            name = dataset("otel")
            raw = await body()
            parser = otlp.parse_json if as_json else otlp.parse_protobuf
            # The body guard only keeps parsers safe: the resourceLogs[].scopeLogs[].logRecords[] envelope
            # plus three JSON levels per AnyValue level, twice over. A record nested past the record
            # limit is then rejected alone, in partial_success, as OTLP expects.
            otlp_depth = 8 + 6 * node.config.max_nesting_depth
            now = timeutil.now_ns()

            def work(data: bytes) -> tuple[otlp.Export, Any]:
                export = parser(data)
                return export, shipper.to_table(export.rows, now)

            async with node.ingest_reader.read_with(raw, request.headers.get("Content-Encoding"), work,
                                                    json_depth=otlp_depth if as_json else None,
                                                    size=lambda r: r[1].nbytes) as result:
                export, table = result
                await store("otlp", {name: table})
            if export.rejected:
                shipper.count_drop(node.counters, "otlp", "rejected_records", export.rejected)
            return Response(otlp.response(export, as_json), status=200,
                            content_type="application/json" if as_json else "application/x-protobuf")

        return await guarded("otlp", render, handle)

    # -- Loki -----------------------------------------------------------------

    @bp.post("/loki/api/v1/push")
    async def loki_push() -> Response:
        def render(status: int, message: str) -> Response:
            return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")

        async def handle() -> Response:
            authorise()
            kind = (request.mimetype or "").lower()
            if kind not in ("application/x-protobuf", "application/json", ""):
                raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send application/x-protobuf "
                                           "(snappy) or application/json")
            name = dataset("loki")
            raw = await body()
            limit = node.config.max_decoded_bytes
            now = timeutil.now_ns()
            as_json = kind == "application/json"

            def work(data: bytes) -> Any:
                rows = loki.parse_json(data) if as_json else loki.parse_protobuf(loki.unsnappy(data, limit))
                return shipper.to_table(rows, now)

            async with node.ingest_reader.read_with(raw, request.headers.get("Content-Encoding"), work,
                                                    json_depth=8 if as_json else None,
                                                    size=lambda t: t.nbytes) as table:
                await store("loki", {name: table})
            return Response(b"", status=204)

        return await guarded("loki", render, handle)

    # -- Elasticsearch --------------------------------------------------------

    def es_json(doc: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(doc), status=status, content_type="application/json",
                        headers=ELASTIC_HEADERS)

    def es_render(status: int, message: str) -> Response:
        kind = {401: "security_exception", 403: "security_exception", 406: "media_type_header_exception",
                413: "content_too_long_exception", 404: "index_not_found_exception"}.get(
            status, "illegal_argument_exception" if status < 500 else "unavailable_exception")
        response = es_json(elastic.error_body(kind, message, status), status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="helioslogs", charset="UTF-8"'
        return response

    @bp.route("/es", methods=["GET"])
    @bp.route("/es/", methods=["GET"])
    async def es_info() -> Response:
        async def handle() -> Response:
            authorise()
            return es_json(elastic.info(node.node_id, node.control.cluster or node.node_id))

        return await guarded("elastic", es_render, handle)

    @bp.get("/es/_cluster/health")
    async def es_health() -> Response:
        async def handle() -> Response:
            authorise()
            return es_json({"cluster_name": "helioslogs", "status": "green", "timed_out": False,
                            "number_of_nodes": 1, "number_of_data_nodes": 1})

        return await guarded("elastic", es_render, handle)

    @bp.route("/es/_bulk", methods=["POST", "PUT"])
    @bp.route("/es/<index>/_bulk", methods=["POST", "PUT"])
    async def es_bulk(index: str | None = None) -> Response:
        async def handle() -> Response:
            started = time.monotonic()
            authorise()
            kind = (request.mimetype or "").lower()
            if kind not in elastic.BULK_MEDIA_TYPES:
                raise MediaTypeNotAcceptable(f"Content-Type header [{request.content_type or ''}] is not supported")
            override = request.args.get("dataset") or request.headers.get("X-Helios-Dataset")
            if override is not None:
                dataset(None)  # validates it
            raw = await body()
            now = timeutil.now_ns()

            def work(data: bytes) -> tuple[elastic.BulkPlan, dict[str, Any]]:
                plan = elastic.parse_bulk(data, index, override)
                return plan, plan.tables(now)

            async with node.ingest_reader.read_with(
                    raw, request.headers.get("Content-Encoding"), work, json_depth=node.config.max_nesting_depth,
                    size=lambda r: sum(t.nbytes for t in r[1].values())) as result:
                plan, tables = result
                await store("elastic", tables)
            failed = sum(1 for item in plan.items if next(iter(item.values()))["status"] >= 300)
            if failed:
                shipper.count_drop(node.counters, "elastic", "rejected_items", failed)
            took_ms = int((time.monotonic() - started) * 1000)
            return es_json({"took": took_ms, "errors": plan.errors, "items": plan.items})

        return await guarded("elastic", es_render, handle)

    @bp.route("/es/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
    async def es_other(rest: str) -> Response:
        async def handle() -> Response:
            authorise()
            return es_render(404, f"HeliosLogs answers GET /es/ and the _bulk API only, not /{rest}")

        return await guarded("elastic", es_render, handle)

    return bp

"""``POST /api/v1/ingest``: decode, parse and store one request's records (all or nothing)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, request

from helios import timeutil
from helios.api.common import answer, node, principal, validate_dataset
from helios.ingest.decode import decode_body
from helios.ingest.records import parse_ndjson, parse_text

__all__ = ["bp"]

bp = Blueprint("ingest", __name__)


@bp.post("/api/v1/ingest")
async def ingest() -> Response:
    await principal("ingest")
    helios = node()
    dataset = validate_dataset(request.args.get("dataset", "default"))
    # text/plain is one message a line; any other type is read as NDJSON (as
    # VictoriaLogs does), so `curl --data-binary @file` works unchanged.
    kind = (request.mimetype or "").lower()
    body = await request.get_data(cache=False)  # whole within HELIOS_BODY_TIMEOUT_SECS, else 408
    limit = helios.config.max_decoded_bytes
    encoding = request.headers.get("Content-Encoding")
    parser = parse_text if kind == "text/plain" else parse_ndjson
    now = timeutil.now_ns()

    def decode_and_parse() -> Any:
        return parser(decode_body(body, encoding, limit), now)

    table = await trio.to_thread.run_sync(decode_and_parse)
    count = await helios.engine.ingest(dataset, table)
    helios.counters["ingested_rows"] += count
    helios.counters["ingest_requests"] += 1
    return answer({"ingested": count})

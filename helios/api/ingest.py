"""``POST /api/v1/ingest``: decode, parse and store one request's records (all or nothing).

Most requests are answered by ``IngestLane`` (``helios.api.ingest_lane``) without Quart; both
store through ``store_body``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from quart import Blueprint, Response, request

from helios import timeutil
from helios.api.common import answer, node, principal, validate_dataset

__all__ = ["bp", "store_body"]

bp = Blueprint("ingest", __name__)


@bp.post("/api/v1/ingest")
async def ingest() -> Response:
    await principal("ingest")
    helios = node()
    dataset = validate_dataset(request.args.get("dataset", "default"))
    body = await request.get_data(cache=False)  # whole within HELIOS_BODY_TIMEOUT_SECS, else 408
    count = await store_body(helios, dataset, body, request.headers.get("Content-Encoding"),
                             text=(request.mimetype or "").lower() == "text/plain")
    return answer({"ingested": count})


async def store_body(helios: Any, dataset: str, body: bytes | bytearray, encoding: str | None, *,
                     text: bool) -> int:
    """Store one ingest body (its rows durable and visible when this returns); its row count.

    text/plain is one message a line; any other type is read as NDJSON (as VictoriaLogs does), so
    `curl --data-binary @file` works unchanged. Limits, the node's ingest memory budget, decoding
    and parsing: one reader for every ingest path; the WAL frame and memtable slices are made in
    the same worker thread (Engine.prepare)."""
    async with helios.ingest_reader.read(body, encoding, text=text, now_ns=timeutil.now_ns(),
                                         prepare=partial(helios.engine.prepare, dataset)) as batch:
        count = await helios.engine.commit(batch)
    helios.counters["ingested_rows"] += count
    helios.counters["ingest_requests"] += 1
    return count

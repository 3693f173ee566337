"""``GET|POST /api/v1/query``: parse, run in the query pool, stream ``{"rows": [...], "stats": {...}}``.

The query runs in ``helios.query.runner.QueryPool`` (bounded concurrency, a
deadline, stopped when its client leaves or the node shuts down). In the same
worker slot its result is encoded to JSON a chunk of rows at a time straight
from Arrow, so no answer ever exists as one list of Python dicts; the chunks
are then streamed.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson
from quart import Blueprint, Response, request

from helios import timeutil
from helios.api.common import json_body, node, principal, queries, validate_dataset, whole_number
from helios.errors import InvalidInput, Unavailable
from helios.query import ast
from helios.query.cancel import CancelToken
from helios.query.executor import encode_rows, execute
from helios.query.filters import may_match
from helios.query.parser import parse
from helios.storage.blocks import CorruptBlock
from helios.storage.cache import BlockCache
from helios.storage.engine import Source
from helios.storage.fetch import Fetch, query_blocks

__all__ = ["DEFAULT_LIMIT", "bp"]

bp = Blueprint("query", __name__)
DEFAULT_LIMIT = 1000


@bp.route("/api/v1/query", methods=["GET", "POST"])
async def query() -> Response:
    await principal("query")
    helios = node()
    doc = await _request_doc()
    text = doc.get("q")
    if not isinstance(text, str):
        raise InvalidInput("'q' (the query text) is required and must be a string")
    parsed = parse(text)
    datasets = _datasets_of(doc.get("dataset"))
    start = timeutil.parse_instant(doc.get("from"), "from")
    end = timeutil.parse_instant(doc.get("to"), "to")
    if start is not None and end is not None and start >= end:
        raise InvalidInput("'from' must be before 'to'")
    limit = whole_number(doc.get("limit"), "limit", 0, helios.config.max_query_rows, default=DEFAULT_LIMIT)
    sources, cache = helios.engine.sources(datasets, start, end), helios.engine.cache

    def may_need(source: Source) -> bool:  # fetch ahead only blocks the known index cannot rule out
        assert source.block is not None
        return may_match(parsed.filter, cache.known_index(source.block.id), source.dataset)

    # The blocks are held (garbage collection and eviction keep them) and fetched as needed.
    try:
        async with query_blocks(helios.engine.blocks, sources, start_ns=start, end_ns=end, wanted=may_need,
                                deadline_s=helios.config.fetch_deadline_secs) as blocks:
            fetch = blocks.open if helios.engine.blocks.store is not None else None
            chunks, stats = await queries().run(
                lambda token: _run(token, parsed, sources, cache, start, end, limit, fetch))
    except CorruptBlock as exc:  # a local disk fault: reported like every other one, answered 503
        helios.health.fail("query", str(exc.path or ""), exc, quarantined=True)
        raise Unavailable(f"a block this query needs is damaged on this node's disk ({exc}); "
                          "it is reported in /api/v1/cluster") from None
    helios.counters["queries"] += 1
    return Response(_stream(chunks, stats), mimetype="application/json")


async def _request_doc() -> dict[str, Any]:
    if request.method == "POST":
        return await json_body()
    doc: dict[str, Any] = dict(request.args)
    if "," in doc.get("dataset", ""):
        doc["dataset"] = doc["dataset"].split(",")
    return doc


def _run(token: CancelToken, parsed: ast.Query, sources: list[Source], cache: BlockCache, start: int | None,
         end: int | None, limit: int, fetch: Fetch | None) -> tuple[list[bytes], dict[str, Any]]:
    """In a query worker thread: execute (``fetch``: blocks not local), then encode the rows chunk by chunk."""
    result = execute(parsed, sources, cache, start_ns=start, end_ns=end, limit=limit, check=token.check,
                     fetch=fetch)
    return list(encode_rows(result, token.check)), result.stats


def _datasets_of(value: object) -> set[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return {validate_dataset(value)}
    if isinstance(value, list) and value:
        return {validate_dataset(v) for v in value}
    raise InvalidInput("'dataset' is a name or a non-empty list of names")


async def _stream(chunks: list[bytes], stats: dict[str, Any]) -> AsyncIterator[bytes]:
    yield b'{"rows":['
    for i, chunk in enumerate(chunks):
        yield (b"," if i else b"") + chunk
    yield b'],"stats":' + orjson.dumps(stats) + b"}"

"""``GET /api/v1/tail?q=…&dataset=…&backfill=N``: live tail as server-sent events (``helios.tail``).

The answer is ``text/event-stream``::

    : helios live tail                     a comment: the stream is open
    data: {"_time": …, "_msg": …, "dataset": …, …}     one event per row, the shape of query rows
    event: dropped
    data: {"dropped": 1234}                rows this slow reader missed, where it missed them
    : keep-alive                           every 15 s without rows

``q`` takes filters and ``fields`` only (anything else: 400); ``dataset`` a
name or a comma-separated list (default: all); ``backfill`` (0 to
``MAX_BACKFILL``) first sends the newest N matching rows, oldest first. The
``query`` permission: ``viewer`` may tail, ``ingest`` may not. Too many open
tails on the node: 503.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from quart import Response, request
from quart_trio import QuartTrio

from helios.control.auth import Principal
from helios.errors import InvalidInput
from helios.query import ast
from helios.query.executor import execute, to_rows
from helios.query.cancel import CancelToken
from helios.query.parser import parse_async
from helios.query.runner import QueryPool
from helios.storage.fetch import query_blocks
from helios.tail import StreamBody

__all__ = ["MAX_BACKFILL", "register"]

MAX_BACKFILL = 10_000


def _backfill_of(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or int(raw) > MAX_BACKFILL:
        raise InvalidInput(f"'backfill' is a whole number from 0 to {MAX_BACKFILL}")
    return int(raw)


def register(app: QuartTrio, node: Any, principal: Callable[[str], Awaitable[Principal]],
             validate_dataset: Callable[[object], str], pool: QueryPool) -> None:
    """Add the route to ``app`` for ``node`` (``helios.node.Node``: ``engine``, ``tail``)."""

    @app.get("/api/v1/tail")
    async def tail() -> Response:
        await principal("query")
        text = request.args.get("q")
        if not text:
            raise InvalidInput("'q' (the query to follow) is required; '*' follows every row")
        query = await parse_async(text)
        if any(not isinstance(pipe, ast.Fields) for pipe in query.pipes):
            raise InvalidInput("a live tail takes filters and '| fields …' only (no stats, sort, limit, …)")
        raw_datasets = request.args.get("dataset") or ""
        datasets = {validate_dataset(d) for d in raw_datasets.split(",")} if raw_datasets else None
        count = _backfill_of(request.args.get("backfill"))
        engine = node.engine
        # One synchronous step: rows acknowledged before it are in the snapshot, rows after it in the stream.
        stream = node.tail.open(query, datasets)
        sources = engine.sources(datasets, None, None) if count else []
        backfill: list[bytes] = []
        try:
            if count:
                async with query_blocks(engine.blocks, sources) as blocks:  # fetches blocks not cached
                    fetch = blocks.open if engine.blocks.store is not None else None

                    def run(token: CancelToken) -> list[bytes]:
                        rows = to_rows(execute(query, sources, engine.cache, start_ns=None, end_ns=None,
                                               limit=count, fetch=fetch, check=token.check))
                        return [b"data: " + orjson.dumps(row) + b"\n\n" for row in reversed(rows)]

                    # As a query: a slot of the pool, its deadline, stopped if the client leaves.
                    backfill = await pool.run(run)
        except BaseException:
            node.tail.close(stream)
            raise
        response = Response(StreamBody(node.tail, stream, backfill), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.timeout = None  # a tail lasts as long as its reader
        return response

"""``GET|POST /api/v1/query``: parse, run in the query pool, stream ``{"rows": [...], "stats": {...}}``.

The query runs in ``helios.query.runner.QueryPool`` (bounded concurrency, a
deadline, stopped when its client leaves or the node shuts down). In the same
worker slot its result is encoded to JSON a chunk of rows at a time straight
from Arrow, so no answer ever exists as one list of Python dicts: up to
``ENCODE_AHEAD_BYTES`` there, the rest chunk by chunk as the client reads it,
so a large answer is held as its Arrow table and one chunk of JSON, not as
all of its JSON.

Before it runs, its blocks that are not in the data dir are fetched as
``fetch_plan`` says: index sections first (small, ranged reads) where the index
may rule a block out or answer without rows, then only the blocks whose rows
the query reads (``helios.storage.fetch``).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterator

import orjson
import trio
from quart import Blueprint, Response, request

from helios import timeutil
from helios.api.common import (NodeApi, json_body, node, principal, queries, validate_dataset,
                               whole_number)
from helios.errors import InvalidInput, Unavailable
from helios.query import ast
from helios.query.cancel import CancelToken
from helios.query.counts import countable
from helios.query.executor import encode_rows, execute, needed_columns
from helios.query.filters import may_match
from helios.query.lookup import hits
from helios.query.parser import parse_async
from helios.query.runner import QueryPool
from helios.storage.blocks import CorruptBlock
from helios.storage.cache import BlockCache
from helios.storage.engine import Source
from helios.storage.fetch import Fetch, query_blocks

__all__ = ["DEFAULT_LIMIT", "answer_query", "bp", "fetch_plan", "head", "stream", "tail"]

bp = Blueprint("query", __name__)
DEFAULT_LIMIT = 1000
ENCODE_AHEAD_BYTES = 8 << 20  # of an answer's JSON encoded in its query slot; the rest as the client reads


@bp.route("/api/v1/query", methods=["GET", "POST"])
async def query() -> Response:
    await principal("query")
    pool = queries()
    chunks, rest, stats = await answer_query(node(), pool, await _request_doc())
    if rest is None:  # all of it encoded: one body, sent at once with its length (1 ms less)
        return Response(head(chunks) + tail(stats), mimetype="application/json")
    return Response(stream(chunks, rest, stats, pool), mimetype="application/json")


Answer = tuple[list[bytes], Iterator[bytes] | None, dict[str, Any]]


async def answer_query(helios: NodeApi, pool: QueryPool, doc: dict[str, Any]) -> Answer:
    """The answer to the query ``doc`` asks (the caller is authenticated): (its chunks encoded in
    the query's slot, the rest of its chunks or None, its stats); ``head``, ``tail`` and ``stream``
    make the body. Shared by the Quart route and the query lane (``helios.api.lane``)."""
    text = doc.get("q")
    if not isinstance(text, str):
        raise InvalidInput("'q' (the query text) is required and must be a string")
    parsed = await parse_async(text)
    datasets = _datasets_of(doc.get("dataset"))
    start = timeutil.parse_instant(doc.get("from"), "from")
    end = timeutil.parse_instant(doc.get("to"), "to")
    if start is not None and end is not None and start >= end:
        raise InvalidInput("'from' must be before 'to'")
    limit = whole_number(doc.get("limit"), "limit", 0, helios.config.max_query_rows, default=DEFAULT_LIMIT)
    sources, cache = helios.engine.sources(datasets, start, end), helios.engine.cache
    needs_rows, needs_index = fetch_plan(parsed, cache, start, end)
    # The blocks are held (garbage collection and eviction keep them) and fetched as needed.
    try:
        async with query_blocks(helios.engine.blocks, sources, start_ns=start, end_ns=end, wanted=needs_rows,
                                index_wanted=needs_index, deadline_s=helios.config.fetch_deadline_secs) as blocks:
            fetch = blocks.open if helios.engine.blocks.store is not None else None
            chunks, rest, stats = await pool.run(
                lambda token: _run(token, parsed, sources, cache, start, end, limit, fetch))
    except CorruptBlock as exc:  # a local disk fault: reported like every other one, answered 503
        helios.health.fail("query", str(exc.path or ""), exc, quarantined=True)
        raise Unavailable(f"a block this query needs is damaged on this node's disk ({exc}); "
                          "it is reported in /api/v1/cluster") from None
    helios.counters["queries"] += 1
    return chunks, rest, stats


def fetch_plan(parsed: ast.Query, cache: BlockCache, start: int | None, end: int | None
               ) -> tuple[Callable[[Source], bool], Callable[[Source], bool]]:
    """What the query needs of a block that is not in the data dir: ``(needs_rows, needs_index)``.

    ``needs_index(source)``: fetch its index section first (when memory lacks it). Yes for every block
    of a query with a filter that is not a plain search — its index may rule the block out or answer
    without rows — and for ``* | stats count() by (f)`` over a block inside the range (value counts);
    no where the manifest alone answers (``* | stats count()``) or the rows are read anyway (a plain
    search, ``timechart``, a count over a block the range cuts, pipes after ``*``).

    ``needs_rows(source)``: fetch the block; asked once its index is known. No when the index rules it
    out, or answers without rows: an exact hit on a block wholly inside the range, with no non-ASCII
    message to check and no column for the pipes to read (``error | stats count()``,
    ``service:api | stats count()``), or value counts (``* | stats count() by (level)``). It mirrors
    what ``executor.execute`` reads (``blockscan._scan``, ``counts.count_by``); a block it leaves out
    that the executor asks for anyway is fetched then, so a mismatch costs time, never rows.
    """
    low = -(1 << 63) if start is None else start
    high = (1 << 63) - 1 if end is None else end
    plain = all(isinstance(p, (ast.Fields, ast.Limit)) for p in parsed.pipes)
    counting = countable(parsed)
    first = parsed.pipes[0] if parsed.pipes else None
    by = first.by[0] if counting and isinstance(first, ast.Stats) and first.by else None
    needed = needed_columns(parsed)

    def inside(source: Source) -> bool:
        return source.min_time >= low and source.max_time < high

    def needs_index(source: Source) -> bool:
        if counting:
            return isinstance(first, ast.Stats) and by is not None and inside(source)
        return not plain and not isinstance(parsed.filter, ast.All)

    def needs_rows(source: Source) -> bool:
        assert source.block is not None
        index = cache.known_index(source.block.id)
        if counting:
            if isinstance(first, ast.Timechart) or not inside(source):
                return True
            if by is None:
                return False  # its manifest entry counts its rows
            return index is None or index.tokens is None or not (by in index.tokens.fields or by not in index.columns)
        if index is None:
            return True
        if not may_match(parsed.filter, index, source.dataset):
            return False
        if plain or index.tokens is None or not inside(source) or needed is None or set(needed) & index.columns:
            return True
        found = hits(parsed.filter, index.tokens, source.dataset)
        return found is None or not found.exact or len(index.tokens.unsure) > 0

    return needs_rows, needs_index


async def _request_doc() -> dict[str, Any]:
    if request.method == "POST":
        return await json_body()
    doc: dict[str, Any] = dict(request.args)
    if "," in doc.get("dataset", ""):
        doc["dataset"] = doc["dataset"].split(",")
    return doc


def _run(token: CancelToken, parsed: ast.Query, sources: list[Source], cache: BlockCache, start: int | None,
         end: int | None, limit: int, fetch: Fetch | None
         ) -> tuple[list[bytes], Iterator[bytes] | None, dict[str, Any]]:
    """In a query worker thread: execute (``fetch``: blocks not local), then encode the rows chunk by
    chunk, up to ``ENCODE_AHEAD_BYTES``: (those chunks, the rest of the answer's chunks or None, stats).

    The rest is encoded as the client reads it, after the query's slot is released: only the slot's
    part runs under the deadline (an answer being sent is not stopped by it)."""
    result = execute(parsed, sources, cache, start_ns=start, end_ns=end, limit=limit, check=token.check,
                     fetch=fetch)
    in_slot = True

    def check() -> None:
        if in_slot:
            token.check()

    rows = encode_rows(result, check)
    chunks, size = [], 0
    for chunk in rows:
        chunks.append(chunk)
        size += len(chunk)
        if size >= ENCODE_AHEAD_BYTES:
            in_slot = False
            return chunks, rows, result.stats
    return chunks, None, result.stats


def _datasets_of(value: object) -> set[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return {validate_dataset(value)}
    if isinstance(value, list) and value:
        return {validate_dataset(v) for v in value}
    raise InvalidInput("'dataset' is a name or a non-empty list of names")


def head(chunks: list[bytes]) -> bytes:
    """The answer's start with the chunks encoded in the query's slot, as one piece (one write)."""
    return b'{"rows":[' + b",".join(chunks)


def tail(stats: dict[str, Any]) -> bytes:
    return b'],"stats":' + orjson.dumps(stats) + b"}"


async def stream(chunks: list[bytes], rest: Iterator[bytes], stats: dict[str, Any],
                  pool: QueryPool) -> AsyncIterator[bytes]:
    """A larger answer: the chunks encoded in the query's slot, then the rest, each chunk encoded in a
    worker thread once the client has taken the one before (a client that leaves stops the encoding).
    Counted in ``pool.counters["streaming"]`` while it is sent."""
    pool.counters["streaming"] += 1
    try:
        yield head(chunks)  # at least ENCODE_AHEAD_BYTES of rows: every later chunk follows a comma
        while (chunk := await trio.to_thread.run_sync(next, rest, None, limiter=pool.encoders)) is not None:
            yield b"," + chunk
        yield tail(stats)
    finally:
        pool.counters["streaming"] -= 1

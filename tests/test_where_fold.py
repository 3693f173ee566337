"""A ``where`` right after the filter is folded into it (``parser._fold_where``): the same rows.

``F | where G | …`` runs as ``F and G | …`` so the index and the pruning see ``G``; these checks
run both through ``execute`` over memtable sources of two datasets and compare with the pipe
applied to the gathered rows, as the executor did before the fold.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from helios import timeutil
from helios.query import ast
from helios.query.executor import _newest, execute
from helios.query.filters import mask
from helios.query.parser import parse
from helios.query.pipes import apply
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

BASE_NS = 1_700_000_000_000_000_000
ROWS = 200


def _table(shift: int) -> pa.Table:
    words = ["error disk full", "warning slow", "error timeout", "ok", "Failed password for root"]
    return pa.table({
        "_time": pa.array([BASE_NS + (i * 7 + shift) % ROWS * 1000 for i in range(ROWS)],
                          timeutil.TIME_TYPE),
        "_msg": [words[(i + shift) % len(words)] for i in range(ROWS)],
        "latency": [None if i % 13 == 0 else str((i * 37 + shift) % 250) for i in range(ROWS)],
        "host": [f"h{(i + shift) % 4}" for i in range(ROWS)],
    })


@pytest.mark.parametrize("text", [
    "* | where latency:>100 | stats count() as n",
    "error | where host:h1 | stats count() as n by (dataset)",
    "* | where latency:<50 | where -error | sort by (latency desc) | limit 7",
    "* | where dataset:d1 | stats count() as n by (host)",
    '* | where "failed password" OR timeout | limit 20',
    "* | where latency:>100 | top 2 host",
    "host:h2 | where latency:>=10 | fields latency, host",
])
def test_a_leading_where_answers_as_the_pipe_did(text: str) -> None:
    query = parse(text)
    assert not query.pipes or not isinstance(query.pipes[0], ast.Where)  # folded into the filter
    tables = [_table(s) for s in range(4)]
    sources = [Source(dataset=f"d{i % 2}", day=0, min_time=BASE_NS, max_time=BASE_NS + ROWS * 1000,
                      rows=t.num_rows, table=t) for i, t in enumerate(tables)]
    got = execute(query, sources, BlockCache(1 << 20), start_ns=None, end_ns=None, limit=1000)
    # Before the fold: the filter's rows gathered, newest first, then every pipe, wheres included.
    written = text.split(" | ")
    first = parse(written[0])
    whole = pa.concat_tables([t.filter(mask(first.filter, t, s.dataset)).append_column(
        "dataset", pa.repeat(s.dataset, t.filter(mask(first.filter, t, s.dataset)).num_rows))
        for t, s in zip(tables, sources)])
    expected = _newest(whole, whole.num_rows)
    for piece in written[1:]:
        pipe = ast.Where(parse(piece[len("where "):]).filter) if piece.startswith("where ") else \
            parse(f"* | {piece}").pipes[0]
        expected = apply(pipe, expected)
    got_rows = [{k: v for k, v in row.items() if v is not None} for row in got.table.to_pylist()]
    want_rows = [{k: v for k, v in row.items() if v is not None}
                 for row in expected.slice(0, 1000).to_pylist()]
    assert got_rows == want_rows, text
    assert got_rows, text  # each query has an answer to compare


def _depth(condition: ast.Filter) -> int:
    deepest, stack = 0, [(condition, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        children = node.children if isinstance(node, (ast.And, ast.Or)) else (
            (node.child,) if isinstance(node, ast.Not) else ())
        stack.extend((child, level + 1) for child in children)
    return deepest


def test_any_number_of_leading_wheres_join_one_and() -> None:
    """Each ``where`` used to wrap the filter in one more ``and``: 1,000 of them (16 KiB of text)
    overflowed the stack of every recursive walk of the filter (a 500, and a node ended by a
    monitor or a live tail holding such a query). Now the filter is as deep as its deepest part."""
    words = [a + b + c for a in "abcdefghij" for b in "abcdefghij" for c in "abcdefghijkl"]
    many = parse("*" + "".join(f"|where -{word}" for word in words) + " | stats count() as n")
    assert len(words) == 1_200 and _depth(many.filter) == 3
    assert len(many.filter.children) == 1_200  # type: ignore[attr-defined]
    assert parse("*" + " | where error" * 1_000).filter == ast.Word("error", False)  # once
    nested = parse("a | where (b OR (c AND -d)) | where e f | where * | where g")
    assert nested.filter == parse("a (b OR (c AND -d)) e f g").filter
    assert parse("* | where * | where *").filter == ast.All()
    tables = [_table(s) for s in range(2)]
    sources = [Source(dataset="d", day=0, min_time=BASE_NS, max_time=BASE_NS + ROWS * 1000,
                      rows=t.num_rows, table=t) for t in tables]
    for text in ("*" + " | where error" * 1_150,
                 "*" + " | where -ok" * 400 + " | stats count() as n"):
        got = execute(parse(text), sources, BlockCache(1 << 20), start_ns=None, end_ns=None,
                      limit=1000)
        once = text.split(" | ")[1][len("where "):] + "".join(
            f" | {pipe}" for pipe in text.split(" | ")[1:] if not pipe.startswith("where "))
        want = execute(parse(once), sources, BlockCache(1 << 20), start_ns=None, end_ns=None,
                       limit=1000)
        assert got.table.to_pylist() == want.table.to_pylist() and got.table.num_rows, text[:40]


def test_index_lookups_are_made_once_each_and_stop_at_the_deadline(tmp_path: Any) -> None:
    """``a* a* …`` (a filter may repeat a term; the parser drops repeats, a lookup must not count
    on it) looks ``a*`` up once, a phrase's repeated token once, and ``check`` runs before each
    lookup: a query of many distinct prefixes (16 KiB allows 5,000) stops at its deadline."""
    from helios.query.cancel import QueryCancelled
    from helios.query.lookup import hits
    from helios.storage import tokens as token_module
    from helios.storage.blocks import build_block

    table = _table(0)
    entry = build_block(tmp_path, "b0", [table], dataset="d", day=0, node="n", created_ns=0,
                        index="tokens")
    index = token_module.TokenIndex((tmp_path / entry.filename).read_bytes()[entry.parquet_bytes:])
    looked: list[str] = []
    prefix, term = index.prefix, index.term
    index.prefix = lambda t: looked.append(t + "*") or prefix(t)  # type: ignore[method-assign]
    index.term = lambda t: looked.append(t) or term(t)  # type: ignore[method-assign]
    many = ast.And((ast.Word("e", True),) * 50 + (ast.Phrase("error error error"),) * 3)
    found = hits(many, index, "d")
    assert found is not None and looked == ["e*", "error", "error*"]  # a phrase's last: open
    holding = sum("error" in msg.split() for msg in table.column("_msg").to_pylist())
    assert 0 < len(found.rows) == holding  # type: ignore[arg-type]
    calls = [0]

    def deadline() -> None:
        calls[0] += 1
        if calls[0] > 3:
            raise QueryCancelled("deadline")

    distinct = ast.And(tuple(ast.Word(f"w{i}", True) for i in range(1_000)))
    with pytest.raises(QueryCancelled):
        hits(distinct, index, "d", deadline)
    assert calls[0] == 4

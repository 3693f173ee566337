"""A leading ``sort`` kept by parts (``topn.TopRows``) gives the rows sorting everything gives.

The executor gathers the rows of ``* | sort by (...) | limit n`` in parts and keeps only those that
may come first. These checks pin that to the whole: every gathered row newest first, then the sort
(both stable), then the limit, row for row, over random parts whose sort fields are numbers in some
parts and text in others, whole in some and fractions in others, whole numbers past 2^53, nulls, a
field some parts lack, many equal values and equal times (so ties must fall as the whole's do).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from helios import timeutil
from helios.query import ast, executor
from helios.query.executor import QueryResult, _newest, execute, to_rows
from helios.query.filters import mask
from helios.query.parser import parse
from helios.query.pipes import apply
from helios.query.topn import TopRows, top_of
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

BASE_NS = 1_700_000_000_000_000_000


def _part(rng: random.Random, serial: list[int]) -> pa.Table:
    n = rng.choice([0, 1, 3, 12, 40, 150])
    style = rng.choice(["whole", "fraction", "text", "junk", "huge", "mixed"])

    def size() -> str | None:
        roll = rng.random()
        if roll < 0.1:
            return None
        if style == "whole" or (style == "mixed" and roll < 0.5):
            return str(rng.randint(0, 30))
        if style == "fraction":
            return f"{rng.randint(0, 30) / 4}"
        if style == "huge":  # float64 holds only some of these: int64 and float64 order them apart
            return str((1 << 53) + rng.randint(-3, 3))
        if style == "text":  # numbers but one in twenty: the whole sorts as text, "9" after "10"
            return "a" if roll < 0.15 else str(rng.randint(0, 30))
        return rng.choice(["a", "b", "10", "9", "", " 7"])

    columns = {
        "_time": pa.array([BASE_NS + rng.randint(0, 5) * 1_000_000 for _ in range(n)],
                          timeutil.TIME_TYPE),
        "name": pa.array([rng.choice(["x", "y", "z", None]) for _ in range(n)], pa.string()),
        "n": pa.array([str(serial[0] + i) for i in range(n)], pa.string()),  # tells rows apart
    }
    serial[0] += n
    if rng.random() < 0.85:  # some parts lack the field
        columns["size"] = pa.array([size() for _ in range(n)], pa.string())
    return pa.table(columns)


def _keys(rng: random.Random) -> str:
    fields = rng.sample(["size", "name", "_time", "absent", "n"], rng.randint(1, 3))
    return ", ".join(f"{name}{' desc' if rng.random() < 0.5 else ''}" for name in fields)


def _whole(tables: list[pa.Table], pipes: tuple[ast.Pipe, ...], limit: int) -> pa.Table:
    """What the executor did before: every row, newest first, each pipe, the limit."""
    table = pa.concat_tables(tables, promote_options="default")
    table = _newest(table, table.num_rows)
    for pipe in pipes:
        table = apply(pipe, table)
    return table.slice(0, limit)


@pytest.mark.parametrize("seed", range(300))
def test_first_rows_by_parts_equal_sorting_everything(seed: int) -> None:
    rng = random.Random(seed)
    serial = [0]
    tables = [_part(rng, serial) for _ in range(rng.randint(1, 7))]
    tables = [t for t in tables if t.num_rows] or [_part(random.Random(-1), serial)]
    limited = f" | limit {rng.randint(1, 25)}" if rng.random() < 0.7 else ""
    query = parse(f"* | sort by ({_keys(rng)}){limited}")
    limit = rng.randint(1, 30)
    count = top_of(query.pipes, limit)
    assert count is not None
    top = TopRows(query.pipes[0], count)  # type: ignore[arg-type]
    for table in tables:
        top.add(table)
    got = top.result()
    for pipe in query.pipes[1:]:
        got = apply(pipe, got)
    expected = _whole(tables, query.pipes, limit)
    assert got.slice(0, limit).to_pylist() == expected.to_pylist(), (seed, query)


def test_whole_numbers_float64_cannot_tell_apart_sort_as_the_whole_sorts_them() -> None:
    """2^53 and 2^53 + 1 are one float64: once another part holds a fraction (the whole field reads
    as float64), they tie, and the newer rows come first, not the larger whole numbers; and so
    even when the fraction itself is not kept."""
    big = [str((1 << 53) + i % 2) for i in range(50)]  # the odd ones, 2^53 + 1, are the older rows
    times = [BASE_NS + (50 - i) * 1000 - (i % 2) * 10 ** 9 for i in range(50)]
    part = pa.table({"_time": pa.array(times, timeutil.TIME_TYPE), "size": big})
    # a fraction, but not among this part's first rows: what is kept of it is whole numbers
    fraction = pa.table({"_time": pa.array([BASE_NS] * 20, timeutil.TIME_TYPE),
                         "size": ["0.5", *(str(i) for i in range(1, 20))]})
    query = parse("* | sort by (size desc) | limit 10")
    top = TopRows(query.pipes[0], 10)  # type: ignore[arg-type]
    for table in (part, fraction):
        top.add(table)
    got = top.result().slice(0, 10)
    assert got.to_pylist() == _whole([part, fraction], query.pipes, 10).to_pylist()
    assert set(got.column("size").to_pylist()) == {str(1 << 53)}


def test_only_a_leading_sort_with_fields_and_limits_after_it_is_kept_by_parts() -> None:
    assert top_of(parse("* | sort by (a) | limit 5 | fields a | limit 9").pipes, 1000) == 5
    assert top_of(parse("* | sort by (a)").pipes, 1000) == 1001  # one more: the answer is truncated
    for text in ("* | limit 3 | sort by (a)", "* | sort by (a) | stats count()",
                 "* | sort by (a) | where a:1", "* | fields a", "*"):
        assert top_of(parse(text).pipes, 1000) is None, text


@pytest.mark.parametrize("part_rows", [1, 37, 1 << 20],
                         ids=["each-source", "some-sources", "all-at-once"])
def test_the_executor_keeps_the_first_rows_by_parts(monkeypatch: pytest.MonkeyPatch,
                                                     part_rows: int) -> None:
    """Through ``execute``: memtable sources of two datasets, a filter, the answer's truncation."""
    monkeypatch.setattr(executor, "TOP_PART_ROWS", part_rows)
    rng = random.Random(3)
    serial = [0]
    made = [_part(rng, serial) for _ in range(12)]
    tables = [t.append_column("_msg", pa.array([f"m {i % 3}" for i in range(t.num_rows)]))
              for t in made if t.num_rows]
    sources = [Source(dataset=f"d{i % 2}", day=0, min_time=BASE_NS, max_time=BASE_NS + 10_000_000,
                      rows=t.num_rows, table=t) for i, t in enumerate(tables)]
    whole = [t.append_column("dataset", pa.repeat(s.dataset, t.num_rows))
             for t, s in zip(tables, sources)]
    for text, limit in (("* | sort by (size desc)", 10),
                        ("* | sort by (size, name desc) | limit 7", 1000),
                        ("1 | sort by (name, size desc) | fields n, size", 5),
                        ("zzz | sort by (size)", 10), ("* | sort by (dataset desc, _time)", 20),
                        # undecided keys (text or numbers): 2^32 orders, counted, never listed
                        ("* | sort by (size, " + ", ".join(f"nosuch{i}" for i in range(31)) + ")",
                         6)):
        query = parse(text)
        got = execute(query, sources, BlockCache(1 << 20), start_ns=None, end_ns=None, limit=limit)
        matching = [t.filter(mask(query.filter, t, None)) for t in whole]
        kept = [t for t in matching if t.num_rows] or [whole[0].slice(0, 0)]
        expected = _whole(kept, query.pipes, limit + 1)
        assert got.table.to_pylist() == expected.slice(0, limit).to_pylist(), text
        assert got.stats["truncated"] == (expected.num_rows > limit), text


@pytest.mark.parametrize("index", ["tokens", "later"])
def test_a_leading_sort_over_blocks_reads_the_other_columns_for_its_first_rows_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: str) -> None:
    """Blocks (with a token index and without) and a memtable: the keys are read to rank, every
    other column only for the rows that come first (``topn.whole_rows``), row for row the answer of
    sorting every gathered row; columns only some blocks have stay theirs."""
    from helios.storage.blocks import build_block

    from helios.storage import blocks

    monkeypatch.setattr(executor, "TOP_PART_ROWS", 64)
    monkeypatch.setattr(blocks, "ROW_GROUP_ROWS", 16)  # blocks of several row groups
    rng = random.Random(7)
    serial = [0]
    sources, whole = [], []
    for number in range(9):
        table = _part(rng, serial)
        if not table.num_rows:
            continue
        table = table.append_column("_msg", pa.array([f"m {i % 3}" for i in range(table.num_rows)]))
        if number % 3 == 0:  # a field only some sources have
            values = [f"v{i}" for i in range(table.num_rows)]
            table = table.append_column(f"only{number}", pa.array(values))
        dataset = f"d{number % 2}"
        times = table.column("_time").cast(pa.int64())
        low, high = pc.min(times).as_py(), pc.max(times).as_py()
        if number == 8:  # the newest rows: not in a block yet
            source = Source(dataset=dataset, day=0, min_time=low, max_time=high,
                            rows=table.num_rows, table=table)
        else:
            entry = build_block(tmp_path, f"b{number}", [table], dataset=dataset, day=0, node="n",
                                created_ns=0, index=index)
            source = Source(dataset=dataset, day=0, min_time=entry.min_time,
                            max_time=entry.max_time, rows=entry.rows, block=entry,
                            path=tmp_path / entry.filename)
            # as the block holds it
            table = table.take(pc.sort_indices(table, sort_keys=[("_time", "ascending")]))
        sources.append(source)
        whole.append(table.append_column("dataset", pa.repeat(dataset, table.num_rows)))
    # Gathered as the executor visits sources (newest first, a stable sort): ties fall alike.
    pairs = sorted(zip(sources, whole), key=lambda pair: pair[0].max_time, reverse=True)
    sources, whole = [s for s, _ in pairs], [t for _, t in pairs]
    read: list[tuple[str, tuple[str, ...]]] = []
    columns, rows_of = BlockCache.columns, BlockCache.rows

    def spy(self: BlockCache, where: Any, entry: Any, names: Any) -> pa.Table:
        read.append((entry.id, tuple(sorted(names)) if names is not None else ("*",)))
        return columns(self, where, entry, names)

    def spy_rows(self: BlockCache, where: Any, entry: Any, rows: Any) -> pa.Table:
        read.append((entry.id, ("rows",)))
        return rows_of(self, where, entry, rows)

    monkeypatch.setattr(BlockCache, "columns", spy)
    monkeypatch.setattr(BlockCache, "rows", spy_rows)
    for warm in (False, True):  # the other columns decoded from row groups, then found in memory
        cache = BlockCache(1 << 30)
        if warm:
            execute(parse("*"), sources, cache, start_ns=None, end_ns=None, limit=100_000)
        for text, limit in (("* | sort by (size desc) | limit 5", 1000),
                            ("m | sort by (name, size desc)", 12),
                            ("* | sort by (dataset desc, n) | fields n, dataset, only3", 9)):
            read.clear()
            query = parse(text)
            got = execute(query, sources, cache, start_ns=None, end_ns=None, limit=limit)
            matching = [t.filter(mask(query.filter, t, None)) for t in whole]
            expected = _whole([t for t in matching if t.num_rows], query.pipes, limit + 1)
            # As answered (a row's nulls are fields it lacks): the rows need not carry the columns
            # of blocks none of them came from.
            answer = to_rows(QueryResult(expected.slice(0, limit), False))
            assert to_rows(got) == answer, (warm, text)
            assert got.stats["truncated"] == (expected.num_rows > limit), (warm, text)
            assert not got.stats["partial"], (warm, text)
            keys = {"_time", *(n for n, _ in query.pipes[0].keys)}  # type: ignore[attr-defined]
            ranking = [names for _, names in read if names != ("rows",)]
            assert warm or ranking, (text, read)  # warm: the keys are in memory, no read
            assert all(set(names) <= keys | {"_msg"} for names in ranking), (text, read)
            assert 0 < sum(names == ("rows",) for _, names in read) <= limit + 1, (text, read)


def test_a_first_row_whose_block_cannot_be_had_at_the_end_makes_the_answer_partial(
        tmp_path: Path) -> None:
    from helios.storage.blocks import build_block

    table = pa.table({"_time": pa.array([BASE_NS + i for i in range(20)], timeutil.TIME_TYPE),
                      "_msg": ["x"] * 20, "size": [str(i) for i in range(20)]})
    entry = build_block(tmp_path, "b0", [table], dataset="d", day=0, node="n", created_ns=0,
                        index="tokens")
    source = Source(dataset="d", day=0, min_time=entry.min_time, max_time=entry.max_time,
                    rows=entry.rows, block=entry, path=tmp_path / entry.filename)
    calls = [0]

    def fetch(_: Source) -> Path | None:  # the ranking reads the keys; the store is gone by the end
        calls[0] += 1
        return tmp_path / entry.filename if calls[0] == 1 else None

    got = execute(parse("* | sort by (size desc) | limit 3"), [source], BlockCache(1 << 20),
                  start_ns=None, end_ns=None, limit=10, fetch=fetch)
    assert got.stats["partial"] and got.stats["blocks_missing"] == 1 and got.table.num_rows == 0


@pytest.mark.parametrize("room", ["all", "none"])
def test_streamed_blocks_are_fetched_once_and_their_first_rows_survive_a_store_gone_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: str) -> None:
    """Blocks the store streams (bytes, not kept locally): a leading sort ranks by their keys and
    reads the first rows' other columns from the bytes it kept, so each block is fetched once, and
    a store that answers nothing afterwards loses no row. With no room to keep them
    (``KEPT_BYTES``), a block is fetched again at the end, as before, and the answer is partial."""
    from helios.query import topn
    from helios.storage.blocks import build_block

    monkeypatch.setattr(executor, "TOP_PART_ROWS", 32)  # several parts: bytes of others dropped
    if room == "none":
        monkeypatch.setattr(topn, "KEPT_BYTES", 0)
    rng = random.Random(11)
    serial = [0]
    sources = []
    for number in range(6):
        table = _part(rng, serial)
        if not table.num_rows:
            continue
        table = table.append_column("_msg", pa.array([f"m {i}" for i in range(table.num_rows)]))
        entry = build_block(tmp_path, f"b{number}", [table], dataset="d", day=0, node="n",
                            created_ns=0, index="tokens")
        sources.append(Source(dataset="d", day=0, min_time=entry.min_time, max_time=entry.max_time,
                              rows=entry.rows, block=entry, path=tmp_path / entry.filename))
    calls: dict[str, int] = {}

    def fetch(source: Source) -> bytes | None:  # streamed once; then the store is gone
        assert source.block is not None
        calls[source.block.id] = calls.get(source.block.id, 0) + 1
        if calls[source.block.id] > 1:
            return None
        return (tmp_path / source.block.filename).read_bytes()

    query = "* | sort by (size desc) | limit 5"
    expected = execute(parse(query), sources, BlockCache(1 << 30), start_ns=None, end_ns=None,
                       limit=10)
    got = execute(parse(query), sources, BlockCache(1 << 30), start_ns=None, end_ns=None,
                  limit=10, fetch=fetch)
    assert expected.table.num_rows == 5 and not expected.stats["partial"]
    if room == "all":
        assert to_rows(got) == to_rows(expected)
        assert not got.stats["partial"] and got.stats["truncated"] == expected.stats["truncated"]
        assert set(calls.values()) == {1}, calls
    else:
        assert got.stats["partial"] and got.table.num_rows < 5
        assert max(calls.values()) == 2, calls


def test_kept_bytes_keep_only_the_blocks_asked_for_within_their_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from helios.query import topn
    from helios.storage.blocks import BlockEntry

    monkeypatch.setattr(topn, "KEPT_BYTES", 10)
    got: list[str] = []

    def fetch(source: Source) -> bytes | Path:
        assert source.block is not None
        got.append(source.block.id)
        return Path("/local") if source.block.id == "local" else b"x" * 4

    def source(block_id: str) -> Source:
        entry = BlockEntry(block_id, 1, 4, 0, 0, "", "n", 0)
        return Source(dataset="d", day=0, min_time=0, max_time=0, rows=1, block=entry)

    kept = topn.KeptBytes(fetch)
    for block_id in ("a", "b", "c", "local", "a", "b", "c", "local"):
        kept(source(block_id))
    assert got == ["a", "b", "c", "local", "c", "local"]  # two of 4 bytes fit in 10
    assert kept.size == 8
    kept.keep_only({"b"})
    assert set(kept.kept) == {"b"} and kept.size == 4

"""Aggregations in parts (``pipes.partial`` / ``pipes.combine``) equal the pipe over all rows.

The executor aggregates the rows it has gathered each time they reach ``executor.PART_ROWS`` and keeps
only the part; these checks pin the parts' join to ``pipes.apply`` over the concatenated rows, for the
aggregates that go by parts, with groups split across parts, values that are text in some parts and
numbers in others, whole numbers in one part and fractions in another, nulls, NaN, timestamps, a field
missing from a part, and empty groups.
"""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from helios.query import ast
from helios.query import executor, pipes
from helios.query.executor import execute
from helios.query.parser import parse
from helios.query.pipes import apply, by_parts, combine, partial
from helios.storage.cache import BlockCache
from helios.storage.engine import Source

BASE_NS = 1_700_000_000_000_000_000


def _parts(seed: int) -> list[pa.Table]:
    """Tables of one schema (so the whole can be concatenated) whose text fields read as numbers
    differently per part: whole numbers in some, fractions or junk in others."""
    rng = random.Random(seed)
    tables = []
    for p in range(rng.randint(1, 6)):
        n = rng.choice([0, 1, 7, 50, 300])
        fractional = rng.random() < 0.4
        def text() -> str | None:
            roll = rng.random()
            if roll < 0.1:
                return None
            if roll < 0.15:
                return rng.choice(["n/a", "", " 12 ", "nan", "1e3"])
            return str(rng.randint(-50, 50) + (0.25 if fractional and rng.random() < 0.5 else 0))
        tables.append(pa.table({
            "_time": pa.array([BASE_NS + rng.randint(0, 10 * 3_600_000_000_000) for _ in range(n)],
                              pa.int64()).cast(pa.timestamp("ns", "UTC")),
            "level": pa.array([rng.choice(["INFO", "WARN", "ERROR", None]) for _ in range(n)], pa.string()),
            "host": pa.array([rng.choice(["a", "b", "c"]) for _ in range(n)], pa.string()),
            "size": pa.array([None if rng.random() < 0.1 else rng.randint(0, 1000) for _ in range(n)], pa.int64()),
            "latency": pa.array([rng.choice([None, math.nan, rng.random() * 10]) if rng.random() < 0.2
                                 else rng.random() * 10 for _ in range(n)], pa.float64()),
            "took": pa.array([text() for _ in range(n)], pa.string()),
            "dataset": pa.array([f"d{p % 2}"] * n, pa.string()),
        }))
    return tables


PIPES = [
    "stats count()", "stats count() as n by (level)", "stats count(level) as n, count(nosuch) as z by (host)",
    "stats sum(size) as s, avg(size) as a, min(size), max(size) by (level, host)",
    "stats sum(took) as s, avg(took) as a, min(took) as lo, max(took) as hi",
    "stats avg(latency) as a, sum(latency) as s, min(latency), max(latency) by (host)",
    "stats sum(nosuch) as s, avg(nosuch) as a, min(nosuch) as lo by (level)",
    "stats min(_time) as first, max(_time) as last, count() as n by (dataset)",
    "stats count() as n by (nosuch)", "timechart 1h", "timechart 17m count() as n, avg(took) as a by (level)",
    "top 2 host", "top 10 level",
    "stats count_distinct(host) as h, count_distinct(took) as t, count() as n by (level)",
    "stats count_distinct(size) as s, count_distinct(nosuch) as z",
    "stats count_distinct(_time) as t",
    "timechart 1h count_distinct(level) as l, avg(size) as a",
    "stats count_distinct(latency) as l, max(size) by (dataset, host)",
    "stats quantile(0.9, took) as p, median(size) as m, count() as n by (level)",
    "stats quantile(0.25, latency) as q, quantile(1, took) as top",
    "stats median(nosuch) as m, avg(took) as a by (host)",
    "timechart 1h quantile(0.5, took) as p, count_distinct(level) as l",
    "stats quantile(0, _time) as first by (dataset)",
]


def _same(got: pa.Table, expected: pa.Table, where: str) -> None:
    assert got.column_names == expected.column_names, where
    assert got.num_rows == expected.num_rows, where
    for name in got.column_names:
        columns = [t.column(name) for t in (got, expected)]
        assert columns[0].type == columns[1].type, (where, name)
        if pa.types.is_timestamp(columns[0].type):
            columns = [c.cast(pa.int64()) for c in columns]
        for a, b in zip(*(c.to_pylist() for c in columns)):
            if isinstance(a, float) and isinstance(b, float):
                same = math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
                assert same, (where, name, a, b)
            else:
                assert a == b, (where, name, a, b)


@pytest.mark.parametrize("seed", range(40))
def test_parts_joined_equal_the_pipe_over_all_rows(seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if seed % 2:  # quantiles: group by group from their lists (the usual few groups), or one sort
        monkeypatch.setattr(pipes, "FEW_GROUPS", 0)
    tables = _parts(seed)
    whole = pa.concat_tables(tables)
    for text in PIPES:
        pipe = parse(f"* | {text}").pipes[0]
        assert by_parts(pipe), text
        expected = apply(pipe, whole)
        parts = [partial(pipe, t) for t in tables if t.num_rows]
        if not parts:
            continue  # the executor runs the pipe over the empty table itself
        _same(combine(pipe, parts), expected, f"seed {seed}: {text}")


def test_what_needs_every_value_is_not_split() -> None:
    for text in ("sort by (size)", "fields size", "limit 3"):
        assert not by_parts(parse(f"* | {text}").pipes[0]), text
    assert not by_parts(parse("* | stats count() as n | where n:>3").pipes[1])  # leading: folded


def test_quantile_parts_of_whole_numbers_past_2_53_join_a_part_of_fractions() -> None:
    """One part reads ``took`` as int64 past 2^53, another as float64: joined as the whole column
    reads it (float64, as the text would round), not refused by a safe cast."""
    def part(took: list[str]) -> pa.Table:
        times = pa.array([BASE_NS] * len(took), pa.timestamp("ns", "UTC"))
        return pa.table({"_time": times, "took": took, "host": ["a"] * len(took)})
    parts = [part([str((1 << 53) + i) for i in range(5)]), part(["0.5", "7"])]
    for text in ("stats quantile(0.5, took) as p, median(took) as m",
                 "stats quantile(0.9, took) as p by (host)"):
        pipe = parse(f"* | {text}").pipes[0]
        whole = apply(pipe, pa.concat_tables(parts))
        joined = combine(pipe, [partial(pipe, p) for p in parts])
        assert joined.to_pylist() == whole.to_pylist(), text


@pytest.mark.parametrize("part_rows", [1, 60, 1 << 20], ids=["each-source", "some-sources", "all-at-once"])
def test_the_executor_aggregates_by_parts(monkeypatch: pytest.MonkeyPatch, part_rows: int) -> None:
    """Through ``execute``: several memtable sources, pipes after the aggregation, and a filter that
    leaves some sources without rows; the gathered rows aggregated each time they reach ``PART_ROWS``
    (every source, some of them together, or all at once as one table)."""
    monkeypatch.setattr(executor, "PART_ROWS", part_rows)
    tables = [t.drop_columns(["dataset"]).append_column("_msg", pa.array([f"m {i % 3}" for i in range(t.num_rows)],
                                                                          pa.string()))
              for t in _parts(7) if t.num_rows]
    sources = [Source(dataset=f"d{i % 2}", day=0, min_time=BASE_NS, max_time=BASE_NS + 10 * 3_600_000_000_000,
                      rows=t.num_rows, table=t) for i, t in enumerate(tables)]
    whole = pa.concat_tables([t.append_column("dataset", pa.repeat(s.dataset, t.num_rows))
                              for t, s in zip(tables, sources)])
    for text in ("* | stats count() as n, sum(size) as s by (dataset) | sort -n",
                 "2 | stats avg(took) as a, max(latency) as hi by (host, level)",
                 "zzz | stats count() as n, sum(size) as s", "* | top 2 host | limit 1",
                 "* | stats count_distinct(host) as h, count() as n by (level)",
                 "zzz | stats count_distinct(host) as h", "m | stats count_distinct(took) as t"):
        query = parse(text)
        got = execute(query, sources, BlockCache(1 << 20), start_ns=None, end_ns=None, limit=1000)
        rows = whole.filter(_matching(query, whole))
        expected = rows
        for pipe in query.pipes:
            expected = apply(pipe, expected)
        _same(got.table, expected, text)


def _matching(query: ast.Query, table: pa.Table) -> pa.Array:
    from helios.query.filters import mask
    return mask(query.filter, table, None)


def test_a_sum_past_int64_is_a_float_and_one_within_it_stays_exact() -> None:
    """Arrow's int64 sum wraps past 2^63 (three times 2^62 summed to a negative number). A sum whose
    groups stay within 2^62 is the exact int64 even when its parts pass it on the way; past that,
    every group's sum is float64. Whole table, by groups, and by parts (the parts' sums are summed
    again), with the numbers as text (as they are stored) and as numbers."""
    big = 1 << 62
    cases = [  # (values of group a, of group b, the sums expected)
        ([big, big, big], [1, 2], (3.0 * big, 3.0)),
        ([big, big, -big, -big, 7], [big, -big, 5], (7, 5)),
        ([big - 1, 1, -(1 << 40)], [2], (big - (1 << 40), 2)),
        ([-big, -big, -big], [0], (-3.0 * big, 0.0)),
    ]
    for a, b, (sum_a, sum_b) in cases:
        for as_text in (False, True):
            values = [str(v) for v in a + b] if as_text else a + b
            table = pa.table({"_time": pa.array([BASE_NS + i for i in range(len(values))], pa.int64()).cast(
                                  pa.timestamp("ns", "UTC")),
                              "g": ["a"] * len(a) + ["b"] * len(b),
                              "v": pa.array(values, pa.string() if as_text else pa.int64())})
            for text in ("stats sum(v) as s by (g)", "stats sum(v) as s, avg(v) as m by (g)"):
                pipe = parse(f"* | {text}").pipes[0]
                whole = apply(pipe, table).to_pylist()
                halves = [table.slice(0, len(values) // 2), table.slice(len(values) // 2)]
                joined = combine(pipe, [partial(pipe, t) for t in halves]).to_pylist()
                ones = combine(pipe, [partial(pipe, table.slice(i, 1)) for i in range(len(values))]).to_pylist()
                for answer in (whole, joined, ones):
                    got = [row["s"] for row in answer]
                    assert got == [sum_a, sum_b], (a, b, text, answer)
                    if not as_text:  # (text of over 18 digits may read as float64: filters.numeric)
                        assert [type(x) for x in got] == [type(sum_a), type(sum_b)], (a, b, text, answer)
                    if "m" in answer[0]:
                        assert answer[0]["m"] == pytest.approx(sum(a) / len(a)), answer
            total = apply(parse("* | stats sum(v) as s").pipes[0], table).to_pylist()[0]["s"]
            if not as_text:  # (in float64, 2^62 + 7 - 2^62 is 0)
                assert total == sum(a) + sum(b) or total == pytest.approx(sum(a) + sum(b)), (a, b, total)


def test_parts_of_whole_numbers_past_2_53_join_with_float_and_missing_parts() -> None:
    """A part without the field, or whose numbers are fractions, used to make the join cast the
    other parts' whole numbers past 2^53 to float64, which Arrow refuses (a 500); and a part's
    wrapped int64 sum was joined as the wrapped number (a review of session 12 found both)."""
    big = pa.table({"v": pa.array([10_000_000_000] * 2000, pa.int64()), "g": ["a"] * 2000})
    missing = pa.table({"other": pa.array([1, 2]), "g": ["a", "b"]})
    fractions = pa.table({"v": pa.array([0.5, 1.5]), "g": ["a", "b"]})
    for text in ("stats sum(v) as r", "stats avg(v) as r", "stats min(v) as r, max(v) as x",
                 "stats sum(v) as r, avg(v) as m by (g)", "timechart 1h sum(v) as r"):
        pipe = parse(f"* | {text}").pipes[0]
        for others in ([missing], [fractions], [missing, fractions]):
            tables = [big, *others]
            if "timechart" in text:
                times = [pa.array([BASE_NS] * t.num_rows, pa.int64()).cast(pa.timestamp("ns", "UTC"))
                         for t in tables]
                tables = [t.append_column("_time", ts) for t, ts in zip(tables, times)]
            whole = apply(pipe, pa.concat_tables(tables, promote_options="permissive")).to_pylist()
            joined = combine(pipe, [partial(pipe, t) for t in tables]).to_pylist()
            pairs = [(a, b) for w, j in zip(whole, joined) for a, b in zip(w.values(), j.values())]
            assert joined == whole or all(a == pytest.approx(b) for a, b in pairs), (text, whole, joined)
    wraps = pa.table({"v": pa.array([1 << 62] * 4, pa.int64())})  # its int64 sum wraps to 0
    cancels = pa.table({"v": pa.array([-2.0 ** 62] * 4)})
    pipe = parse("* | stats sum(v) as s").pipes[0]
    assert combine(pipe, [partial(pipe, wraps), partial(pipe, cancels)]).to_pylist() == [{"s": 0.0}]

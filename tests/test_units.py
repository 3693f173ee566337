"""Fast in-process checks of the pieces: parser, ingest normalisation, WAL framing, bloom pruning."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import trio

from helios import timeutil
from helios.errors import IngestError, QuerySyntaxError
from helios.ingest.records import parse_ndjson
from helios.query import ast
from helios.query.filters import mask, may_match
from helios.query.parser import parse
from helios.storage.blocks import load_index
from helios.storage.engine import Engine
from helios.storage.memtable import slices
from helios.storage.wal import Wal, decode_payload, encode_payload


def test_parser_precedence_and_shapes() -> None:
    q = parse('level:ERROR service:api "connection reset" -host:web-3 '
              "| stats count() as n, avg(duration) by (host) | sort -n | limit 10")
    assert isinstance(q.filter, ast.And) and len(q.filter.children) == 4
    assert q.filter.children[3] == ast.Not(ast.FieldEq("host", "web-3"))
    assert [type(p) for p in q.pipes] == [ast.Stats, ast.Sort, ast.Limit]
    assert q.pipes[1] == ast.Sort((("n", True),))
    assert parse("a OR b c").filter == ast.Or((ast.Word("a"), ast.And((ast.Word("b"), ast.Word("c")))))
    assert parse("NOT (a OR b)").filter == ast.Not(ast.Or((ast.Word("a"), ast.Word("b"))))
    assert parse("err*").filter == ast.Word("err", prefix=True)
    assert parse("x:>=1.5").filter == ast.FieldCompare("x", ">=", 1.5)
    assert parse("x | sort by (a desc, b)").pipes[0] == ast.Sort((("a", True), ("b", False)))
    assert parse("").filter == ast.All()


@pytest.mark.parametrize("text,column", [
    ("(a", 3), ("a)", 2), ("a:", 3), ('"x', 1), ("a | ", 5), ("a | limit", 10), ("* | stats sum()", 11),
    ("AND", 1), ("a | top x y", 11), ("a:~x", 4), ("a*b", 1), ("x | stats count() as n, count() as n", 25),
])
def test_parser_errors_carry_columns(text: str, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse(text)
    assert info.value.column == column, str(info.value)


def test_parsed_queries_are_remembered_by_their_text_and_errors_are_not() -> None:
    from helios.query import parser
    text = "error host:web-1 | where latency:>100 | stats count() as n by (level)"
    first = parse(text)
    assert parse(text) is first  # remembered: the same (immutable) query object
    assert parse(text + " ") == first and parse(text + " ") is not first  # another text
    assert first == parser._parse(text)  # what a fresh parse gives
    long = "error " + "x" * parser.PARSED_TEXT_CHARS
    assert parse(long) is not parse(long)  # past the bound, never remembered
    for _ in range(2):  # a bad text fails every time, with its own column
        with pytest.raises(QuerySyntaxError) as info:
            parse("a | limit")
        assert info.value.column == 10


def test_parser_bounds_nesting() -> None:
    with pytest.raises(QuerySyntaxError):
        parse("(" * 500 + "a" + ")" * 500)
    with pytest.raises(QuerySyntaxError):
        parse("-" * 500 + "a")


def test_parser_bounds_keys_and_results_and_drops_repeated_keys() -> None:
    """Each key or result is a column as long as the rows a part holds: thousands of them (16 KiB
    of text allows 8,000) took GBs. A repeated key changes nothing, so it is dropped."""
    from helios.query.parser import MAX_AGGS, MAX_KEYS
    names = [f"f{i}" for i in range(MAX_KEYS + 1)]
    listed = ", ".join(names)
    for text in (f"* | stats count() by ({listed})", f"* | timechart 1h by ({listed})",
                 f"* | sort by ({listed})",
                 "* | stats " + ", ".join(f"sum(x) as s{i}" for i in range(MAX_AGGS + 1))):
        with pytest.raises(QuerySyntaxError, match="at most"):
            parse(text)
    assert parse(f"* | stats count() by ({', '.join(names[:MAX_KEYS])})").pipes[0].by == tuple(
        names[:MAX_KEYS])  # type: ignore[attr-defined]
    again = parse("* | stats count() by (a, b, a, a)").pipes[0]
    assert again.by == ("a", "b")  # type: ignore[attr-defined]
    assert parse("* | sort by (a desc, b, a, -b)").pipes[0] == ast.Sort((("a", True), ("b", False)))
    many = parse("* | sort by (" + ", ".join(["a"] * 1000) + ")").pipes[0]
    assert many == ast.Sort((("a", False),))


def test_parser_bounds_what_its_regular_expressions_cost_to_compile() -> None:
    """RE2 compiles a repeated large Unicode class slowly (\\pL{400}: 0.2 s, where the usual
    patterns take microseconds), and every scan of every block compiles it again. The time bound
    (0.5 s for a query's) is wide: only absurd patterns meet it."""
    from helios.query.parser import MAX_PATTERNS
    with pytest.raises(QuerySyntaxError, match="to compile"):  # ~0.2 s each: stops at the third
        parse(" ".join(f'f{i}:~"\\\\pL{{400}}"' for i in range(10)))
    with pytest.raises(QuerySyntaxError, match=f"at most {MAX_PATTERNS} regular expressions"):
        parse(" ".join(f'f:~"a{i}"' for i in range(MAX_PATTERNS + 1)))
    usual = " ".join(f'f{i}:~"(?i)fail(ed|ure).*\\\\d{{3}}"' for i in range(MAX_PATTERNS))
    assert len(parse(usual).filter.children) == MAX_PATTERNS  # type: ignore[attr-defined]


def test_sum_of_time_is_refused() -> None:
    """Instants in nanoseconds since 1970: six of them pass int64, and Arrow's sum wraps."""
    for text in ("* | stats sum(_time)", "* | timechart 1h sum(_time) as s"):
        with pytest.raises(QuerySyntaxError, match="sum\\(_time\\)"):
            parse(text)
    assert parse("* | stats avg(_time) as a, min(_time) as lo, sum(size) as s").pipes


def test_fast_and_exact_ingest_paths_agree() -> None:
    docs = [{"_msg": "m", "n": 1, "f": 2.5, "b": False, "s": "x", "o": {"p": 1.0}},
            {"_msg": "m2", "n": 3, "f": 1e20, "b": True, "s": "y", "o": {"p": 2}}]
    fast = parse_ndjson("\n".join(json.dumps(d) for d in docs).encode(), 5)
    docs.append({"_msg": "m3", "n": "text now", "l": [1]})  # forces the exact path
    exact = parse_ndjson("\n".join(json.dumps(d) for d in docs).encode(), 5).slice(0, 2)
    for name in ("_msg", "n", "f", "b", "s", "o.p"):
        assert fast.column(name).to_pylist() == exact.column(name).to_pylist(), name
    assert fast.column("f").to_pylist() == ["2.5", "1e+20"]


def test_records_of_empty_objects_are_kept_on_both_paths() -> None:
    """Found by hypothesis: flattening a table of empty objects lost its rows on the fast path."""
    fast = parse_ndjson(b'{"_msg": {}}\n{}\n', 5)
    exact = parse_ndjson(b'{"_msg": {}}\n{}\n{"l": [1]}\n', 5)
    assert fast.num_rows == 2 and exact.num_rows == 3


def test_ingest_errors_name_lines() -> None:
    with pytest.raises(IngestError) as info:
        parse_ndjson(b'{"a":1}\n\n{"_time": "2024-01-01T00:00:00Z"}\n{"_time": "nope"}\n', 0)
    assert info.value.line == 4
    naive = parse_ndjson(b'{"_time": "2024-01-01T00:00:00"}\n{"_time": "1700000000000000000"}\n', 0)
    assert naive.column("_time").cast(pa.int64()).to_pylist() == [1704067200000000000, 1700000000000000000]


def test_word_semantics_are_whole_tokens() -> None:
    table = pa.table({"_msg": ["Error: disk", "errors", "x_error", "an error,", "é-error", "ERROR", None]})
    rows = mask(ast.Word("error"), table).to_pylist()
    assert rows == [True, False, False, True, True, True, False]
    assert mask(ast.Word("err", prefix=True), table).to_pylist() == [True, True, False, True, True, True, False]
    assert mask(ast.Phrase("RROR"), table).to_pylist() == [True, True, True, True, True, True, False]


def test_bloom_pruning_is_conservative(tmp_path: Path) -> None:
    from helios.storage.blocks import build_block

    table = pa.table({"_time": pa.array([1, 2], pa.int64()).cast(pa.timestamp("ns", "UTC")),
                      "_msg": ["Connection reset by peer", "disk Full"], "level": ["ERROR", "INFO"]})
    entry = build_block(tmp_path, "b1", [table], dataset="d", day=0, node="n", created_ns=0)
    index = load_index(tmp_path / entry.filename, entry)
    assert may_match(ast.Word("connection"), index, "d")
    assert may_match(ast.Word("FULL"), index, "d")
    assert not may_match(ast.Word("timeout"), index, "d")
    assert may_match(ast.Phrase("nection reset b"), index, "d")  # partial ends, whole middle
    assert not may_match(ast.Phrase("a timeout b"), index, "d")
    assert may_match(ast.FieldEq("level", "ERROR"), index, "d")
    assert not may_match(ast.FieldEq("level", "WARN"), index, "d")
    assert not may_match(ast.FieldEq("host", "x"), index, "d")
    assert may_match(ast.FieldEq("host", ""), index, "d")
    assert not may_match(ast.FieldEq("dataset", "other"), index, "d")
    assert may_match(ast.Not(ast.Word("timeout")), index, "d")


@pytest.mark.parametrize("index", ["tokens", "later"])
def test_a_block_holds_its_rows_in_time_order_whatever_order_they_came_in(tmp_path: Path, index: str) -> None:
    """A flush gets a memtable's requests as they were committed: each in order but out of turn (two
    shippers), or overlapping, or each unordered; the block is always sorted by ``_time``, the rows
    of equal times in arrival order. A flush's block (``later``) has no index; ``tokens`` has one."""
    from helios.storage.blocks import build_block, load_block

    def table(times: list[int], tag: str) -> pa.Table:
        return pa.table({"_time": pa.array(times, pa.int64()).cast(pa.timestamp("ns", "UTC")),
                         "_msg": [f"{tag}{i}" for i in range(len(times))]})

    cases = {
        "out of turn": [table([5, 6, 7], "b"), table([1, 2, 3], "a"), table([8, 9], "c")],
        "overlapping": [table([4, 6, 8], "b"), table([1, 5, 9], "a")],
        "unordered": [table([3, 1, 2], "a"), table([0], "b")],
        "ties": [table([2, 2], "b"), table([1, 2], "a")],
    }
    for number, (name, tables) in enumerate(cases.items()):
        entry = build_block(tmp_path, f"b{number}", tables, dataset="d", day=0, node="n", created_ns=0, index=index)
        assert bool(entry.index_bytes) == (index == "tokens")
        got = load_block(tmp_path / entry.filename, entry)
        rows = sorted(((t, m) for tab in tables for t, m in zip(tab.column("_time").cast(pa.int64()).to_pylist(),
                                                                 tab.column("_msg").to_pylist())),
                      key=lambda r: r[0])  # stable: ties in arrival order
        assert list(zip(got.column("_time").cast(pa.int64()).to_pylist(), got.column("_msg").to_pylist())) == rows, name
        assert (entry.min_time, entry.max_time) == (rows[0][0], rows[-1][0])


def test_wal_frames_round_trip_and_torn_tail(tmp_path: Path) -> None:
    table = pa.table({"_msg": ["a", "b"]})
    payload = encode_payload("ds", table)
    assert decode_payload(payload) == ("ds", table)

    async def write() -> None:
        wal = Wal(tmp_path)
        list(wal.replay())
        wal.start()
        applied: list[int] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            async with trio.open_nursery() as writers:
                for i in range(20):
                    writers.start_soon(wal.append, payload, lambda i=i: applied.append(i))
            nursery.cancel_scope.cancel()
        assert sorted(applied) == list(range(20))
        assert wal.commits < 20, "concurrent appends should share fsyncs (group commit)"
        wal.close()

    trio.run(write)
    segment = sorted(tmp_path.glob("*.wal"))[-1]
    with open(segment, "ab") as handle:
        handle.write(b"\x05\x00")
    wal = Wal(tmp_path)
    assert len(list(wal.replay())) == 20
    assert len(list(Wal(tmp_path).replay())) == 20


def test_replay_skips_rows_already_in_blocks(tmp_path: Path) -> None:
    """A crash after a block is recorded but before the WAL is trimmed must not double rows."""
    table = parse_ndjson(b'{"_msg": "one", "_time": 1}\n{"_msg": "two", "_time": 86400000000001}\n', 0)

    async def main() -> None:
        engine = Engine(tmp_path, "n1")
        engine.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.wal.run)
            await engine.ingest("d", table)
            segments_before = engine.wal.segments()
            engine.wal.delete_through = lambda seq: None  # the crash: trimming never happens
            await engine.flush()
            assert engine.wal.segments()[: len(segments_before)] == segments_before
            nursery.cancel_scope.cancel()
        engine.close()

    trio.run(main)
    reopened = Engine(tmp_path, "n1")
    reopened.open()
    assert reopened.replayed_rows == 0
    assert sum(s.rows for s in reopened.sources(None, None, None)) == 2
    reopened.close()


def test_uploader_appends_once_and_expires_its_change_keys(tmp_path: Path) -> None:
    """In-process: upload twice (idempotent), a peer pulls exactly once, old feed keys are deleted."""
    from backends.memory import MemoryBackend
    from helios.replication import replicator as repl
    from helios.replication.shared import read_latest

    now = [1_700_000_000_000_000_000]
    store = MemoryBackend()
    table = parse_ndjson(b'{"_msg": "one", "_time": 5}\n{"_msg": "two", "_time": 6}\n', 0)

    async def main() -> None:
        a = Engine(tmp_path / "a", "a")
        b = Engine(tmp_path / "b", "b")
        a.open()
        b.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(a.wal.run)
            await a.ingest("d", table)
            await a.flush()
            ra = repl.Replicator(a, store, "a", 0.1, clock=lambda: now[0])
            rb = repl.Replicator(b, store, "b", 0.1, clock=lambda: now[0])
            assert ra.pending_uploads() == 1
            await ra.upload_once()
            assert ra.pending_uploads() == 0
            manifest = a.manifests[("d", 0)]
            manifest.uploaded.clear()  # as if the node crashed before recording the upload
            await ra.upload_once()
            latest = await read_latest(store, "d", 0)
            assert latest.version == 1 and len(latest.blocks) == 1, "the second append found the block there"
            await rb.pull_once()
            await rb.pull_once()
            assert sum(s.rows for s in b.sources(None, None, None)) == 2
            assert len([k for k in store.objects if k.startswith("_changes/")]) == 1
            now[0] += repl.CHANGE_TTL_NS + 1
            await ra.upload_once()
            assert not [k for k in store.objects if k.startswith("_changes/")]
            nursery.cancel_scope.cancel()
        a.close()
        b.close()

    trio.run(main)


def test_the_later_lines_shortcut_agrees_with_the_regular_expression() -> None:
    """``records._later_not_object`` decides most bodies without its regular expression; on random
    bodies of the bytes that matter (and on empty ones) it agrees with the expression alone."""
    import random

    from helios.ingest.records import _LATER_NOT_OBJECT, _later_not_object

    rng = random.Random(14)
    for size in [0, 1, 2, *(rng.randint(0, 40) for _ in range(20_000))]:
        data = bytes(rng.choice(b"{{{\n\n \t\rx}") for _ in range(size))
        for body in (data, bytearray(data)):
            assert _later_not_object(body) == (_LATER_NOT_OBJECT.search(data) is not None), data


def test_times_are_formatted_as_rfc3339_like_strftime() -> None:
    rng = random.Random(5)
    edges = [0, 1, -1, 999_999_999, -(10**18) * 5, 9 * 10**18, -9 * 10**18]
    values = edges + [rng.randrange(-(2**63) + 1, 2**63) for _ in range(2000)]
    times = pa.array(values + [None], pa.int64()).cast(timeutil.TIME_TYPE)
    expected = pc.strftime(times, format="%Y-%m-%dT%H:%M:%SZ")
    assert timeutil.format_column(times).to_pylist() == expected.to_pylist()
    chunked = pa.chunked_array([times[:7], times[7:]])
    assert timeutil.format_column(chunked).to_pylist() == expected.to_pylist()
    epoch = timeutil.format_column(pa.array([0], pa.timestamp("ms")))
    assert epoch.to_pylist() == ["1970-01-01T00:00:00.000000000Z"]
    again = timeutil.parse_column(timeutil.format_column(times))
    assert again.cast(pa.int64()).to_pylist() == values + [None]


def test_a_request_is_sliced_by_day_at_midnight_exactly() -> None:
    day = 86_400 * 10**9
    start = 20_000 * day
    times = [start + day - 1, start + day, start + 5, start + 3 * day, start + 2 * day - 1, start + day + 7]
    table = pa.table({"_time": pa.array(times, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
                      "_msg": [f"m{i}" for i in range(len(times))]})
    got = {piece.key[1]: (piece.table.column("_msg").to_pylist(), piece.min_time, piece.max_time)
           for piece in slices("ds", table)}
    assert got == {20_000: (["m0", "m2"], start + 5, start + day - 1),
                   20_001: (["m1", "m4", "m5"], start + day, start + 2 * day - 1),
                   20_003: (["m3"], start + 3 * day, start + 3 * day)}
    one_day = table.filter(pa.array([False, True, False, False, True, True]))
    assert [(piece.key[1], piece.table.num_rows) for piece in slices("ds", one_day)] == [(20_001, 3)]

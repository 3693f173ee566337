"""The token index answers exactly what a plain scan answers (issue 14), and a damaged one is never used.

The same Loghub rows (plus rows of non-ASCII text, which the index leaves to the scan) are written as
blocks: one with a token index (format 2), one without (format 1, what older nodes wrote: its queries
scan every row), and one compacted from four indexed blocks, whose index is merged from theirs rather
than built from the messages. 200 random words, prefixes, phrases and ``field:value`` filters, alone
and combined, must pick the same rows, row for row, from all three.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from helios.query.blockscan import from_memory, scan_block
from helios.query.cancel import never
from helios.query.executor import execute, needed_columns
from helios.query.parser import parse
from helios.storage.blocks import BlockEntry, build_block, is_compacted, load_block, merge_blocks
from helios.storage.cache import BlockCache
from helios.storage import blocks as blocks_module
from helios.storage import tokens
from helios.storage.engine import Source
from support import loghub_records, wait_until
from test_store_faults import quarantined, rows

_UNICODE = [
    "Fehler: Verbindung ÜBER Proxy abgelehnt, error 17",
    "ſystem error: the long s folds to s",  # RE2 matches "system" here; ASCII lowering does not
    "temperature 300 K (Kelvin sign) – connection RESET",
    "日本語のログ error 警告",
    "ERROR İstanbul node-3 failed",
]


def _table() -> pa.Table:
    records = loghub_records()
    messages = [r.msg for r in records] + _UNICODE
    extra = len(_UNICODE)
    return pa.table({
        "_time": pa.array([r.time_ns for r in records] + [records[-1].time_ns + i + 1 for i in range(extra)],
                          pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "_msg": messages,
        "service": [r.service for r in records] + ["unicode"] * extra,
        "host": [r.host for r in records] + ["web-9"] * extra,
        "level": [r.level for r in records] + [None] * extra,
    })


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[BlockEntry, Path]]:
    root = tmp_path_factory.mktemp("blocks")
    table = _table()
    made = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "CHUNK_ROWS", 3000)  # several chunks: their merge is what a big block goes through
        patch.setattr(tokens, "MERGE_BATCH", 997)  # and the merge places its postings in many batches
        patch.setattr(blocks_module, "ROW_GROUP_ROWS", 4096)  # columns of several chunks (a timechart's cuts)
        for name, indexed in (("indexed", True), ("scanned", False)):
            entry = build_block(root / name, f"b-{name}", [table], dataset="d", day=0, node="n",
                                created_ns=0, index="tokens" if indexed else "bloom")
            made[name] = (entry, root / name / entry.filename)
        # A compaction of four blocks (uneven cuts): its index merged from theirs, the rows unmoved. Two
        # of them are a flush's (no index: their messages are tokenised by the merge).
        cuts = [0, 1234, 9000, 9001, table.num_rows]
        inputs = []
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            entry = build_block(root / "inputs", f"in-{i}", [table.slice(a, b - a)], dataset="d", day=0, node="n",
                                created_ns=0, index="later" if i in (1, 2) else "tokens")
            assert bool(entry.index_bytes) == (i not in (1, 2))
            inputs.append(((root / "inputs" / entry.filename).read_bytes(), entry))
        entry = merge_blocks(root / "merged", "b-merged", inputs, dataset="d", day=0, node="n", created_ns=0)
        made["merged"] = (entry, root / "merged" / entry.filename)
    return made


def test_a_merged_index_is_the_index_built_from_the_rows(blocks: dict[str, tuple[BlockEntry, Path]]) -> None:
    """Compaction merges its inputs' token postings: the result equals tokenising the messages again."""
    def parsed(name: str) -> tokens.TokenIndex:
        entry, path = blocks[name]
        return tokens.TokenIndex(path.read_bytes()[entry.parquet_bytes:])

    built, merged = parsed("indexed"), parsed("merged")
    assert load_block(blocks["merged"][1], blocks["merged"][0]).equals(load_block(blocks["indexed"][1], blocks["indexed"][0]))
    assert merged.terms.equals(built.terms) and merged.fields == built.fields
    assert (merged.starts == built.starts).all() and (merged.unsure == built.unsure).all()
    postings = [tokens._concat_frames(ix) for ix in (built, merged)]
    assert (postings[0] == postings[1]).all() and len(postings[0]) == built.starts[-1] > 0


def _run(text: str, block: tuple[BlockEntry, Path], cache: BlockCache) -> tuple[list[tuple[Any, ...]], dict]:
    entry, path = block
    source = Source(dataset="d", day=0, min_time=entry.min_time, max_time=entry.max_time, rows=entry.rows,
                    block=entry, path=path)
    result = execute(parse(text), [source], cache, start_ns=None, end_ns=None, limit=100_000)
    table = result.table
    if result.aggregated:
        return table.to_pylist(), result.stats
    return sorted(zip(table.column("_time").cast(pa.int64()).to_pylist(), table.column("_msg").to_pylist())), \
        result.stats


def _queries(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    messages = _table().column("_msg").to_pylist()
    tokens = sorted({t for m in messages for t in re.findall(r"[A-Za-z0-9_]+", m)})
    services = sorted({r.service for r in loghub_records()})
    levels = sorted({r.level for r in loghub_records() if r.level})

    def word() -> str:
        token = rng.choice(tokens)
        return rng.choice([token, token.upper(), token.capitalize(), token + "zz"])

    def prefix() -> str:
        token = rng.choice(tokens)
        return token[: rng.randint(1, max(1, min(5, len(token))))] + "*"

    def phrase() -> str:
        message = rng.choice(messages)
        start = rng.randrange(0, max(1, len(message) - 3))
        text = message[start : start + rng.randint(3, 24)].replace('"', "").replace("\\", "")
        return '"' + (text.swapcase() if rng.random() < 0.3 else text) + '"' if text.strip() else '"error"'

    def field() -> str:
        name = rng.choice(["service", "level", "host", "nosuchfield"])
        value = {"service": rng.choice(services + ["nosuch"]), "level": rng.choice(levels + ["error"]),
                 "host": f"web-{rng.randint(0, 9)}", "nosuchfield": "x"}[name]
        return f"{name}:{value}"

    def separated() -> str:  # a word with separators: the index gives candidates, the scan decides
        message = rng.choice(messages)
        found = re.findall(r"[A-Za-z0-9_]+[.:/\-][A-Za-z0-9_]+", message)
        return rng.choice(found) if found else "blk_-1"

    leaves = [word, prefix, phrase, field, separated]
    queries = ["error", "ERROR", "system", "k", "connection", "日本語", "İstanbul", "s*", "err*",
               '"connection reset"', "level:ERROR", "service:unicode", "-level:INFO", "* | stats count()",
               "* | stats count() as n by (level)", "* | stats count() by (service)", "* | stats count() by (nosuch)",
               "* | stats count() as a, count() as b by (host)", "* | timechart 1h", "* | timechart 7m count() as n",
               "error | timechart 1d"]
    while len(queries) < count:
        shape = rng.random()
        if shape < 0.55:
            queries.append(rng.choice(leaves)())
        elif shape < 0.75:
            queries.append(f"{rng.choice(leaves)()} {rng.choice(leaves)()}")
        elif shape < 0.9:
            queries.append(f"({rng.choice(leaves)()} OR {rng.choice(leaves)()})")
        else:
            queries.append(f"{rng.choice(leaves)()} -{rng.choice(leaves)()}")
    return queries


def test_index_answers_equal_a_plain_scan_row_for_row(blocks: dict[str, tuple[BlockEntry, Path]]) -> None:
    indexed_cache, scanned_cache = BlockCache(1 << 30), BlockCache(1 << 30)
    used_index = 0
    merged_cache = BlockCache(1 << 30)
    for text in _queries(seed=14, count=200):
        expected, scan_stats = _run(text, blocks["scanned"], scanned_cache)
        got, stats = _run(text, blocks["indexed"], indexed_cache)
        assert got == expected, f"{text!r}: index gives {len(got)} rows, a scan gives {len(expected)}"
        merged, _ = _run(text, blocks["merged"], merged_cache)
        assert merged == expected, f"{text!r}: a merged index gives {len(merged)} rows, a scan {len(expected)}"
        assert scan_stats["blocks_indexed"] == 0
        used_index += stats["blocks_indexed"]
    assert used_index >= 150, "most of the random filters should be answered through the index"


def test_exact_lookups_read_no_message(blocks: dict[str, tuple[BlockEntry, Path]]) -> None:
    """A word is an index lookup: only the block's few non-ASCII rows are scanned."""
    cache = BlockCache(1 << 30)
    rows_, stats = _run("error", blocks["indexed"], cache)
    assert rows_ and stats["blocks_indexed"] == 1 and stats["rows_scanned"] == len(_UNICODE)
    rows_, stats = _run("zzzznotthere", blocks["indexed"], cache)  # absent: only the unsure rows are checked
    assert rows_ == [] and stats["rows_scanned"] == len(_UNICODE)


@pytest.mark.parametrize("on_flush", [False, True], ids=["indexed-by-compaction", "indexed-at-flush"])
def test_a_node_answers_through_the_index_and_refuses_a_damaged_one(server_factory: Any, on_flush: bool) -> None:
    """By default a flush writes its block without an index (it answers by scanning) and the first
    compaction rewrites it with one; ``HELIOS_INDEX_ON_FLUSH`` builds it at once."""
    node = server_factory("solo", HELIOS_FLUSH_SECS="0.2", HELIOS_INDEX_ON_FLUSH=str(int(on_flush)))
    assert node.ingest(rows(200, "needle")).status_code == 200

    def blocks() -> list[Path]:
        return sorted(node.data_dir.glob("parts/default/*/*.parquet"))

    wait_until(lambda: blocks(), what="a block on disk")
    if not on_flush:  # no compaction yet (every 300 s by default): the block answers by scanning
        answer = node.query("needle | stats count() as n")
        assert answer["rows"] == [{"n": 200}] and answer["stats"]["blocks_indexed"] == 0, answer
        assert node.query("haystack")["stats"]["blocks_scanned"] == 1
        node.stop()  # restarted with a quick compaction, which gives the block its index
        node.env.update(HELIOS_BLOCK_SYNC_SECS="0.5", HELIOS_COMPACTION_INTERVAL_SECS="0.5",
                        HELIOS_GC_GRACE_SECS="0.1")
        node.start()
        wait_until(lambda: [is_compacted(b.stem) for b in blocks()] == [True], what="the block rewritten")
    assert [is_compacted(b.stem) for b in blocks()] == [not on_flush]
    answer = node.query("needle | stats count() as n")
    assert answer["rows"] == [{"n": 200}] and answer["stats"]["blocks_indexed"] == 1, answer
    answer = node.query("haystack")
    assert answer["rows"] == [] and answer["stats"]["blocks_pruned"] == 1, answer  # an ASCII block: pruned
    node.stop()
    [block] = blocks()
    data = bytearray(block.read_bytes())
    data[-20] ^= 0x01  # the end of the file: the token index
    block.write_bytes(bytes(data))
    node.start()
    reply = node.request("POST", "/api/v1/query", json={"q": "haystack"})  # not pruned from the damaged index
    assert reply.status_code == 503 and "damaged" in reply.json()["error"], reply.text
    assert str(block) in quarantined(node)
    assert node.request("GET", "/healthz", token=None).status_code == 200


@pytest.mark.parametrize("pipe", ["stats count()", "stats count() as n by (level)", "stats count() by (nosuch)",
                                  "timechart 1h", "timechart 13m count() as a, count() as b"])
def test_counts_from_the_index_equal_counting_rows(blocks: dict[str, tuple[BlockEntry, Path]], pipe: str) -> None:
    """``* | stats count() by (f)`` and ``* | timechart`` answered without reading rows equal the same
    pipe over the rows themselves (a ``fields`` pipe first makes the executor read them)."""
    cache = BlockCache(1 << 30)
    fast, _ = _run(f"* | {pipe}", blocks["indexed"], cache)
    slow, stats = _run(f"* | fields _time, _msg, level | {pipe}", blocks["indexed"], cache)
    assert fast == slow and fast


def test_a_plain_search_cut_at_its_limit_says_truncated(blocks: dict[str, tuple[BlockEntry, Path]]) -> None:
    for name in ("indexed", "scanned"):
        entry, path = blocks[name]
        source = Source(dataset="d", day=0, min_time=entry.min_time, max_time=entry.max_time, rows=entry.rows,
                        block=entry, path=path)
        cut = execute(parse("error"), [source], BlockCache(1 << 30), start_ns=None, end_ns=None, limit=10)
        assert cut.table.num_rows == 10 and cut.stats["truncated"] is True
        whole = execute(parse("error | limit 100000"), [source], BlockCache(1 << 30), start_ns=None, end_ns=None,
                        limit=100_000)
        assert 10 < whole.table.num_rows < 100_000 and whole.stats["truncated"] is False


@pytest.mark.parametrize("unindexed", [(), (1,), (0, 1, 2)], ids=["indexed", "one-flushed", "all-flushed"])
@pytest.mark.parametrize("overlap", [False, True])
def test_a_compaction_equals_building_one_block_of_the_same_rows(tmp_path: Path, overlap: bool,
                                                                 unindexed: tuple[int, ...]) -> None:
    """Inputs with different fields (one lacks ``user``, one has ``code`` as integers) merge into the
    block that building their rows at once gives: the same rows, columns and index. Inputs whose
    times interleave are sorted and indexed again (``overlap``); inputs a flush wrote without an index
    (``unindexed``) have their messages tokenised."""
    table = _table()
    n = table.num_rows
    thirds = [table.slice(0, n // 3), table.slice(n // 3, n // 3), table.slice(2 * (n // 3))]
    thirds[0] = thirds[0].append_column("user", pa.array([f"u{i % 7}" for i in range(thirds[0].num_rows)]))
    thirds[2] = thirds[2].append_column("code", pa.array(range(thirds[2].num_rows), pa.int64()))
    thirds[2] = thirds[2].append_column("user", pa.nulls(thirds[2].num_rows, pa.string()))
    if overlap:  # the middle third's times spread over the others'
        middle = thirds[1]
        thirds[1] = middle.set_column(0, "_time", pa.array(
            [table.column("_time")[i * 3].value + 1 for i in range(middle.num_rows)], pa.int64()).cast(middle.schema.field("_time").type))
    inputs = []
    for i, piece in enumerate(thirds):
        entry = build_block(tmp_path / "in", f"in-{i}", [piece], dataset="d", day=0, node="n", created_ns=0,
                            index="later" if i in unindexed else "tokens")
        inputs.append(((tmp_path / "in" / entry.filename).read_bytes(), entry))
    merged = merge_blocks(tmp_path / "m", "m", inputs, dataset="d", day=0, node="n", created_ns=0)
    whole = build_block(tmp_path / "w", "w", thirds, dataset="d", day=0, node="n", created_ns=0)
    got = load_block(tmp_path / "m" / merged.filename, merged)
    want = load_block(tmp_path / "w" / whole.filename, whole)
    assert got.schema.names == want.schema.names and got.equals(want)
    assert (merged.rows, merged.min_time, merged.max_time) == (whole.rows, whole.min_time, whole.max_time)
    sections = [tokens.TokenIndex((tmp_path / d / e.filename).read_bytes()[e.parquet_bytes:])
                for d, e in (("m", merged), ("w", whole))]
    assert sections[0].terms.equals(sections[1].terms) and sections[0].columns == sections[1].columns
    assert sections[0].fields == sections[1].fields == {"service", "host", "level", "user"}
    assert (tokens._concat_frames(sections[0]) == tokens._concat_frames(sections[1])).all()


def test_answers_from_memory_equal_the_scan_threads(tmp_path: Path) -> None:
    """An aggregation over blocks whose index and needed columns are in memory is answered on the
    query's own thread (``from_memory``: lookups only, no scan thread); those answers equal a scan's,
    and a block the shortcut cannot answer (unsure rows, a phrase, a time range cutting the block,
    columns not in memory) is left to ``scan_block``."""
    table = _table()
    table = table.filter(pc.string_is_ascii(table.column("_msg")))  # no unsure row: lookups can answer
    built = {}
    for name, index in (("indexed", "tokens"), ("scanned", "bloom")):
        entry = build_block(tmp_path / name, f"b-{name}", [table], dataset="d", day=0, node="n", created_ns=0,
                            index=index)
        built[name] = Source(dataset="d", day=0, min_time=entry.min_time, max_time=entry.max_time,
                             rows=entry.rows, block=entry, path=tmp_path / name / entry.filename)
    everything = {"low": -(1 << 63), "high": (1 << 63) - 1}
    cache, answered = BlockCache(1 << 30), 0
    for text in [t for t in _queries(seed=41, count=200) if "|" not in t]:
        query = parse(f"{text} | stats count() as n by (level)")
        needed = needed_columns(query)
        source = built["indexed"]
        assert from_memory(query, source, BlockCache(1 << 30), needed=needed, **everything) is None  # cold
        slow = scan_block(query, source, cache, None, needed=needed, keep_last=None, check=never, **everything)
        quick = from_memory(query, source, cache, needed=needed, **everything)
        scanned = scan_block(query, built["scanned"], BlockCache(1 << 30), None, needed=needed, keep_last=None,
                             check=never, **everything)
        expected = [] if scanned is False else sorted(scanned.table.column("level").to_pylist(), key=str)
        assert ([] if slow is False else sorted(slow.table.column("level").to_pylist(), key=str)) == expected, text
        if quick is None:
            continue
        answered += 1
        assert ([] if quick is False else sorted(quick.table.column("level").to_pylist(), key=str)) == expected, text
        assert quick is False or (quick.indexed and quick.rows_scanned == 0)
        middle = (source.min_time + source.max_time) // 2  # a range that cuts the block: the scan's job
        assert from_memory(query, source, cache, needed=needed, low=middle, high=everything["high"]) in (None, False)
    assert answered >= 100, "most random filters are whole-token lookups, answered from memory"
    quoted = parse('"connection reset" | stats count()')  # a phrase: the index only gives candidates
    scan_block(quoted, built["indexed"], cache, None, needed=[], keep_last=None, check=never, **everything)
    assert from_memory(quoted, built["indexed"], cache, needed=[], **everything) is None


def test_grouping_postings_by_radix_equals_sorting_keys() -> None:
    """``tokens._group``: up to 65,536 ids it sorts the ids alone (a radix sort that keeps rows in
    order); past that it sorts (id, row) keys. Both give each id its sorted distinct rows."""
    import numpy as np
    rng = np.random.default_rng(7)
    for _ in range(200):
        rows_n = int(rng.integers(1, 3000))
        counts = rng.integers(0, 6, rows_n)  # tokens a row
        rows = np.repeat(np.arange(rows_n, dtype=np.uint32), counts)  # never decreasing, as built
        size = int(rng.choice([1, 2, 50, 65_536]))
        ids = rng.integers(0, size, len(rows)).astype(np.int64)
        bits = max(1, (rows_n - 1).bit_length())
        radix = tokens._group(ids, rows, size, bits)
        keyed = tokens._group(ids, rows, 1 << 17, bits)  # the same ids, past 65,536: sorted keys
        assert np.array_equal(radix[1], keyed[1]) and np.array_equal(radix[0], keyed[0][: size + 1])
        for i in range(min(size, 5)):
            expected = sorted(set(rows[ids == i].tolist()))
            assert radix[1][radix[0][i] : radix[0][i + 1]].tolist() == expected

"""The Markdown table of bench/query.py: each measure at each size, its ratio to DuckDB, its goal.

Goals are those of issue 14 (ratios to DuckDB in the same run). A goal is
met (✓) when it holds at every size run; the peak-RSS goal is judged at the
largest size, the growth goal between the smallest and the largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CHDB_BYTES_PER_ROW", "QueryRow", "SizeResult", "render"]

CHDB_BYTES_PER_ROW = 19.0  # chDB's figure for compressed log rows, the point of comparison
RSS_GOAL_BYTES = 1 << 30
RSS_GOAL_ROWS = 10_000_000


@dataclass(frozen=True)
class QueryRow:
    """One timed query pair: ``goal`` is the largest acceptable Helios/DuckDB time ratio (None: the
    issue sets none; shown for what it tells)."""

    key: str
    label: str
    goal: float | None


@dataclass
class SizeResult:
    """Everything measured at one size (times in seconds, rates in rows/s)."""

    rows: int
    times: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (Helios, DuckDB)
    # rows/s: "1", "2" (clients, default settings), "at-flush" (2 clients, HELIOS_INDEX_ON_FLUSH=true),
    # "no-index" (2 clients, no compaction during the ingest: nothing indexed), "parse" (the
    # node's parse of each batch, records.parse_ndjson, in the bench's process on one thread),
    # "pyarrow" (pyarrow.json alone, both cores: what the node's parse was before session 13)
    ingest: dict[str, float] = field(default_factory=dict)
    indexed: float = 0.0  # rows / time from the first request of the kept node until every row was indexed
    duck_load: float = 0.0
    block_bytes: int = 0
    dir_bytes: int = 0
    peak_rss: int = 0
    notes: list[str] = field(default_factory=list)


def _rows(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            value = n / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return str(n)


def _time(s: float) -> str:
    if not math.isfinite(s):
        return "failed"
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _rate(r: float) -> str:
    return f"{r / 1e6:.2f} M rows/s" if r >= 1e6 else f"{r / 1e3:.0f} k rows/s"


def _ratio(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def _growth(x: float) -> str:
    return f"×{x:.1f}" if math.isfinite(x) else "—"


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else "✓" if ok else "✗"


def render(machine: str, setup: str, queries: list[QueryRow], results: list[SizeResult]) -> str:
    """The whole results document: header, table, notes."""
    first, last = results[0], results[-1]
    growing = len(results) > 1
    head = ["measure", "goal"]
    for r in results:
        head += [f"{_rows(r.rows)} rows: Helios", "DuckDB", "ratio"]
    if growing:
        head.append(f"growth {_rows(last.rows)} / {_rows(first.rows)}: Helios (DuckDB)")
    head.append("met")
    lines = [f"**Machine:** {machine}", "", f"**Setup:** {setup}", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def row(cells: list[str], growth: str, met: bool | None) -> None:
        lines.append("| " + " | ".join(cells + ([growth] if growing else []) + [_mark(met)]) + " |")

    for q in queries:
        cells = [q.label, "—" if q.goal is None else f"≤ {q.goal:.1f}×"]
        for r in results:
            h, d = r.times[q.key]
            cells += [_time(h), _time(d), _ratio(h / d)]
        hf, df = first.times[q.key]
        hl, dl = last.times[q.key]
        row(cells, f"{_growth(hl / hf)} ({_growth(dl / df)})",
            None if q.goal is None else all(r.times[q.key][0] / r.times[q.key][1] <= q.goal
                                            for r in results))
        if q.key == "rare" and growing:
            cells = [f"rare token: time at {_rows(last.rows)} / time at {_rows(first.rows)} rows", "≤ 2×"]
            row(cells + ["", "", ""] * len(results), f"{_growth(hl / hf)} ({_growth(dl / df)})", hl / hf <= 2.0)

    ingests = (("1", "HTTP ingest, 1 client", "— (raise it)"),
               ("2", "HTTP ingest, 2 clients", "≥ 1.0× (floor 0.5×)"),
               ("at-flush", "… 2 clients, index built at flush (`HELIOS_INDEX_ON_FLUSH=true`)", "—"),
               ("no-index", "… 2 clients, nothing indexed during the ingest (no compaction)",
                "—"),
               ("parse", "the node's parse alone: `records.parse_ndjson` of each batch (the C reader "
                "and normalising) in the bench's process, one thread (no HTTP, WAL or blocks)", "—"),
               ("pyarrow", "`pyarrow.json.read_json` of each batch alone (both cores; the parser "
                "before session 13)", "—"))
    for key, label, goal in ingests:
        cells = [f"{label}, 5,000-row batches, vs DuckDB `read_json` load", goal]
        for r in results:
            cells += [_rate(r.ingest[key]), _rate(r.duck_load), _ratio(r.ingest[key] / r.duck_load)]
        growth = (f"×{(last.rows / last.ingest[key]) / (first.rows / first.ingest[key]):.1f} "
                  f"(×{(last.rows / last.duck_load) / (first.rows / first.duck_load):.1f})")
        met = None if key != "2" else all(r.ingest["2"] / r.duck_load >= 1.0 for r in results)
        if met is False and all(r.ingest["2"] / r.duck_load >= 0.5 for r in results):
            row(cells, growth, False)
            lines[-1] = lines[-1][: -len("✗ |")] + "✗ (floor ✓) |"
        else:
            row(cells, growth, met)
    cells = ["ingest rate lost to index building: 1 − (2 clients) / (nothing indexed)", "≤ 10 %"]
    for r in results:
        cells += [f"{100 * (1 - r.ingest['2'] / r.ingest['no-index']):.0f} %", "—", ""]
    row(cells, "", all(r.ingest["2"] >= 0.9 * r.ingest["no-index"] for r in results))
    cells = ["rows / time from the first request until every row is in an indexed block (2 clients)", "—"]
    for r in results:
        cells += [_rate(r.indexed), _rate(r.duck_load), _ratio(r.indexed / r.duck_load)]
    row(cells, f"×{(last.rows / last.indexed) / (first.rows / first.indexed):.1f}", None)

    for label, attr, goal in (("bytes per stored row: block files", "block_bytes",
                               f"beside chDB's {CHDB_BYTES_PER_ROW:g} B/row"),
                              ("bytes per stored row: whole data dir", "dir_bytes", "—")):
        cells = [label, goal]
        for r in results:
            per = getattr(r, attr) / r.rows
            cells += [f"{per:.1f} B", "—", f"{per / CHDB_BYTES_PER_ROW:.2f}× chDB"]
        row(cells, f"×{(getattr(last, attr) / last.rows) / (getattr(first, attr) / first.rows):.2f}", None)

    cells = ["peak RSS of the node (VmHWM, ingest + queries)", f"≤ 1 GiB at {_rows(RSS_GOAL_ROWS)} rows"]
    for r in results:
        cells += [f"{r.peak_rss / (1 << 20):.0f} MiB", "—", ""]
    row(cells, f"×{last.peak_rss / first.peak_rss:.2f}", last.peak_rss <= RSS_GOAL_BYTES)

    lines.append("")
    for r in results:
        lines.append(f"At {_rows(r.rows)} rows:")
        lines += [f"- {note}" for note in r.notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

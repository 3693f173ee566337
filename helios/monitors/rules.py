"""What a monitor evaluation means, as pure functions (no I/O, no clock).

- **Window.** An evaluation at ``now`` runs the query over
  ``[now − window − lag, now − lag)``, where ``lag`` is
  ``HELIOS_BLOCK_SYNC_SECS``: a row written on any node is visible on every
  node within that bound, so by the time it enters a window every node,
  the leader included, can see it. Rows are never missed; alerts are late by
  ``lag`` at most.
- **Value.** The query's first numeric result (the first number in the first
  row of an aggregation), or the number of matching rows for a plain search.
  No value (an empty aggregation, ``avg`` of nothing) never satisfies the
  condition.
- **States.** ``ok`` and ``firing`` are committed (replicated, one per
  cluster); ``error`` (the query failed) and ``disabled`` are shown, never
  notified. ``decide`` is the state machine: ``ok → firing`` after the
  condition has held for ``for`` (at once without it), ``firing → ok``
  (sent as ``resolved``) as soon as it does not hold, and while firing a
  repeat every ``repeat``.
- **Payload.** Built from the committed notification record only, so every
  retry, from any node, sends the same bytes with the same ``id``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from helios import timeutil
from helios.query import ast

__all__ = ["AGGREGATING", "Decision", "body_of", "counted", "decide", "first_number", "holds", "payload_of",
           "search_url", "sign", "window_of"]

AGGREGATING = (ast.Stats, ast.Timechart, ast.Top)
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def window_of(now_ns: int, window_ns: int, lag_ns: int) -> tuple[int, int]:
    """``[now − window − lag, now − lag)`` as ``(from, to)``."""
    end = now_ns - lag_ns
    return end - window_ns, end


def counted(query: ast.Query) -> ast.Query:
    """The query whose first result is the monitor's value: a plain search counts its rows."""
    if any(isinstance(p, AGGREGATING) for p in query.pipes):
        return query
    return ast.Query(query.filter, (*query.pipes, ast.Stats((ast.Agg("count", None, "count"),), ())))


def first_number(rows: list[dict[str, Any]]) -> int | float | None:
    """The first number of the first row (booleans and text are not numbers)."""
    if not rows:
        return None
    for value in rows[0].values():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def holds(value: int | float | None, op: str, threshold: int | float) -> bool:
    if value is None or value != value:  # None or NaN
        return False
    return bool(_OPS[op](value, threshold))


@dataclass(frozen=True)
class Decision:
    notify: str | None  # "firing" or "resolved": commit a notification; None: nothing to send
    repeat: bool  # a repeated "firing" while already firing
    pending_since_ns: int | None  # when the condition started to hold (``for`` not yet reached)


def decide(committed: str, condition: bool, *, now_ns: int, pending_since_ns: int | None, for_ns: int,
           repeat_ns: int, last_fired_ns: int | None) -> Decision:
    """The state machine of one evaluation, from the committed state ``ok`` or ``firing``."""
    if committed == "firing":
        if not condition:
            return Decision("resolved", False, None)
        if repeat_ns and last_fired_ns is not None and now_ns - last_fired_ns >= repeat_ns:
            return Decision("firing", True, None)
        return Decision(None, False, None)
    if not condition:
        return Decision(None, False, None)
    since = now_ns if pending_since_ns is None else pending_since_ns
    if now_ns - since >= for_ns:
        return Decision("firing", False, None)
    return Decision(None, False, since)


def search_url(base_url: str, query: str, dataset: object, from_ns: int, to_ns: int) -> str:
    """A link that opens the search over the evaluated window in the UI."""
    params: dict[str, str] = {"q": query, "from": timeutil.format_ns(from_ns), "to": timeutil.format_ns(to_ns)}
    if isinstance(dataset, str):
        params["dataset"] = dataset
    elif isinstance(dataset, list):
        params["dataset"] = ",".join(dataset)
    return f"{base_url}/?{urlencode(params)}"


def payload_of(record: dict[str, Any]) -> dict[str, Any]:
    """The webhook payload of a notification record (DESIGN §6), keys in a fixed order."""
    monitor = record["monitor"]
    return {
        "id": record["id"],
        "state": record["state"],
        "monitor": {"id": monitor["id"], "name": monitor["name"], "query": monitor["query"],
                    "dataset": monitor["dataset"]},
        "value": record["value"],
        "threshold": record["threshold"],
        "op": record["op"],
        "window": {"from": timeutil.format_ns(record["window"]["from"]),
                   "to": timeutil.format_ns(record["window"]["to"])},
        "evaluated_at": timeutil.format_ns(record["evaluated_at"]),
        "url": record["url"],
    }


def body_of(record: dict[str, Any]) -> bytes:
    return orjson.dumps(payload_of(record))


def sign(secret: str, body: bytes) -> str:
    """``X-Helios-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body under the monitor's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

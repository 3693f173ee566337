"""The committed state of each monitor: one ``alerts/<monitor id>`` object of the control plane.

::

    {"state": "ok" | "firing", "since": ns, "epoch": <monitors lease epoch of the last transition>,
     "history": [record, ...]}          oldest first, the newest MAX_HISTORY kept

    record = {"id", "state": "firing" | "resolved", "repeat", "monitor": {"id", "name", "query", "dataset"},
              "value", "threshold", "op", "window": {"from", "to"}, "evaluated_at", "url",
              "committed_at", "delivery": "pending" | "delivered" | "failed" | "none",
              "attempts", "delivered_at", "error"}

**Exactly one notification per transition.** A transition is committed
*with its notification record* (and its id) before anything is sent; it is a
compare-and-swap on the control-plane log (``ControlPlane.commit`` calls the
mutation again on the newest state after a lost race), and the mutation
commits nothing when the committed state is no longer the one the leader
evaluated from or when a newer lease epoch already committed here (fencing).
So one record exists per transition, whoever evaluates. Delivery sends the
record's payload and then commits ``delivered`` (or ``failed`` once the
retry budget is spent); a leader that dies in between leaves the record
``pending``, and the next leader sends it again — same record, same ``id``.
Marks are not fenced: they record what happened.
"""

from __future__ import annotations

from typing import Any, Callable

from helios import timeutil
from helios.control.plane import UNCHANGED, ControlPlane, Obj

__all__ = ["KIND", "MAX_HISTORY", "SYSTEM", "doc_of", "history_view", "last_fired_ns", "mark", "pending",
           "state_of", "transition"]

KIND = "alerts"
MAX_HISTORY = 50  # records kept per monitor; an older record still pending is given up with it
SYSTEM = "system/monitors"  # the ``by`` of the leader's commits (audit trail)

Mutation = Callable[[Obj | None], Any]


def doc_of(obj: Obj | None) -> dict[str, Any]:
    if obj is None or obj.doc is None:
        return {"state": "ok", "since": 0, "epoch": 0, "history": []}
    return obj.doc


def state_of(control: ControlPlane, monitor_id: str) -> dict[str, Any]:
    return doc_of(control.get(KIND, monitor_id))


def pending(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Records committed but not yet delivered, oldest first."""
    return [r for r in doc["history"] if r["delivery"] == "pending"]


def last_fired_ns(doc: dict[str, Any]) -> int | None:
    """When the newest ``firing`` notification was evaluated (for ``repeat``)."""
    for record in reversed(doc["history"]):
        if record["state"] == "firing":
            return int(record["evaluated_at"])
    return None


def transition(expected: str, record: dict[str, Any], epoch: int, last_fired: int | None,
               now_ns: int) -> Mutation:
    """Commit ``record`` if the committed state is still ``expected`` and no newer epoch wrote here."""
    new_state = "firing" if record["state"] == "firing" else "ok"

    def mutate(current: Obj | None) -> Any:
        doc = doc_of(current)
        if doc["epoch"] > epoch or doc["state"] != expected or last_fired_ns(doc) != last_fired:
            return UNCHANGED  # fenced, or another leader already made this transition
        since = doc["since"] if new_state == doc["state"] else now_ns
        history = [*doc["history"], {**record, "committed_at": now_ns}][-MAX_HISTORY:]
        return {"state": new_state, "since": since, "epoch": epoch, "history": history}

    return mutate


def mark(notification_id: str, delivery: str, attempts: int, now_ns: int, error: str | None) -> Mutation:
    """Record the outcome of a delivery: ``delivered`` or ``failed``."""

    def mutate(current: Obj | None) -> Any:
        doc = doc_of(current)
        history, changed = [], False
        for record in doc["history"]:
            if record["id"] == notification_id and record["delivery"] == "pending":
                record = {**record, "delivery": delivery, "attempts": max(attempts, record["attempts"]),
                          "delivered_at": now_ns if delivery == "delivered" else None, "error": error}
                changed = True
            history.append(record)
        return {**doc, "history": history} if changed else UNCHANGED

    return mutate


def history_view(doc: dict[str, Any], live_attempts: dict[str, tuple[int, str | None]]) -> list[dict[str, Any]]:
    """``GET /api/v1/monitors/{id}/history``: transitions newest first, with their delivery."""
    out = []
    for record in reversed(doc["history"]):
        attempts, error = record["attempts"], record["error"]
        if record["delivery"] == "pending" and record["id"] in live_attempts:
            attempts, error = live_attempts[record["id"]]
        out.append({
            "id": record["id"], "state": record["state"], "repeat": record["repeat"],
            "at": timeutil.format_ns(record["committed_at"]),
            "evaluated_at": timeutil.format_ns(record["evaluated_at"]),
            "value": record["value"], "threshold": record["threshold"], "op": record["op"],
            "window": {"from": timeutil.format_ns(record["window"]["from"]),
                       "to": timeutil.format_ns(record["window"]["to"])},
            "delivery": record["delivery"], "attempts": attempts,
            "delivered_at": timeutil.format_ns(record["delivered_at"]) if record["delivered_at"] else None,
            "error": error,
        })
    return out

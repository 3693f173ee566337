"""Monitor evaluation and delivery, done by the holder of the ``monitors`` lease.

Every node runs ``MonitorService.run``; two loops, both under ``supervise``:

- ``monitors`` (every ``PASS_INTERVAL_S``): if this node leads, evaluate each
  enabled monitor that is due (``schedule``), commit each transition with its
  notification record (``helios.monitors.alerts``), start a delivery task for
  every monitor with committed, undelivered records, and publish the live
  status (``helios.monitors.status``). A node that does not lead does none
  of it; one that loses the lease cancels its deliveries at once.
- ``monitor status`` (with a shared store, every ``status_poll_s``): a node
  that does not lead reads the leader's published status, for its views.

Fencing: a transition is committed only after ``Lease.still_leader(epoch)``
has re-read the lease, and its mutation refuses the commit if a newer epoch
wrote the monitor's state (``alerts.transition``); so evaluation under an
expired or lost lease commits nothing, and what a deposed leader could still
commit is a valid compare-and-swap that the next leader delivers.

Delivery (one task per monitor, its records in order; ``Webhooks`` bounds
what is in flight on the node, so a slow receiver holds one slot and delays
no other monitor and no evaluation): each attempt has 10 s; failures are
retried with exponential backoff and jitter (doubling from 1 s, capped at a
twelfth of the retry budget and at 5 min) until ``HELIOS_MONITOR_RETRY_SECS``
after the commit, then the record is marked ``failed``. A receiver's
failures are recorded in the history and counted in /metrics, not reported
as the node's health; a store failure while recording an outcome is.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import Counter
from functools import partial
from typing import Any, Callable

import pyarrow as pa
import trio

from backends import Backend, Corrupt
from backends import Unavailable as StoreUnavailable
from helios import log, timeutil
from helios.control.plane import UNCHANGED, ControlPlane, Obj
from helios.errors import HeliosError, InvalidInput
from helios.errors import Unavailable as ServiceUnavailable
from helios.monitors import alerts, rules
from helios.monitors.allow import Refused, WebhookPolicy
from helios.monitors.status import STATUS_KEY, Board, Live
from helios.monitors.webhooks import Outcome, Webhooks
from helios.query.executor import execute, to_rows
from helios.query.cancel import CancelToken, QueryCancelled
from helios.query.parser import parse_async
from helios.replication.lease import Lease
from helios.storage.blocks import CorruptBlock
from helios.storage.engine import Engine
from helios.storage.fetch import query_blocks
from helios.supervisor import Health, backoff_s, supervise

__all__ = ["MonitorService"]

PASS_INTERVAL_S = 0.5
PUBLISH_EVERY_S = 1.0
MAX_BACKOFF_S = 300.0
# What a failing query raises: the monitor shows ``error``; anything else is a bug.
EVALUATION_ERRORS = (HeliosError, OSError, CorruptBlock, pa.ArrowException, QueryCancelled)
_log = log.get("helios.monitors")


def _datasets(value: object) -> set[str] | None:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return set(value)
    return None


def _duration_ns(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    return timeutil.parse_duration_ns(value) if isinstance(value, str) else 0


class MonitorService:
    def __init__(self, control: ControlPlane, engine: Engine, lease: Lease, store: Backend | None, *,
                 node_id: str, lag_s: float, retry_s: float, policy: WebhookPolicy, health: Health,
                 status_poll_s: float = 5.0, clock: Callable[[], int] = timeutil.now_ns,
                 rng: random.Random | None = None, query_timeout_s: float | None = 60.0) -> None:
        self.control = control
        self.query_timeout_s = query_timeout_s  # as any query's (HELIOS_QUERY_TIMEOUT_SECS)
        self.engine = engine
        self.lease = lease
        self.store = store
        self.node_id = node_id
        self.lag_ns = int(lag_s * 1e9)
        self.retry_ns = int(retry_s * 1e9)
        self.backoff_cap_s = min(MAX_BACKOFF_S, max(1.0, retry_s / 12))
        self.policy = policy
        self.webhooks = Webhooks(policy)
        self.health = health
        self.status_poll_s = status_poll_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.base_url = ""  # links in notifications; the node sets it once it listens
        self.board = Board()  # the leader's own; elsewhere the last one it published
        self.stats: Counter[str] = Counter()
        self._epoch = 0  # the lease epoch this node evaluates under; 0 while it does not lead
        self._deliveries: dict[str, trio.CancelScope] = {}  # monitor id -> its delivery task
        self._nursery: trio.Nursery | None = None
        self._dirty = False
        self._published_at = -1e18

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(partial(supervise, self.health, "monitors", self.pass_once,
                                           interval_s=PASS_INTERVAL_S))
                if self.store is not None:
                    nursery.start_soon(partial(supervise, self.health, "monitor status", self.poll_status,
                                               interval_s=self.status_poll_s))
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.webhooks.aclose()

    # -- the leader's pass ------------------------------------------------------

    async def pass_once(self) -> None:
        lease = self.lease
        if not lease.is_leader:
            if self._epoch:
                self._step_down()
            return
        epoch = lease.epoch
        if epoch != self._epoch:
            await self._take_over(epoch)
        monitors = {obj.id: obj for obj in self.control.list("monitors")}
        for gone in [m for m in self.board.monitors if m not in monitors]:
            del self.board.monitors[gone]
        for obj in monitors.values():
            live = self.board.monitors.setdefault(obj.id, Live())
            if not (obj.doc or {}).get("enabled", True) or self.clock() < live.next_due_ns:
                continue
            await self._evaluate(obj, live, epoch)
            if not (lease.is_leader and lease.epoch == epoch):
                return  # lost meanwhile: the next pass steps down
        await self._forget_deleted(monitors, epoch)
        self._start_deliveries(monitors, epoch)
        await self._publish()

    async def _take_over(self, epoch: int) -> None:
        self._cancel_deliveries()
        inherited = None
        if self.store is not None:
            try:
                inherited = await Board.fetch(self.store, self.control.sealer)
            except Corrupt as exc:  # start afresh; reported by name until the next publish replaces it
                self.health.quarantine("monitors", exc.key, exc.reason)
        self.board = Board(epoch=epoch, node=self.node_id, monitors=inherited.monitors if inherited else {})
        self._epoch, self._dirty = epoch, True
        log.log(_log, logging.INFO, "evaluating monitors", epoch=epoch, inherited=inherited is not None)

    def _step_down(self) -> None:
        log.log(_log, logging.INFO, "stopped evaluating monitors", epoch=self._epoch)
        self._cancel_deliveries()
        self._epoch = 0

    def _cancel_deliveries(self) -> None:
        for scope in self._deliveries.values():
            scope.cancel()
        self._deliveries.clear()

    async def _evaluate(self, obj: Obj, live: Live, epoch: int) -> None:
        doc = obj.doc or {}
        if live.version != obj.version:
            live.version, live.pending_since_ns = obj.version, None
        now = self.clock()
        start, end = rules.window_of(now, _duration_ns(doc, "window"), self.lag_ns)
        live.evaluated_ns, live.next_due_ns = now, now + _duration_ns(doc, "schedule")
        self.stats["evaluations"] += 1
        self._dirty = True
        try:
            value = await self._value(doc, start, end)
        except EVALUATION_ERRORS as exc:
            self.stats["evaluation_errors"] += 1
            live.state, live.value, live.error = "error", None, str(exc)[:300] or type(exc).__name__
            return
        except Exception as exc:  # noqa: BLE001 -- a bug the monitor's query hit: see below
            # A user's saved query must not end the node: it would end every node that evaluates
            # it, again after each restart. The monitor fails, as a query over HTTP answers 500.
            _log.error("a monitor's query failed on a bug", exc_info=exc,
                       extra={"fields": {"monitor": obj.id}})
            self.stats["evaluation_errors"] += 1
            live.state, live.value, live.error = "error", None, "internal error; see the node's log"
            return
        live.value, live.error = value, None
        committed = alerts.state_of(self.control, obj.id)
        condition = doc["condition"]
        last_fired = alerts.last_fired_ns(committed)
        decision = rules.decide(committed["state"], rules.holds(value, condition["op"], condition["threshold"]),
                                now_ns=now, pending_since_ns=live.pending_since_ns, for_ns=_duration_ns(doc, "for"),
                                repeat_ns=_duration_ns(doc, "repeat"), last_fired_ns=last_fired)
        live.pending_since_ns = decision.pending_since_ns
        live.state = committed["state"]
        if decision.notify is None:
            return
        record = {
            "id": secrets.token_hex(16), "state": decision.notify, "repeat": decision.repeat,
            "monitor": {"id": obj.id, "name": doc["name"], "query": doc["query"], "dataset": doc.get("dataset")},
            "value": value, "threshold": condition["threshold"], "op": condition["op"],
            "window": {"from": start, "to": end}, "evaluated_at": now,
            "url": rules.search_url(self.base_url, doc["query"], doc.get("dataset"), start, end),
            "delivery": "pending" if doc.get("webhook") else "none", "attempts": 0, "delivered_at": None,
            "error": None,
        }
        if not await self.lease.still_leader(epoch):
            log.log(_log, logging.INFO, "lease lost before committing a transition; nothing committed",
                    monitor=obj.id, epoch=epoch)
            return
        try:
            result = await self.control.commit(
                alerts.KIND, obj.id, alerts.transition(committed["state"], record, epoch, last_fired, now),
                alerts.SYSTEM)
        except ServiceUnavailable as exc:  # the store: the pass backs off (supervise) and evaluates again
            raise StoreUnavailable(str(exc)) from None
        if result is not None and any(r["id"] == record["id"] for r in (result.doc or {})["history"]):
            live.state = "firing" if decision.notify == "firing" else "ok"
            self.stats["transitions"] += 1
            log.log(_log, logging.INFO, f"monitor {decision.notify}", monitor=obj.id, value=value,
                    notification=record["id"], repeat=decision.repeat)

    async def _value(self, doc: dict[str, Any], start: int, end: int) -> int | float | None:
        query = rules.counted(await parse_async(doc["query"]))
        engine = self.engine
        sources = engine.sources(_datasets(doc.get("dataset")), start, end)

        # Blocks not in the local cache are fetched; a value missing some of them would be wrong, so
        # a partial evaluation is an error (the monitor's state says so) rather than a number.
        async with query_blocks(engine.blocks, sources, start_ns=start, end_ns=end) as blocks:
            fetch = blocks.open if engine.blocks.store is not None else None

            def run() -> tuple[list[dict[str, Any]], bool]:
                token = CancelToken(self.query_timeout_s)
                token.start()
                result = execute(query, sources, engine.cache, start_ns=start, end_ns=end, limit=1,
                                 fetch=fetch, check=token.check)
                return to_rows(result), bool(result.stats["partial"])

            rows, partial = await trio.to_thread.run_sync(run)
        if partial:
            raise ServiceUnavailable("blocks of the window could not be fetched from the shared store in time")
        return rules.first_number(rows)

    async def _forget_deleted(self, monitors: dict[str, Obj], epoch: int) -> None:
        """The committed state of deleted monitors goes too (their pending notifications with it)."""
        for obj in self.control.list(alerts.KIND):
            if obj.id not in monitors:
                def delete(current: Obj | None) -> Any:
                    return None if alerts.doc_of(current)["epoch"] <= epoch else UNCHANGED
                try:
                    await self.control.commit(alerts.KIND, obj.id, delete, alerts.SYSTEM)
                except ServiceUnavailable as exc:
                    raise StoreUnavailable(str(exc)) from None

    async def _publish(self) -> None:
        now = trio.current_time()
        if self.store is None or not self._dirty or now - self._published_at < PUBLISH_EVERY_S:
            return
        self.board.at_ns, self.board.epoch, self.board.node = self.clock(), self._epoch, self.node_id
        await self.board.publish(self.store, self.control.sealer)
        self._dirty, self._published_at = False, now
        self.health.ok("monitors", STATUS_KEY)

    async def poll_status(self) -> None:
        """A node that does not lead shows the leader's published status."""
        if self._epoch or self.store is None:
            return
        board = await Board.fetch(self.store, self.control.sealer)
        if board is not None and board.at_ns >= self.board.at_ns:
            self.board = board

    # -- delivery ---------------------------------------------------------------

    def _start_deliveries(self, monitors: dict[str, Obj], epoch: int) -> None:
        for obj in self.control.list(alerts.KIND):
            if obj.id in monitors and obj.id not in self._deliveries and alerts.pending(alerts.doc_of(obj)):
                assert self._nursery is not None, "run() starts the service"
                scope = self._deliveries[obj.id] = trio.CancelScope()
                self._nursery.start_soon(self._deliver, obj.id, epoch, scope)

    async def _deliver(self, monitor_id: str, epoch: int, scope: trio.CancelScope) -> None:
        """Send the monitor's pending notifications, oldest first, while this node leads."""
        with scope:
            try:
                while self.lease.is_leader and self.lease.epoch == epoch:
                    todo = alerts.pending(alerts.state_of(self.control, monitor_id))
                    if not todo:
                        return
                    delivery, attempts, error = await self._attempts(monitor_id, todo[0])
                    await self._record(monitor_id, todo[0]["id"], delivery, attempts, error)
            finally:
                if self._deliveries.get(monitor_id) is scope:
                    del self._deliveries[monitor_id]

    async def _attempts(self, monitor_id: str, record: dict[str, Any]) -> tuple[str, int, str | None]:
        body = rules.body_of(record)
        attempts, failures = int(record["attempts"]), 0
        deadline_ns = int(record["committed_at"]) + self.retry_ns
        while True:
            monitor = self.control.get("monitors", monitor_id)
            webhook = (monitor.doc or {}).get("webhook") if monitor is not None else None
            if not webhook:
                return "failed", attempts, "the monitor has no webhook any more"
            outcome = await self.webhooks.post(webhook, body, (monitor.doc or {}).get("secret"), record["id"])
            attempts += 1
            if outcome.ok:
                self.stats["notifications_sent"] += 1
                return "delivered", attempts, None
            self.stats["attempts_failed"] += 1
            self.board.deliveries[record["id"]] = (attempts, outcome.error)
            self._dirty = True
            remaining_s = (deadline_ns - self.clock()) / 1e9
            if remaining_s <= 0:
                self.stats["notifications_failed"] += 1
                log.log(_log, logging.WARNING, "gave up a notification", monitor=monitor_id,
                        notification=record["id"], attempts=attempts, error=outcome.error)
                return "failed", attempts, outcome.error
            await trio.sleep(min(remaining_s, backoff_s(1.0, failures, self.rng, cap_s=self.backoff_cap_s)))
            failures += 1

    async def _record(self, monitor_id: str, notification_id: str, delivery: str, attempts: int,
                      error: str | None) -> None:
        """Commit the outcome; retried until the store takes it (never sent again meanwhile)."""
        failures = 0
        while True:
            try:
                await self.control.commit(alerts.KIND, monitor_id,
                                          alerts.mark(notification_id, delivery, attempts, self.clock(), error),
                                          alerts.SYSTEM)
                break
            except ServiceUnavailable as exc:
                self.health.fail("monitor delivery", monitor_id, StoreUnavailable(str(exc)))
                await trio.sleep(backoff_s(1.0, failures, self.rng))
                failures += 1
        if failures:
            self.health.ok("monitor delivery", monitor_id)
        self.board.deliveries.pop(notification_id, None)
        self._dirty = True

    # -- what the API shows -------------------------------------------------------

    def live_fields(self, obj: Obj) -> dict[str, Any]:
        """``state``, ``last_evaluated_at``, ``last_value`` (and ``last_error``) of a monitor's view."""
        committed = alerts.state_of(self.control, obj.id)
        live = self.board.monitors.get(obj.id)
        evaluated = live.evaluated_ns if live is not None else None
        if not (obj.doc or {}).get("enabled", True):
            state = "disabled"
        elif live is not None and evaluated is not None and evaluated >= committed["since"]:
            state = live.state
        else:
            state = committed["state"]
        return {"state": state, "last_evaluated_at": timeutil.format_ns(evaluated) if evaluated else None,
                "last_value": live.value if live is not None else None,
                "last_error": live.error if live is not None else None}

    def check_webhook(self, url: str) -> None:
        try:
            self.policy.check(url)
        except Refused as exc:
            raise InvalidInput(str(exc)) from None

    def history(self, monitor_id: str) -> list[dict[str, Any]]:
        return alerts.history_view(alerts.state_of(self.control, monitor_id), self.board.deliveries)

    async def send_test(self, obj: Obj) -> tuple[str, Outcome]:
        """``POST /api/v1/monitors/{id}/test``: one signed attempt now, from this node; nothing committed."""
        doc = obj.doc or {}
        if not doc.get("webhook"):
            raise InvalidInput("the monitor has no webhook to test")
        now = self.clock()
        start, end = rules.window_of(now, _duration_ns(doc, "window"), self.lag_ns)
        live = self.board.monitors.get(obj.id)
        record = {"id": "test-" + secrets.token_hex(12), "state": "firing",
                  "monitor": {"id": obj.id, "name": doc["name"], "query": doc["query"], "dataset": doc.get("dataset")},
                  "value": live.value if live is not None else None, "threshold": doc["condition"]["threshold"],
                  "op": doc["condition"]["op"], "window": {"from": start, "to": end}, "evaluated_at": now,
                  "url": rules.search_url(self.base_url, doc["query"], doc.get("dataset"), start, end)}
        outcome = await self.webhooks.post(doc["webhook"], rules.body_of(record), doc.get("secret"),
                                           record["id"], test=True)
        return record["id"], outcome

    def metrics_lines(self) -> list[str]:
        monitors = {o.id: o for o in self.control.list("monitors")}
        firing = sum(1 for o in self.control.list(alerts.KIND) if alerts.doc_of(o)["state"] == "firing"
                     and o.id in monitors and (monitors[o.id].doc or {}).get("enabled", True))
        s = self.stats
        return ["# TYPE helios_monitor_evaluations_total counter",
                f"helios_monitor_evaluations_total {s['evaluations']}",
                "# TYPE helios_monitor_evaluation_errors_total counter",
                f"helios_monitor_evaluation_errors_total {s['evaluation_errors']}",
                "# TYPE helios_monitors_firing gauge", f"helios_monitors_firing {firing}",
                "# TYPE helios_monitor_notifications_sent_total counter",
                f"helios_monitor_notifications_sent_total {s['notifications_sent']}",
                "# TYPE helios_monitor_notification_attempts_failed_total counter",
                f"helios_monitor_notification_attempts_failed_total {s['attempts_failed']}",
                "# TYPE helios_monitor_notifications_failed_total counter",
                f"helios_monitor_notifications_failed_total {s['notifications_failed']}"]

"""Monitors: the rules (pure), then real nodes with a webhook receiver in this process.

The receiver is a tiny HTTP server on 127.0.0.1 that records every POST (headers
and body) and can go down (its port closed: connections refused) and come back
on the same port. "A receiver down for a minute" is scaled down: it stays down
until the leader has failed several attempts, with the same code path as an hour.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import orjson
import pytest
import trio

from helios.control.plane import UNCHANGED, Obj
from helios.monitors import alerts, rules
from helios.monitors.allow import Refused, WebhookPolicy, parse_allow
from helios.query.parser import parse
from helios.timeutil import parse_instant
from support import SYNC_SECS, Server, wait_until

LEASE = 2.0
SCHEDULE_S = 10.0  # the smallest schedule a monitor may have
WINDOW_S = 12.0
FAST = {"HELIOS_LEASE_SECS": str(LEASE), "HELIOS_MONITOR_RETRY_SECS": "120"}
PAYLOAD_KEYS = ["id", "state", "monitor", "value", "threshold", "op", "window", "evaluated_at", "url"]


# -- the rules, pure -----------------------------------------------------------------


def test_decide_is_the_state_machine() -> None:
    d = rules.decide
    assert d("ok", False, now_ns=5, pending_since_ns=None, for_ns=0, repeat_ns=0, last_fired_ns=None).notify is None
    assert d("ok", True, now_ns=5, pending_since_ns=None, for_ns=0, repeat_ns=0, last_fired_ns=None).notify == "firing"
    # `for`: the condition must hold that long; the timer starts at the first evaluation that holds
    waiting = d("ok", True, now_ns=100, pending_since_ns=None, for_ns=50, repeat_ns=0, last_fired_ns=None)
    assert waiting.notify is None and waiting.pending_since_ns == 100
    assert d("ok", True, now_ns=149, pending_since_ns=100, for_ns=50, repeat_ns=0, last_fired_ns=None).notify is None
    assert d("ok", True, now_ns=150, pending_since_ns=100, for_ns=50, repeat_ns=0, last_fired_ns=None).notify == "firing"
    broken = d("ok", False, now_ns=140, pending_since_ns=100, for_ns=50, repeat_ns=0, last_fired_ns=None)
    assert broken.notify is None and broken.pending_since_ns is None
    # firing: resolved as soon as it does not hold; `repeat` re-notifies while it does
    assert d("firing", False, now_ns=9, pending_since_ns=None, for_ns=50, repeat_ns=0, last_fired_ns=1).notify == "resolved"
    assert d("firing", True, now_ns=9, pending_since_ns=None, for_ns=0, repeat_ns=0, last_fired_ns=1).notify is None
    assert d("firing", True, now_ns=30, pending_since_ns=None, for_ns=0, repeat_ns=30, last_fired_ns=1).notify is None
    again = d("firing", True, now_ns=31, pending_since_ns=None, for_ns=0, repeat_ns=30, last_fired_ns=1)
    assert again.notify == "firing" and again.repeat


def test_values_windows_and_payloads() -> None:
    assert rules.window_of(100, 30, 10) == (60, 90)
    assert rules.first_number([{"host": "a", "n": 3, "m": 4.5}]) == 3
    assert rules.first_number([{"ok": True, "avg": 1.5}]) == 1.5
    assert rules.first_number([]) is None and rules.first_number([{"avg": None}]) is None
    assert [rules.holds(v, op, 3) for v, op in [(4, ">"), (3, ">"), (3, ">="), (2, "<"), (3, "=="), (3, "!="),
                                                  (None, ">"), (float("nan"), "!=")]] == [
        True, False, True, True, True, False, False, False]
    plain = rules.counted(parse("error | fields _msg"))
    assert type(plain.pipes[-1]).__name__ == "Stats"
    aggregated = parse("error | stats avg(latency) as a")
    assert rules.counted(aggregated) is aggregated
    record = {"id": "n1", "state": "firing", "repeat": False, "monitor": {"id": "m", "name": "x", "query": "q",
              "dataset": "d", "extra": 1}, "value": 3, "threshold": 1, "op": ">", "window": {"from": 0, "to": 10**9},
              "evaluated_at": 2 * 10**9, "url": "http://h/?q=q", "delivery": "pending", "attempts": 0}
    payload = rules.payload_of(record)
    assert list(payload) == PAYLOAD_KEYS and list(payload["monitor"]) == ["id", "name", "query", "dataset"]
    assert payload["window"] == {"from": "1970-01-01T00:00:00.000000000Z", "to": "1970-01-01T00:00:01.000000000Z"}
    body = rules.body_of(record)
    assert body == rules.body_of(dict(reversed(list(record.items()))))  # the same bytes on every retry
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert rules.sign("s3cret", body) == "sha256=" + expected


def test_webhook_allow_policy() -> None:
    assert parse_allow(" * ") == ("*",)
    for bad in ["", "http://x", "10.0.0.0/33", "a b", "!"]:
        with pytest.raises(ValueError):
            parse_allow(bad)
    internal = WebhookPolicy(parse_allow("!127.0.0.0/8,!10.0.0.0/8,!::1,!metadata.internal,*"))
    for url in ["http://127.0.0.1:9/x", "http://10.1.2.3/", "http://[::1]:80/", "http://metadata.internal/"]:
        with pytest.raises(Refused):
            internal.check(url)
    internal.check("https://hooks.example.org/x")  # a name: judged by its addresses before each delivery
    only = WebhookPolicy(parse_allow("hooks.example.org,*.slack.com,192.0.2.0/24"))
    only.check("https://hooks.example.org/a")
    only.check("https://x.slack.com/a")
    only.check("http://192.0.2.7/")
    with pytest.raises(Refused):
        only.check("http://198.51.100.1/")
    names_only = WebhookPolicy(parse_allow("hooks.example.org"))
    with pytest.raises(Refused):
        names_only.check("https://evil.example.org/")

    async def resolved() -> None:
        await WebhookPolicy(parse_allow("127.0.0.0/8")).check_resolved("http://localhost:1/")
        with pytest.raises(Refused):
            await internal.check_resolved("http://localhost:1/")

    trio.run(resolved)


def _obj(doc: dict[str, Any] | None) -> Obj | None:
    return None if doc is None else Obj("alerts", "m1", 1, doc, 0, 0, "t")


def test_a_transition_commits_once_and_is_fenced() -> None:
    record = {"id": "n1", "state": "firing", "repeat": False, "delivery": "pending", "attempts": 0,
              "evaluated_at": 50, "error": None, "delivered_at": None}
    first = alerts.transition("ok", record, epoch=3, last_fired=None, now_ns=50)(None)
    assert first["state"] == "firing" and first["epoch"] == 3 and first["history"][0]["committed_at"] == 50
    # a second leader that evaluated the same "ok" state loses: the state is no longer "ok"
    rival = {**record, "id": "n2"}
    assert alerts.transition("ok", rival, epoch=3, last_fired=None, now_ns=51)(_obj(first)) is UNCHANGED
    # a deposed leader (older epoch) commits nothing once a newer epoch wrote here
    resolved = {**record, "id": "n3", "state": "resolved", "evaluated_at": 60}
    assert alerts.transition("firing", resolved, epoch=2, last_fired=50, now_ns=60)(_obj(first)) is UNCHANGED
    later = alerts.transition("firing", resolved, epoch=4, last_fired=50, now_ns=60)(_obj(first))
    assert later["state"] == "ok" and [r["id"] for r in alerts.pending(later)] == ["n1", "n3"]
    marked = alerts.mark("n1", "delivered", 2, 70, None)(_obj(later))
    assert [r["id"] for r in alerts.pending(marked)] == ["n3"] and marked["history"][0]["attempts"] == 2
    assert alerts.mark("n1", "delivered", 3, 80, None)(_obj(marked)) is UNCHANGED  # marked once


# -- a webhook receiver in this process ------------------------------------------------


@dataclass
class Post:
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        return orjson.loads(self.body)


class Receiver:
    """Records every POST; ``down()`` closes the port (connections refused), ``up()`` reopens it."""

    def __init__(self, *, slow: bool = False) -> None:
        self.port = 0
        self.posts: list[Post] = []
        self.release = threading.Event()  # a slow receiver answers once this is set (or after 30 s)
        self.slow = slow
        self._server: ThreadingHTTPServer | None = None
        self.up()

    def up(self) -> None:
        posts, receiver = self.posts, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append(Post({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.slow:
                    receiver.release.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def real(self) -> list[Post]:
        return [p for p in self.posts if "x-helios-test" not in p.headers]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    if made._server is not None:
        made.down()


def monitor_body(receiver: Receiver, **changes: Any) -> dict[str, Any]:
    return {"name": "too many zorkfails", "query": "zorkfail | stats count() as n", "dataset": "mon",
            "schedule": f"{SCHEDULE_S:g}s", "window": f"{WINDOW_S:g}s", "condition": {"op": ">", "threshold": 0},
            "webhook": receiver.url, **changes}


def rows(n: int, tag: str) -> bytes:
    return b"".join(orjson.dumps({"_msg": f"zorkfail {tag} {i}"}) + b"\n" for i in range(n))


def leader_of(nodes: list[Server]) -> Server:
    """The one node that leads monitors, once every node agrees on it."""
    def agreed() -> Server | None:
        infos = [n.request("GET", "/api/v1/cluster").json() for n in nodes]
        leaders = {i["leaders"]["monitors"] for i in infos}
        selves = [n for n, i in zip(nodes, infos) if i["leaders"]["monitors"] == i["node_id"]]
        return selves[0] if len(selves) == 1 and len(leaders) == 1 else None
    return wait_until(agreed, timeout_s=10 * LEASE + 20, what="one monitors leader seen by every node")


def history(node: Server, monitor_id: str) -> list[dict[str, Any]]:
    reply = node.request("GET", f"/api/v1/monitors/{monitor_id}/history")
    assert reply.status_code == 200, reply.text
    return reply.json()


def check_signature(post: Post, secret: str) -> None:
    expected = "sha256=" + hmac.new(secret.encode(), post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["x-helios-signature"], expected)
    assert post.headers["x-helios-notification-id"] == post.doc["id"]


# -- one node --------------------------------------------------------------------------


def test_one_node_fires_signs_and_shows_it(server_factory: Callable[..., Server], receiver: Receiver) -> None:
    node = server_factory("solo", HELIOS_BLOCK_SYNC_SECS="1")
    for bad in [{"for": "soon"}, {"repeat": "1s"}, {"for": 5}]:
        reply = node.request("POST", "/api/v1/monitors", json=monitor_body(receiver, **bad))
        assert reply.status_code == 400 and reply.json()["error"], bad
    made = node.request("POST", "/api/v1/monitors", json=monitor_body(receiver, repeat="10m"))
    assert made.status_code == 201, made.text
    monitor = made.json()
    secret, monitor_id = monitor["secret"], monitor["id"]
    assert secret and monitor["repeat"] == "10m" and monitor["for"] is None
    view = node.request("GET", f"/api/v1/monitors/{monitor_id}").json()
    assert "secret" not in view and all("secret" not in m for m in node.request("GET", "/api/v1/monitors").json())
    assert view["state"] == "ok" and {"last_evaluated_at", "last_value"} <= set(view)
    # the secret survives a change and is shown only by a rotation
    changed = node.request("PUT", f"/api/v1/monitors/{monitor_id}", json={**monitor_body(receiver), "version": 1})
    assert changed.status_code == 200 and "secret" not in changed.json()

    assert node.ingest(rows(3, "solo"), dataset="mon").status_code == 200
    assert node.ingest(b'{"_msg": "zorkfail elsewhere"}\n', dataset="other").status_code == 200
    wait_until(lambda: receiver.real(), timeout_s=SCHEDULE_S + 1 + 20, what="the firing notification")
    post = receiver.real()[0]
    check_signature(post, secret)
    doc = post.doc
    assert list(doc) == PAYLOAD_KEYS and doc["state"] == "firing" and doc["value"] == 3
    assert (doc["threshold"], doc["op"]) == (0, ">")
    assert doc["monitor"] == {"id": monitor_id, "name": "too many zorkfails", "query": "zorkfail | stats count() as n",
                              "dataset": "mon"}
    assert doc["url"].startswith(node.url + "/?") and "dataset=mon" in doc["url"]
    wait_until(lambda: history(node, monitor_id)[0]["delivery"] == "delivered", what="the delivery recorded")
    entry = history(node, monitor_id)[0]
    assert entry["id"] == doc["id"] and entry["attempts"] == 1 and entry["value"] == 3
    view = node.request("GET", f"/api/v1/monitors/{monitor_id}").json()
    assert view["state"] == "firing" and view["last_value"] == 3 and view["last_evaluated_at"]
    metrics = node.request("GET", "/metrics").text
    assert "helios_monitors_firing 1" in metrics and "helios_monitor_notifications_sent_total 1" in metrics

    tested = node.request("POST", f"/api/v1/monitors/{monitor_id}/test").json()
    assert tested["delivered"] is True and tested["id"].startswith("test-")
    test_post = [p for p in receiver.posts if p.headers.get("x-helios-test") == "1"][0]
    check_signature(test_post, secret)
    rotated = node.request("POST", f"/api/v1/monitors/{monitor_id}/secret").json()
    assert rotated["secret"] != secret
    node.request("POST", f"/api/v1/monitors/{monitor_id}/test")
    check_signature([p for p in receiver.posts if p.headers.get("x-helios-test") == "1"][1], rotated["secret"])
    assert len(receiver.real()) == 1
    assert node.request("GET", "/api/v1/monitors/000000000000/history").status_code == 404

    disabled = node.request("PUT", f"/api/v1/monitors/{monitor_id}",
                            json={**monitor_body(receiver), "enabled": False, "version": rotated["version"]})
    assert disabled.json()["state"] == "disabled"


def test_webhooks_outside_the_allow_list_are_refused(server_factory: Callable[..., Server],
                                                     receiver: Receiver) -> None:
    node = server_factory("guarded", HELIOS_MONITOR_WEBHOOK_ALLOW="!127.0.0.0/8,!localhost,*")
    before = node.request("GET", "/api/v1/monitors").json()
    for url in [receiver.url, "http://localhost:9/x", "ftp://example.org/"]:
        reply = node.request("POST", "/api/v1/monitors", json={**monitor_body(receiver), "webhook": url})
        assert reply.status_code == 400 and reply.json()["error"], url
    assert node.request("GET", "/api/v1/monitors").json() == before
    made = node.request("POST", "/api/v1/monitors", json={**monitor_body(receiver), "webhook": "http://192.0.2.1/x"})
    assert made.status_code == 201
    assert node.stop() == 0
    code, err = Server(node.data_dir, {"HELIOS_MONITOR_WEBHOOK_ALLOW": "http://nope"}).refused()
    assert code == 2 and "HELIOS_MONITOR_WEBHOOK_ALLOW" in err
    assert receiver.posts == []


def test_a_slow_receiver_delays_no_other_monitor(server_factory: Callable[..., Server],
                                                  receiver: Receiver) -> None:
    slow = Receiver(slow=True)
    try:
        node = server_factory("busy", HELIOS_BLOCK_SYNC_SECS="1")
        held = node.request("POST", "/api/v1/monitors", json={**monitor_body(slow), "name": "slow"}).json()
        node.request("POST", "/api/v1/monitors", json={**monitor_body(receiver), "name": "fast"})
        assert node.ingest(rows(2, "busy"), dataset="mon").status_code == 200
        wait_until(lambda: slow.posts, timeout_s=SCHEDULE_S + 1 + 20, what="the slow receiver to be holding a request")
        held_at = time.monotonic()
        wait_until(lambda: receiver.real(), timeout_s=30, what="the other monitor's notification")
        waited = time.monotonic() - held_at
        print(f"the other monitor was notified {waited:.2f} s after the slow receiver started to hold")
        assert waited < 10.0, "the other monitor waited for the slow receiver's attempt to time out"
        assert history(node, held["id"])[0]["delivery"] == "pending"
        slow.release.set()
        wait_until(lambda: history(node, held["id"])[0]["delivery"] == "delivered", timeout_s=60,
                   what="the slow receiver's notification delivered")
        assert len({p.doc["id"] for p in slow.posts}) == 1  # retries after the timeout carry the same id
    finally:
        slow.release.set()
        slow.down()


# -- a cluster -------------------------------------------------------------------------


def test_three_nodes_notify_once_across_a_leader_kill(server_factory: Callable[..., Server],
                                                      store_env: dict[str, str], receiver: Receiver) -> None:
    env = {**store_env, **FAST}
    nodes = [server_factory(name, **env) for name in ("a", "b", "c")]
    leader = leader_of(nodes)
    writer = next(n for n in nodes if n is not leader)
    made = writer.request("POST", "/api/v1/monitors", json=monitor_body(receiver))
    assert made.status_code == 201, made.text
    monitor_id, secret = made.json()["id"], made.json()["secret"]
    # The rows are written on a node that does not evaluate: the leader sees them through the store.
    acked = time.monotonic()
    assert writer.ingest(rows(5, "cluster"), dataset="mon").status_code == 200
    rows_written_ns = time.time_ns()  # the rows carry their ingest time, before this
    wait_until(lambda: receiver.real(), timeout_s=SCHEDULE_S + SYNC_SECS + 20, what="one firing")
    print(f"fired {time.monotonic() - acked:.1f} s after the ingest was acknowledged")
    firing = receiver.real()[0]
    check_signature(firing, secret)
    assert firing.doc["state"] == "firing" and firing.doc["value"] == 5
    # Once the delivery is recorded, sending it again would be a bug, not a retry.
    wait_until(lambda: history(leader, monitor_id)[0]["delivery"] == "delivered", what="the delivery recorded")
    for node in nodes:  # every node shows the state (committed) and what the leader saw (published)
        wait_until(lambda node=node: node.request("GET", f"/api/v1/monitors/{monitor_id}").json()["last_value"] == 5,
                   timeout_s=20, what="the live status on every node")
        assert node.request("GET", f"/api/v1/monitors/{monitor_id}").json()["state"] == "firing"

    leader.kill()  # kill -9 while firing
    others = [n for n in nodes if n is not leader]
    new_leader = leader_of(others)
    wait_until(lambda: len(receiver.real()) >= 2, timeout_s=WINDOW_S + SCHEDULE_S + 10 * LEASE + 30,
               what="the resolve from the new leader")
    resolved = receiver.real()[1]
    check_signature(resolved, secret)
    assert resolved.doc["state"] == "resolved" and resolved.doc["value"] == 0
    assert parse_instant(resolved.doc["window"]["from"], "from") > rows_written_ns, "the window passed the rows"
    assert resolved.doc["id"] != firing.doc["id"]
    # One more evaluation on the new leader sends nothing more.
    seen = new_leader.request("GET", f"/api/v1/monitors/{monitor_id}").json()["last_evaluated_at"]
    wait_until(lambda: new_leader.request("GET", f"/api/v1/monitors/{monitor_id}").json()["last_evaluated_at"] != seen,
               timeout_s=SCHEDULE_S + 20, what="another evaluation")
    assert [p.doc["state"] for p in receiver.real()] == ["firing", "resolved"]
    entries = history(new_leader, monitor_id)
    assert [(e["state"], e["id"], e["delivery"]) for e in entries] == [
        ("resolved", resolved.doc["id"], "delivered"), ("firing", firing.doc["id"], "delivered")]


def test_a_receiver_that_was_down_gets_the_notification_once(server_factory: Callable[..., Server],
                                                              store_env: dict[str, str], receiver: Receiver) -> None:
    """Committed, not delivered, leader killed: the next leader delivers it, with the same id."""
    env = {**store_env, **FAST}
    nodes = [server_factory(name, **env) for name in ("a", "b")]
    leader = leader_of(nodes)
    receiver.down()
    made = leader.request("POST", "/api/v1/monitors", json=monitor_body(receiver))
    monitor_id = made.json()["id"]
    assert leader.ingest(rows(2, "down"), dataset="mon").status_code == 200

    def failing() -> list[dict[str, Any]]:
        entries = history(leader, monitor_id)
        return entries if entries and entries[0]["attempts"] >= 2 else []

    entries = wait_until(failing, timeout_s=SCHEDULE_S + SYNC_SECS + 30, what="failed attempts")
    assert entries[0]["delivery"] == "pending" and entries[0]["error"]
    notification = entries[0]["id"]
    assert "helios_monitor_notification_attempts_failed_total" in leader.request("GET", "/metrics").text
    leader.kill()
    survivor = next(n for n in nodes if n is not leader)
    leader_of([survivor])
    receiver.up()
    wait_until(lambda: receiver.real(), timeout_s=60, what="the delivery once the receiver is back")
    wait_until(lambda: history(survivor, monitor_id)[0]["delivery"] == "delivered", what="the delivery recorded")
    posts = receiver.real()
    assert [p.doc["id"] for p in posts] == [notification] and posts[0].doc["state"] == "firing"
    check_signature(posts[0], made.json()["secret"])


# -- fencing, in process -----------------------------------------------------------------

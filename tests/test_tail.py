"""Live tail against real nodes: exactly once per stream across ingest, pull and compaction; slow readers."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import httpx
import orjson

from support import SYNC_SECS, Server, wait_until

LEASE = 2.0
FAST = {"HELIOS_LEASE_SECS": str(LEASE), "HELIOS_COMPACTION_INTERVAL_SECS": "1", "HELIOS_GC_GRACE_SECS": "2",
        "HELIOS_TAIL_BUFFER_ROWS": "300"}


class Tail:
    """A tail stream read continuously in a thread: its rows (with arrival times) and dropped counts."""

    def __init__(self, node: Server, token: str | None = None, **params: Any) -> None:
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self.dropped: list[int] = []
        self.comments = 0
        self.status: int | None = None
        self.error: Exception | None = None
        self.opened = threading.Event()
        self._stop = False
        headers = {"Authorization": f"Bearer {token or node.token}"}
        self._thread = threading.Thread(target=self._read, args=(node.url, params, headers), daemon=True)
        self._thread.start()
        assert self.opened.wait(30), "the tail did not answer"

    def _read(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            self._follow(url, params, headers)
        except httpx.HTTPError as exc:  # the node went away (killed at the end of a test)
            self.error = exc
        finally:
            self.opened.set()

    def _follow(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> None:
        event = "message"
        with httpx.stream("GET", f"{url}/api/v1/tail", params=params, headers=headers,
                          timeout=httpx.Timeout(60.0, read=None)) as reply:
            self.status = reply.status_code
            if reply.status_code != 200:
                self.body = reply.read()
                self.opened.set()
                return
            for line in reply.iter_lines():
                if line.startswith(":"):
                    self.comments += 1
                    self.opened.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    doc = orjson.loads(line[6:])
                    if event == "dropped":
                        self.dropped.append(doc["dropped"])
                    else:
                        self.rows.append((time.monotonic(), doc))
                    event = "message"
                if self._stop:
                    return

    def close(self) -> None:
        self._stop = True

    def messages(self) -> list[str]:
        return [doc["_msg"] for _, doc in self.rows]


def batch(prefix: str, start: int, count: int, pad: int = 0) -> bytes:
    return b"".join(orjson.dumps({"_msg": f"tailrow {prefix}-{i}" + " x" * pad, "n": i}) + b"\n"
                    for i in range(start, start + count))


def blocks(node: Server, dataset: str) -> int:
    return node.datasets().get(dataset, {}).get("blocks", 0)


def metric(node: Server, name: str) -> float:
    for line in node.request("GET", "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def ingest_in_blocks(node: Server, prefix: str, batches: int, size: int) -> list[float]:
    """Ingest ``batches`` batches, each flushed into its own block; returns each batch's ack time."""
    acks = []
    for b in range(batches):
        assert node.ingest(batch(prefix, b * size, size), dataset="tail").status_code == 200
        acks.append(time.monotonic())
        wait_until(lambda: metric(node, "helios_memtable_rows") == 0, timeout_s=20, what="a flush")
    return acks


def compaction_leader(nodes: list[Server]) -> Server:
    def agreed() -> Server | None:
        infos = [n.request("GET", "/api/v1/cluster").json() for n in nodes]
        if len({i["leaders"]["compaction"] for i in infos}) != 1:
            return None
        return next((n for n, i in zip(nodes, infos) if i["leaders"]["compaction"] == i["node_id"]), None)
    return wait_until(agreed, timeout_s=10 * LEASE + 20, what="a compaction leader")


def test_a_tail_gets_local_and_peer_rows_once_across_compaction(server_factory: Callable[..., Server],
                                                                store_env: dict[str, str]) -> None:
    env = {**store_env, **FAST}
    nodes = [server_factory("a", **env), server_factory("b", **env)]
    # The stream is on the node that does not compact: the compaction output reaches it by a pull,
    # as a peer's block, and only its being a compaction output keeps its rows from being sent again.
    peer = compaction_leader(nodes)
    local = next(n for n in nodes if n is not peer)
    stream = Tail(local, q="tailrow", dataset="tail")
    acks = ingest_in_blocks(local, "L", 5, 10)
    wait_until(lambda: len(stream.rows) >= 10, timeout_s=10, what="the first local rows")
    first_local = stream.rows[0][0] - acks[0]
    print(f"first local batch on the stream {first_local * 1000:.0f} ms after its acknowledgement")
    ingest_in_blocks(peer, "P", 5, 10)
    expected = {f"tailrow L-{i}" for i in range(50)} | {f"tailrow P-{i}" for i in range(50)}
    try:
        wait_until(lambda: set(stream.messages()) >= expected, timeout_s=SYNC_SECS + 30, what="every row on the tail")
    except AssertionError:
        raise AssertionError(f"missing on the tail: {sorted(expected - set(stream.messages()))}") from None
    # The partition (ten small blocks) is compacted by the peer; the stream's node pulls the output.
    wait_until(lambda: metric(peer, "helios_compactions_total") >= 1 and blocks(local, "tail") < 10,
               timeout_s=10 * LEASE + 30, what="a compaction of the partition applied on the stream's node")
    wait_until(lambda: blocks(peer, "tail") == blocks(local, "tail"), timeout_s=SYNC_SECS + 30, what="convergence")
    # Rows after the compaction still come, once; they follow anything the compaction's pull could have sent.
    assert peer.ingest(batch("P", 50, 5), dataset="tail").status_code == 200
    assert local.ingest(batch("L", 50, 5), dataset="tail").status_code == 200
    expected |= {f"tailrow L-{i}" for i in range(50, 55)} | {f"tailrow P-{i}" for i in range(50, 55)}
    try:
        wait_until(lambda: set(stream.messages()) >= expected, timeout_s=SYNC_SECS + 30, what="rows after compaction")
    except AssertionError:
        raise AssertionError(f"missing after compaction: {sorted(expected - set(stream.messages()))}") from None
    counts = Counter(stream.messages())
    assert set(counts) == expected and set(counts.values()) == {1}, [m for m, n in counts.items() if n > 1]
    assert stream.dropped == []
    row = stream.rows[0][1]
    assert set(row) == {"_time", "_msg", "dataset", "n"} and row["dataset"] == "tail"
    assert local.count("tailrow", dataset="tail") == 110  # and queries still count each row once
    if compaction_leader(nodes) is not peer:
        print("note: compaction leadership moved during the test")
    stream.close()


def test_a_reader_that_stops_reading_gets_dropped_and_ingest_goes_on(server_factory: Callable[..., Server]) -> None:
    node = server_factory("slow", HELIOS_BLOCK_SYNC_SECS="2", HELIOS_TAIL_BUFFER_ROWS="200")
    began = time.monotonic()
    for k in range(5):
        assert node.ingest(batch("other", 200 * k, 200, pad=500), dataset="other").status_code == 200  # ~1 KB rows
    baseline_s = (time.monotonic() - began) / 5
    # A raw HTTP/1.0 reader with a tiny receive buffer, so the kernel holds little for it.
    host, port = urlsplit(node.url).hostname, urlsplit(node.url).port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    query = urlencode({"q": "tailrow", "dataset": "big"})
    sock.sendall(f"GET /api/v1/tail?{query} HTTP/1.0\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {node.token}\r\n\r\n".encode())
    received = b""
    while b": helios live tail" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200") or received.startswith(b"HTTP/1.0 200"), received[:200]
    # The reader stops reading. Ingest goes on, and every request is answered, until the node drops rows.
    sent, durations = 0, []
    while metric(node, "helios_tail_rows_dropped_total") == 0:
        assert sent < 40_000, "no rows were dropped for a reader that stopped reading"
        began = time.monotonic()
        assert node.ingest(batch("big", sent, 200, pad=500), dataset="big").status_code == 200
        durations.append(time.monotonic() - began)
        sent += 200
    print(f"rows dropped after {sent} rows")
    for _ in range(5):  # and goes on at its rate while the reader is stalled
        began = time.monotonic()
        assert node.ingest(batch("big", sent, 200, pad=500), dataset="big").status_code == 200
        durations.append(time.monotonic() - began)
        sent += 200
    print(f"ingest of 200 rows: {baseline_s * 1000:.0f} ms before, {sum(durations) / len(durations) * 1000:.0f} ms "
          f"on average with a stalled reader ({sent} rows)")
    assert sum(durations[-5:]) / 5 < max(10 * baseline_s, 2.0)
    assert metric(node, "helios_tail_streams") == 1
    # The reader reads again: the rows it got plus the drops it was told about are every row, once.
    sock.settimeout(30)
    seen: Counter[str] = Counter()
    dropped = 0
    text = received.split(b"\r\n\r\n", 1)[1]
    deadline = time.monotonic() + 60
    while sum(seen.values()) + dropped < sent:
        assert time.monotonic() < deadline, (sum(seen.values()), dropped, sent)
        text += sock.recv(1 << 20)
        events, _, text = text.rpartition(b"\n\n")
        for event in events.split(b"\n\n"):
            lines = event.strip(b"\n").split(b"\n")
            if lines[0] == b"event: dropped":
                dropped += orjson.loads(lines[1][6:])["dropped"]
            elif lines[0].startswith(b"data: "):
                seen[orjson.loads(lines[0][6:])["_msg"].split()[1]] += 1
    assert dropped > 0 and set(seen.values()) <= {1}, "each row at most once"
    assert sum(seen.values()) + dropped == sent
    sock.close()
    wait_until(lambda: metric(node, "helios_tail_streams") == 0, timeout_s=20, what="the closed stream to end")


def test_tail_rules_backfill_roles_and_bounds(server_factory: Callable[..., Server]) -> None:
    node = server_factory("rules", HELIOS_BLOCK_SYNC_SECS="2", HELIOS_TAIL_MAX_STREAMS="3")
    assert node.ingest(batch("old", 0, 5), dataset="tail").status_code == 200
    assert node.ingest(b'{"_msg": "tailrow elsewhere"}\n', dataset="other").status_code == 200
    for params in [{"q": "* | stats count()"}, {"q": "tailrow | sort -n"}, {"q": "* | limit 3"}, {"q": ""},
                   {"q": "tailrow |"}, {"q": "*", "dataset": "Bad Name"}, {"q": "*", "backfill": "-1"},
                   {"q": "*", "backfill": "10001"}]:
        reply = node.request("GET", "/api/v1/tail", params=params)
        assert reply.status_code == 400 and reply.json()["error"], params
    users = {}
    for role in ("viewer", "ingest"):
        made = node.request("POST", "/api/v1/tokens", json={"name": f"tail {role}", "role": role})
        users[role] = made.json()["token"]
    assert node.request("GET", "/api/v1/tail", params={"q": "*"}, token=users["ingest"]).status_code == 403
    assert node.request("GET", "/api/v1/tail", params={"q": "*"}, token=None).status_code == 401

    viewer = Tail(node, users["viewer"], q="tailrow | fields _msg, n", dataset="tail", backfill="3")
    assert viewer.status == 200
    wait_until(lambda: len(viewer.rows) >= 3, timeout_s=10, what="the backfill")
    assert [doc for _, doc in viewer.rows] == [{"_msg": f"tailrow old-{i}", "n": str(i)} for i in (2, 3, 4)]
    everything = Tail(node, q="*")
    third = Tail(node, q="tailrow", dataset="tail,other")
    refused = node.request("GET", "/api/v1/tail", params={"q": "*"})
    assert refused.status_code == 503 and refused.json()["error"]
    assert metric(node, "helios_tail_streams") == 3 and metric(node, "helios_tail_streams_max") == 3
    assert node.ingest(batch("new", 0, 2), dataset="tail").status_code == 200
    assert node.ingest(b'{"_msg": "tailrow other new"}\n', dataset="other").status_code == 200
    wait_until(lambda: len(viewer.rows) >= 5 and len(everything.rows) >= 3 and len(third.rows) >= 3,
               timeout_s=10, what="live rows on every stream")
    assert [doc["_msg"] for _, doc in viewer.rows[3:]] == ["tailrow new-0", "tailrow new-1"]
    assert sorted(everything.messages()) == ["tailrow new-0", "tailrow new-1", "tailrow other new"]
    assert sorted(third.messages()) == sorted(everything.messages())
    # A client that goes away ends its stream at once: a new one can open.
    everything.close()
    assert node.ingest(b'{"_msg": "wake the closing reader"}\n', dataset="tail").status_code == 200
    wait_until(lambda: metric(node, "helios_tail_streams") == 2, timeout_s=20, what="the stream to end")
    again = Tail(node, q="*")
    assert again.status == 200
    assert node.stop() == 0  # open tails end when the node shuts down; the drain does not wait for them



def test_a_backfill_is_a_query_with_its_deadline(server_factory: Callable[..., Server]) -> None:
    """A tail's backfill runs as any query does (a slot of the pool, HELIOS_QUERY_TIMEOUT_SECS,
    stopped when its client leaves): past its deadline it is answered 503 naming it (it ran
    unbounded before); without a backfill the tail opens as usual."""
    node = server_factory("deadline", HELIOS_QUERY_TIMEOUT_SECS="0.000000001")  # past at once
    assert node.ingest(batch("old", 0, 5), dataset="tail").status_code == 200
    reply = node.request("GET", "/api/v1/tail", params={"q": "tailrow", "backfill": "3"})
    assert reply.status_code == 503 and "HELIOS_QUERY_TIMEOUT_SECS" in reply.json()["error"]
    assert metric(node, "helios_tail_streams") == 0  # the stream opened for it was closed
    live = Tail(node, q="tailrow", dataset="tail")
    assert live.status == 200
    assert node.ingest(batch("new", 0, 1), dataset="tail").status_code == 200
    wait_until(lambda: live.messages() == ["tailrow new-0"], timeout_s=10, what="the live row")


def test_helios_tail_follows_the_stream(server_factory: Callable[..., Server]) -> None:
    import signal
    import subprocess
    import sys

    node = server_factory("cli", HELIOS_BLOCK_SYNC_SECS="2")
    assert node.ingest(batch("old", 0, 3), dataset="tail").status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOS_")}
    # Ctrl-C in a terminal: SIGINT as the shell gives it to a foreground command. A suite started in
    # the background of a shell without job control inherits SIGINT ignored, and Python then keeps
    # it ignored (no KeyboardInterrupt): the command would never hear it.
    with subprocess.Popen([sys.executable, "-m", "helios", "tail", "--url", node.url, "--token", node.token,
                           "--dataset", "tail", "--backfill", "2", "tailrow | fields _msg, dataset"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline().strip() for _ in range(2)]
            assert lines == ["tail tailrow old-1", "tail tailrow old-2"]
            assert node.ingest(batch("new", 0, 1), dataset="tail").status_code == 200
            assert node.ingest(b'{"_msg": "tailrow not this dataset"}\n', dataset="other").status_code == 200
            assert node.ingest(batch("new", 1, 1), dataset="tail").status_code == 200
            assert [proc.stdout.readline().strip() for _ in range(2)] == ["tail tailrow new-0", "tail tailrow new-1"]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                assert proc.wait(timeout=30) == 0
            finally:
                proc.kill()  # no-op once it has exited; else the with's own wait would never end
    bad = subprocess.run([sys.executable, "-m", "helios", "tail", "--url", node.url, "--token", node.token,
                          "* | stats count()"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "400" in bad.stderr


async def test_a_tail_whose_query_hits_a_bug_is_closed_alone(monkeypatch: Any) -> None:
    """A live tail's query that hits a bug in the engine ends that stream (logged); the other
    streams get their rows and the dispatcher (supervised: its error would end the node) goes on."""
    import pyarrow as pa

    from helios import tail, timeutil
    from helios.query.parser import parse

    real = tail.mask

    def planted(condition: Any, table: Any, dataset: Any) -> Any:  # the bug: one query's shape
        if "bravo" in repr(condition):
            raise RuntimeError("a planted engine bug")
        return real(condition, table, dataset)

    monkeypatch.setattr(tail, "mask", planted)
    hub = tail.TailHub(None, "n", max_streams=4, buffer_rows=100)  # type: ignore[arg-type]
    good, bad = hub.open(parse("alpha"), None), hub.open(parse("bravo"), None)
    now = time.time_ns()
    hub.publish("default", pa.table({
        "_time": pa.array([now, now + 1], timeutil.TIME_TYPE), "_msg": ["alpha one", "bravo two"]}))
    await hub.dispatch()
    assert bad.closed and bad not in hub.streams
    rows = [orjson.loads(event[len(b"data: "):]) for event in good.buffer]
    assert not good.closed and [row["_msg"] for row in rows] == ["alpha one"]

"""Test support: Loghub records, and real `helios serve` processes on loopback ports."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
# The Loghub samples ship in the repo (tests/data/loghub, with the dataset's LICENSE and
# citation), so a clone with nothing beside it runs the suite; HELIOS_LOGHUB_DIR overrides.
LOGHUB = Path(os.environ.get("HELIOS_LOGHUB_DIR") or REPO / "tests" / "data" / "loghub")
ADMIN_PASSWORD = "test-admin-password"
# Password hashes at N = 2^14 (about 70 ms) instead of the default 2^17 (about 0.5 s and 128 MiB), so that
# the suite's many node starts and logins stay fast; tests about the hash cost set HELIOS_SCRYPT_LOG2_N.
TEST_KDF_ENV = {"HELIOS_SCRYPT_LOG2_N": "14"}
SYNC_SECS = 2.0  # HELIOS_BLOCK_SYNC_SECS of the multi-node tests (store_env)
# How long a test waits for something that must happen eventually (convergence, compaction,
# a leader). A failure bound, not a speed claim: tests that claim a speed (the visibility
# bound, lease takeover) measure it and assert it separately, so this can be generous
# enough for a loaded 2-core machine without hiding a slow mechanism.
SETTLE_S = 60.0
# API tokens are hlt_<id>_<secret>: the id is 16 hex digits, the secret 43 URL-safe base64
# characters, which may themselves contain "_" (helios/control/auth.py).
TOKEN_FORM = re.compile(r"hlt_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
BASE_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
_LEVEL = re.compile(r"\b(INFO|WARN|WARNING|ERROR|FATAL|DEBUG|TRACE|notice|error|warn)\b")


@dataclass(frozen=True)
class Record:
    time_ns: int
    msg: str
    service: str
    host: str
    level: str | None
    size: int  # an integer field
    latency: float  # a float field

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_time": self.time_ns, "_msg": self.msg, "service": self.service,
                               "host": self.host, "size": self.size, "latency": self.latency}
        if self.level is not None:
            out["level"] = self.level
        return out


def loghub_records() -> list[Record]:
    """The 20,000 Loghub lines as records, spread over three UTC days, in a fixed order."""
    records = []
    files = sorted(LOGHUB.glob("*_2k.log"))
    assert len(files) == 10, f"Loghub data missing under {LOGHUB} (tests/data/loghub, or HELIOS_LOGHUB_DIR)"
    index = 0
    for path in files:
        service = path.name.split("_")[0].lower()
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.rstrip("\r")
            if not line.strip():
                continue
            match = _LEVEL.search(line)
            records.append(Record(
                time_ns=BASE_NS + index * 10_000_000_000 + (index % 7) * 1_000,  # 10 s apart: ~2.3 days
                msg=line, service=service, host=f"web-{index % 5}",
                level=match.group(1).upper() if match else None,
                size=len(line), latency=round((index % 1000) / 8, 3)))
            index += 1
    return records


def ndjson(records: list[Record]) -> bytes:
    return b"\n".join(orjson.dumps(r.doc()) for r in records) + b"\n"


def token_parts(token: str) -> tuple[str, str]:
    """The (id, secret) of an API token; the secret is everything after the id, ``_`` included."""
    match = TOKEN_FORM.fullmatch(token)
    assert match, f"not an API token of the form hlt_<16 hex>_<43 base64url>: {token!r}"
    return match["id"], match["secret"]


def typical(samples: list[float]) -> float:
    """The median of several timing samples.

    A speed bound is asserted on it, so one sample delayed by a loaded machine
    does not fail the run, while a mechanism that misses the bound (most
    samples late) still does.
    """
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def wait_until(predicate: Callable[[], Any], timeout_s: float = SETTLE_S, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def cluster(node: Server) -> dict[str, Any]:
    """The node's ``GET /api/v1/cluster``."""
    reply = node.request("GET", "/api/v1/cluster")
    assert reply.status_code == 200, reply.text
    return reply.json()


def metric(node: Server, name: str) -> float:
    """One unlabelled sample of the node's ``/metrics``."""
    for line in node.request("GET", "/metrics").text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"no metric {name}")


def passes(node: Server, read: Callable[[dict[str, Any]], Any], count: int = 2,
           timeout_s: float = SETTLE_S, what: str = "a pass") -> None:
    """Wait until the stamp ``read(cluster(node))`` has changed ``count`` times.

    With ``count=2`` at least one whole pass of that loop began and ended after
    the call: whatever it was going to do to the state seen at the call, it has done.
    """
    for _ in range(count):
        before = read(cluster(node))
        wait_until(lambda: read(cluster(node)) != before, timeout_s=timeout_s, what=what)


def settled(nodes: list[Server], timeout_s: float = SETTLE_S) -> None:
    """Wait until no node has rows to flush or blocks to upload, then for two more pulls on each.

    What a test awaits instead of sleeping "a while" before it checks that
    nothing more arrives: every flush, upload and pull that could still change
    an answer has happened.
    """
    for node in nodes:
        wait_until(lambda node=node: metric(node, "helios_memtable_rows") == 0
                   and cluster(node)["sync"]["pending_uploads"] == 0, timeout_s=timeout_s,
                   what="every row flushed and uploaded")
    for node in nodes:
        passes(node, lambda info: info["sync"]["last_pull"], timeout_s=timeout_s, what="a pull pass")


@dataclass
class Server:
    """A real `helios serve` process on a free loopback port."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    logs: list[str] = field(default_factory=list)
    _token: str | None = None
    _pump: threading.Thread | None = None
    # The binary smoke test runs dist/helios in a clean environment instead of this interpreter.
    program: list[str] | None = None
    base_env: dict[str, str] | None = None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        base = os.environ if self.base_env is None else self.base_env
        env = {k: v for k, v in base.items() if not k.startswith("HELIOS_")}
        env.update({"HELIOS_ADMIN_PASSWORD": ADMIN_PASSWORD, "HELIOS_LOG_LEVEL": "info"})
        env.update(TEST_KDF_ENV)
        env.update(self.env)
        program = self.program or [sys.executable, "-m", "helios"]
        return ([*program, "serve", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"], env)

    def refused(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """Start a node that is expected to refuse: its exit code and everything it wrote to stderr."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv, env = self._command()
        done = subprocess.run(argv, env=env, cwd=self.data_dir.parent, capture_output=True, timeout=timeout_s)
        return done.returncode, done.stderr.decode(errors="replace")

    def start(self, timeout_s: float = SETTLE_S) -> Server:
        argv, env = self._command()
        self.logs = []
        self._token = None
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                                     cwd=self.data_dir.parent)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: Any) -> None:
            with stream:
                for raw in stream:
                    text = raw.decode(errors="replace").rstrip()
                    self.logs.append(text)
                    lines.put(text)
            lines.put(None)

        self._pump = threading.Thread(target=pump, args=(self.proc.stderr,), daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError("the server did not start:\n" + "\n".join(self.logs)) from None
            if line is None:
                self.proc.wait(timeout=30)  # reaped here, not by a warning in a later test
                raise AssertionError("the server exited:\n" + "\n".join(self.logs))
            if '"listening"' in line:
                self.url = orjson.loads(line)["urls"][0]
                return self

    @property
    def token(self) -> str:
        if self._token is None:
            reply = httpx.post(f"{self.url}/api/v1/auth/login",  # scrypt: slow on a loaded machine
                               json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=60.0)
            assert reply.status_code == 200, reply.text
            self._token = reply.json()["token"]
        return self._token

    def request(self, method: str, path: str, *, token: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token == "admin":
            token = self.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60.0, **kwargs)

    def ingest(self, body: bytes, dataset: str = "default", content_type: str = "application/x-ndjson",
               **kwargs: Any) -> httpx.Response:
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
        return self.request("POST", "/api/v1/ingest", params={"dataset": dataset}, content=body,
                            headers=headers, **kwargs)

    def query(self, q: str, **fields: Any) -> dict[str, Any]:
        reply = self.request("POST", "/api/v1/query", json={"q": q, **fields})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def api_token(self, role: str = "ingest", name: str | None = None) -> str:
        """A new API token of ``role`` (made by the admin), as shippers use them."""
        reply = self.request("POST", "/api/v1/tokens", json={"name": name or f"test {role}", "role": role})
        assert reply.status_code == 201, reply.text
        return reply.json()["token"]

    def rows(self, dataset: str, q: str = "*") -> list[dict[str, Any]]:
        return self.query(q, dataset=dataset, limit=100_000)["rows"]

    def count(self, q: str = "*", **fields: Any) -> int:
        rows = self.query(f"{q} | stats count() as n", **fields)["rows"]
        return rows[0]["n"]

    def datasets(self) -> dict[str, dict[str, Any]]:
        reply = self.request("GET", "/api/v1/datasets")
        assert reply.status_code == 200, reply.text
        return {d["name"]: d for d in reply.json()}

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = SETTLE_S) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        self._pump.join(timeout=10)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._pump.join(timeout=10)


@dataclass
class MotoServer:
    """A moto S3 server process (tests/moto_server.py), atomic unless ``patched=False``."""

    patched: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""

    def start(self) -> MotoServer:
        args = [sys.executable, str(REPO / "tests" / "moto_server.py"), "--port", str(self.port)]
        if not self.patched:
            args.append("--unpatched")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.stdout.close()
        if not line:
            raise AssertionError("the moto server did not start")
        self.endpoint = orjson.loads(line)["endpoint"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> Any:
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                     aws_access_key_id="testing", aws_secret_access_key="testing")


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/helios-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/helios-test-aws-credentials",
}


def conditional_put_race(client_factory: Callable[[], Any], bucket: str, rounds: int, threads: int) -> list[int]:
    """Threads race `PUT If-None-Match: *` of one key per round; returns the winners per round."""
    barrier = threading.Barrier(threads)
    wins = [0] * rounds
    lock = threading.Lock()

    def racer(index: int) -> None:
        client = client_factory()
        for round_ in range(rounds):
            barrier.wait()
            try:
                client.put_object(Bucket=bucket, Key=f"selfcheck/{round_}", Body=str(index).encode(),
                                  IfNoneMatch="*")
            except client.exceptions.ClientError as exc:
                assert exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"), exc
                continue
            with lock:
                wins[round_] += 1

    workers = [threading.Thread(target=racer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return wins


def store_outage(store_env: dict[str, str], request: Any) -> Callable[[], None]:
    """Make the test's shared store unreachable; returns the step that brings it back.

    S3: the moto server is stopped (SIGSTOP), so requests hang until a deadline ends them. fs:
    the store's directory is moved away and a file put in its place, so every operation fails.
    """
    spec = store_env["HELIOS_SHARED_STORE"]
    if spec.startswith("s3://"):
        moto: MotoServer = request.getfixturevalue("moto_s3")
        assert moto.proc is not None
        moto.proc.send_signal(signal.SIGSTOP)
        return lambda: moto.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    store = Path(spec)
    hidden = store.with_name("shared-hidden")
    store.rename(hidden)
    store.write_bytes(b"not a directory")

    def restore() -> None:
        store.unlink()
        hidden.rename(store)
    return restore

"""Issue 13, items 5, 7, 8 and 12 (file modes, password length), each against a real `helios serve`.

Every test sends the hostile input to a running node and then checks that the
node is the same process, that the rows ingested before are all still there,
and that the answer was the documented one.
"""

from __future__ import annotations

import concurrent.futures
import os
from datetime import datetime
import re
import stat
from pathlib import Path
from typing import Any, Callable

import httpx
import jwt
import orjson

from helios import config
from support import ADMIN_PASSWORD, TEST_KDF_ENV, Server, wait_until

KEEP_ROWS = 3
FAST_KDF = TEST_KDF_ENV  # N = 2^14, for tests about rules, not about the hash cost (support's default too)
DEFAULT_KDF = {"HELIOS_SCRYPT_LOG2_N": "17"}  # what a node uses when nothing is set (checked below)
_METRIC_LINE = re.compile(r'(# TYPE [a-z_]+ (counter|gauge)|[a-z_]+(\{[a-z_]+="[a-z0-9_.-]*"\})? [0-9.e+-]+)')


def _start(server_factory: Callable[..., Server], **env: str) -> tuple[Server, int]:
    """A node with ``KEEP_ROWS`` rows in dataset ``keep``; returns it and its PID."""
    node = server_factory(**env)
    body = b"".join(orjson.dumps({"_msg": f"keep row {i}", "n": i}) + b"\n" for i in range(KEEP_ROWS))
    assert node.ingest(body, dataset="keep").json() == {"ingested": KEEP_ROWS}
    assert node.proc is not None
    return node, node.proc.pid


def _intact(node: Server, pid: int) -> None:
    """Same process, still answering, every earlier row still there."""
    assert node.proc is not None and node.proc.poll() is None and node.proc.pid == pid
    assert node.request("GET", "/healthz", token=None).status_code == 200
    assert node.count(dataset="keep") == KEEP_ROWS


def _login(node: Server, username: str, password: str) -> httpx.Response:
    return node.request("POST", "/api/v1/auth/login", token=None, json={"username": username, "password": password})


def _user(node: Server, username: str, role: str, password: str) -> httpx.Response:
    return node.request("POST", "/api/v1/users", json={"username": username, "password": password, "role": role})


def _metric(node: Server, name: str) -> float:
    text = node.request("GET", "/metrics").text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


# -- item 5: sessions belong to a user, not to a name ------------------------------


def test_deleted_user_session_does_not_come_back_with_the_name(server_factory: Callable[..., Server]) -> None:
    node, pid = _start(server_factory, **FAST_KDF)
    assert _user(node, "vic", "ingest", "vic-password-1").status_code == 201
    old = _login(node, "vic", "vic-password-1").json()["token"]
    assert node.ingest(b'{"_msg": "from vic"}\n', dataset="vic", token=old).status_code == 200
    assert node.request("DELETE", "/api/v1/users/vic").status_code == 200
    assert node.request("GET", "/api/v1/auth/me", token=old).status_code == 401
    # The name is given to a new user, an admin: the deleted user's session stays dead.
    assert _user(node, "vic", "admin", "vic-password-2").status_code == 201
    for method, path in (("GET", "/api/v1/users"), ("GET", "/api/v1/audit"), ("GET", "/api/v1/auth/me")):
        reply = node.request(method, path, token=old)
        assert reply.status_code == 401 and "log in again" in reply.json()["error"], (path, reply.text)
    assert node.request("POST", "/api/v1/ingest", token=old, content=b'{"_msg": "x"}\n').status_code == 401
    fresh = _login(node, "vic", "vic-password-2").json()["token"]
    assert node.request("GET", "/api/v1/users", token=fresh).status_code == 200
    _intact(node, pid)


def test_password_change_ends_sessions_issued_in_the_same_second(server_factory: Callable[..., Server]) -> None:
    node, pid = _start(server_factory, **FAST_KDF)
    assert _user(node, "wendy", "viewer", "wendy-password-0").status_code == 201
    before = _login(node, "wendy", "wendy-password-0").json()["token"]
    version = node.request("GET", "/api/v1/users/wendy").json()["version"]
    changed = node.request("PUT", "/api/v1/users/wendy", json={"version": version, "password": "wendy-password-1"})
    assert changed.status_code == 200, changed.text
    after = _login(node, "wendy", "wendy-password-1").json()["token"]
    reply = node.request("GET", "/api/v1/auth/me", token=before)
    assert reply.status_code == 401 and "password change" in reply.json()["error"], reply.text
    assert node.request("GET", "/api/v1/auth/me", token=after).status_code == 200
    # Whole-second timestamps let a session issued in the second of the change live on. Whether two
    # real requests share a second depends on the machine's speed, so the earlier session is signed
    # again (with the node's own secret) as if issued in that very second.
    secret = (node.data_dir / "secrets" / "jwt.secret").read_bytes()
    claims = jwt.decode(before, options={"verify_signature": False})
    change_s = int(datetime.fromisoformat(changed.json()["updated_at"].replace("Z", "+00:00")).timestamp())
    same_second = jwt.encode({**claims, "iat": change_s}, secret, algorithm="HS256")
    reply = node.request("GET", "/api/v1/auth/me", token=same_second)
    assert reply.status_code == 401 and "password change" in reply.json()["error"], reply.text
    _intact(node, pid)


# -- item 7: logins are throttled, counted, and kept off the request workers ----------


def test_failed_logins_are_throttled_per_username(server_factory: Callable[..., Server]) -> None:
    # A first wait of 10 s, so that a slow machine still sends the next login inside it.
    node, pid = _start(server_factory, HELIOS_LOGIN_BACKOFF_SECS="10", **FAST_KDF)
    audit_before = len(node.request("GET", "/api/v1/audit", params={"limit": 1000}).json())
    assert _user(node, "xena", "viewer", "xena-password-1").status_code == 201
    for username, password in (("xena", "xena-password-1"), ("no-such-user", "any-password-1")):
        # An unknown name is treated exactly alike: 5 failures, then a wait.
        statuses = [_login(node, username, f"wrong-password-{i}").status_code for i in range(5)]
        assert statuses == [401] * 5, (username, statuses)
        refused = _login(node, username, "wrong-password-5")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 10 and refused.json()["retry_after_s"] >= 1
        # While the name waits even the right password is not tried.
        assert _login(node, username, password).status_code == 429
    # Another user from the same address is not held up by their failures.
    assert _login(node, "admin", ADMIN_PASSWORD).status_code == 200
    # After the wait the right password works again.
    wait_until(lambda: _login(node, "xena", "xena-password-1").status_code == 200, 30, "xena's wait to end")
    assert _metric(node, "helios_login_failures_total") == 10
    assert _metric(node, "helios_login_throttled_total") >= 4
    wait_until(lambda: sum('"failed login"' in line for line in node.logs) == 10, 10, "10 failed logins logged")
    # Failed logins are not control-log entries (replicated and kept forever): only the user creation is.
    audit = node.request("GET", "/api/v1/audit", params={"limit": 1000}).json()
    assert len(audit) == audit_before + 1 and audit[0]["kind"] == "users" and audit[0]["id"] == "xena"
    _intact(node, pid)


def test_failed_logins_are_throttled_per_address(server_factory: Callable[..., Server]) -> None:
    node, pid = _start(server_factory, HELIOS_LOGIN_ADDRESS_FAILURES="8", HELIOS_LOGIN_BACKOFF_SECS="10", **FAST_KDF)
    node.token  # the admin's session, made before the spray
    statuses = [_login(node, f"sprayed-{i}", "spring-2026-password").status_code for i in range(8)]
    assert statuses == [401] * 8
    refused = _login(node, "sprayed-8", "spring-2026-password")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert _login(node, "admin", ADMIN_PASSWORD).status_code == 429  # the address waits, whoever it names
    assert node.request("GET", "/api/v1/auth/me").status_code == 200  # sessions and tokens are unaffected
    wait_until(lambda: _login(node, "admin", ADMIN_PASSWORD).status_code == 200, 30, "the address's wait to end")
    _intact(node, pid)


def test_login_flood_is_bounded_and_ingest_goes_on(server_factory: Callable[..., Server]) -> None:
    # The default cost (2^17, 128 MiB a hash) and two hash slots: a flood queues there, not on the workers.
    node, pid = _start(server_factory, HELIOS_LOGIN_ADDRESS_FAILURES="1000", HELIOS_LOGIN_USER_FAILURES="1000",
                       **DEFAULT_KDF)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        flood = [pool.submit(_login, node, f"flood-{i}", "not-the-password") for i in range(8)]
        ingested = 0
        while not all(f.done() for f in flood):
            assert node.request("GET", "/healthz", token=None).status_code == 200
            reply = node.ingest(b'{"_msg": "during the flood"}\n', dataset="flood")
            assert reply.status_code == 200, reply.text
            ingested += 1
        statuses = [f.result().status_code for f in flood]
    assert set(statuses) <= {401, 429} and 401 in statuses, statuses
    assert _metric(node, "helios_login_failures_total") == statuses.count(401)
    assert node.count(dataset="flood") == ingested
    _intact(node, pid)


def _mirrored_docs(data_dir: Path, kind: str, object_id: str) -> list[dict[str, Any]]:
    """The docs of one object in the node's local copy of the control log (unencrypted in this test)."""
    docs = []
    for path in sorted((data_dir / "control" / "log").glob("[0-9]*")):
        entry = orjson.loads(path.read_bytes()[4:])  # b"HLC0" + JSON
        if entry["kind"] == kind and entry["id"] == object_id:
            docs.append(entry["doc"])
    return docs


def test_password_hashes_are_raised_to_the_default_cost_at_login(server_factory: Callable[..., Server]) -> None:
    node, pid = _start(server_factory, HELIOS_CONTROL_ENCRYPTION="none", **FAST_KDF)
    assert _user(node, "yuri", "viewer", "yuri-password-1").status_code == 201
    assert _mirrored_docs(node.data_dir, "users", "yuri")[-1]["password"].startswith("scrypt$16384$8$1$")
    session = _login(node, "yuri", "yuri-password-1").json()["token"]
    assert node.stop() == 0
    assert config.load(environ={}).scrypt_log2_n == int(DEFAULT_KDF["HELIOS_SCRYPT_LOG2_N"]) == 17
    node.env.update(DEFAULT_KDF)
    node.start()
    pid = node.proc.pid  # type: ignore[union-attr]
    assert _login(node, "yuri", "yuri-password-1").status_code == 200
    docs = _mirrored_docs(node.data_dir, "users", "yuri")
    assert docs[-1]["password"].startswith("scrypt$131072$8$1$"), docs[-1]["password"][:20]
    assert docs[-1]["uid"] == docs[0]["uid"] and docs[-1]["generation"] == docs[0]["generation"]
    assert node.request("GET", "/api/v1/auth/me", token=session).status_code == 200  # no session ended
    assert _login(node, "yuri", "yuri-password-1").status_code == 200
    assert len(_mirrored_docs(node.data_dir, "users", "yuri")) == len(docs)  # redone once, not at every login
    assert _metric(node, "helios_password_rehashes_total") == 2  # yuri and the admin (logged in by the test)
    _intact(node, pid)


# -- item 8: names are whole-text matches -------------------------------------------


def test_names_with_a_trailing_newline_are_refused(server_factory: Callable[..., Server]) -> None:
    node, pid = _start(server_factory, **FAST_KDF)
    assert node.ingest(b'{"_msg": "x"}\n', dataset="abc\n").status_code == 400
    assert node.request("PUT", "/api/v1/datasets/abc%0A", json={"retention_days": 3}).status_code == 400
    assert node.request("POST", "/api/v1/query", json={"q": "*", "dataset": "keep\n"}).status_code == 400
    assert _user(node, "vic\n", "viewer", "vic-password-1").status_code == 400
    assert _login(node, "admin\n", ADMIN_PASSWORD).status_code == 401
    panel = {"title": "p", "query": "*", "dataset": "abc\n"}
    assert node.request("POST", "/api/v1/dashboards", json={"title": "d", "panels": [panel]}).status_code == 400
    made = node.request("POST", "/api/v1/dashboards", json={"title": "d", "panels": []}).json()
    assert node.request("GET", f"/api/v1/dashboards/{made['id']}%0A").status_code == 404
    token = node.request("POST", "/api/v1/tokens", json={"name": "t", "role": "viewer"}).json()
    assert node.request("DELETE", f"/api/v1/tokens/{token['id']}%0A").status_code == 404
    assert node.request("GET", "/api/v1/auth/me", token=token["token"]).status_code == 200
    assert set(node.datasets()) == {"keep"}
    for line in node.request("GET", "/metrics").text.splitlines():
        assert _METRIC_LINE.fullmatch(line), line
    _intact(node, pid)


# -- item 12: a private data directory; passwords of a useful length -----------------


def test_data_files_are_private_whatever_the_umask(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "node"  # made by an earlier version or by hand, open to everyone
    (data_dir / "old-folder").mkdir(parents=True)
    (data_dir / "old-folder" / "notes.txt").write_text("written with umask 022")
    for path, mode in ((data_dir, 0o755), (data_dir / "old-folder", 0o755),
                       (data_dir / "old-folder" / "notes.txt", 0o644)):
        path.chmod(mode)
    old_umask = os.umask(0o022)  # the node inherits it
    try:
        node, pid = _start(server_factory, HELIOS_NODE_ID="fixed-id", HELIOS_FLUSH_SECS="0.2", **FAST_KDF)
    finally:
        os.umask(old_umask)
    wait_until(lambda: list(data_dir.glob("parts/keep/*/manifest.json")), 30, "a flushed block")
    assert _user(node, "zoe", "viewer", "zoe-password-1").status_code == 201  # a control-log entry
    seen = {"dirs": 0, "files": 0}
    for directory, folders, files in os.walk(data_dir):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        seen["dirs"] += 1
        for name in files:
            mode = stat.S_IMODE(os.lstat(os.path.join(directory, name)).st_mode)
            assert mode == 0o600, (directory, name, oct(mode))
            seen["files"] += 1
    kinds = {p.suffix or p.name for p in data_dir.rglob("*") if p.is_file()}
    assert {".wal", ".parquet", ".json"} <= kinds, kinds
    assert seen["files"] >= 8, seen
    assert any("made the data directory private" in line for line in node.logs)
    _intact(node, pid)


def test_passwords_shorter_than_twelve_characters_are_refused(server_factory: Callable[..., Server],
                                                              tmp_path: Path) -> None:
    code, stderr = Server(tmp_path / "short", {"HELIOS_ADMIN_PASSWORD": "hunter2-pw"}).refused()
    assert code == 2 and "HELIOS_ADMIN_PASSWORD" in stderr and "12 to 1024 characters" in stderr, stderr
    assert "hunter2-pw" not in stderr and "Traceback" not in stderr
    node, pid = _start(server_factory, **FAST_KDF)
    short = _user(node, "quinn", "viewer", "elevenchars")
    assert short.status_code == 400 and "12 to 1024" in short.json()["error"]
    assert "elevenchars" not in short.text
    assert _user(node, "quinn", "viewer", "twelve-chars").status_code == 201
    version = node.request("GET", "/api/v1/users/quinn").json()["version"]
    assert node.request("PUT", "/api/v1/users/quinn", json={"version": version, "password": "a"}).status_code == 400
    assert _login(node, "quinn", "twelve-chars").status_code == 200  # the refused change changed nothing
    _intact(node, pid)


# -- the rules themselves, without a node -------------------------------------------


def test_name_rules_match_the_whole_text() -> None:
    from backends.base import Invalid, check_key
    from helios import names

    for rule, good in ((names.DATASET, "abc"), (names.USERNAME, "vic"), (names.TOKEN_ID, "0" * 16),
                       (names.OBJECT_ID, "0" * 12), (names.NODE_ID, "n-1")):
        assert rule.ok(good) and rule.check(good) == good
        for bad in (good + "\n", "\n" + good, good + "\r", good + " ", "", None, 7):
            assert not rule.ok(bad), (rule.what, bad)
    assert not names.TOKEN_NAME.ok("name\n") and names.TOKEN_NAME.ok("fluent-bit on web-3")
    assert names.PASSWORD.ok("x" * 12) and not names.PASSWORD.ok("x" * 11) and not names.PASSWORD.ok("x" * 1025)
    for key in ("a/b\n", "a\n/b", "a/.b", "a//b"):
        try:
            check_key(key)
        except Invalid:
            continue
        raise AssertionError(f"{key!r} was taken as a store key")


def test_login_throttle_backs_off_doubles_and_forgets() -> None:
    from helios.control.throttle import LoginThrottle, TooManyLogins

    now = [0.0]
    throttle = LoginThrottle(user_failures=3, address_failures=100, backoff_s=1.0, backoff_max_s=8.0,
                             clock=lambda: now[0], max_keys=50)

    def wait() -> int:
        try:
            throttle.check("eve", "10.0.0.1")
        except TooManyLogins as exc:
            return exc.retry_after_s
        return 0

    for _ in range(2):
        throttle.failed("eve", "10.0.0.1")
        assert wait() == 0
    waits = []
    for _ in range(6):  # from the limit on: 1, 2, 4, 8, 8, 8 seconds
        throttle.failed("eve", "10.0.0.1")
        waits.append(wait())
        now[0] += waits[-1]
        assert wait() == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    throttle.succeeded("eve")
    throttle.failed("eve", "10.0.0.1")
    assert wait() == 0  # a success starts the username's count again
    now[0] += 4 * 8.0 + 1  # quiet for longer than 4 * backoff_max_s: forgotten
    throttle.check("someone", "10.0.0.2")
    assert len(throttle) == 0
    for i in range(200):  # never more than max_keys names and addresses
        throttle.failed(f"user-{i}", f"10.0.1.{i}")
    assert len(throttle) == 50

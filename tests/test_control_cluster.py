"""The control plane across real nodes on one store (fs, and S3 through moto): shared, sealed, guarded."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support import SYNC_SECS, MotoServer, Server, token_parts, typical, wait_until

BOUND = SYNC_SECS + 1.0  # the visibility bound plus HTTP round-trip slack


def login_status(node: Server, username: str, password: str) -> int:
    return node.request("POST", "/api/v1/auth/login", token=None,
                        json={"username": username, "password": password}).status_code


def timed(predicate: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    wait_until(predicate, what=what)
    return time.monotonic() - start


def test_users_tokens_dashboards_and_settings_are_shared(server_factory: Callable[..., Server],
                                                         store_env: dict[str, str]) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    lags = {}
    # One admin for the cluster: the second node found the first one's.
    admin_creations = [e for e in b.request("GET", "/api/v1/audit?kind=users").json() if e["id"] == "admin"]
    assert len(admin_creations) == 1 and admin_creations[0]["by"] == "bootstrap"

    made = a.request("POST", "/api/v1/users", json={"username": "ivan", "password": "ivan-password", "role": "viewer"})
    assert made.status_code == 201
    lags["user"] = timed(lambda: login_status(b, "ivan", "ivan-password") == 200, "B to accept A's new user")

    token = a.request("POST", "/api/v1/tokens", json={"name": "shipper", "role": "ingest"}).json()
    lags["token"] = timed(lambda: b.ingest(b'{"_msg": "via token"}\n', dataset="t", token=token["token"]).status_code
                          == 200, "B to accept A's new token")
    assert a.request("DELETE", f"/api/v1/tokens/{token['id']}").status_code == 200
    lags["revocation"] = timed(lambda: b.ingest(b'{"_msg": "x"}\n', dataset="t", token=token["token"]).status_code
                               == 401, "B to refuse the revoked token")

    dash = a.request("POST", "/api/v1/dashboards", json={"title": "Shared board", "panels": [{"query": "error"}]}).json()
    lags["dashboard"] = timed(lambda: b.request("GET", f"/api/v1/dashboards/{dash['id']}").status_code == 200,
                              "B to see A's dashboard")
    assert b.request("GET", f"/api/v1/dashboards/{dash['id']}").json()["title"] == "Shared board"

    settings = a.request("GET", "/api/v1/settings").json()
    assert a.request("PUT", "/api/v1/settings", json={"version": settings["version"],
                                                      "default_retention_days": 90}).status_code == 200
    lags["setting"] = timed(lambda: b.request("GET", "/api/v1/settings").json()["default_retention_days"] == 90,
                            "B to see A's setting")
    print(f"control-plane visibility lags (s): { {k: round(v, 2) for k, v in lags.items()} }")
    assert typical(list(lags.values())) <= BOUND, lags

    # Optimistic concurrency across nodes: two edits of one version, one wins, the other gets 409.
    version = b.request("GET", f"/api/v1/dashboards/{dash['id']}").json()["version"]
    first = a.request("PUT", f"/api/v1/dashboards/{dash['id']}", json={"title": "from A", "version": version})
    second = b.request("PUT", f"/api/v1/dashboards/{dash['id']}", json={"title": "from B", "version": version})
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    loser = second if second.status_code == 409 else first
    assert loser.json()["version"] == version + 1
    winner_title = "from A" if first.status_code == 200 else "from B"
    wait_until(lambda: all(n.request("GET", f"/api/v1/dashboards/{dash['id']}").json()["title"] == winner_title
                           for n in (a, b)), what="both nodes to agree")
    assert a.request("GET", "/api/v1/audit?limit=10000").json() == b.request("GET", "/api/v1/audit?limit=10000").json()


def test_a_new_node_and_a_restarted_node_catch_up(server_factory: Callable[..., Server],
                                                  store_env: dict[str, str]) -> None:
    a = server_factory("a", **store_env)
    b = server_factory("b", **store_env)
    assert b.stop() == 0
    a.request("POST", "/api/v1/users", json={"username": "judy", "password": "judy-password", "role": "editor"})
    a.request("POST", "/api/v1/monitors", json={"name": "m", "query": "error | stats count() as n",
                                                "condition": {"op": ">", "threshold": 0}})
    b.start()  # catches up at start, before it answers
    assert login_status(b, "judy", "judy-password") == 200
    assert [m["name"] for m in b.request("GET", "/api/v1/monitors").json()] == ["m"]
    c = server_factory("c", **store_env)  # an empty data dir: everything comes from the store
    assert login_status(c, "judy", "judy-password") == 200


CANARIES = ["zelda-operator", "Zephyr quarterly board", "zephyrpanelquery", "zephyr-ci-token",
            "zephyr-hooks.example", "zephyr-monitor", "scrypt$"]


def _make_canaries(node: Server) -> str:
    assert node.request("POST", "/api/v1/users", json={"username": "zelda-operator", "password": "zelda-password-1",
                                                       "role": "editor"}).status_code == 201
    assert node.request("POST", "/api/v1/dashboards", json={
        "title": "Zephyr quarterly board", "panels": [{"title": "p", "query": "zephyrpanelquery"}]}).status_code == 201
    assert node.request("POST", "/api/v1/monitors", json={
        "name": "zephyr-monitor", "query": "error", "condition": {"op": ">", "threshold": 1},
        "webhook": "https://zephyr-hooks.example/alert"}).status_code == 201
    token = node.request("POST", "/api/v1/tokens", json={"name": "zephyr-ci-token", "role": "viewer"}).json()["token"]
    return token_parts(token)[1]  # the secret may contain "_": never split on the last one


def _files(root: Path) -> Iterator[tuple[str, bytes]]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            yield str(path), path.read_bytes()


def _store_objects(env: dict[str, str], moto: MotoServer | None) -> Iterator[tuple[str, bytes]]:
    spec = env["HELIOS_SHARED_STORE"]
    if not spec.startswith("s3://"):
        yield from _files(Path(spec))
        return
    assert moto is not None
    bucket, prefix = spec[5:].split("/", 1)
    client = moto.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "none"])
def test_no_plaintext_control_data_at_rest(server_factory: Callable[..., Server], store_env: dict[str, str],
                                           request: pytest.FixtureRequest, encryption: str) -> None:
    """With encryption on, no canary is anywhere; with it off, the same scan finds them (the scan works)."""
    env = {**store_env, "HELIOS_CONTROL_ENCRYPTION": encryption}
    node = server_factory("sealed", **env)
    secret = _make_canaries(node)
    assert node.stop() == 0
    moto = request.getfixturevalue("moto_s3") if env["HELIOS_SHARED_STORE"].startswith("s3://") else None
    found: dict[str, list[str]] = {}
    scanned = 0
    for where, data in [*_files(node.data_dir), *_store_objects(env, moto)]:
        scanned += 1
        for canary in [*CANARIES, secret]:
            if canary.encode() in data or canary.encode() in where.encode():
                found.setdefault(canary, []).append(where)
    assert scanned > 5
    if encryption == "aes-256-gcm":
        assert found == {}, found
    else:
        assert set(found) == {*CANARIES} - {secret}, sorted(found)  # the token secret is never stored, only its hash


def _other_secret(tmp_path: Path, env: dict[str, str], which: str) -> dict[str, str]:
    path = tmp_path / f"other-{which}"
    path.write_bytes(secrets.token_bytes(32))
    path.chmod(0o600)
    return {**env, which: str(path)}


@pytest.mark.parametrize("change,named", [
    ("HELIOS_CONTROL_KEY_PATH", "control key"),
    ("HELIOS_JWT_SECRET_PATH", "JWT secret"),
    ("HELIOS_CONTROL_ENCRYPTION", "encryption mode"),
])
def test_a_node_with_other_secrets_refuses_to_start(server_factory: Callable[..., Server], store_env: dict[str, str],
                                                    tmp_path: Path, change: str, named: str) -> None:
    a = server_factory("a", **store_env)
    if change == "HELIOS_CONTROL_ENCRYPTION":
        env = {**store_env, change: "none"}
    else:
        env = _other_secret(tmp_path, store_env, change)
    code, stderr = Server(tmp_path / "intruder", env).refused()
    assert code != 0
    assert named in stderr and "differs" in stderr, stderr
    other_names = {"control key", "JWT secret", "encryption mode"} - {named}
    assert not any(f"'s {name}" in stderr for name in other_names), stderr
    assert change in stderr  # says what to set
    # The same node restarted against its own data dir with the changed secret refuses too.
    assert a.stop() == 0
    code, stderr = Server(a.data_dir, env).refused()
    assert code != 0 and named in stderr, stderr
    a.start()  # with the right secrets it starts again
    assert a.request("GET", "/api/v1/users").status_code == 200

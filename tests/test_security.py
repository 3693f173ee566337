"""Control plane and security on one real node: the role matrix, tokens, forged JWTs, versions, audit."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from support import ADMIN_PASSWORD, Server, token_parts, wait_until

ROLES = ("admin", "editor", "viewer", "ingest")
EVERYONE = set(ROLES)
READERS = {"admin", "editor", "viewer"}
EDITORS = {"admin", "editor"}
ADMIN = {"admin"}
INGEST = {"admin", "ingest"}
MISSING = "000000000000"  # a well-formed id no object has

# The role matrix of the issue, written out independently of the code's table:
# (method, path, body, roles allowed). Bodies are valid enough to pass the role
# check and harmless when allowed (most then fail validation or find nothing).
MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/api/v1/ingest?dataset=matrix", b'{"_msg": "matrix"}\n', INGEST),
    ("POST", "/api/v1/query", {"q": "*", "limit": 1}, READERS),
    ("GET", "/api/v1/query?q=*&limit=1", None, READERS),
    ("GET", "/api/v1/tail?q=* | stats count()", None, READERS),  # allowed roles get 400: no stream is left open
    ("GET", "/api/v1/datasets", None, READERS),
    ("PUT", "/api/v1/datasets/matrix", {"retention_days": None}, EDITORS),
    ("GET", "/api/v1/dashboards", None, READERS),
    ("POST", "/api/v1/dashboards", {"title": ""}, EDITORS),
    ("GET", f"/api/v1/dashboards/{MISSING}", None, READERS),
    ("PUT", f"/api/v1/dashboards/{MISSING}", {"title": "x", "version": 1}, EDITORS),
    ("DELETE", f"/api/v1/dashboards/{MISSING}", None, EDITORS),
    ("GET", "/api/v1/monitors", None, READERS),
    ("POST", "/api/v1/monitors", {"name": ""}, EDITORS),
    ("GET", f"/api/v1/monitors/{MISSING}", None, READERS),
    ("PUT", f"/api/v1/monitors/{MISSING}", {"name": "x", "version": 1}, EDITORS),
    ("DELETE", f"/api/v1/monitors/{MISSING}", None, EDITORS),
    ("GET", f"/api/v1/monitors/{MISSING}/history", None, READERS),
    ("POST", f"/api/v1/monitors/{MISSING}/test", None, EDITORS),
    ("POST", f"/api/v1/monitors/{MISSING}/secret", None, EDITORS),
    ("GET", "/api/v1/settings", None, READERS),
    ("PUT", "/api/v1/settings", {"version": "stale"}, ADMIN),
    ("GET", "/api/v1/users", None, ADMIN),
    ("POST", "/api/v1/users", {"username": "", "password": "x", "role": "viewer"}, ADMIN),
    ("GET", "/api/v1/users/nobody", None, ADMIN),
    ("PUT", "/api/v1/users/nobody", {"version": 1, "role": "viewer"}, ADMIN),
    ("DELETE", "/api/v1/users/nobody", None, ADMIN),
    ("GET", "/api/v1/tokens", None, ADMIN),
    ("POST", "/api/v1/tokens", {"name": "", "role": "viewer"}, ADMIN),
    ("DELETE", "/api/v1/tokens/0000000000000000", None, ADMIN),
    ("GET", "/api/v1/audit", None, ADMIN),
    ("GET", "/api/v1/cluster", None, READERS),
    ("GET", "/api/v1/version", None, READERS),
    ("GET", "/api/v1/auth/me", None, EVERYONE),
    ("GET", "/metrics", None, READERS),
    ("GET", "/api/openapi.json", None, READERS),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Server:
    data_dir = tmp_path_factory.mktemp("security") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_TOKEN_TTL_SECS": "3600"}).start()
    yield server
    server.kill()


def login(node: Server, username: str, password: str) -> httpx.Response:
    return node.request("POST", "/api/v1/auth/login", token=None, json={"username": username, "password": password})


def make_user(node: Server, username: str, role: str, password: str = "password-123") -> str:
    reply = node.request("POST", "/api/v1/users", json={"username": username, "password": password, "role": role})
    assert reply.status_code == 201, reply.text
    token = login(node, username, password)
    assert token.status_code == 200, token.text
    return token.json()["token"]


def make_token(node: Server, name: str, role: str) -> dict[str, Any]:
    reply = node.request("POST", "/api/v1/tokens", json={"name": name, "role": role})
    assert reply.status_code == 201, reply.text
    return reply.json()


def call(node: Server, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
    if isinstance(body, bytes):
        return node.request(method, path, token=token, content=body)
    return node.request(method, path, token=token, json=body)


@pytest.fixture(scope="module")
def credentials(node: Server) -> dict[str, list[str]]:
    """For each role: a login JWT of a user with that role and an API token with that role."""
    result: dict[str, list[str]] = {}
    for role in ROLES:
        session = node.token if role == "admin" else make_user(node, f"matrix-{role}", role)
        result[role] = [session, make_token(node, f"matrix {role}", role)["token"]]
    return result


def test_every_endpoint_in_the_api_document_is_in_the_matrix(node: Server) -> None:
    spec = node.request("GET", "/api/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    documented -= {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/api/v1/auth/login")}

    def template(path: str) -> str:
        path = path.split("?")[0]
        for action in ("history", "test", "secret"):  # /api/v1/monitors/{id}/<action>
            if path.startswith("/api/v1/monitors/") and path.endswith("/" + action):
                return "/api/v1/monitors/{id}/" + action
        for prefix, name in [("/api/v1/dashboards/", "{id}"), ("/api/v1/monitors/", "{id}"),
                             ("/api/v1/users/", "{name}"), ("/api/v1/tokens/", "{id}"),
                             ("/api/v1/datasets/", "{name}")]:
            if path.startswith(prefix):
                return prefix + name
        return path

    assert documented == {(method, template(path)) for method, path, _, _ in MATRIX}


@pytest.mark.parametrize("method,path,body,allowed", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_role_matrix(node: Server, credentials: dict[str, list[str]], method: str, path: str, body: Any,
                     allowed: set[str]) -> None:
    assert call(node, method, path, body, None).status_code == 401
    assert call(node, method, path, body, "not-a-token").status_code == 401
    assert call(node, method, path, body, "hlt_0123456789abcdef_wrong").status_code == 401
    for role in ROLES:
        for credential in credentials[role]:
            status = call(node, method, path, body, credential).status_code
            if role in allowed:
                assert status not in (401, 403), (role, status)
            else:
                assert status == 403, (role, status)


def test_api_tokens_are_shown_once_and_revocable(node: Server) -> None:
    made = make_token(node, "ci pipeline", "ingest")
    assert set(made) >= {"id", "name", "role", "token"} and made["role"] == "ingest"
    token = made["token"]
    assert node.ingest(b'{"_msg": "from ci"}\n', dataset="ci", token=token).status_code == 200
    listed = node.request("GET", "/api/v1/tokens").json()
    assert any(t["id"] == made["id"] for t in listed)
    assert all("token" not in t and "hash" not in t for t in listed)
    assert token_parts(token)[1] not in node.request("GET", "/api/v1/tokens").text
    assert node.request("DELETE", f"/api/v1/tokens/{made['id']}").json() == {"deleted": made["id"]}
    refused = node.ingest(b'{"_msg": "after revocation"}\n', dataset="ci", token=token)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert node.request("DELETE", f"/api/v1/tokens/{made['id']}").status_code == 404
    assert node.count(dataset="ci") == 1
    # A secret that does not match the id is refused like an unknown one.
    other = make_token(node, "other", "viewer")
    forged = f"hlt_{other['id']}_{'A' * 43}"
    assert node.request("GET", "/api/v1/datasets", token=forged).status_code == 401
    assert node.request("GET", "/api/v1/datasets", token=other["token"]).status_code == 200


def test_token_input_is_validated(node: Server) -> None:
    before = len(node.request("GET", "/api/v1/tokens").json())
    for body in [{"name": "x", "role": "root"}, {"role": "viewer"}, {"name": "x", "role": "viewer", "extra": 1},
                 {"name": "x", "role": "viewer", "expires_days": 0}, {"name": 5, "role": "viewer"}]:
        reply = node.request("POST", "/api/v1/tokens", json=body)
        assert reply.status_code == 400 and reply.json()["error"], body
    assert len(node.request("GET", "/api/v1/tokens").json()) == before


def test_login_failures_and_session_rules(node: Server) -> None:
    assert login(node, "admin", "wrong-password").status_code == 401
    assert login(node, "no-such-user", "whatever-password").status_code == 401
    assert login(node, "ADMIN", ADMIN_PASSWORD).status_code == 401
    session = make_user(node, "carol", "editor", "carol-password-1")
    user = node.request("GET", "/api/v1/users/carol").json()
    assert user["role"] == "editor" and "password" not in user
    # Demotion takes effect on a live session; the JWT's role claim is not trusted.
    demoted = node.request("PUT", "/api/v1/users/carol", json={"version": user["version"], "role": "viewer"})
    assert demoted.status_code == 200 and demoted.json()["role"] == "viewer"
    assert node.request("POST", "/api/v1/dashboards", token=session, json={"title": "t"}).status_code == 403
    assert node.request("GET", "/api/v1/dashboards", token=session).status_code == 200
    # A password change ends earlier sessions. Sessions are stamped in whole seconds (JWT iat) and
    # a change ends those stamped before its second: the clock must first leave the session's second.
    issued = jwt.decode(session, options={"verify_signature": False})["iat"]
    wait_until(lambda: int(time.time()) > issued, timeout_s=5, what="the session's second to pass")
    changed = node.request("PUT", "/api/v1/users/carol",
                           json={"version": demoted.json()["version"], "password": "carol-password-2"})
    assert changed.status_code == 200
    assert node.request("GET", "/api/v1/dashboards", token=session).status_code == 401
    assert login(node, "carol", "carol-password-1").status_code == 401
    fresh = login(node, "carol", "carol-password-2").json()["token"]
    assert node.request("GET", "/api/v1/dashboards", token=fresh).status_code == 200
    # A deleted user's sessions stop working.
    assert node.request("DELETE", "/api/v1/users/carol").json() == {"deleted": "carol"}
    assert node.request("GET", "/api/v1/dashboards", token=fresh).status_code == 401
    assert login(node, "carol", "carol-password-2").status_code == 401


def test_user_rules(node: Server) -> None:
    for body in [{"username": "Bad Name", "password": "password-123", "role": "viewer"},
                 {"username": "dave", "password": "short", "role": "viewer"},
                 {"username": "dave", "password": "password-123", "role": "superuser"},
                 {"username": "dave", "password": "password-123", "role": "viewer", "admin": True}]:
        assert node.request("POST", "/api/v1/users", json=body).status_code == 400, body
    assert node.request("GET", "/api/v1/users/dave").status_code == 404
    make_user(node, "erin", "viewer")
    again = node.request("POST", "/api/v1/users", json={"username": "erin", "password": "password-123",
                                                        "role": "admin"})
    assert again.status_code == 409
    admin = node.request("GET", "/api/v1/users/admin").json()
    last = node.request("PUT", "/api/v1/users/admin", json={"version": admin["version"], "role": "viewer"})
    assert last.status_code == 409 and "last admin" in last.json()["error"]
    assert node.request("DELETE", "/api/v1/users/admin").status_code == 409
    assert node.request("PUT", "/api/v1/users/erin", json={"role": "editor"}).status_code == 400  # no version
    assert node.request("GET", "/api/v1/users/erin").json()["role"] == "viewer"


def _secret(node: Server) -> bytes:
    return (node.data_dir / "secrets" / "jwt.secret").read_bytes()


def test_forged_tokens_are_refused(node: Server) -> None:
    secret = _secret(node)
    now = int(time.time())
    admin = jwt.decode(node.token, options={"verify_signature": False})  # the user's uid and generation
    good = {"sub": "admin", "uid": admin["uid"], "gen": admin["gen"], "role": "admin", "iat": now, "exp": now + 600}
    assert node.request("GET", "/api/v1/users", token=jwt.encode(good, secret, algorithm="HS256")).status_code == 200
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    viewer_session = make_user(node, "frank", "viewer")
    header, payload, signature = viewer_session.split(".")
    tampered_payload = jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps({**jwt.decode(viewer_session, options={"verify_signature": False}),
                                "sub": "admin", "role": "admin"}).encode()).decode()
    with warnings.catch_warnings():  # pyjwt warns that 32 bytes is short for HS384/HS512: that is the point
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        hs512 = jwt.encode(good, secret, algorithm="HS512")
        hs384 = jwt.encode(good, secret, algorithm="HS384")
    forged = {
        "alg none": jwt.encode(good, None, algorithm="none"),
        "HS512": hs512,
        "HS384": hs384,
        "RS256": jwt.encode(good, rsa_key, algorithm="RS256"),
        "wrong secret": jwt.encode(good, b"x" * 32, algorithm="HS256"),
        "expired": jwt.encode({**good, "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256"),
        "no exp": jwt.encode({k: v for k, v in good.items() if k != "exp"}, secret, algorithm="HS256"),
        "no iat": jwt.encode({k: v for k, v in good.items() if k != "iat"}, secret, algorithm="HS256"),
        "no sub": jwt.encode({k: v for k, v in good.items() if k != "sub"}, secret, algorithm="HS256"),
        "unknown user": jwt.encode({**good, "sub": "mallory"}, secret, algorithm="HS256"),
        "no uid": jwt.encode({k: v for k, v in good.items() if k != "uid"}, secret, algorithm="HS256"),
        "another uid": jwt.encode({**good, "uid": "0" * 16}, secret, algorithm="HS256"),
        "no generation": jwt.encode({k: v for k, v in good.items() if k != "gen"}, secret, algorithm="HS256"),
        "older generation": jwt.encode({**good, "gen": admin["gen"] - 1}, secret, algorithm="HS256"),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "truncated signature": viewer_session[:-4],
        "bad base64": "abc.def.ghi",
    }
    for case, token in forged.items():
        reply = node.request("GET", "/api/v1/users", token=token)
        assert reply.status_code == 401, (case, reply.status_code, reply.text)
        assert reply.json()["error"]
    # A valid viewer session with an admin role claim gets only the viewer's rights.
    frank = jwt.decode(viewer_session, options={"verify_signature": False})
    claimed = jwt.encode({**good, "sub": "frank", "uid": frank["uid"], "gen": frank["gen"]}, secret, algorithm="HS256")
    assert node.request("GET", "/api/v1/users", token=claimed).status_code == 403


def test_a_session_token_that_worked_is_refused_once_it_expires(node: Server) -> None:
    """The node remembers a token whose signature it checked; its expiry must still end it."""
    admin = jwt.decode(node.token, options={"verify_signature": False})
    exp = int(time.time()) + 2
    short = jwt.encode({"sub": "admin", "uid": admin["uid"], "gen": admin["gen"], "role": "admin",
                        "iat": exp - 2, "exp": exp}, _secret(node), algorithm="HS256")
    for _ in range(2):  # checked, then remembered
        assert node.request("GET", "/api/v1/users", token=short).status_code == 200
    time.sleep(max(0.0, exp - time.time()) + 0.05)  # until the wall clock passes exp
    reply = node.request("GET", "/api/v1/users", token=short)
    assert reply.status_code == 401 and "expired" in reply.json()["error"], reply.text


def test_dashboard_versions_refuse_stale_writes(node: Server) -> None:
    panels = [{"title": "errors", "query": "error | stats count() as n", "type": "stat"}]
    made = node.request("POST", "/api/v1/dashboards", json={"title": "Ops", "panels": panels})
    assert made.status_code == 201, made.text
    dash = made.json()
    assert dash["version"] == 1 and dash["panels"][0]["query"] == panels[0]["query"]
    path = f"/api/v1/dashboards/{dash['id']}"
    first = node.request("PUT", path, json={"title": "Ops v2", "panels": panels, "version": 1})
    assert first.status_code == 200 and first.json()["version"] == 2
    stale = node.request("PUT", path, json={"title": "Lost update", "panels": [], "version": 1})
    assert stale.status_code == 409 and stale.json()["version"] == 2
    assert node.request("GET", path).json()["title"] == "Ops v2"
    assert node.request("DELETE", path + "?version=1").status_code == 409
    assert node.request("DELETE", path + "?version=2").json() == {"deleted": dash["id"]}
    assert node.request("GET", path).status_code == 404
    assert all(d["id"] != dash["id"] for d in node.request("GET", "/api/v1/dashboards").json())


def test_control_objects_are_validated(node: Server) -> None:
    before = {kind: node.request("GET", f"/api/v1/{kind}").json() for kind in ("dashboards", "monitors")}
    bad_dashboards = [
        {"title": "x", "panels": [{"query": "error | sort by"}]},
        {"title": "x", "panels": [{"query": "*", "type": "pie3d"}]},
        {"title": "", "panels": []},
        {"title": "x", "panels": "not a list"},
        {"title": "x", "colour": "red"},
        {"title": "x", "version": 3},
    ]
    for body in bad_dashboards:
        reply = node.request("POST", "/api/v1/dashboards", json=body)
        assert reply.status_code == 400 and reply.json()["error"], body
    monitor = {"name": "too many errors", "query": "error | stats count() as n", "dataset": "default",
               "schedule": "1m", "window": "5m", "condition": {"op": ">", "threshold": 10},
               "webhook": "https://hooks.example.org/alert"}
    for change in [{"query": "error |"}, {"schedule": "1s"}, {"window": "soon"}, {"condition": {"op": "~", "threshold": 1}},
                   {"condition": {"op": ">", "threshold": "ten"}}, {"webhook": "ftp://x"}, {"enabled": "yes"},
                   {"dataset": "Bad Name"}]:
        reply = node.request("POST", "/api/v1/monitors", json={**monitor, **change})
        assert reply.status_code == 400 and reply.json()["error"], change
    after = {kind: node.request("GET", f"/api/v1/{kind}").json() for kind in ("dashboards", "monitors")}
    assert after == before
    made = node.request("POST", "/api/v1/monitors", json=monitor)
    assert made.status_code == 201 and made.json()["condition"] == {"op": ">", "threshold": 10}
    assert made.json()["enabled"] is True


def test_settings_and_dataset_retention(node: Server) -> None:
    settings = node.request("GET", "/api/v1/settings").json()
    assert settings["default_retention_days"] is None
    put = node.request("PUT", "/api/v1/settings", json={"version": settings["version"], "default_retention_days": 30})
    assert put.status_code == 200 and put.json()["default_retention_days"] == 30
    stale = node.request("PUT", "/api/v1/settings", json={"version": settings["version"], "default_retention_days": 1})
    assert stale.status_code == 409 and stale.json()["version"] == put.json()["version"]
    assert node.ingest(b'{"_msg": "kept"}\n', dataset="retained").status_code == 200
    assert node.datasets()["retained"]["retention_days"] == 30  # the default applies
    reply = node.request("PUT", "/api/v1/datasets/retained", json={"retention_days": 7})
    assert reply.status_code == 200 and reply.json()["retention_days"] == 7
    assert node.datasets()["retained"]["retention_days"] == 7
    for body in [{"retention_days": 0}, {"retention_days": "7"}, {}, {"retention_days": 7, "tier": "hot"}]:
        assert node.request("PUT", "/api/v1/datasets/retained", json=body).status_code == 400, body
    assert node.request("PUT", "/api/v1/datasets/Bad Name", json={"retention_days": 1}).status_code in (400, 404)
    assert node.datasets()["retained"]["retention_days"] == 7
    assert node.request("GET", "/api/v1/settings").json()["datasets"]["retained"]["retention_days"] == 7


def test_audit_log_names_who_did_what(node: Server) -> None:
    make_user(node, "grace", "editor")
    session = login(node, "grace", "password-123").json()["token"]
    made = node.request("POST", "/api/v1/dashboards", token=session, json={"title": "Grace's board"}).json()
    entries = node.request("GET", "/api/v1/audit?limit=50").json()
    mine = [e for e in entries if e["kind"] == "dashboards" and e["id"] == made["id"]]
    assert mine and mine[0]["by"] == "grace" and mine[0]["action"] == "create" and mine[0]["at"]
    created = [e for e in entries if e["kind"] == "users" and e["id"] == "grace"]
    assert created and created[0]["by"] == "admin" and "password" in created[0]["changed"]
    assert "scrypt" not in node.request("GET", "/api/v1/audit?limit=10000").text
    seqs = [e["seq"] for e in node.request("GET", "/api/v1/audit?limit=10000").json()]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    only_users = node.request("GET", "/api/v1/audit?kind=users").json()
    assert only_users and all(e["kind"] == "users" for e in only_users)
    assert node.request("GET", "/api/v1/audit", token=session).status_code == 403
    assert node.request("GET", "/api/v1/audit?limit=0").status_code == 400


def test_control_plane_survives_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "restart").start()
    try:
        make_user(server, "heidi", "viewer")
        server.request("POST", "/api/v1/dashboards", json={"title": "kept"})
        assert server.stop() == 0
        server.start()
        assert login(server, "heidi", "password-123").status_code == 200
        assert [d["title"] for d in server.request("GET", "/api/v1/dashboards").json()] == ["kept"]
    finally:
        if server.proc and server.proc.poll() is None:
            server.kill()


def test_secret_files_are_private_and_loose_ones_are_reported(tmp_path: Path) -> None:
    server = Server(tmp_path / "perm").start()
    try:
        secrets_dir = server.data_dir / "secrets"
        for name in ("control.key", "jwt.secret"):
            assert (secrets_dir / name).stat().st_mode & 0o777 == 0o600, name
        assert secrets_dir.stat().st_mode & 0o777 == 0o700
        assert not any("readable by others" in line for line in server.logs)
        assert server.stop() == 0
        # Inside the data directory a loose secret is made private again at start, and said so.
        (secrets_dir / "jwt.secret").chmod(0o644)
        server.start()
        assert (secrets_dir / "jwt.secret").stat().st_mode & 0o777 == 0o600
        tightened = [line for line in server.logs if "made the data directory private" in line]
        assert tightened and "jwt.secret" in tightened[0]
        assert server.stop() == 0
        # A secret kept elsewhere is the operator's: it is reported, not changed.
        outside = tmp_path / "elsewhere.secret"
        outside.write_bytes((secrets_dir / "jwt.secret").read_bytes())
        outside.chmod(0o644)
        server.env["HELIOS_JWT_SECRET_PATH"] = str(outside)
        server.start()
        warnings = [line for line in server.logs if "readable by others" in line]
        assert warnings and "elsewhere.secret" in warnings[0] and "chmod 600" in warnings[0]
        assert outside.stat().st_mode & 0o777 == 0o644
    finally:
        if server.proc and server.proc.poll() is None:
            server.kill()

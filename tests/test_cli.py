"""The ``helios`` client commands against a real node: ingest, query, user and token administration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import orjson

from support import ADMIN_PASSWORD, Record, Server, ndjson


def helios(server: Server, *args: str, token: str | None = None, stdin: bytes | None = None,
           **env: str) -> subprocess.CompletedProcess[bytes]:
    environ = {"PATH": "/usr/bin:/bin", "HELIOS_URL": server.url, **env}
    if token:
        environ["HELIOS_TOKEN"] = token
    else:
        environ["HELIOS_PASSWORD"] = ADMIN_PASSWORD
    return subprocess.run([sys.executable, "-m", "helios", *args], env=environ, input=stdin,
                          capture_output=True, timeout=60)


def test_cli_ingest_query_users_and_tokens(server_factory: Callable[..., Server], records: list[Record],
                                           tmp_path: Path) -> None:
    node = server_factory()
    path = tmp_path / "logs.ndjson"
    path.write_bytes(ndjson(records[:3000]))
    done = helios(node, "ingest", str(path), "--dataset", "cli", "--batch", "1000")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"ingested": 3000}
    assert b"3,000 rows" in done.stderr  # the progress line
    text = helios(node, "ingest", "--dataset", "cli", "--format", "text", stdin=b"plain one\nplain two\n")
    assert orjson.loads(text.stdout) == {"ingested": 2}
    query = helios(node, "query", "* | stats count() as n", "--dataset", "cli", "--json")
    assert orjson.loads(query.stdout)["rows"] == [{"n": 3002}]
    table = helios(node, "query", "plain", "--dataset", "cli")
    assert table.returncode == 0 and b"plain two" in table.stdout and b"2 rows" in table.stderr
    bad = helios(node, "query", "error | sort by")
    assert bad.returncode == 1 and b"column" in bad.stderr

    added = helios(node, "user", "add", "kim", "--role", "viewer", "--new-password", "kim-password")
    assert added.returncode == 0, added.stderr
    assert orjson.loads(added.stdout)["role"] == "viewer"
    assert helios(node, "user", "set", "kim", "--role", "editor").returncode == 0
    assert b"editor" in helios(node, "user", "list").stdout
    made = helios(node, "token", "create", "shipper", "--role", "ingest")
    assert made.returncode == 0 and b"shown once" in made.stderr
    token = made.stdout.decode().strip()
    shipped = helios(node, "ingest", "--dataset", "cli", token=token, stdin=b'{"_msg": "via token"}\n')
    assert shipped.returncode == 0, shipped.stderr
    denied = helios(node, "query", "*", token=token)
    assert denied.returncode == 1 and b"403" in denied.stderr
    token_id = token.split("_")[1]
    assert helios(node, "token", "revoke", token_id).returncode == 0
    revoked = helios(node, "ingest", "--dataset", "cli", token=token, stdin=b'{"_msg": "late"}\n')
    assert revoked.returncode == 1 and b"revoked" in revoked.stderr
    assert helios(node, "user", "delete", "kim").returncode == 0
    assert helios(node, "user", "delete", "kim").returncode != 0
    assert node.count(dataset="cli") == 3003
    version = helios(node, "version")
    assert version.returncode == 0 and version.stdout.startswith(b"helios ")

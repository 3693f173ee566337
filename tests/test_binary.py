"""The one-file binary: `make binary` builds dist/helios, which runs with no Python environment around it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from support import ADMIN_PASSWORD, S3_ENV, MotoServer, Record, Server, ndjson, wait_until

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dist" / "helios"
MAX_BYTES = 80 * 1024 * 1024
SOURCES = [REPO / "pyinstaller.spec", REPO / "pyproject.toml", REPO / "constraints.txt",
           *(REPO / "helios").rglob("*.py"), *(REPO / "backends").rglob("*.py"),
           *(p for p in (REPO / "helios" / "ui" / "static").rglob("*") if p.is_file())]


@pytest.fixture(scope="module")
def binary() -> Path:
    """dist/helios, rebuilt with `make binary` unless it is newer than every source."""
    if not BINARY.exists() or BINARY.stat().st_mtime < max(p.stat().st_mtime for p in SOURCES):
        done = subprocess.run(["make", "binary"], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    size = BINARY.stat().st_size
    print(f"dist/helios: {size / 1e6:.1f} MB")
    assert size < MAX_BYTES
    return BINARY


@pytest.fixture
def clean_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """No virtualenv, no PYTHONPATH: only what a deployment has. TMPDIR is watched for leftovers."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp), "LANG": "C.UTF-8"}
    assert not list(tmp.iterdir()), f"left in TMPDIR: {list(tmp.iterdir())}"  # the bootloader cleaned up


def run(binary: Path, env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(binary), *args], env=env, input=stdin, capture_output=True, timeout=120)


def test_binary_serves_ingests_queries_and_stops_on_sigterm(binary: Path, clean_env: dict[str, str],
                                                            records: list[Record], tmp_path: Path) -> None:
    version = run(binary, clean_env, "version")
    assert version.returncode == 0 and version.stdout.startswith(b"helios ") and b"commit " in version.stdout
    assert b"unknown" not in version.stdout
    assert b"ingest: the C reader of flat NDJSON" in version.stdout  # the extensions are in the binary
    assert b"wal: CRC-32C frames" in version.stdout
    node = Server(tmp_path / "data", program=[str(binary)], base_env=clean_env)
    node.data_dir.mkdir()
    began = time.monotonic()
    node.start()
    print(f"dist/helios serve: listening after {time.monotonic() - began:.2f} s")
    assert node.ingest(ndjson(records[:5000]), dataset="loghub").json() == {"ingested": 5000}
    assert node.count(dataset="loghub") == 5000
    page = node.request("GET", "/", token=None)  # the web UI is inside the binary
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:200]
    assert node.count("service:hdfs", dataset="loghub") == sum(1 for r in records[:5000] if r.service == "hdfs")
    client = {**clean_env, "HELIOS_URL": node.url, "HELIOS_PASSWORD": ADMIN_PASSWORD}
    logfile = tmp_path / "more.ndjson"
    logfile.write_bytes(ndjson(records[5000:6000]))
    shipped = run(binary, client, "ingest", str(logfile), "--dataset", "loghub")
    assert shipped.returncode == 0 and orjson.loads(shipped.stdout) == {"ingested": 1000}, shipped.stderr
    queried = run(binary, client, "query", "* | stats count() as n", "--dataset", "loghub", "--json")
    assert orjson.loads(queried.stdout)["rows"] == [{"n": 6000}], queried.stderr
    added = run(binary, client, "user", "add", "ops", "--role", "viewer", "--new-password", "ops-password")
    assert added.returncode == 0, added.stderr
    token = run(binary, client, "token", "create", "ci", "--role", "ingest")
    assert token.returncode == 0 and token.stdout.startswith(b"hlt_")
    assert node.stop(signal.SIGTERM) == 0
    assert any('"stopped"' in line for line in node.logs)
    node.start()  # what was acknowledged is still there, and SIGINT drains too
    assert node.count(dataset="loghub") == 6000
    assert node.stop(signal.SIGINT) == 0


def test_binary_replicates_through_s3(binary: Path, clean_env: dict[str, str], moto_s3: MotoServer,
                                      records: list[Record], tmp_path: Path) -> None:
    """The trimmed botocore (no service models) still signs, finds credentials and reaches S3."""
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": moto_s3.endpoint, "HELIOS_BLOCK_SYNC_SECS": "1",
           "HELIOS_SHARED_STORE": f"s3://helios-test/binary-{os.getpid()}"}
    node = Server(tmp_path / "data", env, program=[str(binary)], base_env=clean_env)
    node.data_dir.mkdir()
    node.start()
    assert any("shared store ready" in line for line in node.logs)
    assert node.ingest(ndjson(records[:500]), dataset="s3").status_code == 200
    wait_until(lambda: node.request("GET", "/api/v1/cluster").json()["sync"]["last_upload"] is not None
               and node.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0,
               what="the upload to S3")
    assert node.stop() == 0

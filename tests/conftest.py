from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from support import SYNC_SECS, MotoServer, Record, Server, loghub_records


@pytest.fixture(scope="session")
def records() -> list[Record]:
    return loghub_records()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[callable]:
    """Start real servers; every one still running is killed at the end of the test."""
    started: list[Server] = []

    def make(name: str = "node", **env: str) -> Server:
        server = Server(tmp_path / name, {k: str(v) for k, v in env.items()})
        server.data_dir.mkdir(parents=True, exist_ok=True)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """AWS variables for moto, set in this process (botocore's credential chain reads them)."""
    import os

    from support import S3_ENV

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    yield dict(S3_ENV)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def moto_s3(s3_env: dict[str, str]) -> Iterator["MotoServer"]:
    """A patched (atomic) moto S3 server with a bucket `helios-test`, checked by a race at start-up."""
    from support import MotoServer, conditional_put_race

    server = MotoServer().start()
    try:
        server.client().create_bucket(Bucket="helios-test")
        wins = conditional_put_race(server.client, "helios-test", rounds=40, threads=8)
        assert wins == [1] * 40, f"the moto test server is not atomic: winners per round {wins}"
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["fs", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for nodes sharing one store, one secret set, and a 2 s sync bound."""
    env = {"HELIOS_BLOCK_SYNC_SECS": str(SYNC_SECS)}
    secrets_dir = tmp_path / "shared-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "control.key").write_bytes(secrets.token_bytes(32))
    (secrets_dir / "jwt.secret").write_bytes(secrets.token_bytes(32))
    for path in secrets_dir.iterdir():
        path.chmod(0o600)
    env["HELIOS_CONTROL_KEY_PATH"] = str(secrets_dir / "control.key")
    env["HELIOS_JWT_SECRET_PATH"] = str(secrets_dir / "jwt.secret")
    if request.param == "fs":
        env["HELIOS_SHARED_STORE"] = str(tmp_path / "shared")
    else:
        moto: MotoServer = request.getfixturevalue("moto_s3")
        env.update(request.getfixturevalue("s3_env"))
        env["AWS_ENDPOINT_URL_S3"] = moto.endpoint
        env["HELIOS_SHARED_STORE"] = f"s3://helios-test/repl-{secrets.token_hex(4)}"
    return env



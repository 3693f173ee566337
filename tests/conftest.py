from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import MotoServer, Record, Server, loghub_records


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

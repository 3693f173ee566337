from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import Record, Server, loghub_records


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

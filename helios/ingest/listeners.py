"""The socket listeners of a node: syslog (TCP/UDP) and Fluent forward (TCP), all off by default.

    Listeners.run (started from the node's root nursery)
    └─ nursery
       ├─ Sink("syslog").run, Sink("forward").run     batch rows → engine.ingest
       └─ listener nursery
          ├─ syslog.serve_tcp / serve_udp per --syslog-listen endpoint
          └─ forward.serve per --forward-listen

Shutdown (``stop``, called by the node before its final flush, while the WAL
still runs): cancel the listener nursery (sockets close), then close the
sinks, which commit what they hold and return.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import trio

from helios.errors import ConfigError
from helios.ingest import forward, syslog
from helios.ingest.sink import Ingest, Sink

__all__ = ["Listeners", "read_shared_key"]


def read_shared_key(path: Path | None) -> bytes | None:
    """The forward shared key (the file's bytes, surrounding whitespace stripped); ConfigError if unusable."""
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the forward shared key {str(path)!r}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"the forward shared key file {str(path)!r} is empty")
    return key


class Listeners:
    def __init__(self, config: Any, ingest: Ingest, counters: Counter[str]) -> None:
        self.syslog_endpoints: tuple[tuple[str, str, int], ...] = config.syslog_listen
        self.forward_endpoint: tuple[str, int] | None = config.forward_listen
        self.shared_key = read_shared_key(config.forward_shared_key_path)
        self.ingest = ingest
        self.counters = counters
        self.addresses: list[tuple[str, str, int]] = []
        self._listening: trio.Nursery | None = None
        self._done = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start every configured listener; ``task_status.started(addresses)``; run until ``stop``."""
        try:
            if not self.syslog_endpoints and self.forward_endpoint is None:
                task_status.started(self.addresses)
                return
            sinks = {"syslog": Sink(self.ingest, self.counters, "syslog"),
                     "forward": Sink(self.ingest, self.counters, "forward")}
            async with trio.open_nursery() as nursery:
                for sink in sinks.values():
                    await nursery.start(sink.run)
                try:
                    async with trio.open_nursery() as listening:
                        self._listening = listening
                        for scheme, host, port in self.syslog_endpoints:
                            serve = syslog.serve_tcp if scheme == "tcp" else syslog.serve_udp
                            await self._start(listening, f"{scheme}://{host}:{port}", serve, sinks["syslog"],
                                              host, port)
                        if self.forward_endpoint is not None:
                            host, port = self.forward_endpoint
                            await self._start(listening, f"forward {host}:{port}", forward.serve, sinks["forward"],
                                              self.ingest, host, port, self.shared_key)
                        task_status.started(self.addresses)
                finally:
                    for sink in sinks.values():
                        sink.close()
        finally:
            self._done.set()

    async def _start(self, nursery: trio.Nursery, what: str, serve: Any, *args: Any) -> None:
        try:
            self.addresses.append(await nursery.start(serve, *args))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {what}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        """Close the sockets, commit what the sinks hold, and wait for it."""
        if self._listening is not None:
            self._listening.cancel_scope.cancel()
        await self._done.wait()

"""The monitor service in this process: a leader's evaluation and what it commits, over a real
control plane and engine (no HTTP, no webhook receiver)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import trio

from helios.monitors import alerts
from helios.monitors.allow import WebhookPolicy
from helios.monitors.service import MonitorService


async def test_evaluation_under_a_lost_lease_commits_nothing(tmp_path: Any) -> None:
    """A leader whose lease was taken over (it still believes it leads) evaluates but commits nothing."""
    from backends.memory import MemoryBackend
    from helios.control.objects import monitor_doc
    from helios.control.plane import ControlPlane, Sealer
    from helios.replication.lease import Lease
    from helios.storage.engine import Engine
    from helios.supervisor import Health

    store = MemoryBackend()
    control = ControlPlane(tmp_path / "control", Sealer(b"k" * 32, b"j" * 32, "none"), "a")
    await control.open()
    engine = Engine(tmp_path / "data", "a")
    engine.open()
    lease = Lease("monitors", store, "a", ttl_s=30.0)
    await lease.tick()
    assert lease.is_leader and lease.epoch == 1
    service = MonitorService(control, engine, lease, None, node_id="a", lag_s=0.0, retry_s=60.0,
                             policy=WebhookPolicy(), health=Health())

    async def monitor(name: str) -> str:
        doc = monitor_doc({"name": name, "query": f"{name} | stats count() as n", "schedule": "10s",
                           "window": "1h", "condition": {"op": ">", "threshold": 0}})
        made = await control.commit("monitors", name.encode().hex()[:12].ljust(12, "0"), lambda _: doc, "t")
        assert made is not None
        return made.id

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.wal.run)
        now = time.time_ns()
        batch = b"".join(orjson.dumps({"_time": now - 60 * 10**9, "_msg": word}) + b"\n"
                         for word in ("alpha", "bravo"))
        from helios.ingest.records import parse_ndjson
        await engine.ingest("default", parse_ndjson(batch, now))
        first = await monitor("alpha")
        await service.pass_once()  # positive control: the leader commits the transition
        assert alerts.state_of(control, first)["state"] == "firing"
        # Another node takes epoch 2 (this one is paused, say): its record is in the store.
        await store.create("_control/leases/monitors/000000000002",
                           orjson.dumps({"holder": "b", "epoch": 2, "commit": "x", "at": "now"}))
        second = await monitor("bravo")
        assert lease.is_leader  # by its own clock it still leads...
        await service.pass_once()
        assert service.board.monitors[second].value == 1  # ...it evaluated...
        assert control.get(alerts.KIND, second) is None  # ...and committed nothing
        assert [e.kind for e in control.audit].count(alerts.KIND) == 1
        nursery.cancel_scope.cancel()
    engine.close()


async def _service(tmp_path: Any, **options: Any) -> tuple[Any, Any, MonitorService]:
    """A leading monitor service over a fresh control plane and engine (in this process)."""
    from backends.memory import MemoryBackend
    from helios.control.plane import ControlPlane, Sealer
    from helios.replication.lease import Lease
    from helios.storage.engine import Engine
    from helios.supervisor import Health

    control = ControlPlane(tmp_path / "control", Sealer(b"k" * 32, b"j" * 32, "none"), "a")
    await control.open()
    engine = Engine(tmp_path / "data", "a")
    engine.open()
    lease = Lease("monitors", MemoryBackend(), "a", ttl_s=30.0)
    await lease.tick()
    return control, engine, MonitorService(control, engine, lease, None, node_id="a", lag_s=0.0,
                                           retry_s=60.0, policy=WebhookPolicy(), health=Health(),
                                           **options)


async def _two_monitors(control: Any, engine: Any, service: MonitorService) -> dict[str, str]:
    """Monitors counting ``alpha`` and ``bravo`` (one row each, ingested), after one pass."""
    from helios.control.objects import monitor_doc
    from helios.ingest.records import parse_ndjson

    ids = {}
    for name in ("alpha", "bravo"):
        doc = monitor_doc({"name": name, "query": f"{name} | stats count() as n", "schedule": "10s",
                           "window": "1h", "condition": {"op": ">", "threshold": 0}})
        made = await control.commit("monitors", name.encode().hex()[:12].ljust(12, "0"),
                                    lambda _, doc=doc: doc, "t")
        assert made is not None
        ids[name] = made.id
    now = time.time_ns()
    await engine.ingest("default", parse_ndjson(
        b"".join(orjson.dumps({"_time": now - 60 * 10**9, "_msg": w}) + b"\n"
                 for w in ("alpha", "bravo")), now))
    await service.pass_once()
    return ids


async def test_a_monitor_whose_query_hits_a_bug_fails_alone(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved query that hits a bug in the engine puts its monitor in ``error`` and is logged; the
    other monitors are evaluated and the service (and so the node) goes on. Ending the node would
    end every node that leads the monitors, again after each restart."""
    from helios.monitors import service as service_module

    real = service_module.execute

    def planted(query: Any, *args: Any, **kwargs: Any) -> Any:  # the bug: one query's shape
        if "bravo" in repr(query.filter):
            raise RuntimeError("a planted engine bug")
        return real(query, *args, **kwargs)

    monkeypatch.setattr(service_module, "execute", planted)
    control, engine, service = await _service(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.wal.run)
        ids = await _two_monitors(control, engine, service)
        board = service.board.monitors
        assert board[ids["alpha"]].value == 1 and board[ids["alpha"]].error is None
        bravo = board[ids["bravo"]]
        assert bravo.state == "error" and "internal error" in (bravo.error or "")
        assert alerts.state_of(control, ids["alpha"])["state"] == "firing"
        nursery.cancel_scope.cancel()
    engine.close()


async def test_a_monitor_query_has_the_query_deadline(tmp_path: Any) -> None:
    """A monitor's query stops at HELIOS_QUERY_TIMEOUT_SECS as any query does (it ran unbounded):
    the monitor is in ``error`` saying so, nothing fires."""
    control, engine, service = await _service(tmp_path, query_timeout_s=1e-9)  # past at once
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.wal.run)
        ids = await _two_monitors(control, engine, service)
        for monitor in ids.values():
            live = service.board.monitors[monitor]
            assert live.state == "error" and "deadline" in live.error, live
            assert control.get(alerts.KIND, monitor) is None
        nursery.cancel_scope.cancel()
    engine.close()

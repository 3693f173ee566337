"""The failure policy: no object in the store and no local disk fault takes a node down.

Real nodes on fs and on S3 (moto over HTTP) find garbage written into the
store — a malformed change-feed key, an unparsable next manifest version of a
live partition, a garbage lease record — and keep serving, keep replicating
every other partition, and report each object by name in /api/v1/cluster. A
node whose disk fills up while it writes a pulled block survives and catches
up once there is room. In-process: ambiguous creates stay ambiguous until read
back, and a control-plane write whose answer was lost is not answered 409.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from backends import Conflict, Unavailable, create_resolved
from backends.faulty import FaultyBackend, Passthrough
from backends.fs import FsBackend
from backends.memory import MemoryBackend
from helios import timeutil
from helios.control.plane import ControlPlane, Sealer
from helios.errors import Unavailable as ServiceUnavailable
from helios.replication import shared
from support import BASE_NS, MotoServer, Server, cluster, wait_until

DAY = timeutil.day_name(BASE_NS // 86_400_000_000_000)


def rows(n: int, tag: str, *, width: int = 0) -> bytes:
    """NDJSON rows; ``width`` hex characters of random padding each (about half survives compression)."""
    def pad() -> str:
        return f" {os.urandom(width // 2).hex()}" if width else ""
    return b"".join(orjson.dumps({"_time": BASE_NS + i, "_msg": f"{tag} row {i}{pad()}"}) + b"\n"
                    for i in range(n))


class RawStore:
    """Writes and lists objects of the test's shared store behind the nodes' backs (fs files or S3 objects)."""

    def __init__(self, env: dict[str, str], moto: MotoServer | None) -> None:
        spec = env["HELIOS_SHARED_STORE"]
        self.s3 = spec.startswith("s3://")
        if self.s3:
            assert moto is not None
            self.client = moto.client()
            self.bucket, _, prefix = spec[len("s3://"):].partition("/")
            self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        else:
            self.root = Path(spec)

    def put(self, key: str, data: bytes) -> None:
        if self.s3:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        else:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def keys(self, prefix: str) -> list[str]:
        if self.s3:
            reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + prefix)
            return sorted(o["Key"][len(self.prefix):] for o in reply.get("Contents", []))
        base = self.root / prefix
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


def quarantined(node: Server) -> set[str]:
    return {p["subject"] for p in cluster(node)["health"]["quarantined"]}


def test_garbage_in_the_store_takes_no_node_down(server_factory: Any, store_env: dict[str, str],
                                                 request: pytest.FixtureRequest) -> None:
    env = {**store_env, "HELIOS_LEASE_SECS": "1.5", "HELIOS_COMPACTION_INTERVAL_SECS": "1"}
    a = server_factory("a", **env)
    b = server_factory("b", **env)
    pids = (a.proc.pid, b.proc.pid)
    moto = request.getfixturevalue("moto_s3") if store_env["HELIOS_SHARED_STORE"].startswith("s3://") else None
    raw = RawStore(store_env, moto)
    assert a.ingest(rows(100, "good"), dataset="good").status_code == 200
    assert a.ingest(rows(50, "bad"), dataset="bad").status_code == 200
    wait_until(lambda: b.count(dataset="good") == 100 and b.count(dataset="bad") == 50, what="first sync")
    versions = raw.keys(f"parts/bad/{DAY}/manifest/")
    assert versions, "partition 'bad' has a manifest in the store"
    newest = int(versions[-1].rsplit("/", 1)[1].split(".")[0])
    wait_until(lambda: raw.keys("_control/leases/compaction/"), what="a compaction lease")
    epochs = [k for k in raw.keys("_control/leases/compaction/") if not k.endswith(".beat")]
    lease_epoch = int(epochs[-1].rsplit("/", 1)[1])

    garbage = {
        "_changes/zz-garbage": b"",
        shared.version_key("bad", BASE_NS // 86_400_000_000_000, newest + 1): b"{not a manifest",
        f"_control/leases/compaction/{lease_epoch + 1:012d}": b"\x00garbage lease record",
    }
    for key, data in garbage.items():
        raw.put(key, data)
    # Announce the garbage version so that pullers read it now, not at their next full pass.
    raw.put(shared.change_key(time.time_ns(), "bad", BASE_NS // 86_400_000_000_000, newest + 1, "x"), b"")

    # More rows on A: partition 'good' keeps replicating; 'bad' is stuck at its corrupt version.
    assert a.ingest(rows(200, "good2"), dataset="good").status_code == 200
    wait_until(lambda: b.count(dataset="good") == 300, timeout_s=30, what="'good' replicating past the garbage")
    for node in (a, b):
        wait_until(lambda node=node: set(garbage) <= quarantined(node), timeout_s=30,
                   what=f"every garbage object reported by name on {node.data_dir.name}")
        assert node.request("GET", "/healthz", token=None).status_code == 200
        ready = node.request("GET", "/readyz", token=None)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert "helios_quarantined_objects" in node.request("GET", "/metrics").text
    # The garbage lease epoch is held by nobody: after the stale period a node takes the next one.
    wait_until(lambda: any(k.endswith(f"{lease_epoch + 2:012d}") for k in raw.keys("_control/leases/compaction/")),
               timeout_s=30, what="compaction leadership taken past the garbage epoch")
    wait_until(lambda: cluster(a)["leaders"]["compaction"] is not None, what="a compaction leader")
    assert (a.proc.poll(), b.proc.poll()) == (None, None), "both nodes still run"
    assert (a.proc.pid, b.proc.pid) == pids
    assert a.count(dataset="bad") == 50 and b.count(dataset="bad") == 50  # the data both had stays queryable
    assert not any("Traceback" in line for line in a.logs + b.logs)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 6 MiB tmpfs for a node's data dir (needs root, as CI has; otherwise skipped, loudly)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill a disk (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_pulling_a_block_is_survived(server_factory: Any, tmp_path: Path,
                                                        small_disk: Path) -> None:
    # Every block is in the prefetch window (the rows are from 2023), so the puller writes them as it pulls.
    env = {"HELIOS_SHARED_STORE": str(tmp_path / "store"), "HELIOS_BLOCK_SYNC_SECS": "2",
           "HELIOS_PREFETCH_HOURS": "1000000"}
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    for name in ("control.key", "jwt.secret"):
        (secrets_dir / name).write_bytes(os.urandom(32))
        (secrets_dir / name).chmod(0o600)
    env |= {"HELIOS_CONTROL_KEY_PATH": str(secrets_dir / "control.key"),
            "HELIOS_JWT_SECRET_PATH": str(secrets_dir / "jwt.secret")}
    a = server_factory("a", **env)
    b = Server(small_disk / "b", {k: str(v) for k, v in env.items()})
    b.data_dir.mkdir()
    b.start()
    try:
        pid = b.proc.pid
        assert a.ingest(rows(10, "small"), dataset="small").status_code == 200
        wait_until(lambda: b.count(dataset="small") == 10, what="a small partition pulled")
        # ~16 MB of hex (8 MB after zstd): their block cannot fit in what is left of B's 6 MiB disk.
        assert a.ingest(rows(4000, "big", width=4000), dataset="big").status_code == 200
        wait_until(lambda: any(p["kind"] == "disk" for p in cluster(b)["health"]["problems"]), timeout_s=30,
                   what="the full disk reported on B")
        problems = cluster(b)["health"]["problems"]
        assert any(p["task"] == "pull" and p["subject"] == f"big/{DAY}" for p in problems), problems
        # B keeps serving and keeps replicating what fits.
        assert a.ingest(rows(5, "small2"), dataset="small").status_code == 200
        wait_until(lambda: b.count(dataset="small") == 15, what="other partitions still replicate")
        assert b.request("GET", "/healthz", token=None).status_code == 200
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wait_until(lambda: b.count(dataset="big") == 4000, timeout_s=40, what="B catches up once there is room")
        wait_until(lambda: not cluster(b)["health"]["problems"], what="B healthy again")
        assert b.proc.pid == pid and b.proc.poll() is None
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.kill()


class LostAnswers(Passthrough):
    """Scripted store faults: ``script[op]`` lists what each successive call does ("ok", "lost", "error")."""

    def __init__(self, inner: Any, script: dict[str, list[str]]) -> None:
        super().__init__(inner)
        self.script = {op: list(steps) for op, steps in script.items()}

    def _next(self, op: str) -> str:
        steps = self.script.get(op) or ["ok"]
        return steps.pop(0) if len(steps) > 1 or steps[0] != "ok" else "ok"

    async def create(self, key: str, data: bytes) -> None:
        step = self._next("create")
        if step == "error":
            raise Unavailable("injected: did not land")
        await self.inner.create(key, data)
        if step == "lost":
            raise Unavailable("injected: landed, answer lost")

    async def get(self, key: str) -> bytes:
        if self._next("get") == "error":
            raise Unavailable("injected: get failed")
        return await self.inner.get(key)


async def test_create_resolved_reads_back_before_deciding() -> None:
    memory = MemoryBackend()
    # Landed, answer lost, read-back failed once, create again finds the key, read-back: ours.
    store = LostAnswers(memory, {"create": ["lost", "ok"], "get": ["error", "ok"]})
    await create_resolved(store, "k1", b"mine")
    # Landed, answer lost, and the store stays unreadable: the outcome is unknown, not a Conflict.
    store = LostAnswers(memory, {"create": ["lost", "ok"], "get": ["error"] * 20})
    with pytest.raises(Unavailable):
        await create_resolved(store, "k2", b"mine")
    assert await memory.get("k2") == b"mine"
    # Another writer's bytes read back: a Conflict.
    await memory.create("k3", b"theirs")
    with pytest.raises(Conflict):
        await create_resolved(LostAnswers(memory, {}), "k3", b"mine")
    # The seeded fault wrapper: every answer lost, every outcome still settled by reading back.
    faulty = FaultyBackend(memory, seed=3, lost_answer_rate=1.0)
    for i in range(20):
        await create_resolved(faulty, f"f{i}", f"mine-{i}".encode())


async def test_a_control_plane_write_whose_answer_was_lost_is_not_answered_409(tmp_path: Path) -> None:
    memory = MemoryBackend()
    node = ControlPlane(tmp_path / "n", Sealer(b"k" * 32, b"j" * 32, "aes-256-gcm"), "n")
    await node.open()
    await node.attach(memory, "memory")

    def create(current: Any) -> dict[str, str]:
        if current is not None:
            from helios.errors import Conflict as Exists

            raise Exists("exists")
        return {"title": "t"}

    # The first create of the entry lands and its answer is lost; every read-back fails until the
    # writer has lost interest in this attempt, so it must learn the outcome from the log itself.
    node.store = LostAnswers(memory, {"create": ["lost", "ok"], "get": ["error"] * 10 + ["ok"]})
    with pytest.raises(ServiceUnavailable) as failed:
        await node.commit("dashboards", "d1", create, "admin")
    assert "may or may not" in str(failed.value)
    node.store = memory
    await node.pull()
    assert node.get("dashboards", "d1") is not None  # it had landed: reading back shows it
    # With a read-back that works the writer recognises its own entry and answers success.
    node.store = LostAnswers(memory, {"create": ["lost", "ok"], "get": ["error", "ok"]})
    obj = await node.commit("dashboards", "d2", create, "admin")
    assert obj is not None and obj.doc == {"title": "t"}
    assert node.applied == 2


def test_fs_store_sweeps_temporary_files_stranded_by_crashes(tmp_path: Path) -> None:
    store = FsBackend(tmp_path)
    tmp_dir = tmp_path / ".tmp"
    tmp_dir.mkdir()
    stranded, fresh = tmp_dir / "old", tmp_dir / "new"
    stranded.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stranded, (time.time() - 7200, time.time() - 7200))
    trio.run(store.put, "a/b", b"data")
    assert not stranded.exists() and fresh.exists()
    assert trio.run(store.get, "a/b") == b"data"
    assert [i.key for i in trio.run(store.list, "")] == ["a/b"]


@pytest.mark.parametrize("token_index", [True, False], ids=["token-index", "format-1-bloom"])
def test_a_damaged_block_index_is_never_used_for_pruning(tmp_path: Path, token_index: bool) -> None:
    """A flipped bit in a block's index (the token index after the Parquet bytes, or a format 1 block's
    footer where its term filter lives) fails the checksum: nothing is pruned from it."""
    import pyarrow as pa

    from helios.storage.blocks import CorruptBlock, build_block, load_index

    table = pa.table({"_time": pa.array([1, 2], pa.int64()).cast(pa.timestamp("ns", "UTC")),
                      "_msg": ["Connection reset by peer", "disk full"]})
    entry = build_block(tmp_path, "b1", [table], dataset="d", day=0, node="n", created_ns=0,
                        index="tokens" if token_index else "bloom")
    path = tmp_path / entry.filename
    index = load_index(path, entry)
    assert (index.tokens is not None) if token_index else (index.bloom is not None)
    data = bytearray(path.read_bytes())
    data[-(entry.index_bytes // 2) if token_index else -200] ^= 0x01  # inside the index / the footer
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBlock):
        load_index(path, entry)


def test_a_damaged_local_block_is_reported_not_a_crash(server_factory: Any) -> None:
    node = server_factory("solo", HELIOS_FLUSH_SECS="0.2")
    assert node.ingest(rows(100, "keep")).status_code == 200
    blocks = wait_until(lambda: list(node.data_dir.glob("parts/default/*/*.parquet")), what="a block on disk")
    node.stop()
    data = bytearray(blocks[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    blocks[0].write_bytes(bytes(data))
    node.start()
    reply = node.request("POST", "/api/v1/query", json={"q": "keep"})
    assert reply.status_code == 503 and "damaged" in reply.json()["error"], reply.text
    assert str(blocks[0]) in quarantined(node)
    assert node.request("GET", "/healthz", token=None).status_code == 200
    assert node.ingest(rows(5, "more"), dataset="other").status_code == 200
    assert node.count(dataset="other") == 5

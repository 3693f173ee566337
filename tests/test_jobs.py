"""Leader-elected jobs across real nodes on one store (fs, and S3 through moto): leases, compaction, retention."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest

from support import MotoServer, Record, Server, cluster, ndjson, passes, settled, wait_until

LEASE = 2.0
JOBS = ("compaction", "retention", "monitors")
FAST = {"HELIOS_LEASE_SECS": str(LEASE), "HELIOS_COMPACTION_INTERVAL_SECS": "1",
        "HELIOS_RETENTION_INTERVAL_SECS": "1", "HELIOS_GC_GRACE_SECS": "2"}


@pytest.fixture
def env(store_env: dict[str, str]) -> dict[str, str]:
    return {**store_env, **FAST}


def self_leaders(nodes: list[Server], job: str) -> list[str]:
    """The node ids of the nodes that consider themselves the job's leader right now."""
    out = []
    for node in nodes:
        info = cluster(node)
        if info["leaders"][job] == info["node_id"]:
            out.append(info["node_id"])
    return out


def overlapping_leaders(nodes: list[Server], job: str) -> list[str]:
    """The node ids that led the job at one same moment (more than one is a violation).

    A sample asks the nodes one after another, so a handover between two answers
    (the old leader steps down on its own clock, then another takes over) would
    look like two leaders. An earlier claimant that still claims after the last
    one answered did lead at the same moment as it.
    """
    claimants = []
    for node in nodes:
        info = cluster(node)
        if info["leaders"][job] == info["node_id"]:
            claimants.append((node, info["node_id"]))
    if len(claimants) <= 1:
        return [node_id for _, node_id in claimants]
    return [node_id for node, node_id in claimants[:-1] if self_leaders([node], job)] + [claimants[-1][1]]


def store_objects(env: dict[str, str], moto: MotoServer | None, prefix: str) -> Iterator[tuple[str, bytes]]:
    spec = env["HELIOS_SHARED_STORE"]
    if not spec.startswith("s3://"):
        root = Path(spec)
        for path in sorted((root / prefix).rglob("*")) if (root / prefix).exists() else []:
            if path.is_file() and not path.name.startswith("."):
                try:
                    yield str(path.relative_to(root)), path.read_bytes()
                except FileNotFoundError:
                    continue  # garbage collection got there between the listing and the read
        return
    assert moto is not None
    bucket, base = spec[5:].split("/", 1)
    client = moto.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{base}/{prefix}"):
        for item in page.get("Contents", []):
            key = item["Key"][len(base) + 1 :]
            try:
                yield key, client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            except client.exceptions.NoSuchKey:
                continue  # garbage collection got there between the listing and the read


def moto_of(env: dict[str, str], request: pytest.FixtureRequest) -> MotoServer | None:
    return request.getfixturevalue("moto_s3") if env["HELIOS_SHARED_STORE"].startswith("s3://") else None


def check_manifest_chains(env: dict[str, str], moto: MotoServer | None) -> int:
    """Every partition's versions: parent = previous; leader epochs never go back; each leader commit by its holder."""
    holders: dict[tuple[str, int], str] = {}
    for key, data in store_objects(env, moto, "_control/leases/"):
        name = key.rsplit("/", 1)[1]
        if name.isdigit():
            holders[(key.split("/")[2], int(name))] = orjson.loads(data)["holder"]
    chains: dict[str, list[dict[str, Any]]] = {}
    for key, data in store_objects(env, moto, "parts/"):
        if "/manifest/" in key:
            chains.setdefault(key.split("/manifest/")[0], []).append(orjson.loads(data))
    leader_commits = 0
    for partition, versions in chains.items():
        versions.sort(key=lambda v: v["version"])
        for previous, current in zip(versions, versions[1:]):
            if current["version"] == previous["version"] + 1:
                assert current["parent"] == previous["version"], partition
                assert current.get("parent_commit") == previous["commit_id"], partition
            for job, epoch in previous.get("epochs", {}).items():
                assert current["epochs"].get(job, 0) >= epoch, f"{partition}: {job} epoch went back at {current['version']}"
        for version in versions:
            job = version.get("job") or ""
            if job:
                leader_commits += 1
                lease_job = "compaction" if job in ("compaction", "gc") else job
                assert holders[(lease_job, version["epoch"])] == version["node"], (partition, version["version"])
    return leader_commits


def test_one_leader_per_job_and_takeover_after_kill(server_factory: Callable[..., Server],
                                                    env: dict[str, str]) -> None:
    nodes = [server_factory(name, **env) for name in ("a", "b", "c")]
    for job in JOBS:
        wait_until(lambda job=job: len(self_leaders(nodes, job)) == 1, what=f"a {job} leader")
    deadline = time.monotonic() + 2 * LEASE
    while time.monotonic() < deadline:  # samples over two lease periods: never two leaders
        for job in JOBS:
            assert len(overlapping_leaders(nodes, job)) <= 1, job
    leader_id = self_leaders(nodes, "compaction")[0]
    leader = next(n for n in nodes if cluster(n)["node_id"] == leader_id)
    others = [n for n in nodes if n is not leader]
    wait_until(lambda: all(cluster(n)["leaders"]["compaction"] == leader_id for n in others),
               what="every node to see the leader")
    leader.kill()
    killed = time.monotonic()
    wait_until(lambda: len(self_leaders(others, "compaction")) == 1, what="a new leader")
    takeover = time.monotonic() - killed
    print(f"takeover after kill -9: {takeover:.2f} s with a {LEASE} s lease")
    # About two lease periods (1.5 without a change seen, ticks every third), plus slack for
    # the polling round trips and a loaded machine.
    assert takeover <= 2.5 * LEASE + 2.0, takeover
    for job in JOBS:
        wait_until(lambda job=job: len(self_leaders(others, job)) == 1, what=f"{job} leader")
        assert leader_id not in self_leaders(others, job)


def ingest_small_batches(nodes: list[Server], records: list[Record], dataset: str, batch: int,
                         check: Callable[[int], None] | None = None) -> int:
    acked = 0
    for i, start in enumerate(range(0, len(records), batch)):
        part = records[start : start + batch]
        reply = nodes[i % len(nodes)].ingest(ndjson(part), dataset=dataset)
        assert reply.status_code == 200, reply.text
        acked += len(part)
        if check is not None:
            check(acked)
    return acked


QUERIES = [
    "* | stats count() as n",
    "* | stats count() as n by (service)",
    "error | stats count() as n by (host)",
    "* | stats sum(size) as s, max(latency) as m",
    "service:hdfs | sort by (_time) | limit 5 | fields _time, host",
    "* | timechart 1d",
]


def answers(node: Server, dataset: str) -> list[Any]:
    return [sorted(map(orjson.dumps, node.query(q, dataset=dataset)["rows"])) for q in QUERIES]


def blocks(node: Server, dataset: str) -> int:
    return node.datasets().get(dataset, {}).get("blocks", 0)


def test_compaction_keeps_answers_exact_during_ingest(server_factory: Callable[..., Server], env: dict[str, str],
                                                      records: list[Record], request: pytest.FixtureRequest) -> None:
    small = {**env, "HELIOS_MEMTABLE_ROWS": "100"}  # about one block per request
    a = server_factory("a", **small)
    b = server_factory("b", **small)
    part = records[:6000]

    def during(acked: int) -> None:  # never a duplicate, never a lost acknowledged row on its writer
        for node in (a, b):
            assert node.count(dataset="c") <= acked
    acked = ingest_small_batches([a, b], part, "c", 100, during)
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="c") == acked, what="convergence")
    reference = answers(a, "c")  # whatever compaction has done so far, every later answer is the same

    def compacted_with_same_answers() -> bool:
        assert answers(a, "c") == reference and answers(b, "c") == reference
        return blocks(a, "c") <= 6 and blocks(b, "c") <= 6
    wait_until(compacted_with_same_answers, what="compaction to converge")
    assert sum(cluster(n)["jobs"]["compactions"] for n in (a, b)) > 0
    expected_total = [orjson.dumps({"n": acked})]
    assert reference[0] == expected_total
    by_service: dict[str, int] = {}
    for r in part:
        by_service[r.service] = by_service.get(r.service, 0) + 1
    assert reference[1] == sorted(orjson.dumps({"service": s, "n": n}) for s, n in by_service.items())
    # Replaced blocks leave the store after the grace period; manifests stay well-formed.
    moto = moto_of(env, request)
    wait_until(lambda: len([k for k, _ in store_objects(env, moto, "parts/c/") if "/blocks/" in k]) <= 6,
               what="replaced blocks to be deleted from the store")
    assert check_manifest_chains(env, moto) > 0
    for node in (a, b):
        wait_until(lambda node=node: len(list((node.data_dir / "parts" / "c").rglob("*.parquet"))) <= 6,
                   what="local copies of replaced blocks to be deleted")
    assert answers(a, "c") == reference and answers(b, "c") == reference


def test_a_paused_leader_commits_nothing_stale(server_factory: Callable[..., Server], env: dict[str, str],
                                               records: list[Record], request: pytest.FixtureRequest) -> None:
    small = {**env, "HELIOS_MEMTABLE_ROWS": "100"}
    nodes = [server_factory(name, **small) for name in ("a", "b", "c")]
    wait_until(lambda: len(self_leaders(nodes, "compaction")) == 1, what="a leader")
    leader_id = self_leaders(nodes, "compaction")[0]
    leader = next(n for n in nodes if cluster(n)["node_id"] == leader_id)
    others = [n for n in nodes if n is not leader]
    acked = ingest_small_batches(others, records[:3000], "p", 100)
    wait_until(lambda: cluster(leader)["jobs"]["compactions"] > 0, what="the leader to compact")
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: len(self_leaders(others, "compaction")) == 1, what="a new leader")
        acked += ingest_small_batches(others, records[3000:6000], "p", 100)
        wait_until(lambda: any(cluster(n)["jobs"]["compactions"] > 0 for n in others),
                   what="the new leader to compact")
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    new_leader = self_leaders(others, "compaction")[0]
    wait_until(lambda: cluster(leader)["leaders"]["compaction"] == new_leader, what="the resumed node to step down")
    assert self_leaders(nodes, "compaction") == [new_leader]
    for node in nodes:
        wait_until(lambda node=node: node.count(dataset="p") == acked, what="convergence")
    reference = answers(nodes[0], "p")
    assert all(answers(n, "p") == reference for n in nodes[1:])
    assert check_manifest_chains(env, moto_of(env, request)) > 0


def _timed(records: list[Record], start_ns: int, tag: str) -> bytes:
    return b"\n".join(orjson.dumps({**r.doc(), "_time": start_ns + i * 1_000_000, "tag": tag})
                      for i, r in enumerate(records)) + b"\n"


def test_retention_drops_old_partitions_everywhere(server_factory: Callable[..., Server], env: dict[str, str],
                                                   records: list[Record], request: pytest.FixtureRequest) -> None:
    day = 86_400 * 10**9
    now = time.time_ns()
    old = (now - 10 * day) // day * day + day // 2  # noon: every old row (0.6 s of them) on one day
    recent = now - 3_600 * 10**9
    a = server_factory("a", **env)
    b = server_factory("b", **env)
    assert a.ingest(_timed(records[:300], old, "old"), dataset="r").status_code == 200
    assert a.ingest(_timed(records[300:500], recent, "recent"), dataset="r").status_code == 200
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="r") == 500, what="replication")
    wait_until(lambda: len(self_leaders([a, b], "retention")) == 1, what="a retention leader")
    follower = b if self_leaders([a, b], "retention") == [cluster(a)["node_id"]] else a
    leader = a if follower is b else b
    # The follower gets more old rows and dies before it can flush or upload them: they wait in its WAL.
    assert follower.ingest(_timed(records[500:600], old + 5_000_000_000, "late"), dataset="r").status_code == 200
    follower.kill()
    reply = leader.request("PUT", "/api/v1/datasets/r", json={"retention_days": 3})
    assert reply.status_code == 200 and reply.json()["retention_days"] == 3
    wait_until(lambda: leader.count(dataset="r") == 200, what="the leader to drop")
    follower.start()  # replays the late rows: they must not bring the partition back
    for node in (a, b):
        wait_until(lambda node=node: node.count(dataset="r") == 200, what="the drop")
    moto = moto_of(env, request)
    old_day = time.strftime("%Y-%m-%d", time.gmtime(old / 1e9))
    wait_until(lambda: not [k for k, _ in store_objects(env, moto, f"parts/r/{old_day}/blocks/")],
               what="the old partition's blocks to leave the store")
    # Flushes, uploads, pulls and a whole retention pass come and go: still dropped.
    settled([a, b])
    passes(leader, lambda info: info["jobs"]["last_retention"], what="a retention pass")
    for node in (a, b):
        assert node.count(dataset="r") == 200
        assert node.count("tag:recent", dataset="r") == 200
        assert node.datasets()["r"]["retention_days"] == 3
    manifests = [orjson.loads(d) for k, d in store_objects(env, moto, f"parts/r/{old_day}/manifest/")]
    newest = max(manifests, key=lambda m: m["version"])
    assert newest["dropped"] and newest["blocks"] == []
    assert check_manifest_chains(env, moto) > 0


def test_single_node_compacts_and_applies_retention(server_factory: Callable[..., Server],
                                                    records: list[Record]) -> None:
    node = server_factory("solo", HELIOS_MEMTABLE_ROWS="100", **FAST)
    assert cluster(node)["leaders"] == {job: cluster(node)["node_id"] for job in JOBS}
    assert 'helios_leader{job="compaction"} 1' in node.request("GET", "/metrics").text
    acked = ingest_small_batches([node], records[:3000], "s", 100)
    wait_until(lambda: blocks(node, "s") <= 6 and node.count(dataset="s") == acked, what="local compaction")
    now = time.time_ns()
    assert node.ingest(_timed(records[:50], now - 30 * 86_400 * 10**9, "old"), dataset="s2").status_code == 200
    assert node.ingest(_timed(records[:70], now, "new"), dataset="s2").status_code == 200
    assert node.request("PUT", "/api/v1/datasets/s2", json={"retention_days": 7}).status_code == 200
    wait_until(lambda: node.count(dataset="s2") == 70, what="local retention")
    assert node.count(dataset="s") == acked
    metrics = node.request("GET", "/metrics").text
    assert "helios_compactions_total 0" not in metrics and "helios_dropped_partitions_total 0" not in metrics

"""One HeliosLogs node: a root nursery supervising the HTTP server and every background task.

    serve(config)
    └─ nursery
       ├─ signal watcher (SIGTERM, SIGINT → graceful shutdown)
       ├─ WAL committer (group commit)
       ├─ memtable flusher
       ├─ replicator: uploader + puller (with --shared-store)
       ├─ control-plane sync (with --shared-store)
       ├─ leases: compaction, retention, monitors (a node without a store holds them all)
       ├─ maintenance: compaction + store GC (leader), retention (leader + local), local GC
       ├─ listeners: syslog TCP/UDP, Fluent forward (with --syslog-listen / --forward-listen)
       ├─ monitors: evaluation and webhook delivery (leader), live status (everyone)
       ├─ live tail dispatcher (matches new rows against open tails)
       └─ hypercorn server (trio worker) ── quart-trio app ── Node

Shutdown: stop accepting, drain requests (hypercorn), flush the memtable
into blocks, close the WAL, exit 0.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import time
from collections import Counter
from functools import partial
from typing import Any

import hypercorn.config
import hypercorn.trio
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import pyarrow as pa
import trio

from backends import Backend, Invalid, StoreError, Unavailable, open_backend
from helios import __version__, keys, log, timeutil
from helios.api.app import create_app
from helios.api.direct import DirectTCPServer
from helios.config import Config
from helios.control.auth import Auth
from helios.control.objects import MONITORS, dataset_retention
from helios.control.plane import ControlPlane, Sealer
from helios.errors import ConfigError
from helios.errors import Unavailable as ServiceUnavailable
from helios.ingest import shipper
from helios.ingest.listeners import Listeners
from helios.ingest.request import BodyReader
from helios.monitors.allow import WebhookPolicy
from helios.monitors.service import MonitorService
from helios.niceness import Pacer
from helios.replication.jobs import Maintenance
from helios.replication.lease import JOBS, Lease, lease_group
from helios.replication.replicator import Replicator
from helios.storage.engine import Engine
from helios.storage.fsutil import UMASK, secure_data_dir
from helios.supervisor import supervise
from helios.tail import TailHub

__all__ = ["Node", "open_store", "serve"]

_log = log.get("helios.node")
SHUTDOWN_FLUSH_TIMEOUT_S = 30.0
STORE_PROBE_TIMEOUT_S = 5.0
HTTP_RECV_BYTES = 1 << 20  # bytes one socket read may take (see _hypercorn_config)
STORE_PROBE_PREFIX = "_control/"
# The control-plane log is read when the change feed announces an entry, and at least this often
# (an announcement can be lost: a writer that failed or crashed right after its entry).
CONTROL_SAFETY_POLL_S = 300.0


def _node_id(config: Config) -> str:
    if config.node_id:
        return config.node_id
    path = config.data_dir / "node_id"
    if path.exists():
        return path.read_text().strip()
    node_id = "n" + secrets.token_hex(4)
    keys.write_private(path, node_id.encode())
    return path.read_text().strip()


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        tightened, examples = secure_data_dir(config.data_dir)  # 0700, nothing in it open to others
        if tightened:
            log.log(_log, logging.WARNING, "made the data directory private", path=str(config.data_dir),
                    modes_changed=tightened, for_example=examples)
        self.node_id = _node_id(config)
        control_key = keys.load_or_create(config.control_key_path, "control key")
        jwt_secret = keys.load_or_create(config.jwt_secret_path, "JWT secret")
        sealer = Sealer(control_key, jwt_secret, config.control_encryption)
        self.control = ControlPlane(config.data_dir / "control", sealer, self.node_id)
        self.auth = Auth.from_config(self.control, jwt_secret, config)
        self.engine = Engine(config.data_dir, self.node_id, memtable_rows=config.memtable_rows,
                             memtable_bytes=config.memtable_bytes, ingest_wait_s=config.ingest_wait_secs,
                             index_on_flush=config.index_on_flush,
                             cache_bytes=config.cache_bytes, local_cache_bytes=config.local_cache_bytes)
        self.ingest_reader = BodyReader.from_config(config)  # limits + one memory budget for every ingest path
        self.health = self.engine.health  # one report of what fails, shared by every background task
        self.tail = TailHub(self.engine, self.node_id, max_streams=config.tail_max_streams,
                            buffer_rows=config.tail_buffer_rows)
        self.engine.on_ingest = self.tail.publish
        self.control.health = self.health
        self.ready = False
        self.store: Backend | None = None
        self.replicator: Replicator | None = None
        self.leases: dict[str, Lease] = {}
        self.jobs: Maintenance | None = None
        self.monitors: MonitorService | None = None
        self.started_ns = time.time_ns()
        self.counters: Counter[str] = Counter()

    async def open(self, store: Backend | None) -> None:
        """Replay the WAL, load the control plane, join the shared one, create the first admin."""
        await trio.to_thread.run_sync(self.engine.open)
        await self.control.open()
        self.store = store
        if store is not None:
            self.control.store, self.control.store_label = store, self.config.shared_store
            await self.control.try_attach(STORE_PROBE_TIMEOUT_S)
        try:
            if self.control.writable:
                await self.bootstrap()
            elif self.control.applied == 0:  # a new node, its store down: usable now, reconciled on joining
                await self.control.bootstrap_alone(self.bootstrap)
        except ServiceUnavailable as exc:  # the store failed mid-way: the control-plane sync tries again
            log.log(_log, logging.WARNING, "could not create the first admin yet; will retry", error=str(exc))

    async def bootstrap(self) -> None:
        await self.auth.bootstrap(self.config.admin_password, self.config.secrets_dir)

    def cluster(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "shared_store": self.config.shared_store or None,
            "leaders": {job: lease.leader() for job, lease in self.leases.items()},
            "sync": self.replicator.snapshot() if self.replicator else None,
            "jobs": self.jobs.snapshot() if self.jobs else None,
            "control": {"entries": self.control.applied, "joined": self.control.writable,
                        "last_pull": (timeutil.format_ns(self.control.last_pull_ns)
                                      if self.control.last_pull_ns else None)},
            "health": self.health.snapshot(),
            "cache": self.engine.blocks.snapshot(),
        }

    def retention_days(self, dataset: str) -> int | None:
        return dataset_retention(self.control, dataset)

    def metrics_text(self) -> str:
        engine = self.engine
        stats = engine.dataset_stats()
        lines = [
            "# TYPE helios_ingested_rows_total counter",
            f"helios_ingested_rows_total {self.counters['ingested_rows']}",
            "# TYPE helios_ingest_requests_total counter",
            f"helios_ingest_requests_total {self.counters['ingest_requests']}",
            "# TYPE helios_http_direct_requests_total counter",
            f"helios_http_direct_requests_total {self.counters['http_direct_requests']}",
            "# TYPE helios_queries_total counter",
            f"helios_queries_total {self.counters['queries']}",
            "# TYPE helios_wal_commits_total counter",
            f"helios_wal_commits_total {engine.wal.commits}",
            "# TYPE helios_wal_bytes_total counter",
            f"helios_wal_bytes_total {engine.wal.bytes_written}",
            "# TYPE helios_flushes_total counter",
            f"helios_flushes_total {engine.flushes}",
            "# TYPE helios_control_log_entries gauge",
            f"helios_control_log_entries {self.control.applied}",
            "# TYPE helios_memtable_rows gauge",
            f"helios_memtable_rows {engine.memtable.rows + sum(m.rows for _, m in engine.frozen)}",
            "# TYPE helios_memtable_bytes gauge",
            f"helios_memtable_bytes {engine.unflushed_bytes()}",
            "# TYPE helios_ingest_backpressure_waits_total counter",
            f"helios_ingest_backpressure_waits_total {engine.backpressure_waits}",
            "# TYPE helios_ingest_backpressure_refusals_total counter",
            f"helios_ingest_backpressure_refusals_total {engine.backpressure_refusals}",
            "# TYPE helios_compaction_paused_seconds_total counter",
            f"helios_compaction_paused_seconds_total {engine.pacer.paused_s if engine.pacer else 0.0:.3f}",
            "# TYPE helios_block_cache_hits_total counter",
            f"helios_block_cache_hits_total {engine.cache.hits}",
            "# TYPE helios_block_cache_misses_total counter",
            f"helios_block_cache_misses_total {engine.cache.misses}",
            "# TYPE helios_dataset_rows gauge",
        ]
        lines += [f'helios_dataset_rows{{dataset="{s.name}"}} {s.rows}' for s in stats.values()]
        lines.append("# TYPE helios_dataset_blocks gauge")
        lines += [f'helios_dataset_blocks{{dataset="{s.name}"}} {s.blocks}' for s in stats.values()]
        lines.append("# TYPE helios_leader gauge")
        lines += [f'helios_leader{{job="{job}"}} {int(lease.is_leader)}' for job, lease in self.leases.items()]
        if self.jobs is not None:
            stats = self.jobs.stats
            lines += ["# TYPE helios_compactions_total counter", f"helios_compactions_total {stats.compactions}",
                      "# TYPE helios_dropped_partitions_total counter",
                      f"helios_dropped_partitions_total {stats.dropped_partitions}",
                      "# TYPE helios_gc_deleted_objects_total counter",
                      f"helios_gc_deleted_objects_total {stats.deleted_objects}",
                      "# TYPE helios_gc_deleted_files_total counter",
                      f"helios_gc_deleted_files_total {self.engine.deleted_files}"]
        lines += self.health.metrics_lines()
        if self.monitors is not None:
            lines += self.monitors.metrics_lines()
        lines += self.tail.metrics_lines()
        lines += self.engine.blocks.metrics_lines()
        if self.replicator is not None:
            lines += ["# TYPE helios_uploaded_blocks_total counter",
                      f"helios_uploaded_blocks_total {self.replicator.status.uploaded_blocks}",
                      "# TYPE helios_pulled_blocks_total counter",
                      f"helios_pulled_blocks_total {self.replicator.status.pulled_blocks}"]
        lines += shipper.metric_lines(self.counters)  # compatible ingest: rows and drops per protocol
        if self.store is not None:
            lines.append("# TYPE helios_store_requests_total counter")
            for name, count in sorted(self.store.counters.snapshot().items()):
                lines.append(f'helios_store_requests_total{{backend="{self.store.name}",op="{name}"}} {count}')
        lines += self.auth.metrics_lines()
        return "\n".join(lines) + "\n"


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    host, port = config.listen
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 10.0
    hc.keep_alive_timeout = 75.0  # also bounds how long the headers of a request may take to arrive
    # A connection silent this long is closed, even while its request runs (hypercorn's read_timeout is
    # a gap between two reads, so a body trickled at 1 byte per 10 s is bounded by the app's whole-body
    # deadline, HELIOS_BODY_TIMEOUT_SECS, instead).
    hc.read_timeout = int(config.read_timeout_secs)
    # hypercorn reads a socket 64 KiB at a time (MAX_RECV, not a setting), and every read goes through
    # h11, the ASGI queue and quart's body as one event on the event loop: with 1 MiB, a 1.3 MB ingest
    # body is 2 events instead of 20 (event-loop CPU per ingested row -30 %, docs/architecture.md).
    hypercorn.trio.tcp_server.MAX_RECV = HTTP_RECV_BYTES
    # ... and a shipper's POST /api/v1/ingest body is read without h11 at all (helios.api.direct).
    hypercorn.trio.run.TCPServer = DirectTCPServer
    return hc


def _use_jemalloc() -> None:
    """pyarrow's default pool (mimalloc) hands freed pages back within milliseconds and faults them in
    again as zeroed huge pages (clear_page was 22 % of an ingesting node's CPU); jemalloc keeps them
    (10 % less CPU per ingested row, docs/architecture.md "Ingest speed"). An explicit
    ARROW_DEFAULT_MEMORY_POOL wins; a pyarrow without jemalloc keeps its default."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:
        pass


M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc mallopt parameters (malloc.h)
MALLOC_ARENAS = 2
MALLOC_MMAP_BYTES = 4 << 20


def _bound_malloc() -> None:
    """Make the C heap (numpy arrays, Python buffers: not Arrow's pool) give memory back.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which the
    index build's and the merge's temporaries of a few MB come from per-thread arenas that keep them:
    a node that had ingested 10 M rows stayed at 600 MB idle, and concurrent flush and compaction
    threads peaked past 1 GiB. A fixed 4 MiB threshold (blocks above it are mapped and unmapped) and
    two arenas: a quarter of the idle RSS, and the peak under 1 GiB (docs/architecture.md, "Ingest memory").
    This also fixes the trim threshold at 128 KiB, so a request's freed buffers are handed back and
    faulted in again by the next; a larger one (16 or 64 MiB, session 14) made ingest a few % faster
    but took the bench's peak at 10 M rows to 881-1,018 MiB (851 without), too near the 1 GiB goal.
    The MALLOC_* environment variables win; other C libraries are left as they are."""
    if os.environ.get("MALLOC_ARENA_MAX") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)
    except (OSError, AttributeError):  # not glibc
        pass


async def _watch_signals(shutdown: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.log(_log, logging.INFO, "shutting down", signal=signal.Signals(signum).name)
            shutdown.set()
            return


async def _close_tails_on(shutdown: trio.Event, tail: TailHub) -> None:
    """Open tails end when the node shuts down, so the server's drain does not wait for them."""
    await shutdown.wait()
    tail.close_all()


async def serve(config: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until SIGTERM/SIGINT (or the caller cancels), then drain and return."""
    os.umask(UMASK)  # every folder and file this node makes is private (helios.storage.fsutil)
    _use_jemalloc()
    _bound_malloc()
    store = await open_store(config)
    node = await trio.to_thread.run_sync(Node, config)
    await node.open(store)
    if store is not None:
        # Uploads are checked locally every sync/8 (no store request when nothing is pending); the
        # change feed is read every sync/2: flush (sync/4) + upload + pull stays within the sync bound.
        node.replicator = Replicator(node.engine, store, node.node_id,
                                     interval_s=max(0.05, config.block_sync_secs / 8), health=node.health,
                                     pull_interval_s=max(0.05, config.block_sync_secs / 2),
                                     prefetch_hours=config.prefetch_hours)
        node.replicator.on_pulled = node.tail.publish_blocks
        node.replicator.on_control_change = node.control.poke
        node.control.announce = node.replicator.announce_control
    node.leases = lease_group(JOBS, store, node.node_id, config.lease_secs, health=node.health)
    node.jobs = Maintenance(node.engine, store, node.replicator, node.leases, node.node_id,
                            retention_days=node.retention_days,
                            compaction_interval_s=config.compaction_interval_secs,
                            retention_interval_s=config.retention_interval_secs,
                            gc_grace_s=config.gc_grace_secs, health=node.health)
    node.jobs.min_block_age_s = config.block_sync_secs  # see helios.tail: peers pull a block before it is compacted
    node.jobs.merge_nice = config.compaction_nice  # merges use the CPU requests leave idle
    node.engine.pacer = Pacer(config.compaction_busy_share)  # ... and pause while ingest is busy
    node.monitors = MonitorService(node.control, node.engine, node.leases["monitors"], store, node_id=node.node_id,
                                   lag_s=config.block_sync_secs, retry_s=config.monitor_retry_secs,
                                   policy=WebhookPolicy(config.monitor_webhook_allow), health=node.health,
                                   status_poll_s=max(0.5, config.block_sync_secs / 2),
                                   query_timeout_s=config.query_timeout_secs)
    MONITORS.hooks = node.monitors  # monitor views and webhook checks (one node per process)
    shutdown = trio.Event()
    app = create_app(node, shutdown=shutdown)
    try:
        listeners = Listeners(config, node.engine.ingest, node.counters)  # reads the forward shared key
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, shutdown)
            await nursery.start(node.engine.wal.run)
            await nursery.start(node.engine.run_flusher, config.flush_secs)
            if node.replicator is not None:
                await nursery.start(node.replicator.run)
                await nursery.start(partial(node.control.run, max(0.05, config.block_sync_secs / 8), node.bootstrap,
                                            safety_poll_s=CONTROL_SAFETY_POLL_S))
            await nursery.start(node.leases[JOBS[0]].run)  # one group ticks every job's lease
            await nursery.start(node.jobs.run)
            await nursery.start(listeners.run)
            await nursery.start(node.monitors.run)
            nursery.start_soon(partial(supervise, node.health, "tail", node.tail.dispatch, interval_s=0.01))
            nursery.start_soon(_close_tails_on, shutdown, node.tail)
            async with trio.open_nursery() as server:
                binds = await server.start(partial(hypercorn.trio.serve, app, _hypercorn_config(config),
                                                   shutdown_trigger=shutdown.wait))
                node.monitors.base_url = config.public_url or binds[0]
                node.ready = True
                log.log(_log, logging.INFO, "listening", urls=binds, node_id=node.node_id,
                        data_dir=str(config.data_dir), version=__version__, pid=os.getpid())
                task_status.started(binds)
            node.ready = False
            with trio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT_S):
                await listeners.stop()  # their batched rows reach the WAL before the last flush
                await node.engine.flush()
                if node.replicator is not None:
                    with trio.move_on_after(5.0):  # best effort: what is left waits for the next start
                        try:
                            await node.replicator.upload_once()
                        except StoreError:
                            pass
            nursery.cancel_scope.cancel()
    finally:
        node.engine.close()
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()
    log.log(_log, logging.INFO, "stopped")


async def open_store(config: Config) -> Backend | None:
    """Open the shared store, failing fast on configuration errors.

    A store that is merely unreachable does not stop the node (local-primary):
    replication waits for it.
    """
    if not config.shared_store:
        return None
    try:
        store = await open_backend(config.shared_store)
    except Invalid as exc:
        raise ConfigError(f"shared store {config.shared_store!r}: {exc}") from None
    try:
        with trio.fail_after(STORE_PROBE_TIMEOUT_S):
            await store.list(STORE_PROBE_PREFIX, limit=1)  # one small page: never a walk of the store
    except Invalid as exc:
        await store.aclose()
        raise ConfigError(f"shared store {config.shared_store!r}: {exc}") from None
    except (Unavailable, trio.TooSlowError) as exc:
        log.log(_log, logging.WARNING, "shared store unreachable; the node runs locally and "
                "replication waits for the store", store=config.shared_store, error=str(exc))
    else:
        log.log(_log, logging.INFO, "shared store ready", store=config.shared_store, backend=store.name)
    return store

"""Node configuration: one table of options, each a flag and an environment variable.

A flag wins over its variable; a variable wins over the default. Values are
validated here, once, so the rest of the node can trust them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from helios import names
from helios.errors import ConfigError

__all__ = ["OPTIONS", "Config", "add_serve_arguments", "load"]


@dataclass(frozen=True)
class Option:
    name: str  # attribute name; the flag is --name-with-dashes
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    secret: bool = False  # an invalid value is never repeated in the message

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError("port out of range")
    return host.strip("[]"), number


def _cache_bytes(text: str) -> int | None:
    """A byte count with an optional K/M/G/T (powers of 1024) suffix; empty: unbounded."""
    text = text.strip()
    if not text:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = 1
    for suffix in ("KIB", "MIB", "GIB", "TIB", "K", "M", "G", "T"):
        if text.upper().endswith(suffix):
            scale, text = units[suffix[0]], text[: -len(suffix)]
            break
    value = int(text) * scale
    if value <= 0:
        raise ValueError("must be > 0 (leave it unset for no bound)")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be more than 0 and at most 1")
    return value


def _encryption(text: str) -> str:
    if text not in ("aes-256-gcm", "none"):
        raise ValueError("expected 'aes-256-gcm' or 'none'")
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _node_id(text: str) -> str:
    if text and not names.NODE_ID.ok(text):
        raise ValueError(names.NODE_ID.hint)
    return text


def _webhook_allow(text: str) -> tuple[str, ...]:
    from helios.monitors.allow import parse_allow  # the policy's own parser, so both agree

    return parse_allow(text)


def _public_url(text: str) -> str:
    if text and not (text.startswith(("http://", "https://")) and len(text) > 8):
        raise ValueError("expected an http:// or https:// URL")
    return text.rstrip("/")


def _log_level(text: str) -> str:
    if text.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return text.lower()


def _syslog_listen(text: str) -> tuple[tuple[str, str, int], ...]:
    """``tcp://HOST:PORT,udp://HOST:PORT`` → ``(("tcp", host, port), ...)``; empty: off."""
    endpoints = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        scheme, sep, address = item.partition("://")
        if not sep or scheme not in ("tcp", "udp"):
            raise ValueError(f"{item!r}: expected tcp://HOST:PORT or udp://HOST:PORT")
        endpoints.append((scheme, *_listen(address)))
    return tuple(endpoints)


def _forward_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (or ``tcp://HOST:PORT``); empty: off."""
    if not text:
        return None
    return _listen(text.removeprefix("tcp://"))


def _admin_password(text: str) -> str:
    if text and not names.PASSWORD.ok(text):  # never echo it: the message says only the rule
        raise ValueError(f"{names.PASSWORD.hint} (this one has {len(text)})")
    return text


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value
    return parse


OPTIONS: tuple[Option, ...] = (
    Option("data_dir", "HELIOS_DATA_DIR", "./data", Path, "local data directory"),
    Option("listen", "HELIOS_LISTEN", "127.0.0.1:7300", _listen, "HOST:PORT to serve on (port 0 picks one)"),
    Option("shared_store", "HELIOS_SHARED_STORE", "", str, "shared store: a path or s3://bucket/prefix"),
    Option("node_id", "HELIOS_NODE_ID", "", _node_id, "node id (default: generated once, kept in the data dir)"),
    Option("log_level", "HELIOS_LOG_LEVEL", "info", _log_level, "debug, info, warning or error"),
    Option("block_sync_secs", "HELIOS_BLOCK_SYNC_SECS", 10.0, _positive_float,
           "bound on cross-node visibility; drives flush, upload and pull cadence"),
    Option("flush_secs", "HELIOS_FLUSH_SECS", None, _positive_float,
           "memtable flush interval (default: a quarter of the block sync interval)"),
    Option("memtable_rows", "HELIOS_MEMTABLE_ROWS", 1_000_000, _positive_int,
           "flush early once the memtable holds this many rows"),
    Option("memtable_bytes", "HELIOS_MEMTABLE_BYTES", 64 << 20, _positive_int,
           "flush early once the memtable holds this many bytes; ingest waits while twice this is unflushed"),
    Option("ingest_wait_secs", "HELIOS_INGEST_WAIT_SECS", 30.0, _positive_float,
           "how long an ingest waits for flushes to make room before it is refused with 429"),
    Option("index_on_flush", "HELIOS_INDEX_ON_FLUSH", False, _flag,
           "build a block's token index when it is flushed (default: at its first compaction)"),
    Option("control_key_path", "HELIOS_CONTROL_KEY_PATH", "", _optional_path,
           "control-plane key file (default <data-dir>/secrets/control.key)"),
    Option("jwt_secret_path", "HELIOS_JWT_SECRET_PATH", "", _optional_path,
           "JWT signing secret file (default <data-dir>/secrets/jwt.secret)"),
    Option("control_encryption", "HELIOS_CONTROL_ENCRYPTION", "aes-256-gcm", _encryption,
           "control-plane encryption: aes-256-gcm or none"),
    Option("admin_password", "HELIOS_ADMIN_PASSWORD", "", _admin_password,
           "password of the first admin user, 12 to 1024 characters (default: generated and printed once)",
           secret=True),
    Option("max_body_bytes", "HELIOS_MAX_BODY_BYTES", 64 << 20, _positive_int,
           "largest accepted request body, as sent"),
    Option("max_decoded_bytes", "HELIOS_MAX_DECODED_BYTES", 256 << 20, _positive_int,
           "largest accepted request body after gzip/zstd decoding"),
    Option("cache_bytes", "HELIOS_CACHE_BYTES", 512 << 20, _positive_int,
           "memory for decoded block columns and token indexes kept between queries"),
    Option("token_ttl_secs", "HELIOS_TOKEN_TTL_SECS", 12 * 3600, _positive_int,
           "lifetime of a login JWT"),
    Option("lease_secs", "HELIOS_LEASE_SECS", 30.0, _positive_float,
           "leader lease TTL: renewed every third of it, taken over after 1.5 times it unchanged"),
    Option("compaction_interval_secs", "HELIOS_COMPACTION_INTERVAL_SECS", 300.0, _positive_float,
           "how often the compaction leader merges small blocks"),
    Option("compaction_nice", "HELIOS_COMPACTION_NICE", 19, _int_between(0, 19),
           "CPU priority of compaction's merges (a Linux nice value; 0 is a request's): at 19 they "
           "use the CPU that ingest and queries leave idle"),
    Option("compaction_busy_share", "HELIOS_COMPACTION_BUSY_SHARE", 0.1, _share,
           "share of the time a compaction's merge may take while ingest is busy (10,000 rows or more "
           "committed within a second, in the last second): it pauses between its steps for the rest; "
           "1 does not pause"),
    Option("retention_interval_secs", "HELIOS_RETENTION_INTERVAL_SECS", 3600.0, _positive_float,
           "how often partitions past their dataset's retention are dropped"),
    Option("gc_grace_secs", "HELIOS_GC_GRACE_SECS", 600.0, _positive_float,
           "how long replaced blocks are kept before they are deleted"),
    Option("syslog_listen", "HELIOS_SYSLOG_LISTEN", "", _syslog_listen,
           "syslog listeners, e.g. tcp://0.0.0.0:5514,udp://0.0.0.0:5514 (no auth; default off)"),
    Option("forward_listen", "HELIOS_FORWARD_LISTEN", "", _forward_listen,
           "Fluent forward listener HOST:PORT, e.g. 0.0.0.0:24224 (no token auth; default off)"),
    Option("forward_shared_key_path", "HELIOS_FORWARD_SHARED_KEY_PATH", "", _optional_path,
           "file holding the Fluent forward shared key; when set, clients must pass the handshake"),
    Option("query_timeout_secs", "HELIOS_QUERY_TIMEOUT_SECS", 60.0, _positive_float,
           "deadline of one query once it runs; past it the query is stopped and answered 503"),
    Option("max_concurrent_queries", "HELIOS_MAX_CONCURRENT_QUERIES", 4, _positive_int,
           "queries running at once (their own worker threads, apart from ingest and login)"),
    Option("query_queue_secs", "HELIOS_QUERY_QUEUE_SECS", 10.0, _positive_float,
           "how long a query waits for a free slot before it is answered 429"),
    Option("max_query_rows", "HELIOS_MAX_QUERY_ROWS", 1_000_000, _positive_int,
           "largest 'limit' of a query: the most rows one answer carries"),
    Option("body_timeout_secs", "HELIOS_BODY_TIMEOUT_SECS", 60.0, _positive_float,
           "a request body must arrive whole within this time (408 after it)"),
    Option("read_timeout_secs", "HELIOS_READ_TIMEOUT_SECS", 300.0, _positive_float,
           "a connection that sends nothing for this long is closed, even while its request runs "
           "(must exceed the query queue wait plus the query deadline)"),
    Option("scrypt_log2_n", "HELIOS_SCRYPT_LOG2_N", 17, _int_between(14, 20),
           "password hash cost: scrypt N = 2^this (r=8: 2^17 uses 128 MiB per hash); "
           "weaker stored hashes are redone at the next successful login"),
    Option("scrypt_concurrency", "HELIOS_SCRYPT_CONCURRENCY", 2, _int_between(1, 64),
           "password hashes computed at once (each takes 128 * 2^log2_n * 8 bytes of memory)"),
    Option("login_user_failures", "HELIOS_LOGIN_USER_FAILURES", 5, _positive_int,
           "failed logins to one username before each further one is delayed (429)"),
    Option("login_address_failures", "HELIOS_LOGIN_ADDRESS_FAILURES", 20, _positive_int,
           "failed logins from one client address before each further one is delayed (429)"),
    Option("login_backoff_secs", "HELIOS_LOGIN_BACKOFF_SECS", 1.0, _positive_float,
           "first login delay once over a failure limit; it doubles with each further failure"),
    Option("login_backoff_max_secs", "HELIOS_LOGIN_BACKOFF_MAX_SECS", 300.0, _positive_float,
           "longest login delay; a name or address quiet for 4 times this is forgotten"),
    Option("max_parsed_bytes", "HELIOS_MAX_PARSED_BYTES", 256 << 20, _positive_int,
           "largest ingest request once parsed (Arrow: every field of a request is a column for every row)"),
    Option("max_fields", "HELIOS_MAX_FIELDS", 1000, _positive_int,
           "most distinct fields (flattened names, _time and _msg included) in one ingest request"),
    Option("max_nesting_depth", "HELIOS_MAX_NESTING_DEPTH", 32, _positive_int,
           "deepest JSON nesting (objects and arrays) accepted in an ingest body"),
    Option("ingest_memory_bytes", "HELIOS_INGEST_MEMORY_BYTES", 1 << 30, _positive_int,
           "memory shared by all ingest requests while they decode and parse; past it: 503, retry"),
    Option("monitor_webhook_allow", "HELIOS_MONITOR_WEBHOOK_ALLOW", "*", _webhook_allow,
           "where monitor webhooks may go: comma-separated CIDRs, hosts, *.domains or *; '!' denies"),
    Option("monitor_retry_secs", "HELIOS_MONITOR_RETRY_SECS", 3600.0, _positive_float,
           "how long a monitor notification is retried before it is given up"),
    Option("public_url", "HELIOS_PUBLIC_URL", "", _public_url,
           "this node's URL as users reach it, for links in notifications (default: the listen address)"),
    Option("tail_max_streams", "HELIOS_TAIL_MAX_STREAMS", 64, _positive_int,
           "most live-tail streams open at once on this node"),
    Option("tail_buffer_rows", "HELIOS_TAIL_BUFFER_ROWS", 10_000, _positive_int,
           "rows buffered per live-tail stream before a slow reader gets an 'event: dropped'"),
    Option("local_cache_bytes", "HELIOS_LOCAL_CACHE_BYTES", None, _cache_bytes,
           "bound on the bytes of blocks kept locally that are safely in the shared store, e.g. 50G "
           "(default: unbounded)"),
    Option("prefetch_hours", "HELIOS_PREFETCH_HOURS", 24.0, _non_negative_float,
           "peers' blocks of this many recent hours are fetched ahead of queries (0: none)"),
    Option("fetch_deadline_secs", "HELIOS_FETCH_DEADLINE_SECS", 10.0, _positive_float,
           "how long a query waits for a block from the shared store before it answers with what it has"),
)


@dataclass(frozen=True)
class Config:
    data_dir: Path
    listen: tuple[str, int]
    shared_store: str
    node_id: str
    log_level: str
    block_sync_secs: float
    flush_secs: float
    memtable_rows: int
    memtable_bytes: int
    ingest_wait_secs: float
    index_on_flush: bool
    control_key_path: Path
    jwt_secret_path: Path
    control_encryption: str
    admin_password: str
    max_body_bytes: int
    max_decoded_bytes: int
    cache_bytes: int
    token_ttl_secs: int
    lease_secs: float
    compaction_interval_secs: float
    compaction_nice: int
    compaction_busy_share: float
    retention_interval_secs: float
    gc_grace_secs: float
    syslog_listen: tuple[tuple[str, str, int], ...]
    forward_listen: tuple[str, int] | None
    forward_shared_key_path: Path | None
    query_timeout_secs: float
    max_concurrent_queries: int
    query_queue_secs: float
    max_query_rows: int
    body_timeout_secs: float
    read_timeout_secs: float
    scrypt_log2_n: int
    scrypt_concurrency: int
    login_user_failures: int
    login_address_failures: int
    login_backoff_secs: float
    login_backoff_max_secs: float
    max_parsed_bytes: int
    max_fields: int
    max_nesting_depth: int
    ingest_memory_bytes: int
    monitor_webhook_allow: tuple[str, ...]
    monitor_retry_secs: float
    public_url: str
    tail_max_streams: int
    tail_buffer_rows: int
    local_cache_bytes: int | None
    prefetch_hours: float
    fetch_deadline_secs: float

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.name, default=None,
                            help=f"{option.help} [env {option.env}]")


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Config:
    """Resolve every option: flag, then environment variable, then default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, option.name, None) if args is not None else None
        source = option.flag
        if raw is None:
            raw = env.get(option.env)
            source = option.env
        if raw is None:
            values[option.name] = option.default
            if isinstance(option.default, str) and option.parse is not str:
                values[option.name] = option.parse(option.default)
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if option.secret else repr(raw)
            raise ConfigError(f"invalid {source}={shown}: {exc}") from None
    data_dir: Path = values["data_dir"]
    if values["flush_secs"] is None:
        values["flush_secs"] = max(0.05, values["block_sync_secs"] / 4)
    if values["control_key_path"] is None:
        values["control_key_path"] = data_dir / "secrets" / "control.key"
    if values["jwt_secret_path"] is None:
        values["jwt_secret_path"] = data_dir / "secrets" / "jwt.secret"
    if values["read_timeout_secs"] <= values["query_queue_secs"] + values["query_timeout_secs"]:
        raise ConfigError("HELIOS_READ_TIMEOUT_SECS must exceed HELIOS_QUERY_QUEUE_SECS + "
                          "HELIOS_QUERY_TIMEOUT_SECS, or a client waiting for a query would be cut off")
    _check_ingest_limits(values)
    return Config(**values)


def _check_ingest_limits(values: dict[str, Any]) -> None:
    """One request at its limits must fit the budget, and its WAL record under the replay cap."""
    from helios.storage.wal import MAX_FRAME_BYTES

    if values["max_parsed_bytes"] > MAX_FRAME_BYTES // 2:
        raise ConfigError(f"HELIOS_MAX_PARSED_BYTES={values['max_parsed_bytes']} is over "
                          f"{MAX_FRAME_BYTES // 2}: a request's write-ahead log record must stay "
                          f"well under its {MAX_FRAME_BYTES}-byte cap")
    # A request holds its decoded body, its parsed pieces and, while joining them, the whole table.
    needed = values["max_decoded_bytes"] + 2 * values["max_parsed_bytes"]
    if values["ingest_memory_bytes"] < needed:
        raise ConfigError(f"HELIOS_INGEST_MEMORY_BYTES={values['ingest_memory_bytes']} is below "
                          f"HELIOS_MAX_DECODED_BYTES + 2 x HELIOS_MAX_PARSED_BYTES = {needed}: "
                          "a request at its limits would never fit")

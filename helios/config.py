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

from helios.errors import ConfigError

__all__ = ["OPTIONS", "Config", "add_serve_arguments", "load"]


@dataclass(frozen=True)
class Option:
    name: str  # attribute name; the flag is --name-with-dashes
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str

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


def _encryption(text: str) -> str:
    if text not in ("aes-256-gcm", "none"):
        raise ValueError("expected 'aes-256-gcm' or 'none'")
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _node_id(text: str) -> str:
    if not text:
        return ""
    if len(text) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text) or text[0] == ".":
        raise ValueError("use up to 64 letters, digits, '-', '_' or '.'")
    return text


def _log_level(text: str) -> str:
    if text.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return text.lower()


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
    Option("control_key_path", "HELIOS_CONTROL_KEY_PATH", "", _optional_path,
           "control-plane key file (default <data-dir>/secrets/control.key)"),
    Option("jwt_secret_path", "HELIOS_JWT_SECRET_PATH", "", _optional_path,
           "JWT signing secret file (default <data-dir>/secrets/jwt.secret)"),
    Option("control_encryption", "HELIOS_CONTROL_ENCRYPTION", "aes-256-gcm", _encryption,
           "control-plane encryption: aes-256-gcm or none"),
    Option("admin_password", "HELIOS_ADMIN_PASSWORD", "", str,
           "password of the first admin user (default: generated and printed once)"),
    Option("max_body_bytes", "HELIOS_MAX_BODY_BYTES", 64 << 20, _positive_int,
           "largest accepted request body, as sent"),
    Option("max_decoded_bytes", "HELIOS_MAX_DECODED_BYTES", 256 << 20, _positive_int,
           "largest accepted request body after gzip/zstd decoding"),
    Option("cache_bytes", "HELIOS_CACHE_BYTES", 1 << 30, _positive_int,
           "memory for decoded blocks kept between queries"),
    Option("token_ttl_secs", "HELIOS_TOKEN_TTL_SECS", 12 * 3600, _positive_int,
           "lifetime of a login JWT"),
    Option("lease_secs", "HELIOS_LEASE_SECS", 30.0, _positive_float,
           "leader lease TTL: renewed every third of it, taken over after 1.5 times it unchanged"),
    Option("compaction_interval_secs", "HELIOS_COMPACTION_INTERVAL_SECS", 300.0, _positive_float,
           "how often the compaction leader merges small blocks"),
    Option("retention_interval_secs", "HELIOS_RETENTION_INTERVAL_SECS", 3600.0, _positive_float,
           "how often partitions past their dataset's retention are dropped"),
    Option("gc_grace_secs", "HELIOS_GC_GRACE_SECS", 600.0, _positive_float,
           "how long replaced blocks are kept before they are deleted"),
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
    retention_interval_secs: float
    gc_grace_secs: float
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
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    data_dir: Path = values["data_dir"]
    if values["flush_secs"] is None:
        values["flush_secs"] = max(0.05, values["block_sync_secs"] / 4)
    if values["control_key_path"] is None:
        values["control_key_path"] = data_dir / "secrets" / "control.key"
    if values["jwt_secret_path"] is None:
        values["jwt_secret_path"] = data_dir / "secrets" / "jwt.secret"
    return Config(**values)

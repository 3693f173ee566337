"""Secret files: the control-plane key, the JWT secret and the first admin password.

Each is created on first start with mode 0600 (written to a temporary file,
fsynced, then linked into place so a crash never leaves a half-written
secret). A secret readable by group or others gets a warning at start-up.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from helios import log
from helios.errors import ConfigError

__all__ = ["SECRET_BYTES", "load_or_create", "write_private"]

SECRET_BYTES = 32
_log = log.get("helios.keys")


def write_private(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` and mode 0600 unless it exists; True if created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return created


def load_or_create(path: Path, what: str) -> bytes:
    """Read a 32-byte secret, creating it (0600) on first start."""
    if not path.exists():
        if write_private(path, secrets.token_bytes(SECRET_BYTES)):
            log.log(_log, logging.INFO, f"created {what}", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} at {path}: {exc.strerror}") from None
    if len(data) < SECRET_BYTES:
        raise ConfigError(
            f"the {what} at {path} holds {len(data)} bytes; it needs {SECRET_BYTES} random bytes"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.log(_log, logging.WARNING, f"the {what} is readable by others; run chmod 600",
                path=str(path), mode=oct(mode))
    return data[:SECRET_BYTES] if len(data) == SECRET_BYTES else data

"""Shared-store backends behind one small interface (``backends.base.Backend``).

``open_backend(spec)`` turns a ``--shared-store`` value into a backend: a
path (local filesystem or an NFS mount) or ``s3://bucket[/prefix]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from backends.base import (Backend, Conflict, Corrupt, Invalid, NotFound, ObjectInfo, RequestCounters, StoreError,
                           Unavailable, create_resolved, list_all)

__all__ = [
    "Backend", "Conflict", "Corrupt", "Invalid", "NotFound", "ObjectInfo", "RequestCounters", "StoreError",
    "Unavailable", "create_resolved", "list_all", "open_backend",
]


async def open_backend(spec: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Backend:
    """A backend for ``spec``; raises Invalid with a message a user can act on."""
    if not spec:
        raise Invalid("empty shared-store location")
    if spec.startswith("s3://"):
        from backends.s3 import S3Backend

        return await S3Backend.from_url(spec, os.environ if environ is None else environ, **kwargs)
    if "://" in spec:
        raise Invalid(f"unsupported shared store {spec!r}: use a path or s3://bucket/prefix")
    from backends.fs import FsBackend

    root = Path(spec)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Invalid(f"cannot use {spec!r} as a shared store: {exc.strerror}") from None
    return FsBackend(root)

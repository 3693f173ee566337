"""The shared-store interface: get (whole or a byte range), put, list, delete, and one compare-and-swap primitive.

Every backend implements ``Backend``; helpers (``list_all``,
``create_resolved``) are free functions over it, so the interface stays small.

Error semantics (the whole set; a backend maps its low-level errors to these
once, at its boundary):

    StoreError
    ├── NotFound      the key does not exist                     → treat as absent
    ├── Conflict      create(): the key exists — lost the race   → re-read, merge, try the next key
    ├── Unavailable   transient, retries exhausted; a write may  → back off; after a write, read back
    │                 or may not have landed (ambiguous)            before deciding (create_resolved)
    ├── Invalid       bad key, bad credentials, bad config       → stop; retrying cannot help
    └── Corrupt       an object (or key) exists but is not what  → quarantine it by name, report it,
                      the layout says it is (raised by readers,     carry on with everything else
                      never by a backend)

Keys are relative ``/``-separated paths of ``[A-Za-z0-9._-]`` segments (so
they need no escaping and sign identically on every store), no segment empty
or starting with ``.``, at most 1,024 bytes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, runtime_checkable

__all__ = [
    "Backend",
    "Conflict",
    "Corrupt",
    "Invalid",
    "NotFound",
    "ObjectInfo",
    "RequestCounters",
    "StoreError",
    "Unavailable",
    "check_key",
    "check_prefix",
    "check_range",
    "create_resolved",
    "list_all",
]

MAX_KEY_BYTES = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # always fullmatch: `$` would let "a\n" through


class StoreError(Exception):
    """Base of every shared-store error."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class Unavailable(StoreError):
    pass


class Invalid(StoreError):
    pass


class Corrupt(StoreError):
    """An object or key in the store that cannot be parsed as what the layout says it is.

    Raised where store content is parsed (change-feed keys, manifest versions,
    lease records, control-log entries), so that one bad object is a reported,
    quarantined operating error and never an exception that ends a node.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass
class RequestCounters:
    """Requests sent, by operation, plus conflicts, retries and errors (for /metrics and cost)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise Invalid(f"invalid key {key!r}")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise Invalid(f"invalid key {key!r}: segment {segment!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A list prefix: empty, or a key, or a key followed by ``/``, or a partial last segment."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    check_key(body)
    return prefix


def check_range(start: int, length: int) -> None:
    """A byte range of ``get_range``: whole numbers, ``start`` and ``length`` not negative."""
    for name, value in (("start", start), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Invalid(f"invalid byte range: {name} {value!r}")


@runtime_checkable
class Backend(Protocol):
    """One shared store. All methods are trio-async; none blocks the event loop."""

    name: str
    counters: RequestCounters

    async def get(self, key: str) -> bytes:
        """The object's bytes. Raises NotFound."""
        ...

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """The object's bytes ``[start, start + length)``: one request, retried like ``get``.

        Fewer than ``length`` bytes when the object ends first (none when it
        ends at or before ``start``). ``length == 0`` answers ``b""`` without a
        request (so without checking that the key exists). Raises NotFound;
        Invalid for a negative or non-integer ``start`` or ``length``. The
        caller checks what it gets (a checksum), as it does for ``get``.
        """
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Write the object, replacing any previous one (for immutable objects: idempotent)."""
        ...

    async def create(self, key: str, data: bytes) -> None:
        """Create the object only if the key is absent: the compare-and-swap primitive.

        Linearizable per key: of concurrent creates of one key exactly one
        returns; every other raises Conflict. ``data`` must be unique to the
        writer (carry a commit id): after an ambiguous outcome the backend,
        or ``create_resolved``, reads the key back and compares.
        """
        ...

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """Up to ``limit`` objects whose key starts with ``prefix`` and sorts after ``start_after``, in key order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; removing an absent key is not an error."""
        ...

    async def aclose(self) -> None:
        ...


async def list_all(backend: Backend, prefix: str, *, start_after: str = "",
                   page: int = 1000) -> AsyncIterator[ObjectInfo]:
    """Every object under ``prefix``, page by page."""
    while True:
        batch = await backend.list(prefix, start_after=start_after, limit=page)
        for info in batch:
            yield info
        if len(batch) < page:
            return
        start_after = batch[-1].key


async def create_resolved(backend: Backend, key: str, data: bytes, *, attempts: int = 5) -> None:
    """``create`` that settles ambiguity by reading back before deciding.

    Returns if our bytes are the object (we won, maybe on an earlier try
    whose answer was lost); raises Conflict only when another writer's bytes
    were read back; raises Unavailable while the outcome is unknown (the store
    stayed unreachable, or a lost race could not be read back): the caller
    must then treat the write as maybe-landed. ``data`` must be unique to the
    writer (carry a commit id), which is what makes the read-back decisive.
    """
    last: StoreError | None = None
    for _ in range(attempts):
        try:
            await backend.create(key, data)
            return
        except Conflict:
            pass  # someone's object is there, maybe ours from an attempt whose answer was lost
        except Unavailable as exc:
            last = exc  # it may have landed: read back
        try:
            current = await backend.get(key)
        except NotFound:
            continue  # absent: it did not land (or was removed): try again
        except Unavailable as exc:
            last = exc  # unknown yet: try again
            continue
        if current == data:
            return
        raise Conflict(key)
    raise Unavailable(f"{key}: the outcome of the create is unknown after {attempts} attempts ({last})") from last

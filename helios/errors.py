"""The error tree of HeliosLogs: what a caller of the node is told.

    HeliosError
    ├── InvalidInput        the caller sent something wrong: 4xx, nothing changed
    │   ├── QuerySyntaxError    carries the 1-based column of the error
    │   └── IngestError         carries the 1-based line of the bad record
    ├── PayloadTooLarge     a body or its decompressed form is over the limit: 413
    ├── Unauthorized        no or bad credentials: 401
    ├── Forbidden           valid credentials, wrong role: 403
    ├── NotFound            404
    ├── Conflict            the change breaks a rule of the current state: 409
    │   └── StaleVersion        optimistic concurrency: carries the current version
    ├── Overloaded          too much running already (every query slot busy): 429 + Retry-After
    ├── Unavailable         an operating error (disk, store, shutdown); retry later: 503
    │   └── DeadlineExceeded    the work ran past its deadline and was stopped: 503
    └── ConfigError         the node cannot start; the message says what to fix

The shared store has its own, separate tree (``backends.base``: ``StoreError``
→ ``NotFound``, ``Conflict``, ``Unavailable``, ``Invalid``). Three names are
the same in both trees and mean different things: a store ``NotFound`` is "the
key is absent" (a normal answer the caller handles), an HTTP ``NotFound`` is
"answer 404". The rule that keeps them apart:

- code that talks to the store catches the store's errors and decides (retry,
  read back, report); a module never binds one name to both trees (import the
  store's as ``backends.base`` names or alias them, as ``helios.node`` does);
- a store error that nobody handled and that reaches the HTTP layer is mapped
  once, there, by ``from_store`` (or ``map_store_errors`` around a block):
  every one is an operating error of this node, so every one answers 503 with
  a message naming the store's answer. The caller cannot fix it by changing
  its request; it can retry later.

The HTTP layer maps each kind of this tree to one status, once
(``helios.api.app``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from backends import base as store

__all__ = [
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "HeliosError",
    "IngestError",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "QuerySyntaxError",
    "StaleVersion",
    "Unauthorized",
    "Unavailable",
    "from_store",
    "map_store_errors",
]


class HeliosError(Exception):
    status = 500
    retry_after_s: int | None = None  # sent as Retry-After when set

    def payload(self) -> dict[str, object]:
        return {"error": str(self)}


class InvalidInput(HeliosError):
    status = 400


class QuerySyntaxError(InvalidInput):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.column = column

    def payload(self) -> dict[str, object]:
        return {"error": str(self), "column": self.column}


class IngestError(InvalidInput):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line

    def payload(self) -> dict[str, object]:
        return {"error": str(self), "line": self.line}


class PayloadTooLarge(HeliosError):
    status = 413


class Unauthorized(HeliosError):
    status = 401


class Forbidden(HeliosError):
    status = 403


class NotFound(HeliosError):
    status = 404


class Conflict(HeliosError):
    status = 409


class StaleVersion(Conflict):
    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version

    def payload(self) -> dict[str, object]:
        return {"error": str(self), "version": self.version}


class Overloaded(HeliosError):
    status = 429
    retry_after_s = 1


class Unavailable(HeliosError):
    status = 503


class DeadlineExceeded(Unavailable):
    pass


class ConfigError(HeliosError):
    pass


_STORE_MEANING: dict[type[store.StoreError], str] = {
    store.Unavailable: "did not answer in time (retries exhausted)",
    store.Conflict: "refused a change that lost a race with another writer",
    store.NotFound: "lacks an object this node needed",
    store.Invalid: "refused the request as invalid (check the node's store configuration)",
}


def from_store(error: store.StoreError) -> Unavailable:
    """The answer for a store error that reached the HTTP layer unhandled: always 503."""
    meaning = next((text for kind, text in _STORE_MEANING.items() if isinstance(error, kind)),
                   "failed")
    detail = str(error) or type(error).__name__
    failed = Unavailable(f"the shared store {meaning}: {detail}; the request was not completed, "
                         "try again later")
    failed.retry_after_s = 1
    return failed


@contextmanager
def map_store_errors() -> Iterator[None]:
    """Turn any store error raised inside the block into ``from_store(error)`` (as httpcore's map_exceptions)."""
    try:
        yield
    except store.StoreError as error:
        raise from_store(error) from error

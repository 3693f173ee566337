"""The error tree of HeliosLogs.

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
    ├── Unavailable         an operating error (disk, shutdown); retry later: 503
    └── ConfigError         the node cannot start; the message says what to fix

The HTTP layer maps each kind to one status, once (``helios.api.app``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Conflict",
    "Forbidden",
    "HeliosError",
    "IngestError",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "QuerySyntaxError",
    "StaleVersion",
    "Unauthorized",
    "Unavailable",
]


class HeliosError(Exception):
    status = 500

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


class Unavailable(HeliosError):
    status = 503


class ConfigError(HeliosError):
    pass

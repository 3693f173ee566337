"""What every route module shares: the node interface, authentication, body and parameter readers.

A route module is a ``quart.Blueprint``; it reaches the node through
``node()`` (typed by the ``NodeApi`` protocol: only what routes need) and
answers with ``answer``. Errors are raised, never answered here: the app maps
them to statuses once (``helios.api.app``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
from quart import Response, current_app, request

from backends.base import StoreError
from helios import log, names
from helios.errors import HeliosError, InvalidInput, from_store

if TYPE_CHECKING:
    from helios.config import Config
    from helios.control.auth import Auth, Principal
    from helios.control.plane import ControlPlane
    from helios.ingest.request import BodyReader
    from helios.query.runner import QueryPool
    from helios.storage.engine import Engine
    from helios.supervisor import Health

__all__ = [
    "MAX_JSON_DEPTH",
    "NodeApi",
    "answer",
    "error_parts",
    "json_body",
    "json_object",
    "node",
    "principal",
    "queries",
    "validate_dataset",
    "whole_number",
]

MAX_JSON_DEPTH = 32  # control-plane bodies (dashboards, monitors, users…) nest a few levels at most
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also accepts "²", which int() refuses
NODE_KEY, QUERIES_KEY = "helios.node", "helios.queries"
_log = log.get("helios.api")


class NodeApi(Protocol):
    """The part of ``helios.node.Node`` that HTTP routes use."""

    config: Config
    engine: Engine
    auth: Auth
    control: ControlPlane
    node_id: str
    ready: bool
    counters: Counter[str]
    health: Health
    ingest_reader: BodyReader

    def cluster(self) -> dict[str, object]: ...

    def retention_days(self, dataset: str) -> int | None: ...

    def metrics_text(self) -> str: ...


def node() -> NodeApi:
    return cast("NodeApi", current_app.extensions[NODE_KEY])


def queries() -> QueryPool:
    return cast("QueryPool", current_app.extensions[QUERIES_KEY])


def answer(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status=status, mimetype="application/json")


def error_parts(error: Exception, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON doc, extra headers) of the answer to an error a route raised: a HeliosError
    its own, a store error 503 (``helios.errors.from_store``), anything else 500, logged. The one
    mapping of the Quart app's error handlers and the query lane (``helios.api.lane``)."""
    if isinstance(error, StoreError):
        _log.warning("a store error reached the HTTP layer", exc_info=error,
                     extra={"fields": {"path": path}})
        error = from_store(error)
    if isinstance(error, HeliosError):
        headers = {} if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
        return error.status, error.payload(), headers
    _log.error("unhandled error", exc_info=error, extra={"fields": {"path": path}})
    return 500, {"error": "internal error; see the node's log"}, {}


async def principal(permission: str) -> Principal:
    """The caller, who must hold ``permission`` (401 without valid credentials, 403 without the right)."""
    who = node().auth.authenticate(request.headers.get("Authorization"))
    who.require(permission)
    return who


validate_dataset = names.DATASET.check  # the rule is written once, in helios.names


def _check_depth(doc: Any, limit: int) -> None:
    """Raise InvalidInput if ``doc`` nests arrays/objects deeper than ``limit`` (no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise InvalidInput(f"the body nests objects and arrays deeper than {limit} levels")
                stack.append((child, depth + 1))


async def json_body() -> dict[str, Any]:
    """The request body as a JSON object (400 if it is not one, or nests deeper than MAX_JSON_DEPTH)."""
    return json_object(await request.get_data(cache=False))


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object (``json_body``'s rules)."""
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    _check_depth(doc, MAX_JSON_DEPTH)
    return doc


def whole_number(value: object, what: str, low: int, high: int, default: int | None = None) -> int:
    """A parameter that must be a whole number in [low, high]: JSON integer or ASCII digits."""
    if (value is None or value == "") and default is not None:
        return default
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"'{what}' must be a whole number from {low} to {high}")
    return value

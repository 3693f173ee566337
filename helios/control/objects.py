"""Dashboards, monitors, settings and dataset settings: validation, changes and public views.

Every write goes through ``ControlPlane.commit`` with a mutation that checks
the version the caller read (optimistic concurrency: a stale one is a 409
carrying the current version) against the newest state, after any lost race.

Monitors are evaluated by the holder of the ``monitors`` lease
(``helios.monitors``); their view adds what the evaluator saw last. Each
monitor has a webhook secret, generated at creation and shown once (in the
answer of the create, or of ``POST /api/v1/monitors/{id}/secret``), never in
its view.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import trio

from helios import names, timeutil
from helios.control.auth import Principal, check_version, only_fields, require_version
from helios.control.plane import ControlPlane, Obj
from helios.errors import HeliosError, InvalidInput, NotFound, StaleVersion
from helios.query.parser import parse

__all__ = ["MONITORS", "RESOURCES", "MonitorHooks", "MonitorResource", "Resource", "Settings", "dataset_retention",
           "set_dataset"]

PANEL_TYPES = ("table", "timechart", "stat", "bar", "logs")
CONDITION_OPS = (">", ">=", "<", "<=", "==", "!=")
MAX_PANELS = 100
MAX_TEXT = 200
MAX_QUERY = 4096
MAX_RETENTION_DAYS = 36_500


def _text(value: object, name: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise InvalidInput(f"'{name}' is {'a non-empty' if required else 'a'} string of at most {limit} characters")
    return value


def _query(value: object, name: str) -> str:
    text = _text(value, name, limit=MAX_QUERY)
    try:
        parse(text)
    except HeliosError as exc:
        raise InvalidInput(f"'{name}': {exc}") from None
    return text


def _datasets(value: object, name: str) -> str | list[str] | None:
    if value is None:
        return None
    given = [value] if isinstance(value, str) else value
    if not isinstance(given, list) or not given or not all(names.DATASET.ok(n) for n in given):
        raise InvalidInput(f"'{name}' is a dataset name or a non-empty list of names")
    return value  # type: ignore[return-value]


def _duration(value: object, name: str, minimum_s: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' is a duration such as 30s, 5m or 1h")
    try:
        ns = timeutil.parse_duration_ns(value)
    except ValueError as exc:
        raise InvalidInput(f"'{name}': {exc}") from None
    if ns < minimum_s * 10**9:
        raise InvalidInput(f"'{name}' must be at least {minimum_s}s")
    return value


def _panel(value: object, index: int) -> dict[str, Any]:
    where = f"panels[{index}]"
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object")
    only_fields(value, {"title", "query", "dataset", "type", "options"}, where)
    kind = value.get("type", "table")
    if kind not in PANEL_TYPES:
        raise InvalidInput(f"{where}.type must be one of {', '.join(PANEL_TYPES)}")
    options = value.get("options", {})
    if not isinstance(options, dict) or len(str(options)) > 8192:
        raise InvalidInput(f"{where}.options must be an object (at most 8 KiB)")
    return {"title": _text(value.get("title"), f"{where}.title", required=False),
            "query": _query(value.get("query"), f"{where}.query"),
            "dataset": _datasets(value.get("dataset"), f"{where}.dataset"),
            "type": kind, "options": options}


def dashboard_doc(body: dict[str, Any]) -> dict[str, Any]:
    only_fields(body, {"title", "description", "panels", "version"}, "a dashboard")
    panels = body.get("panels", [])
    if not isinstance(panels, list) or len(panels) > MAX_PANELS:
        raise InvalidInput(f"'panels' is a list of at most {MAX_PANELS} panels")
    return {"title": _text(body.get("title"), "title"),
            "description": _text(body.get("description"), "description", required=False, limit=4096),
            "panels": [_panel(p, i) for i, p in enumerate(panels)]}


def _optional_duration(value: object, name: str, minimum_s: int) -> str | None:
    return None if value is None else _duration(value, name, minimum_s)


def monitor_doc(body: dict[str, Any]) -> dict[str, Any]:
    only_fields(body, {"name", "query", "dataset", "schedule", "window", "condition", "webhook", "enabled",
                 "for", "repeat", "version"}, "a monitor")
    condition = body.get("condition")
    if (not isinstance(condition, dict) or set(condition) != {"op", "threshold"}
            or condition["op"] not in CONDITION_OPS or isinstance(condition["threshold"], bool)
            or not isinstance(condition["threshold"], (int, float))):
        raise InvalidInput("'condition' is {\"op\": one of " + " ".join(CONDITION_OPS)
                           + ", \"threshold\": a number}, compared with the query's first numeric result")
    webhook = body.get("webhook")
    if webhook is not None:
        parts = urlsplit(webhook) if isinstance(webhook, str) and len(webhook) <= 2048 else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput("'webhook' is an http:// or https:// URL, or null")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidInput("'enabled' is true or false")
    return {"name": _text(body.get("name"), "name"), "query": _query(body.get("query"), "query"),
            "dataset": _datasets(body.get("dataset"), "dataset"),
            "schedule": _duration(body.get("schedule", "1m"), "schedule", 10),
            "window": _duration(body.get("window", "5m"), "window", 1),
            "condition": {"op": condition["op"], "threshold": condition["threshold"]},
            "webhook": webhook, "enabled": enabled,
            # ``for``: how long the condition must hold before firing; ``repeat``: re-notify while firing.
            "for": _optional_duration(body.get("for"), "for", 1),
            "repeat": _optional_duration(body.get("repeat"), "repeat", 10)}


def _view(obj: Obj) -> dict[str, Any]:
    return {"id": obj.id, **(obj.doc or {}), "version": obj.version,
            "created_at": timeutil.format_ns(obj.created_ns), "updated_at": timeutil.format_ns(obj.updated_ns),
            "updated_by": obj.updated_by}


class Resource:
    """A collection of objects with generated ids: dashboards, monitors."""

    def __init__(self, kind: str, singular: str, make_doc: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.kind, self.singular, self.make_doc = kind, singular, make_doc

    def view(self, obj: Obj) -> dict[str, Any]:
        return _view(obj)

    def created_view(self, obj: Obj) -> dict[str, Any]:
        """The answer of a create (a monitor's adds its secret, this once)."""
        return self.view(obj)

    def get(self, control: ControlPlane, object_id: str) -> Obj:
        obj = control.get(self.kind, object_id) if names.OBJECT_ID.ok(object_id) else None
        if obj is None:
            raise NotFound(f"no {self.singular} {object_id!r}")
        return obj

    async def create(self, control: ControlPlane, body: dict[str, Any], by: Principal) -> Obj:
        if "version" in body:
            raise InvalidInput(f"a new {self.singular} has no 'version'; PUT changes an existing one")
        doc = await trio.to_thread.run_sync(self.new_doc, body)  # queries compile their patterns
        object_id = secrets.token_hex(6)
        obj = await control.commit(self.kind, object_id, lambda current: doc, by.name)
        assert obj is not None
        return obj

    def checked_doc(self, body: dict[str, Any]) -> dict[str, Any]:
        """The document a request body describes, validated."""
        return self.make_doc(body)

    def new_doc(self, body: dict[str, Any]) -> dict[str, Any]:
        """The stored document of a new object (a subclass may add fields the server makes)."""
        return self.checked_doc(body)

    def kept(self, current: Obj | None) -> dict[str, Any]:
        """Fields of the stored document that a change keeps (none by default)."""
        return {}

    async def update(self, control: ControlPlane, object_id: str, body: dict[str, Any], by: Principal) -> Obj:
        self.get(control, object_id)
        expected = require_version(body)
        doc = await trio.to_thread.run_sync(self.checked_doc, body)  # as in create

        def mutate(current: Obj | None) -> Any:
            check_version(current, expected, f"{self.singular} {object_id!r}")
            return {**doc, **self.kept(current)}

        obj = await control.commit(self.kind, object_id, mutate, by.name)
        assert obj is not None
        return obj

    async def delete(self, control: ControlPlane, object_id: str, expected: int | None, by: Principal) -> None:
        self.get(control, object_id)

        def mutate(current: Obj | None) -> Any:
            check_version(current, expected, f"{self.singular} {object_id!r}")
            return None

        await control.commit(self.kind, object_id, mutate, by.name)


class MonitorHooks(Protocol):
    """What the node's monitor service adds to monitors (``helios.monitors.service.MonitorService``)."""

    def live_fields(self, obj: Obj) -> dict[str, Any]: ...

    def check_webhook(self, url: str) -> None: ...


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


class MonitorResource(Resource):
    """Monitors: a secret per monitor, kept across changes; views carry the evaluator's state.

    ``hooks`` is set by the node when it starts (one node per process); without
    them a view shows the definition and ``state`` only.
    """

    hooks: MonitorHooks | None = None

    def view(self, obj: Obj) -> dict[str, Any]:
        out = _view(obj)
        out.pop("secret", None)
        if self.hooks is not None:
            out.update(self.hooks.live_fields(obj))
        else:
            out.update({"state": "ok" if out.get("enabled", True) else "disabled", "last_evaluated_at": None,
                        "last_value": None})
        return out

    def created_view(self, obj: Obj) -> dict[str, Any]:
        return {**self.view(obj), "secret": (obj.doc or {}).get("secret")}

    def checked_doc(self, body: dict[str, Any]) -> dict[str, Any]:
        doc = self.make_doc(body)
        if doc["webhook"] is not None and self.hooks is not None:
            self.hooks.check_webhook(doc["webhook"])
        return doc

    def new_doc(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**self.checked_doc(body), "secret": new_secret()}

    def kept(self, current: Obj | None) -> dict[str, Any]:
        return {"secret": (current.doc or {}).get("secret") if current else None}

    async def rotate_secret(self, control: ControlPlane, object_id: str, by: Principal) -> tuple[Obj, str]:
        """A new webhook secret, returned this once; the old one stops signing at once."""
        self.get(control, object_id)
        secret = new_secret()

        def mutate(current: Obj | None) -> Any:
            if current is None:
                raise NotFound(f"no {self.singular} {object_id!r}")
            return {**(current.doc or {}), "secret": secret}

        obj = await control.commit(self.kind, object_id, mutate, by.name)
        assert obj is not None
        return obj, secret


MONITORS = MonitorResource("monitors", "monitor", monitor_doc)
RESOURCES: dict[str, Resource] = {
    "dashboards": Resource("dashboards", "dashboard", dashboard_doc),
    "monitors": MONITORS,
}


def _retention(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RETENTION_DAYS:
        raise InvalidInput(f"'{name}' is a whole number of days from 1 to {MAX_RETENTION_DAYS}, "
                           "or null to keep data forever")
    return value


def _expect_absent_or(current: Obj | None, expected: int | None, what: str) -> None:
    """Versions of singletons that may not exist yet: version 0 means 'absent'."""
    if expected is None:
        return
    actual = current.version if current is not None else 0
    if actual != expected:
        raise StaleVersion(f"{what} is at version {actual}, not {expected}: read it again and reapply "
                           "your change", actual)


class Settings:
    """Cluster-wide settings: one object, ``settings/global``."""

    FIELDS = {"default_retention_days"}

    @staticmethod
    def view(control: ControlPlane) -> dict[str, Any]:
        obj = control.get("settings", "global")
        doc = obj.doc if obj is not None and obj.doc is not None else {}
        return {"version": obj.version if obj is not None else 0,
                "default_retention_days": doc.get("default_retention_days"),
                "datasets": {o.id: {"retention_days": (o.doc or {}).get("retention_days"), "version": o.version}
                             for o in control.list("datasets")}}

    @staticmethod
    async def update(control: ControlPlane, body: dict[str, Any], by: Principal) -> None:
        only_fields(body, Settings.FIELDS | {"version"}, "the settings")
        expected = require_version(body)
        doc = {"default_retention_days": _retention(body.get("default_retention_days"), "default_retention_days")}

        def mutate(current: Obj | None) -> Any:
            _expect_absent_or(control.state("settings", "global") if current is None else current,
                              expected, "the settings")
            return doc

        await control.commit("settings", "global", mutate, by.name)


def dataset_retention(control: ControlPlane, name: str) -> int | None:
    """The retention in days for a dataset: its own, else the cluster default, else None (forever)."""
    own = control.get("datasets", name)
    if own is not None and own.doc is not None and own.doc.get("retention_days") is not None:
        return int(own.doc["retention_days"])
    settings = control.get("settings", "global")
    default = settings.doc.get("default_retention_days") if settings is not None and settings.doc else None
    return int(default) if default is not None else None


async def set_dataset(control: ControlPlane, name: str, body: dict[str, Any], by: Principal) -> dict[str, Any]:
    """``PUT /api/v1/datasets/{name}``: ``{"retention_days": N | null}``; ``version`` optional (checked if sent)."""
    only_fields(body, {"retention_days", "version"}, "dataset settings")
    if "retention_days" not in body:
        raise InvalidInput("send {\"retention_days\": N} (whole days), or null to keep data forever")
    retention = _retention(body["retention_days"], "retention_days")
    expected = require_version(body) if "version" in body else None

    def mutate(current: Obj | None) -> Any:
        _expect_absent_or(control.state("datasets", name) if current is None else current,
                          expected, f"dataset {name!r}")
        return {"retention_days": retention}

    obj = await control.commit("datasets", name, mutate, by.name)
    assert obj is not None
    return {"name": name, "retention_days": retention, "version": obj.version}

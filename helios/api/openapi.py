"""The OpenAPI document served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from helios import __version__, names
from helios.control.auth import ROLES

__all__ = ["OPENAPI"]

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_BEARER = [{"bearer": []}]
_PASSWORD = {"type": "string", "minLength": names.MIN_PASSWORD_CHARS, "maxLength": names.MAX_PASSWORD_CHARS}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            for code in codes}


def _ok(description: str, *, array: bool = False) -> dict[str, Any]:
    schema = {"type": "array", "items": {"type": "object"}} if array else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _collection(kind: str, key: str, create: dict[str, Any], update: dict[str, Any] | str | None) -> dict[str, Any]:
    """``/api/v1/<kind>`` (GET list, POST create) and ``/api/v1/<kind>/{key}`` (GET, PUT, DELETE)."""
    if update == "same":
        update = {**create, "required": [*create.get("required", []), "version"],
                  "properties": {**create["properties"], "version": {"type": "integer"}}}
    version = {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    item: dict[str, Any] = {"delete": {"parameters": [_path_param(key)] + ([] if kind == "tokens" else [version]),
                                       "responses": {"200": _ok("deleted"), **_errors(401, 403, 404, 409)}}}
    if kind != "tokens":
        item["get"] = {"parameters": [_path_param(key)], "responses": {"200": _ok(kind[:-1]), **_errors(401, 403, 404)}}
    if update is not None:
        item["put"] = {"parameters": [_path_param(key)], "requestBody": _body(update),  # type: ignore[arg-type]
                       "responses": {"200": _ok(f"the changed {kind[:-1]}"), **_errors(400, 401, 403, 404, 409)}}
    return {
        f"/api/v1/{kind}": {
            "get": {"responses": {"200": _ok(f"every {kind[:-1]}", array=True), **_errors(401, 403)}},
            "post": {"requestBody": _body(create),
                     "responses": {"201": _ok(f"the new {kind[:-1]}"), **_errors(400, 401, 403, 409)}}},
        f"/api/v1/{kind}/{{{key}}}": item,
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "HeliosLogs", "version": __version__},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": _BEARER,
    "paths": {
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"security": [], "responses": {"200": {"description": "ready"},
                                                           "503": {"description": "starting"}}}},
        "/api/v1/auth/login": {"post": {
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["username", "password"],
                "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}}}},
            "responses": {"200": {"description": "a session token", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"token": {"type": "string"},
                                                            "expires_at": {"type": "string"}}}}}},
                          **_errors(400, 401, 429)}}},
        "/api/v1/ingest": {"post": {
            "parameters": [{"name": "dataset", "in": "query", "schema": {
                "type": "string", "pattern": names.DATASET.pattern}}],
            "requestBody": {"required": True, "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}}}},
            "responses": {"200": {"description": "durable", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"ingested": {"type": "integer"}}}}}},
                **_errors(400, 401, 403, 413)}}},
        "/api/v1/query": {"get": {
            "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                           for n in ("q", "dataset", "from", "to", "limit")],
            "responses": {"200": _ok("rows and stats"), **_errors(400, 401, 403, 429, 503)}}, "post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["q"],
                "properties": {"q": {"type": "string"},
                               "dataset": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                               "from": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                               "to": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                               "limit": {"type": "integer", "minimum": 0}}}}}},
            "responses": {"200": {"description": "rows and stats", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}},
                                                 "stats": {"type": "object"}}}}}},
                **_errors(400, 401, 403, 429, 503)}}},
        "/api/v1/tail": {"get": {
            "parameters": [{"name": "q", "in": "query", "required": True, "schema": {"type": "string"}},
                           {"name": "dataset", "in": "query", "schema": {"type": "string"}},
                           {"name": "backfill", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                          "maximum": 10000}}],
            "responses": {"200": {"description": "server-sent events: 'data: {row}' per row, 'event: dropped' "
                                                 "with a count, keep-alive comments", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}}, **_errors(400, 401, 403, 503)}}},
        "/api/v1/datasets": {"get": {"responses": {
            "200": {"description": "datasets as this node sees them", "content": {"application/json": {
                "schema": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "retention_days": {"type": "integer", "nullable": True},
                    "rows": {"type": "integer"}, "bytes": {"type": "integer"},
                    "partitions": {"type": "integer"}, "blocks": {"type": "integer"}}}}}}},
            **_errors(401, 403)}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}, **_errors(401, 403)}}},
        "/api/openapi.json": {"get": {"responses": {"200": _ok("this document"), **_errors(401, 403)}}},
        "/api/v1/version": {"get": {"responses": {"200": _ok("version and node id"), **_errors(401, 403)}}},
        "/api/v1/cluster": {"get": {"responses": {"200": _ok(
            "node_id, shared_store, leaders, sync (last_upload, last_pull, pending_uploads, lag_seconds)"),
            **_errors(401, 403)}}},
        "/api/v1/auth/me": {"get": {"responses": {"200": _ok("the caller's name and role"), **_errors(401)}}},
        "/api/v1/datasets/{name}": {"put": {
            "parameters": [_path_param("name")],
            "requestBody": _body({"type": "object", "required": ["retention_days"], "properties": {
                "retention_days": {"type": "integer", "minimum": 1, "nullable": True},
                "version": {"type": "integer", "minimum": 0}}}),
            "responses": {"200": _ok("the dataset's settings"), **_errors(400, 401, 403, 409)}}},
        "/api/v1/settings": {
            "get": {"responses": {"200": _ok("cluster settings and per-dataset retention"), **_errors(401, 403)}},
            "put": {"requestBody": _body({"type": "object", "required": ["version"], "properties": {
                "version": {"type": "integer", "minimum": 0},
                "default_retention_days": {"type": "integer", "minimum": 1, "nullable": True}}}),
                "responses": {"200": _ok("the new settings"), **_errors(400, 401, 403, 409)}}},
        "/api/v1/audit": {"get": {
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                           {"name": "kind", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": _ok("control-plane changes, newest first", array=True), **_errors(400, 401, 403)}}},
        **_collection("users", "name", {"type": "object", "required": ["username", "password"], "properties": {
            "username": {"type": "string", "pattern": names.USERNAME.pattern}, "password": _PASSWORD,
            "role": {"type": "string", "enum": list(ROLES)}}},
            {"type": "object", "required": ["version"], "properties": {
                "version": {"type": "integer"}, "password": _PASSWORD,
                "role": {"type": "string", "enum": list(ROLES)}}}),
        **_collection("tokens", "id", {"type": "object", "required": ["name", "role"], "properties": {
            "name": {"type": "string"}, "role": {"type": "string", "enum": list(ROLES)},
            "expires_days": {"type": "integer", "minimum": 1}}}, None),
        **_collection("dashboards", "id", {"type": "object", "required": ["title"], "properties": {
            "title": {"type": "string"}, "description": {"type": "string"},
            "panels": {"type": "array", "items": {"type": "object", "required": ["query"], "properties": {
                "title": {"type": "string"}, "query": {"type": "string"},
                "dataset": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "type": {"type": "string", "enum": ["table", "timechart", "stat", "bar", "logs"]},
                "options": {"type": "object"}}}}}}, "same"),
        **_collection("monitors", "id", {"type": "object", "required": ["name", "query", "condition"], "properties": {
            "name": {"type": "string"}, "query": {"type": "string"},
            "dataset": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "schedule": {"type": "string"}, "window": {"type": "string"},
            "condition": {"type": "object", "required": ["op", "threshold"], "properties": {
                "op": {"type": "string", "enum": [">", ">=", "<", "<=", "==", "!="]},
                "threshold": {"type": "number"}}},
            "webhook": {"type": "string", "nullable": True}, "enabled": {"type": "boolean"},
            "for": {"type": "string", "nullable": True}, "repeat": {"type": "string", "nullable": True}}}, "same"),
        "/api/v1/monitors/{id}/history": {"get": {"parameters": [_path_param("id")], "responses": {
            "200": _ok("transitions newest first, with value, window and delivery", array=True),
            **_errors(401, 403, 404)}}},
        "/api/v1/monitors/{id}/test": {"post": {"parameters": [_path_param("id")], "responses": {
            "200": _ok("one signed test notification sent now: id, delivered, status, error"),
            **_errors(400, 401, 403, 404)}}},
        "/api/v1/monitors/{id}/secret": {"post": {"parameters": [_path_param("id")], "responses": {
            "200": _ok("a new webhook secret, shown this once"), **_errors(401, 403, 404, 503)}}},
    },
}

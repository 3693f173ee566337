"""The OpenAPI document served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from helios import __version__

__all__ = ["OPENAPI"]

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_BEARER = [{"bearer": []}]


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            for code in codes}


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
                          **_errors(400, 401)}}},
        "/api/v1/ingest": {"post": {
            "parameters": [{"name": "dataset", "in": "query", "schema": {
                "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}}],
            "requestBody": {"required": True, "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}}}},
            "responses": {"200": {"description": "durable", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"ingested": {"type": "integer"}}}}}},
                **_errors(400, 401, 403, 413)}}},
        "/api/v1/query": {"post": {
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
                **_errors(400, 401, 403)}}},
        "/api/v1/datasets": {"get": {"responses": {
            "200": {"description": "datasets as this node sees them", "content": {"application/json": {
                "schema": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "retention_days": {"type": "integer", "nullable": True},
                    "rows": {"type": "integer"}, "bytes": {"type": "integer"},
                    "partitions": {"type": "integer"}, "blocks": {"type": "integer"}}}}}}},
            **_errors(401, 403)}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}, **_errors(401, 403)}}},
    },
}

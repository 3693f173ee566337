"""Routes of the control plane: users, API tokens, dashboards, monitors, settings, audit.

Every route names one permission of ``helios.control.auth.PERMISSIONS``.
Lists answer a JSON array; creates answer 201 with the object; changes carry
the ``version`` the caller read and a stale one answers 409 with the current
version; deletes answer ``{"deleted": id}``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from quart import Response, request
from quart_trio import QuartTrio

from helios.control.auth import Principal, token_view, user_view
from helios.control.objects import RESOURCES, Settings, set_dataset
from helios.errors import InvalidInput, NotFound

__all__ = ["register"]

MAX_AUDIT = 10_000


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status=status, mimetype="application/json")


def _version_arg() -> int | None:
    raw = request.args.get("version")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInput("'version' is a whole number: the version you read")
    return int(raw)


def register(app: QuartTrio, node: Any, principal: Callable[[str], Awaitable[Principal]],
             json_body: Callable[[], Awaitable[dict[str, Any]]], validate_dataset: Callable[[object], str]) -> None:
    control, auth = node.control, node.auth

    @app.get("/api/v1/auth/me")
    async def whoami() -> Response:
        who = await principal("whoami")
        return _json({"name": who.name, "role": who.role})

    # -- users ---------------------------------------------------------------

    @app.get("/api/v1/users")
    async def list_users() -> Response:
        await principal("users.admin")
        return _json([user_view(u) for u in control.list("users")])

    @app.post("/api/v1/users")
    async def create_user() -> Response:
        who = await principal("users.admin")
        return _json(user_view(await auth.create_user(await json_body(), who)), 201)

    def user(name: str) -> Any:
        obj = control.get("users", name)
        if obj is None:
            raise NotFound(f"no user {name!r}")
        return obj

    @app.get("/api/v1/users/<name>")
    async def get_user(name: str) -> Response:
        await principal("users.admin")
        return _json(user_view(user(name)))

    @app.put("/api/v1/users/<name>")
    async def update_user(name: str) -> Response:
        who = await principal("users.admin")
        body = await json_body()
        user(name)
        return _json(user_view(await auth.update_user(name, body, who)))

    @app.delete("/api/v1/users/<name>")
    async def delete_user(name: str) -> Response:
        who = await principal("users.admin")
        user(name)
        await auth.delete_user(name, _version_arg(), who)
        return _json({"deleted": name})

    # -- API tokens ----------------------------------------------------------

    @app.get("/api/v1/tokens")
    async def list_tokens() -> Response:
        await principal("tokens.admin")
        return _json([token_view(t) for t in control.list("tokens")])

    @app.post("/api/v1/tokens")
    async def create_token() -> Response:
        who = await principal("tokens.admin")
        obj, token = await auth.create_token(await json_body(), who)
        return _json({**token_view(obj), "token": token}, 201)

    @app.delete("/api/v1/tokens/<token_id>")
    async def revoke_token(token_id: str) -> Response:
        who = await principal("tokens.admin")
        await auth.revoke_token(token_id, who)
        return _json({"deleted": token_id})

    # -- dashboards and monitors ---------------------------------------------

    for kind, resource in RESOURCES.items():
        read, write = f"{kind}.read", f"{kind}.write"

        async def list_all(resource: Any = resource, read: str = read) -> Response:
            await principal(read)
            return _json([resource.view(o) for o in control.list(resource.kind)])

        async def create(resource: Any = resource, write: str = write) -> Response:
            who = await principal(write)
            return _json(resource.created_view(await resource.create(control, await json_body(), who)), 201)

        async def get_one(object_id: str, resource: Any = resource, read: str = read) -> Response:
            await principal(read)
            return _json(resource.view(resource.get(control, object_id)))

        async def update(object_id: str, resource: Any = resource, write: str = write) -> Response:
            who = await principal(write)
            body = await json_body()
            return _json(resource.view(await resource.update(control, object_id, body, who)))

        async def delete(object_id: str, resource: Any = resource, write: str = write) -> Response:
            who = await principal(write)
            await resource.delete(control, object_id, _version_arg(), who)
            return _json({"deleted": object_id})

        base = f"/api/v1/{kind}"
        app.add_url_rule(base, f"{kind}_list", list_all, methods=["GET"])
        app.add_url_rule(base, f"{kind}_create", create, methods=["POST"])
        app.add_url_rule(f"{base}/<object_id>", f"{kind}_get", get_one, methods=["GET"])
        app.add_url_rule(f"{base}/<object_id>", f"{kind}_update", update, methods=["PUT"])
        app.add_url_rule(f"{base}/<object_id>", f"{kind}_delete", delete, methods=["DELETE"])

    # -- settings ------------------------------------------------------------

    @app.get("/api/v1/settings")
    async def get_settings() -> Response:
        await principal("settings.read")
        return _json(Settings.view(control))

    @app.put("/api/v1/settings")
    async def put_settings() -> Response:
        who = await principal("settings.write")
        await Settings.update(control, await json_body(), who)
        return _json(Settings.view(control))

    @app.put("/api/v1/datasets/<name>")
    async def put_dataset(name: str) -> Response:
        who = await principal("datasets.write")
        validate_dataset(name)
        return _json(await set_dataset(control, name, await json_body(), who))

    # -- audit ---------------------------------------------------------------

    @app.get("/api/v1/audit")
    async def audit() -> Response:
        await principal("audit.read")
        raw_limit = request.args.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_AUDIT:
            raise InvalidInput(f"'limit' is a whole number from 1 to {MAX_AUDIT}")
        kind = request.args.get("kind")
        entries = [e for e in reversed(control.audit) if kind is None or e.kind == kind]
        return _json([e.to_json() for e in entries[: int(raw_limit)]])

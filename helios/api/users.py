"""Users and API tokens (admin only).

Lists answer a JSON array; creates answer 201 with the object; changes carry
the ``version`` the caller read (a stale one is 409 with the current version);
deletes answer ``{"deleted": id}``.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from helios.api.common import answer, json_body, node, principal, whole_number
from helios.control.auth import token_view, user_view
from helios.control.plane import Obj
from helios.errors import NotFound

__all__ = ["bp", "version_arg"]

bp = Blueprint("users", __name__)
MAX_VERSION = 1 << 62


def version_arg() -> int | None:
    """The ``?version=`` a delete names (the version the caller read), or None."""
    raw = request.args.get("version")
    return None if raw is None else whole_number(raw, "version", 0, MAX_VERSION)


def _user(name: str) -> Obj:
    obj = node().control.get("users", name)
    if obj is None:
        raise NotFound(f"no user {name!r}")
    return obj


@bp.get("/api/v1/users")
async def list_users() -> Response:
    await principal("users.admin")
    return answer([user_view(u) for u in node().control.list("users")])


@bp.post("/api/v1/users")
async def create_user() -> Response:
    who = await principal("users.admin")
    return answer(user_view(await node().auth.create_user(await json_body(), who)), 201)


@bp.get("/api/v1/users/<name>")
async def get_user(name: str) -> Response:
    await principal("users.admin")
    return answer(user_view(_user(name)))


@bp.put("/api/v1/users/<name>")
async def update_user(name: str) -> Response:
    who = await principal("users.admin")
    body = await json_body()
    _user(name)
    return answer(user_view(await node().auth.update_user(name, body, who)))


@bp.delete("/api/v1/users/<name>")
async def delete_user(name: str) -> Response:
    who = await principal("users.admin")
    _user(name)
    await node().auth.delete_user(name, version_arg(), who)
    return answer({"deleted": name})


@bp.get("/api/v1/tokens")
async def list_tokens() -> Response:
    await principal("tokens.admin")
    return answer([token_view(t) for t in node().control.list("tokens")])


@bp.post("/api/v1/tokens")
async def create_token() -> Response:
    who = await principal("tokens.admin")
    obj, token = await node().auth.create_token(await json_body(), who)
    return answer({**token_view(obj), "token": token}, 201)


@bp.delete("/api/v1/tokens/<token_id>")
async def revoke_token(token_id: str) -> Response:
    who = await principal("tokens.admin")
    await node().auth.revoke_token(token_id, who)
    return answer({"deleted": token_id})

"""Logging in (a JWT for a username and password) and asking who one is."""

from __future__ import annotations

from quart import Blueprint, Response, request

from helios import timeutil
from helios.api.common import answer, json_body, node, principal
from helios.errors import InvalidInput

__all__ = ["bp"]

bp = Blueprint("session", __name__)


@bp.post("/api/v1/auth/login")
async def login() -> Response:
    doc = await json_body()
    username, password = doc.get("username"), doc.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidInput("send {\"username\": ..., \"password\": ...} as strings")
    token, expires = await node().auth.login(username, password, request.remote_addr or "")
    return answer({"token": token, "expires_at": timeutil.format_ns(expires * 1_000_000_000)})


@bp.get("/api/v1/auth/me")
async def whoami() -> Response:
    who = await principal("whoami")
    return answer({"name": who.name, "role": who.role})

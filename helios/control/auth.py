"""Authentication and authorisation: password hashes, login JWTs, API tokens, the role table.

Passwords are hashed with scrypt (memory-hard; ``cryptography``) and checked
in constant time, off the event loop. Logins return an HS256 JWT with
``sub``, ``role``, ``iat``, ``exp`` and ``jti``; a JWT is only accepted while
its user exists, with the role the user has now (a demoted user loses rights
at once), and only if it was issued after the user's last password change.

API tokens are ``hlt_<id>_<secret>``: the id names the token object, the
secret (32 random bytes) is shown once and stored only as its SHA-256 (a
random secret needs no slow hash). Revoking deletes the object, on every node
as soon as the control plane is pulled. A token keeps working when the user
who made it is deleted: tokens are service credentials, revoked explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import trio
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from helios import log, timeutil
from helios.control.plane import UNCHANGED, ControlPlane, Obj
from helios.errors import Conflict, Forbidden, InvalidInput, NotFound, StaleVersion, Unauthorized
from helios.keys import write_private

__all__ = ["PERMISSIONS", "ROLES", "TOKEN_PREFIX", "Auth", "Principal", "check_version", "hash_password", "only_fields",
           "require_version", "token_view", "user_view", "verify_password"]

TOKEN_PREFIX = "hlt_"
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
_TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")

ROLES = ("admin", "editor", "viewer", "ingest")

# One table: which roles may do what. Every endpoint names one permission
# (``helios.api``), and tests/test_security.py checks every endpoint against
# the role matrix written out independently there.
PERMISSIONS: dict[str, frozenset[str]] = {
    "ingest": frozenset({"admin", "ingest"}),
    "query": frozenset({"admin", "editor", "viewer"}),
    "datasets.read": frozenset({"admin", "editor", "viewer"}),
    "datasets.write": frozenset({"admin", "editor"}),
    "dashboards.read": frozenset({"admin", "editor", "viewer"}),
    "dashboards.write": frozenset({"admin", "editor"}),
    "monitors.read": frozenset({"admin", "editor", "viewer"}),
    "monitors.write": frozenset({"admin", "editor"}),
    "settings.read": frozenset({"admin", "editor", "viewer"}),
    "settings.write": frozenset({"admin"}),
    "metrics": frozenset({"admin", "editor", "viewer"}),
    "cluster.read": frozenset({"admin", "editor", "viewer"}),
    "users.admin": frozenset({"admin"}),
    "tokens.admin": frozenset({"admin"}),
    "audit.read": frozenset({"admin"}),
    "whoami": frozenset(ROLES),
}

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@-]{0,63}$")
_log = log.get("helios.auth")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(password.encode())
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = Scrypt(salt=_unb64(salt), length=32, n=int(n), r=int(r), p=int(p)).derive(password.encode())
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(digest))


_DUMMY_HASH = hash_password(secrets.token_hex(8))  # equalises timing for unknown users


@dataclass(frozen=True)
class Principal:
    name: str  # a username, or token/<id> for an API token
    role: str

    def require(self, permission: str) -> None:
        if self.role not in PERMISSIONS[permission]:
            raise Forbidden(f"the {self.role} role may not do this ({permission})")


def _password(value: object) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise InvalidInput(f"a password is a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return value


def _role(value: object) -> str:
    if value not in ROLES:
        raise InvalidInput(f"'role' must be one of {', '.join(ROLES)}")
    return str(value)


def _username(value: object) -> str:
    if not isinstance(value, str) or not _USERNAME.match(value):
        raise InvalidInput("a username is 1-64 of a-z 0-9 _ . @ -, starting with a letter or digit")
    return value


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def user_view(obj: Obj) -> dict[str, Any]:
    doc = obj.doc or {}
    return {"username": obj.id, "role": doc["role"], "version": obj.version,
            "created_at": timeutil.format_ns(obj.created_ns), "updated_at": timeutil.format_ns(obj.updated_ns),
            "updated_by": obj.updated_by}


def token_view(obj: Obj) -> dict[str, Any]:
    doc = obj.doc or {}
    expires = doc.get("expires_ns")
    return {"id": obj.id, "name": doc["name"], "role": doc["role"], "created_by": doc["created_by"],
            "created_at": timeutil.format_ns(obj.created_ns),
            "expires_at": timeutil.format_ns(expires) if expires else None}


class Auth:
    """Who is calling, and the user and token objects of the control plane."""

    def __init__(self, control: ControlPlane, jwt_secret: bytes, token_ttl_s: int) -> None:
        self.control = control
        self._secret = jwt_secret
        self.token_ttl_s = token_ttl_s

    # -- sessions and tokens -------------------------------------------------

    async def login(self, username: str, password: str) -> tuple[str, int]:
        """Check a password (scrypt, off the event loop); return ``(jwt, expires_at unix seconds)``."""
        user = self.control.get("users", username) if _USERNAME.match(username) else None
        stored = user.doc["password"] if user is not None and user.doc else _DUMMY_HASH
        ok = await trio.to_thread.run_sync(verify_password, password, stored)
        if user is None or not ok:
            raise Unauthorized("wrong username or password")
        now = int(time.time())
        expires = now + self.token_ttl_s
        claims = {"sub": username, "role": user.doc["role"], "iat": now, "exp": expires,  # type: ignore[index]
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <token>")
        if token.startswith(TOKEN_PREFIX):
            return self._api_token(token)
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not valid") from None
        username = claims.get("sub")
        user = self.control.get("users", username) if isinstance(username, str) and _USERNAME.match(username) else None
        if user is None or user.doc is None:
            raise Unauthorized("the token's user no longer exists")
        if not isinstance(claims["iat"], int) or claims["iat"] < user.doc.get("sessions_after", 0):
            raise Unauthorized("the session was ended by a password change; log in again")
        return Principal(username, user.doc["role"])

    def _api_token(self, token: str) -> Principal:
        token_id, _, secret = token[len(TOKEN_PREFIX):].partition("_")
        obj = self.control.state("tokens", token_id) if _TOKEN_ID.match(token_id) else None
        expected = obj.doc["hash"] if obj is not None and obj.doc else _token_hash(secrets.token_hex(16))
        if not hmac.compare_digest(_token_hash(secret), expected) or obj is None:
            if obj is not None and obj.doc is None:
                raise Unauthorized("the API token has been revoked")
            raise Unauthorized("the API token is not valid")
        expires = obj.doc["expires_ns"] if obj.doc else None
        if expires and time.time_ns() >= expires:
            raise Unauthorized("the API token has expired")
        return Principal(f"token/{token_id}", obj.doc["role"])  # type: ignore[index]

    # -- users ---------------------------------------------------------------

    async def bootstrap(self, password: str, secrets_dir: Path) -> None:
        """An empty control plane gets an ``admin`` user (exactly one node of a cluster creates it)."""
        if self.control.list("users"):
            return
        generated = not password
        if generated:
            password = secrets.token_urlsafe(18)
        hashed = await trio.to_thread.run_sync(hash_password, password)
        created = False

        def mutate(current: Obj | None) -> Any:
            nonlocal created
            if current is not None or self.control.list("users"):
                return UNCHANGED  # another node bootstrapped first
            created = True
            return {"role": "admin", "password": hashed, "sessions_after": 0}

        await self.control.commit("users", "admin", mutate, by="bootstrap")
        if not created:
            return
        if generated:
            path = secrets_dir / "admin.password"
            await trio.to_thread.run_sync(write_private, path, (password + "\n").encode())
            log.log(_log, logging.WARNING, "created the admin user with a generated password; "
                    "it is shown once here and kept in the saved_to file",
                    username="admin", password=password, saved_to=str(path))
        else:
            log.log(_log, logging.INFO, "created the admin user from HELIOS_ADMIN_PASSWORD")

    async def create_user(self, body: dict[str, Any], by: Principal) -> Obj:
        only_fields(body, {"username", "password", "role"})
        username, role = _username(body.get("username")), _role(body.get("role", "viewer"))
        hashed = await trio.to_thread.run_sync(hash_password, _password(body.get("password")))

        def mutate(current: Obj | None) -> Any:
            if current is not None:
                raise Conflict(f"user {username!r} exists")
            return {"role": role, "password": hashed, "sessions_after": 0}

        obj = await self.control.commit("users", username, mutate, by.name)
        assert obj is not None
        return obj

    async def update_user(self, username: str, body: dict[str, Any], by: Principal) -> Obj:
        only_fields(body, {"version", "password", "role"})
        expected = require_version(body)
        role = _role(body["role"]) if "role" in body else None
        hashed = (await trio.to_thread.run_sync(hash_password, _password(body["password"]))
                  if "password" in body else None)

        def mutate(current: Obj | None) -> Any:
            check_version(current, expected, f"user {username!r}")
            assert current is not None and current.doc is not None
            doc = dict(current.doc)
            if role is not None:
                if doc["role"] == "admin" and role != "admin":
                    self._keep_an_admin(username)
                doc["role"] = role
            if hashed is not None:
                doc["password"] = hashed
                doc["sessions_after"] = int(time.time())
            return doc

        obj = await self.control.commit("users", username, mutate, by.name)
        assert obj is not None
        return obj

    async def delete_user(self, username: str, expected: int | None, by: Principal) -> None:
        def mutate(current: Obj | None) -> Any:
            check_version(current, expected, f"user {username!r}")
            assert current is not None and current.doc is not None
            if current.doc["role"] == "admin":
                self._keep_an_admin(username)
            return None

        await self.control.commit("users", username, mutate, by.name)

    def _keep_an_admin(self, username: str) -> None:
        if not any(u.doc and u.doc["role"] == "admin" and u.id != username for u in self.control.list("users")):
            raise Conflict(f"{username!r} is the last admin; make another user admin first")

    # -- API tokens ----------------------------------------------------------

    async def create_token(self, body: dict[str, Any], by: Principal) -> tuple[Obj, str]:
        """A new API token; the secret is returned here once and stored only as a hash."""
        only_fields(body, {"name", "role", "expires_days"})
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 128 or not name.isprintable():
            raise InvalidInput("'name' is a printable string of 1 to 128 characters")
        role = _role(body.get("role"))
        days = body.get("expires_days")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
            raise InvalidInput("'expires_days' is a whole number of days from 1 to 3650, or absent (no expiry)")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        doc = {"name": name, "role": role, "hash": _token_hash(secret), "created_by": by.name,
               "expires_ns": time.time_ns() + days * 86_400 * 10**9 if days else None}

        def mutate(current: Obj | None) -> Any:
            if self.control.state("tokens", token_id) is not None:
                raise Conflict("token id collision; try again")
            return doc

        obj = await self.control.commit("tokens", token_id, mutate, by.name)
        assert obj is not None
        return obj, f"{TOKEN_PREFIX}{token_id}_{secret}"

    async def revoke_token(self, token_id: str, by: Principal) -> None:
        def mutate(current: Obj | None) -> Any:
            if current is None:
                raise NotFound(f"no API token {token_id!r}")
            return None

        await self.control.commit("tokens", token_id, mutate, by.name)


def only_fields(body: dict[str, Any], allowed: set[str], what: str = "") -> None:
    """400 for a body with fields outside ``allowed`` (``what`` names the object in the message)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        where = f" in {what}" if what else ""
        raise InvalidInput(f"unknown field(s){where}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def require_version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidInput("'version' is required: send the version you read, so that a concurrent "
                           "change is not silently overwritten")
    return version


def check_version(current: Obj | None, expected: int | None, what: str) -> None:
    """Optimistic concurrency: 404 if absent, 409 with the current version if ``expected`` is stale."""
    if current is None:
        raise NotFound(f"no {what}")
    if expected is not None and current.version != expected:
        raise StaleVersion(f"{what} is at version {current.version}, not {expected}: "
                           "read it again and reapply your change", current.version)

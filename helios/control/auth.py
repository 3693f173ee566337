"""Authentication and authorisation: password hashes, login JWTs, the role table.

Passwords are hashed with scrypt (memory-hard; ``cryptography``) and checked
in constant time. Logins return an HS256 JWT with ``sub``, ``role``, ``iat``
and ``exp``; a token is only accepted while its user exists, and with the
role the user has now (a demoted user loses rights at once).
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from helios import log
from helios.control.store import ControlStore
from helios.errors import Forbidden, InvalidInput, Unauthorized
from helios.keys import write_private

__all__ = ["PERMISSIONS", "ROLES", "Auth", "Principal", "hash_password", "verify_password"]

ROLES = ("admin", "editor", "viewer", "ingest")

# One table: which roles may do what. Every endpoint names one permission.
PERMISSIONS: dict[str, frozenset[str]] = {
    "ingest": frozenset({"admin", "ingest"}),
    "query": frozenset({"admin", "editor", "viewer"}),
    "datasets.read": frozenset({"admin", "editor", "viewer"}),
    "datasets.write": frozenset({"admin", "editor"}),
    "metrics": frozenset({"admin", "editor", "viewer"}),
    "cluster.read": frozenset({"admin", "editor", "viewer"}),
    "users.admin": frozenset({"admin"}),
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
    name: str
    role: str

    def require(self, permission: str) -> None:
        if self.role not in PERMISSIONS[permission]:
            raise Forbidden(f"the {self.role} role may not do this ({permission})")


class Auth:
    def __init__(self, control: ControlStore, jwt_secret: bytes, token_ttl_s: int) -> None:
        self.control = control
        self._secret = jwt_secret
        self.token_ttl_s = token_ttl_s

    def bootstrap(self, password: str, secrets_dir: Path) -> None:
        """An empty control plane gets an ``admin`` user."""
        if self.control.list("users"):
            return
        generated = not password
        if generated:
            password = secrets.token_urlsafe(18)
        self.create_user("admin", password, "admin")
        if generated:
            path = secrets_dir / "admin.password"
            write_private(path, (password + "\n").encode())
            log.log(_log, logging.WARNING, "created the admin user with a generated password; "
                    "it is shown once here and kept in the saved_to file",
                    username="admin", password=password, saved_to=str(path))
        else:
            log.log(_log, logging.INFO, "created the admin user from HELIOS_ADMIN_PASSWORD")

    def create_user(self, username: str, password: str, role: str) -> None:
        if not _USERNAME.match(username):
            raise InvalidInput("a username is 1-64 of a-z 0-9 _ . @ -, starting with a letter or digit")
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise InvalidInput("a password needs at least 8 characters")
        self.control.put("users", username, {"username": username, "role": role,
                                             "password": hash_password(password),
                                             "created_ns": time.time_ns()})

    def login(self, username: str, password: str) -> tuple[str, int]:
        """Check a password; return ``(jwt, expires_at unix seconds)``."""
        user = self.control.get("users", username) if _USERNAME.match(username) else None
        ok = verify_password(password, user["password"] if user else _DUMMY_HASH)
        if not user or not ok:
            raise Unauthorized("wrong username or password")
        now = int(time.time())
        expires = now + self.token_ttl_s
        claims = {"sub": username, "role": user["role"], "iat": now, "exp": expires,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use Authorization: Bearer <token>")
        try:
            claims = jwt.decode(token.strip(), self._secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not valid") from None
        username = claims.get("sub")
        user = self.control.get("users", username) if isinstance(username, str) and _USERNAME.match(username) else None
        if user is None:
            raise Unauthorized("the token's user no longer exists")
        return Principal(username, user["role"])

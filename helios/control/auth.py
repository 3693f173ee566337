"""Authentication and authorisation: logins, sessions, API tokens, the role table.

Passwords are scrypt hashes (``helios.control.passwords``), computed on a
small thread limiter of their own (``scrypt_concurrency``), never on the
request workers: a flood of logins queues there (at most
``MAX_KDF_WAITING_PER_SLOT`` per slot, then 429) while ingest and queries go
on. Failed logins are throttled per username and per client address
(``helios.control.throttle``: 429 with ``Retry-After``), counted in
``/metrics`` and logged by the node; they are *not* entries of the control
log, which is replicated to every node and kept forever: an unauthenticated
client must not be able to grow it. A successful login with a hash cheaper
than the current cost rewrites it (one control-log entry, once).

Logins return an HS256 JWT with ``sub``, ``uid``, ``gen``, ``role``,
``iat``, ``exp`` and ``jti``. A JWT is accepted only while its user exists
*as the same user*: ``uid`` is random per user record, so a name deleted and
created again does not revive old sessions; ``gen`` counts the user's
password changes, so a change ends every earlier session, however close in
time. The role is read from the user now (a demoted user loses rights at
once).

API tokens are ``hlt_<id>_<secret>``: the id names the token object, the
secret (32 random bytes) is shown once and stored only as its SHA-256 (a
random secret needs no slow hash). Revoking deletes the object, on every node
as soon as the control plane is pulled. A token keeps working when the user
who made it is deleted: tokens are service credentials, revoked explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import trio

from helios import log, names, timeutil
from helios.config import Config
from helios.control.passwords import DEFAULT_LOG2_N, decoy_hash, hash_password, needs_rehash, verify_password
from helios.control.plane import UNCHANGED, ControlPlane, Obj
from helios.control.throttle import LoginThrottle, TooManyLogins
from helios.errors import (ConfigError, Conflict, Forbidden, InvalidInput, NotFound, StaleVersion, Unauthorized,
                           Unavailable)
from helios.keys import write_private

__all__ = ["MAX_KDF_WAITING_PER_SLOT", "PERMISSIONS", "ROLES", "TOKEN_PREFIX", "Auth", "Principal", "check_version",
           "only_fields", "require_version", "token_view", "user_view"]

TOKEN_PREFIX = "hlt_"
MAX_KDF_WAITING_PER_SLOT = 16  # logins queued for a hash slot beyond this answer 429 at once
VERIFIED_SESSIONS = 4096  # session tokens whose signature checks are remembered (_session_claims)

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

_log = log.get("helios.auth")
_COUNTERS = (("helios_logins_total", "logins"), ("helios_login_failures_total", "login_failures"),
             ("helios_login_throttled_total", "login_throttled"),
             ("helios_password_rehashes_total", "password_rehashes"))


@dataclass(frozen=True)
class Principal:
    name: str  # a username, or token/<id> for an API token
    role: str

    def require(self, permission: str) -> None:
        if self.role not in PERMISSIONS[permission]:
            raise Forbidden(f"the {self.role} role may not do this ({permission})")


def _role(value: object) -> str:
    if value not in ROLES:
        raise InvalidInput(f"'role' must be one of {', '.join(ROLES)}")
    return str(value)


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_user(role: str, hashed: str) -> dict[str, Any]:
    """A user record: ``uid`` names this user (not the name), ``generation`` counts password changes."""
    return {"role": role, "password": hashed, "uid": secrets.token_hex(8), "generation": 0}


def _uid(user: Obj) -> str:
    # Records made before uids existed: the creation time tells incarnations of a name apart.
    return str((user.doc or {}).get("uid") or f"created-{user.created_ns}")


def _generation(user: Obj) -> int:
    return int((user.doc or {}).get("generation", 0))


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

    def __init__(self, control: ControlPlane, jwt_secret: bytes, token_ttl_s: int, *,
                 scrypt_log2_n: int = DEFAULT_LOG2_N, scrypt_concurrency: int = 2,
                 throttle: LoginThrottle | None = None) -> None:
        self.control = control
        self._secret = jwt_secret
        self.token_ttl_s = token_ttl_s
        self.scrypt_log2_n = scrypt_log2_n
        if throttle is None:  # (not `throttle or ...`: an empty throttle has len 0)
            throttle = LoginThrottle(user_failures=5, address_failures=20, backoff_s=1.0, backoff_max_s=300.0)
        self.throttle = throttle
        self.counters: dict[str, int] = dict.fromkeys((key for _, key in _COUNTERS), 0)
        self._max_waiting = MAX_KDF_WAITING_PER_SLOT * scrypt_concurrency
        self._kdf_slots = trio.CapacityLimiter(scrypt_concurrency)  # held while a hash runs, and queued on
        self._kdf_threads = trio.CapacityLimiter(scrypt_concurrency)  # the threads: never trio's shared pool
        self._verified: dict[str, dict[str, Any]] = {}  # session JWT -> its checked claims

    @classmethod
    def from_config(cls, control: ControlPlane, jwt_secret: bytes, config: Config) -> Auth:
        throttle = LoginThrottle(user_failures=config.login_user_failures,
                                 address_failures=config.login_address_failures,
                                 backoff_s=config.login_backoff_secs,
                                 backoff_max_s=max(config.login_backoff_secs, config.login_backoff_max_secs))
        return cls(control, jwt_secret, config.token_ttl_secs, scrypt_log2_n=config.scrypt_log2_n,
                   scrypt_concurrency=config.scrypt_concurrency, throttle=throttle)

    async def _kdf(self, fn: Any, *args: Any) -> Any:
        """Run a password hash on the dedicated limiter (callers hold no slot)."""
        async with self._kdf_slots:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._kdf_threads)

    def metrics_lines(self) -> list[str]:
        lines: list[str] = []
        for metric, key in _COUNTERS:
            lines += [f"# TYPE {metric} counter", f"{metric} {self.counters[key]}"]
        return [*lines, "# TYPE helios_login_throttle_keys gauge", f"helios_login_throttle_keys {len(self.throttle)}"]

    # -- sessions and tokens -------------------------------------------------

    def _check_throttle(self, key: str, address: str) -> None:
        try:
            self.throttle.check(key, address)
        except TooManyLogins:
            self.counters["login_throttled"] += 1
            raise

    async def login(self, username: str, password: str, address: str = "") -> tuple[str, int]:
        """Check a password; return ``(jwt, expires_at unix seconds)``.

        Raises TooManyLogins (429) while the username or ``address`` must
        wait, or when too many logins already queue for a hash slot;
        Unauthorized (401) for a wrong name or password. Whether the user
        exists changes neither the answer nor the work done.
        """
        key = username if names.USERNAME.ok(username) else ""  # one key for every impossible name
        self._check_throttle(key, address)
        if self._kdf_slots.statistics().tasks_waiting >= self._max_waiting:
            self.counters["login_throttled"] += 1
            raise TooManyLogins("the node is busy checking other logins; try again", 1)
        async with self._kdf_slots:
            self._check_throttle(key, address)  # failures may have been counted while this one queued
            user = self.control.get("users", key) if key else None
            stored = user.doc["password"] if user is not None and user.doc else decoy_hash(self.scrypt_log2_n)
            ok = await trio.to_thread.run_sync(verify_password, password, stored, limiter=self._kdf_threads)
        if user is None or not ok:
            self.throttle.failed(key, address)
            self.counters["login_failures"] += 1
            log.log(_log, logging.WARNING, "failed login", username=key or "(not a valid username)",
                    address=address)
            raise Unauthorized("wrong username or password")
        self.throttle.succeeded(key)
        self.counters["logins"] += 1
        if needs_rehash(stored, self.scrypt_log2_n):
            await self._rehash(key, stored, password)
        now = int(time.time())
        expires = now + self.token_ttl_s
        assert user.doc is not None
        claims = {"sub": key, "uid": _uid(user), "gen": _generation(user), "role": user.doc["role"],
                  "iat": now, "exp": expires, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires

    async def _rehash(self, username: str, old: str, password: str) -> None:
        """Store the password again at the current cost; a failure only leaves it for the next login."""
        new = await self._kdf(hash_password, password, self.scrypt_log2_n)

        def mutate(current: Obj | None) -> Any:
            if current is None or current.doc is None or current.doc.get("password") != old:
                return UNCHANGED  # deleted or changed meanwhile
            return {**current.doc, "password": new}  # same uid and generation: sessions go on

        try:
            obj = await self.control.commit("users", username, mutate, username)
        except Unavailable as exc:
            log.log(_log, logging.INFO, "could not store a stronger password hash now; the next login tries again",
                    username=username, error=str(exc))
            return
        if obj is not None and obj.doc is not None and obj.doc.get("password") == new:
            self.counters["password_rehashes"] += 1

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <token>")
        if token.startswith(TOKEN_PREFIX):
            return self._api_token(token)
        claims = self._session_claims(token)
        username = claims.get("sub")
        user = self.control.get("users", username) if names.USERNAME.ok(username) else None
        if user is None or user.doc is None or claims.get("uid") != _uid(user):
            raise Unauthorized("the token's user no longer exists; log in again")
        generation = claims.get("gen")
        if type(generation) is not int or generation != _generation(user):
            raise Unauthorized("the session was ended by a password change; log in again")
        return Principal(user.id, user.doc["role"])

    def _session_claims(self, token: str) -> dict[str, Any]:
        """A session JWT's claims, once its signature and times check out.

        A token whose signature was checked is remembered (``VERIFIED_SESSIONS`` at most, the oldest
        forgotten first): its signature cannot change, so only its expiry is looked at again (as
        PyJWT does: expired once ``exp <= now``). The checks of its user are made every time.
        That takes ~55 us (PyJWT) off every request a session makes.
        """
        claims = self._verified.get(token)
        if claims is not None:
            if claims["exp"] > time.time():
                return claims
            del self._verified[token]
            raise Unauthorized("the token has expired; log in again")
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not valid") from None
        if len(self._verified) >= VERIFIED_SESSIONS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _api_token(self, token: str) -> Principal:
        token_id, _, secret = token[len(TOKEN_PREFIX):].partition("_")
        obj = self.control.state("tokens", token_id) if names.TOKEN_ID.ok(token_id) else None
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
        if not names.PASSWORD.ok(password):
            raise ConfigError(f"HELIOS_ADMIN_PASSWORD: {names.PASSWORD.hint}")
        hashed = await self._kdf(hash_password, password, self.scrypt_log2_n)
        created = False

        def mutate(current: Obj | None) -> Any:
            nonlocal created
            if current is not None or self.control.list("users"):
                return UNCHANGED  # another node bootstrapped first
            created = True
            return _new_user("admin", hashed)

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
        username, role = names.USERNAME.check(body.get("username")), _role(body.get("role", "viewer"))
        hashed = await self._kdf(hash_password, names.PASSWORD.check(body.get("password")), self.scrypt_log2_n)

        def mutate(current: Obj | None) -> Any:
            if current is not None:
                raise Conflict(f"user {username!r} exists")
            return _new_user(role, hashed)

        obj = await self.control.commit("users", username, mutate, by.name)
        assert obj is not None
        return obj

    async def update_user(self, username: str, body: dict[str, Any], by: Principal) -> Obj:
        only_fields(body, {"version", "password", "role"})
        expected = require_version(body)
        role = _role(body["role"]) if "role" in body else None
        hashed = (await self._kdf(hash_password, names.PASSWORD.check(body["password"]), self.scrypt_log2_n)
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
                doc["generation"] = int(doc.get("generation", 0)) + 1  # ends every earlier session
                doc.pop("sessions_after", None)  # the whole-second rule of earlier versions
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
        name = names.TOKEN_NAME.check(body.get("name"))
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

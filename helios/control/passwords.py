"""Password hashes: scrypt, stored as ``scrypt$<N>$<r>$<p>$<salt>$<digest>``.

The default cost is OWASP's N = 2^17, r = 8, p = 1: 128 * N * r bytes =
128 MiB of memory and about half a second of one core per hash, so callers
bound how many run at once (``helios.control.auth`` runs them on a small
thread limiter of their own, never on the request workers or trio's shared
pool). The parameters are stored with each hash, so a hash made at a lower
cost still verifies; ``needs_rehash`` says when to redo it at the current
cost (the next successful login does). Every function here is synchronous
and CPU-bound: call it from a thread.
"""

from __future__ import annotations

import base64
import hmac
import os

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["DEFAULT_LOG2_N", "MAX_LOG2_N", "decoy_hash", "hash_password", "needs_rehash", "verify_password"]

DEFAULT_LOG2_N = 17
MAX_LOG2_N = 20  # 1 GiB per hash: a stored hash asking for more is refused, not computed
_R, _P = 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _format(n: int, salt: bytes, digest: bytes) -> str:
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def hash_password(password: str, log2_n: int = DEFAULT_LOG2_N) -> str:
    salt = os.urandom(16)
    n = 1 << log2_n
    return _format(n, salt, Scrypt(salt=salt, length=32, n=n, r=_R, p=_P).derive(password.encode()))


def decoy_hash(log2_n: int = DEFAULT_LOG2_N) -> str:
    """A hash no password matches, at full cost: checked for unknown users so their answer takes as long."""
    return _format(1 << log2_n, os.urandom(16), os.urandom(32))


def _params(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt" or not 1 < int(n) <= 1 << MAX_LOG2_N or not 1 <= int(r) <= 32 or not 1 <= int(p) <= 16:
        raise ValueError("not a hash this node makes")
    return int(n), int(r), int(p), _unb64(salt), _unb64(digest)


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against ``stored``; False for anything unparsable."""
    try:
        n, r, p, salt, digest = _params(stored)
        actual = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, digest)


def needs_rehash(stored: str, log2_n: int) -> bool:
    """True if ``stored`` is cheaper than the current cost (never to lower a stronger hash)."""
    try:
        n = _params(stored)[0]
    except (ValueError, TypeError):
        return False
    return n < 1 << log2_n

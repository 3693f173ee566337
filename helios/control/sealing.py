"""Sealing of control-plane entries and snapshots, and the fingerprints nodes compare.

Each sealed object is ``HLC1 | nonce (12) | AES-256-GCM(json)`` with its
position in the log (``helios/control/log/<seq>``, ``helios/control/snapshot/<seq>``)
as associated data, so it cannot be read, altered or moved without the
control key; with encryption ``none`` it is ``HLC0 | json``. A node compares
HMAC fingerprints of its control key and JWT secret (never the secrets)
and its encryption mode with those recorded locally and in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helios.errors import ConfigError

__all__ = ["Sealer", "check_fingerprints", "checked_entry"]

_SEALED = b"HLC1"
_PLAIN = b"HLC0"
_FINGERPRINT_LABEL = b"helios fingerprint v1"


class Sealer:
    """Seals and opens log entries; computes the fingerprints nodes compare."""

    def __init__(self, control_key: bytes, jwt_secret: bytes, encryption: str) -> None:
        self.encryption = encryption
        self._aead = AESGCM(control_key[:32]) if encryption == "aes-256-gcm" else None
        self._fingerprints = {
            "encryption mode": encryption,
            "control key": hmac.new(control_key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32],
            "JWT secret": hmac.new(jwt_secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32],
        }

    def fingerprints(self) -> dict[str, str]:
        return dict(self._fingerprints)

    def seal(self, aad: str, doc: dict[str, Any]) -> bytes:
        body = orjson.dumps(doc)
        if self._aead is None:
            return _PLAIN + body
        nonce = os.urandom(12)
        return _SEALED + nonce + self._aead.encrypt(nonce, body, aad.encode())

    def open(self, aad: str, data: bytes, where: str) -> dict[str, Any]:
        magic = data[:4]
        if magic == _PLAIN and self._aead is None:
            return orjson.loads(data[4:])
        if magic == _SEALED and self._aead is not None:
            try:
                return orjson.loads(self._aead.decrypt(data[4:16], data[16:], aad.encode()))
            except InvalidTag:
                raise ConfigError(f"{where} cannot be opened with this node's control key: "
                                  "it was written with another key, altered or moved") from None
        if magic in (_PLAIN, _SEALED):
            stored = "encrypted" if magic == _SEALED else "unencrypted"
            raise ConfigError(f"{where} is stored {stored} but this node's encryption mode is {self.encryption}")
        raise ConfigError(f"{where} is not a control-plane log entry")


_ADVICE = {
    "control key": "give every node the same control key file (HELIOS_CONTROL_KEY_PATH)",
    "JWT secret": "give every node the same JWT secret file (HELIOS_JWT_SECRET_PATH)",
    "encryption mode": "set HELIOS_CONTROL_ENCRYPTION={theirs}",
}


def check_fingerprints(mine: dict[str, str], theirs: dict[str, Any], where: str, remedy: str) -> None:
    """Raise ConfigError naming every secret or mode of this node that differs from ``theirs``."""
    differ = [name for name in ("control key", "JWT secret", "encryption mode") if theirs.get(name) != mine[name]]
    if not differ:
        return
    advice = "; ".join(_ADVICE[name].format(theirs=theirs.get(name)) for name in differ)
    details = ", ".join(f"{name} {mine[name] if name == 'encryption mode' else 'fingerprint ' + mine[name]}"
                        f" vs {theirs.get(name)}" for name in differ)
    raise ConfigError(f"this node's {' and '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} "
                      f"from the {where} ({details}): {advice}; {remedy}")


_ENTRY_FIELDS = {"kind": str, "id": str, "version": int, "by": str, "at": int, "node": str}


def checked_entry(kinds: tuple[str, ...], entry: Any) -> dict[str, Any]:
    """An opened log entry with the fields the control plane applies, of the right types, and a known
    kind (else ConfigError, as ``Sealer.open``): a damaged entry is never half-applied."""
    if not isinstance(entry, dict) or entry.get("kind") not in kinds or "doc" not in entry or any(
            not isinstance(entry.get(name), kind) for name, kind in _ENTRY_FIELDS.items()):
        raise ConfigError("not a well-formed control-plane log entry")
    if entry["doc"] is not None and not isinstance(entry["doc"], dict):
        raise ConfigError("not a well-formed control-plane log entry: doc")
    return entry

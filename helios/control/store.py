"""Local control-plane objects, each one file, sealed with AES-256-GCM.

An object is ``(kind, id) -> JSON document``. With encryption on, a file is
``b"HLC1" | nonce(12) | AES-256-GCM({"id", "doc"}, aad = kind/name)`` where
its name is an HMAC of ``kind/id``: neither names nor contents appear in
plaintext, and a file moved to another name or kind fails authentication.
With ``none`` it is ``b"HLC0" | JSON`` under a readable name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helios.errors import ConfigError
from helios.storage.fsutil import write_atomic

__all__ = ["ControlStore"]

_SEALED = b"HLC1"
_PLAIN = b"HLC0"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class ControlStore:
    def __init__(self, directory: Path, key: bytes, encryption: str) -> None:
        self.directory = directory
        self.encryption = encryption
        self._key = key
        self._aead = AESGCM(key[:32]) if encryption == "aes-256-gcm" else None

    def _name(self, kind: str, object_id: str) -> str:
        if self._aead is not None:
            return hmac.new(self._key, f"{kind}/{object_id}".encode(), hashlib.sha256).hexdigest()[:40]
        if _SAFE.match(object_id):
            return object_id
        return "x" + hashlib.sha256(object_id.encode()).hexdigest()[:40]

    def _path(self, kind: str, object_id: str) -> Path:
        return self.directory / kind / f"{self._name(kind, object_id)}.obj"

    def _seal(self, kind: str, object_id: str, doc: dict[str, Any]) -> bytes:
        body = orjson.dumps({"id": object_id, "doc": doc})
        if self._aead is None:
            return _PLAIN + body
        nonce = os.urandom(12)
        aad = f"{kind}/{self._name(kind, object_id)}".encode()
        return _SEALED + nonce + self._aead.encrypt(nonce, body, aad)

    def _unseal(self, kind: str, path: Path, data: bytes) -> tuple[str, dict[str, Any]]:
        magic = data[:4]
        if magic == _PLAIN and self._aead is None:
            record = orjson.loads(data[4:])
        elif magic == _SEALED and self._aead is not None:
            try:
                body = self._aead.decrypt(data[4:16], data[16:], f"{kind}/{path.stem}".encode())
            except InvalidTag:
                raise ConfigError(f"{path} cannot be decrypted with this control key") from None
            record = orjson.loads(body)
            if self._name(kind, record["id"]) != path.stem:
                raise ConfigError(f"{path} does not hold the object its name says")
        elif magic in (_PLAIN, _SEALED):
            stored = "encrypted" if magic == _SEALED else "unencrypted"
            raise ConfigError(f"{path} is stored {stored} but the encryption mode is {self.encryption}")
        else:
            raise ConfigError(f"{path} is not a control-plane object")
        return record["id"], record["doc"]

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        path = self._path(kind, object_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return self._unseal(kind, path, data)[1]

    def put(self, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        path = self._path(kind, object_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self._seal(kind, object_id, doc))

    def delete(self, kind: str, object_id: str) -> bool:
        try:
            self._path(kind, object_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """Every ``(id, doc)`` of a kind, in no particular order."""
        directory = self.directory / kind
        if not directory.is_dir():
            return []
        return [self._unseal(kind, path, path.read_bytes()) for path in directory.glob("*.obj")]

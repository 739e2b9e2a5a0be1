"""Keys and keyed hashes shared by every zone: a versioned secret that never prints, HMAC-SHA-256, 63-bit ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from eds_network.core.errors import EdsError

MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Key:
    """A secret key with its version. `repr` never shows the secret."""

    secret: bytes
    version: str
    name: str

    def __repr__(self) -> str:
        return f"Key(name={self.name!r}, version={self.version!r})"

    @classmethod
    def from_secret(cls, name: str, text: str, version: str) -> Key:
        """A key as stored in a connection's password: hex (embedded stack) or base64 (docker-compose)."""
        text = text.strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            try:
                secret = base64.b64decode(text, validate=True)
            except ValueError:
                raise EdsError(f"key {name!r} (version {version}) is neither hex nor base64") from None
        if len(secret) < 32:
            raise EdsError(f"key {name!r} (version {version}) is shorter than 256 bits")
        return cls(secret, version, name)


def hmac256(key: Key, message: str | bytes) -> bytes:
    if isinstance(message, str):
        message = message.encode()
    return hmac.new(key.secret, message, hashlib.sha256).digest()


def id63(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") & MASK63 or 1

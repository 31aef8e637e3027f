"""API keys of the admin HTTP API (pure): their format, their hash and who they act for.

A key reads ``cg_<id>_<secret>``: the id (10 lower base32 characters) names the stored row, the
secret (32 characters, 160 bits) is kept only as its SHA-256. A plain hash suffices (no scrypt):
the secret is random and long, so there is nothing to brute-force, and every API request checks
one. Randomness is passed in, so this module stays free of I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime

from ledger.errors import InvalidApiKey

KEY_PREFIX = "cg"
ID_BYTES = 5
SECRET_BYTES = 20
RANDOM_BYTES = ID_BYTES + SECRET_BYTES
_KEY_PATTERN = re.compile(r"^cg_([a-z2-7]{8})_([a-z2-7]{32})$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key: whom it acts for (a client, or the operator when ``client_id`` is None)."""

    id: str
    client_id: str | None
    label: str
    created_at: datetime
    secret_hash: bytes = b""
    revoked_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the key is an operator key (sees every client)."""
        return self.client_id is None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: the id and hash to store, the full key to show once."""

    id: str
    secret_hash: bytes
    token: str


def _b32(raw: bytes) -> str:
    """Lower-case base32 without padding."""
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def hash_secret(secret: str) -> bytes:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_key(random: bytes) -> NewKey:
    """A key made from ``random`` (exactly RANDOM_BYTES bytes from a CSPRNG)."""
    if len(random) != RANDOM_BYTES:
        raise ValueError(f"an API key needs {RANDOM_BYTES} random bytes")
    key_id, secret = _b32(random[:ID_BYTES]), _b32(random[ID_BYTES:])
    return NewKey(key_id, hash_secret(secret), f"{KEY_PREFIX}_{key_id}_{secret}")


def parse_key(token: str) -> tuple[str, str]:
    """(id, secret) of a presented key; raises InvalidApiKey when it is not shaped like one."""
    match = _KEY_PATTERN.fullmatch(token.strip())
    if match is None:
        raise InvalidApiKey("not an API key")
    return match.group(1), match.group(2)


def check_key(stored: ApiKey, secret: str, now: datetime) -> ApiKey:
    """``stored`` when ``secret`` matches it and it is not revoked; else InvalidApiKey."""
    if not hmac.compare_digest(stored.secret_hash, hash_secret(secret)):
        raise InvalidApiKey("API key does not match")
    if stored.revoked_at is not None and stored.revoked_at <= now:
        raise InvalidApiKey("API key revoked")
    return stored

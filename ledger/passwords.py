"""SMTP/API credential hashing with a slow KDF (scrypt from the standard library)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt parameters per the OWASP password storage cheat sheet (n=2^17 would cost 128 MiB per
# check; 2^14 with r=8 keeps AUTH under ~50 ms while staying memory-hard).
_N, _R, _P = 2**14, 8, 1


def generate_password() -> str:
    """A random password for a new client (shown once, never stored in clear).

    Never starts with ``-``: operators paste it into command lines (``swaks --auth-password``,
    ``curl -u``), where a leading dash reads as an option.
    """
    while True:
        password = secrets.token_urlsafe(24)
        if not password.startswith("-"):
            return password


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Return ``scrypt$N$r$p$salt$hash`` for ``password``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a stored hash in constant time; malformed hashes never match."""
    try:
        algo, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if algo != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)

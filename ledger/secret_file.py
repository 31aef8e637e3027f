"""The secret file: the pepper for subject keys and the token signing keys (JSON, mode 0600)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import SecretError


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secrets passed into the pure core; never logged, never printed."""

    pepper: bytes
    token_keys: dict[int, bytes]
    current_key: int

    def __repr__(self) -> str:
        """Hide the values so a stray log line cannot leak them."""
        return f"Secrets(keys={sorted(self.token_keys)}, current={self.current_key})"


def _write_private(path: Path, data: dict[str, object]) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _encode(value: Secrets) -> dict[str, object]:
    """The JSON form of a :class:`Secrets`."""
    return {
        "pepper": value.pepper.hex(),
        "token_keys": {str(kid): key.hex() for kid, key in value.token_keys.items()},
        "current_key": value.current_key,
    }


def create_secrets(path: Path) -> bool:
    """Create a fresh secret file at ``path`` unless one exists; return whether one was created."""
    if path.exists():
        return False
    fresh = Secrets(secrets.token_bytes(32), {1: secrets.token_bytes(32)}, 1)
    _write_private(path, _encode(fresh))
    return True


def load_secrets(path: Path) -> Secrets:
    """Read the secret file, raising :class:`SecretError` with a clear reason when it is unusable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        keys = {int(kid): bytes.fromhex(key) for kid, key in raw["token_keys"].items()}
        loaded = Secrets(bytes.fromhex(raw["pepper"]), keys, int(raw["current_key"]))
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist: run `consentgate init`") from None
    except PermissionError:
        raise SecretError(f"secret file {path} is not readable by this user") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SecretError(f"secret file {path} is malformed ({type(exc).__name__})") from None
    if len(loaded.pepper) < 16 or loaded.current_key not in keys:
        raise SecretError(f"secret file {path} is malformed (short pepper or no current key)")
    return loaded


def rotate_token_key(path: Path) -> int:
    """Add a new token signing key and make it current; old keys keep verifying. Returns its id."""
    current = load_secrets(path)
    new_id = max(current.token_keys) + 1
    if new_id > 255:
        raise SecretError("too many token keys: remove retired ones from the secret file")
    keys = {**current.token_keys, new_id: secrets.token_bytes(32)}
    _write_private(path, _encode(Secrets(current.pepper, keys, new_id)))
    return new_id

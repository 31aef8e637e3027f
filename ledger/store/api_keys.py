"""Stored API keys: create (the full key is returned once), authenticate, list, revoke."""

from __future__ import annotations

import secrets
from datetime import datetime

from ledger.api_keys import RANDOM_BYTES, ApiKey, check_key, new_key, parse_key
from ledger.errors import InvalidApiKey, UnknownApiKey
from ledger.store.database import Database, Row, from_db_time, to_db_time
from ledger.store.ledger_store import SqlLedgerStore

_COLUMNS = "id, client_id, label, created_at, secret_hash, revoked_at"


def _key_from_row(row: Row) -> ApiKey:
    """An :class:`ApiKey` from a row of ``_COLUMNS``."""
    created = from_db_time(row[3])
    assert created is not None
    return ApiKey(row[0], row[1], row[2], created, bytes(row[4]), from_db_time(row[5]))


class ApiKeyStore:
    """The ``api_keys`` table."""

    def __init__(self, store: SqlLedgerStore) -> None:
        """Keys live beside the clients they belong to."""
        self.store = store
        self.db: Database = store.db

    async def create(self, client_id: str | None, label: str, now: datetime) -> tuple[ApiKey, str]:
        """A new key for ``client_id`` (None: an operator key); returns it and the full key to show once."""
        if client_id is not None:
            await self.store.get_client(client_id)
        made = new_key(secrets.token_bytes(RANDOM_BYTES))
        await self.db.execute(
            "INSERT INTO api_keys (id, client_id, label, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            made.id,
            client_id,
            label,
            made.secret_hash,
            to_db_time(now),
        )
        return ApiKey(made.id, client_id, label, now, made.secret_hash), made.token

    async def authenticate(self, token: str, now: datetime) -> ApiKey:
        """The key ``token`` presents; InvalidApiKey for a malformed, unknown, wrong or revoked one."""
        key_id, secret = parse_key(token)
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise InvalidApiKey("unknown API key")
        return check_key(_key_from_row(row), secret, now)

    async def list(self, client_id: str | None = None) -> list[ApiKey]:
        """Every key (or one client's), oldest first; hashes included, secrets never stored."""
        if client_id is None:
            rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        else:
            rows = await self.db.fetch(
                f"SELECT {_COLUMNS} FROM api_keys WHERE client_id = $1 ORDER BY created_at, id", client_id
            )
        return [_key_from_row(row) for row in rows]

    async def revoke(self, key_id: str, now: datetime) -> ApiKey:
        """Revoke ``key_id`` from ``now`` on (revoking twice keeps the first time)."""
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise UnknownApiKey(f"no API key {key_id!r}")
        key = _key_from_row(row)
        if key.revoked_at is not None:
            return key
        await self.db.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1", key_id, to_db_time(now))
        return ApiKey(key.id, key.client_id, key.label, key.created_at, key.secret_hash, now)

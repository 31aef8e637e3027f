"""API keys: the pure format and hash, and the stored keys on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from conftest import NOW

from ledger.api_keys import RANDOM_BYTES, ApiKey, check_key, hash_secret, new_key, parse_key
from ledger.errors import InvalidApiKey, UnknownApiKey, UnknownClient
from ledger.models import Client
from ledger.store import SqlLedgerStore
from ledger.store.api_keys import ApiKeyStore


def test_new_key_round_trips_through_parse() -> None:
    """A made key parses back into its id and a secret whose hash is the stored one."""
    made = new_key(secrets.token_bytes(RANDOM_BYTES))
    key_id, secret = parse_key(made.token)
    assert key_id == made.id
    assert hash_secret(secret) == made.secret_hash
    assert made.token.startswith("cg_") and len(made.token) == 3 + 8 + 1 + 32


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "cg_",
        "Bearer cg_abc",
        "cg_aaaaaaaa_" + "a" * 31,
        "cg_AAAAAAAA_" + "a" * 32,
        "xx_aaaaaaaa_" + "a" * 32,
    ],
)
def test_malformed_keys_are_refused(presented: str) -> None:
    """Anything not shaped like a key is InvalidApiKey, before any lookup."""
    with pytest.raises(InvalidApiKey):
        parse_key(presented)


def test_new_key_needs_exactly_enough_randomness() -> None:
    """Too little randomness is a programming error, not a weak key."""
    with pytest.raises(ValueError):
        new_key(b"\x00" * (RANDOM_BYTES - 1))


async def test_stored_key_authenticates_until_revoked(store: SqlLedgerStore) -> None:
    """Create → authenticate → revoke → refused; the secret is never stored."""
    await store.add_client(Client("acme", "Acme"), NOW)
    keys = ApiKeyStore(store)
    key, token = await keys.create("acme", "crm", NOW)
    assert (await keys.authenticate(token, NOW)).client_id == "acme"
    _, secret = parse_key(token)
    stored = await store.db.fetch("SELECT * FROM api_keys")
    assert all(secret not in str(value) for row in stored for value in row)
    revoked = await keys.revoke(key.id, NOW + timedelta(hours=1))
    assert revoked.revoked_at == NOW + timedelta(hours=1)
    assert (await keys.authenticate(token, NOW)).id == key.id  # before the revocation time
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(token, NOW + timedelta(hours=2))


async def test_wrong_secret_and_unknown_ids_are_refused(store: SqlLedgerStore) -> None:
    """A known id with another secret, or an unknown id, is InvalidApiKey; unknown ids cannot be revoked."""
    keys = ApiKeyStore(store)
    key, token = await keys.create(None, "ops", NOW)
    assert (await keys.authenticate(token, NOW)).is_admin
    forged = f"cg_{key.id}_{'a' * 32}"
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(forged, NOW)
    with pytest.raises(InvalidApiKey):
        await keys.authenticate("cg_aaaaaaaa_" + "b" * 32, NOW)
    with pytest.raises(UnknownApiKey):
        await keys.revoke("aaaaaaaa", NOW)


async def test_keys_need_an_existing_client_and_list_by_client(store: SqlLedgerStore) -> None:
    """A key for an unknown client is refused; list filters by client and keeps revoked keys."""
    keys = ApiKeyStore(store)
    with pytest.raises(UnknownClient):
        await keys.create("nobody", "", NOW)
    await store.add_client(Client("acme", "Acme"), NOW)
    a, _ = await keys.create("acme", "one", NOW)
    b, _ = await keys.create(None, "ops", NOW + timedelta(seconds=1))
    await keys.revoke(a.id, NOW)
    assert [k.id for k in await keys.list()] == [a.id, b.id]
    assert [(k.id, k.revoked_at) for k in await keys.list("acme")] == [(a.id, NOW)]


def test_check_key_compares_the_hash() -> None:
    """check_key accepts the right secret only."""
    made = new_key(bytes(range(RANDOM_BYTES)))
    _, secret = parse_key(made.token)
    stored = ApiKey(made.id, None, "", NOW, made.secret_hash)
    assert check_key(stored, secret, NOW) is stored
    with pytest.raises(InvalidApiKey):
        check_key(stored, "b" * 32, NOW)

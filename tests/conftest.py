"""Shared fixtures: a migrated ledger store on SQLite always, and on PostgreSQL when configured.

Set TEST_DATABASE_URL (``postgresql://postgres@127.0.0.1:5432/test``) to run every store test on
PostgreSQL too; each test gets its own schema, dropped afterwards. `.ci/run` sets it whenever a
server answers, so those tests are never silently skipped there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore, open_store
from ledger.store.migrate import migrate

PG_URL = os.environ.get("TEST_DATABASE_URL", "")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)] if PG_URL else ["sqlite"]

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def make_store(backend: str, tmp_path: Path) -> tuple[SqlLedgerStore, str, str | None]:
    """Open and migrate a fresh store; returns (store, url, schema)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        store = await open_store(url)
        await migrate(store.db)
        return store, url, None
    import asyncpg

    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    store = await open_store(PG_URL, schema=schema)
    await migrate(store.db)
    return store, PG_URL, schema


async def drop_schema(schema: str | None) -> None:
    """Remove a PostgreSQL test schema."""
    if schema is None:
        return
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name a store test runs on."""
    return str(request.param)


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[SqlLedgerStore]:
    """A migrated, empty ledger store on the parametrised backend."""
    opened, _url, schema = await make_store(backend, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
        await drop_schema(schema)


@pytest.fixture
def test_secrets() -> Secrets:
    """Fresh secrets for one test."""
    return Secrets(secrets.token_bytes(32), {1: secrets.token_bytes(32)}, 1)


@pytest.fixture
def service(store: SqlLedgerStore, test_secrets: Secrets) -> LedgerService:
    """The ledger use cases over the test store."""
    return LedgerService(store, test_secrets.pepper)

"""`db migrate` run by several nodes at once: every migration applied exactly once, no runner fails."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from conftest import PG_URL, drop_schema

from ledger.store import open_store
from ledger.store.migrate import available, migrate, pending


async def test_concurrent_migrations_apply_each_once(backend: str, tmp_path: Path) -> None:
    """Four stores migrating one empty database together all succeed; each version is recorded once."""
    schema = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        import asyncpg

        url, schema = PG_URL, f"t_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
            # The version table exists before the race, as after any earlier `db migrate`.
            await conn.execute(
                f"CREATE TABLE {schema}.schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at BIGINT NOT NULL)"
            )
        finally:
            await conn.close()
    stores = [await open_store(url, schema=schema) for _ in range(4)]
    try:
        if backend == "sqlite":
            await pending(stores[0].db)  # creates the version table, as an earlier run would have
        results = await asyncio.gather(*(migrate(s.db) for s in stores))
        versions = [int(r[0]) for r in await stores[0].db.fetch("SELECT version FROM schema_version")]
        assert sorted(versions) == [m.version for m in available(stores[0].db.dialect)]
        assert sum(len(applied) for applied in results) == len(versions)
        assert await pending(stores[0].db) == []
    finally:
        for store in stores:
            await store.close()
        await drop_schema(schema)

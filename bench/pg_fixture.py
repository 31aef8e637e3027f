"""The relay benchmark's ledger on PostgreSQL: a fresh database with the cached SQLite fixture copied in.

``python -m bench relay --database postgresql`` creates ``cg_bench_<random>`` on
``$BENCH_PG_URL`` (default: ``$TEST_DATABASE_URL``, else the local server of the README), migrates
it with the project's own migrations, copies every table of the SQLite fixture with ``COPY`` (the
same rows, keys and secret), and drops the database when the benchmark exits.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 200_000


def admin_url() -> str:
    """The server the benchmark database is created on."""
    return os.environ.get("BENCH_PG_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL


def copy_to_postgres(fixture: Path) -> str:
    """Create, migrate and fill a database from ``fixture``; its URL (dropped at exit)."""
    base = admin_url()
    name = f"cg_bench_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    started = time.perf_counter()
    rows = asyncio.run(_create_and_fill(base, name, url, fixture))
    atexit.register(lambda: asyncio.run(_drop(base, name)))
    print(f"copied the fixture to PostgreSQL {name} ({rows:,} rows in {time.perf_counter() - started:.1f}s)")
    return url


async def _create_and_fill(base: str, name: str, url: str, fixture: Path) -> int:
    """CREATE DATABASE, run the migrations, COPY each fixture table; the number of rows copied."""
    import asyncpg

    from ledger.store import open_store
    from ledger.store.migrate import migrate

    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    store = await open_store(url)
    try:
        await migrate(store.db)
    finally:
        await store.close()
    source = sqlite3.connect(fixture)
    tables = [
        row[0]
        for row in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name <> 'schema_version' ORDER BY name <> 'clients', name"
        )
    ]
    conn = await asyncpg.connect(url)
    copied = 0
    try:
        for table in tables:
            cursor = source.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            while batch := cursor.fetchmany(BATCH):
                await conn.copy_records_to_table(table, records=batch, columns=columns)
                copied += len(batch)
        await _advance_sequences(conn)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
        source.close()
    return copied


async def _advance_sequences(conn: Any) -> None:
    """Move every id sequence past the ids COPY wrote, so the gateway's inserts do not collide."""
    for table, column in await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
    ):
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        )


async def _drop(base: str, name: str) -> None:
    """Remove the benchmark database."""
    import asyncpg

    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()

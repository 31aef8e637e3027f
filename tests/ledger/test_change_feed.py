"""The change feed: a commit by another connection (process, node) reaches subscribers within 1 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from conftest import NOW, PG_URL, drop_schema, make_store

from ledger.identity import identify
from ledger.models import Reason
from ledger.store import open_store
from ledger.store.changes import ChangeFeed

PEPPER = b"p" * 32


async def wait_for(seen: list[str | None], wanted: set[str | None], within: float = 1.0) -> float:
    """Seconds until ``seen`` holds one of ``wanted`` (fails after ``within`` seconds)."""
    start = time.monotonic()
    while not wanted & set(seen):
        assert time.monotonic() - start < within, f"no change reported within {within} s: {seen}"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_a_commit_elsewhere_reaches_subscribers(backend: str, tmp_path: Path) -> None:
    """An unsubscribe written through another connection is reported within 1 s (table named on PG)."""
    store, url, schema = await make_store(backend, tmp_path)
    other = await open_store(url, schema=schema)  # another process or node, as far as the feed knows
    feed = ChangeFeed(store.db, poll_seconds=0.1)
    seen: list[str | None] = []
    feed.subscribe(seen.append)
    try:
        await feed.start()
        await asyncio.wait_for(feed.listening.wait(), 5)
        await asyncio.sleep(0.3)  # let the start-up "anything may have changed" pass
        seen.clear()
        await other.suppress("global", identify(PEPPER, "a@example.org"), Reason.UNSUBSCRIBED, "test", NOW)
        wanted: set[str | None] = {"suppressions"} if backend == "postgresql" else {None}
        assert await wait_for(seen, wanted) < 1.0
        seen.clear()
        await other.db.execute("UPDATE outbox SET attempts = attempts + 1")
        await asyncio.sleep(0.4)
        if backend == "postgresql":  # untracked tables notify nothing
            assert seen == []
    finally:
        await feed.stop()
        await other.close()
        await store.close()
        await drop_schema(schema)


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL only: SQLite polls a file, no connection to lose")
async def test_listener_reconnects_after_losing_its_connection(tmp_path: Path) -> None:
    """PostgreSQL: the LISTEN connection killed server-side is replaced; changes still arrive."""
    store, _url, schema = await make_store("postgresql", tmp_path)
    feed = ChangeFeed(store.db, poll_seconds=0.1)
    seen: list[str | None] = []
    feed.subscribe(seen.append)
    try:
        await feed.start()
        await asyncio.wait_for(feed.listening.wait(), 5)
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        seen.clear()
        await wait_for(seen, {None}, within=3)  # told "anything may have changed" while deaf
        await asyncio.wait_for(feed.listening.wait(), 5)
        seen.clear()
        await store.suppress("global", identify(PEPPER, "b@example.org"), Reason.UNSUBSCRIBED, "t", NOW)
        await wait_for(seen, {"suppressions"})
    finally:
        await feed.stop()
        await store.close()
        await drop_schema(schema)

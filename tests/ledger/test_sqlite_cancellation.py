"""The SQLite driver stays usable when a task is cancelled in the middle of a transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ledger.store.sqlite import SqliteDatabase


async def test_cancelled_transactions_never_leave_one_open(tmp_path: Path) -> None:
    """Cancelling writers at every point of BEGIN…COMMIT leaves the connection clean for the next one."""
    db = await SqliteDatabase.open(str(tmp_path / "c.db"))
    try:
        await db.execute("CREATE TABLE t (n INTEGER)")

        async def writer(n: int) -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (n) VALUES ($1)", n)

        for n in range(200):
            task = asyncio.create_task(writer(n))
            # Cancel after 0..3 loop turns: before, during and after BEGIN, the INSERT and COMMIT.
            for _ in range(n % 4):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await writer(-1)  # would raise "cannot start a transaction within a transaction"
        assert await db.fetchval("SELECT COUNT(*) FROM t WHERE n = -1") == 1
    finally:
        await db.close()

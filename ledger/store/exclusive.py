"""One runner at a time across every node: for periodic jobs such as the daily retention purge.

On PostgreSQL a session-level advisory lock, held on a dedicated connection for the job's
duration, lets exactly one process of all the nodes sharing the database run the job; the others
are told to skip this round. On SQLite there is one machine, and ``serve`` runs such jobs in its
worker 0 only, so the answer is always yes.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ledger.store.database import Database


@asynccontextmanager
async def exclusive(db: Database, job: str) -> AsyncIterator[bool]:
    """Whether this process holds ``job`` now (released when the block ends, or if it dies)."""
    open_session = getattr(db, "dedicated_connection", None)
    if db.dialect != "postgresql" or open_session is None:
        yield True
        return
    key = int.from_bytes(hashlib.sha256(job.encode("utf-8")).digest()[:8], "big", signed=True)
    conn = await open_session()
    try:
        yield bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
    finally:
        await conn.close()  # ending the session releases the lock

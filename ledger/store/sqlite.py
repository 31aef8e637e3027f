"""SQLite driver (aiosqlite, WAL): the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from ledger.errors import DatabaseUnavailable
from ledger.store.database import Database, Row, sqlite_placeholders

BUSY_TIMEOUT_MS = 5000


def split_script(script: str) -> list[str]:
    """Split a DDL script into statements (our migrations end each statement with ';' + newline)."""
    statements = []
    for chunk in script.split(";\n"):
        lines = [line for line in chunk.splitlines() if not line.strip().startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";")
        if statement:
            statements.append(statement)
    return statements


class SqliteDatabase:
    """One aiosqlite connection; a lock serialises transactions, as SQLite has one writer anyway."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        """Wrap an open connection (use :meth:`open`)."""
        self._conn = conn
        self._lock = asyncio.Lock()
        self._in_tx: asyncio.Task[Any] | None = None
        self.path = path
        self._reader: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        """Open (creating if needed) the database file at ``path`` in WAL mode."""
        if path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise DatabaseUnavailable(f"cannot open SQLite database {path}: no folder {parent}")
            # The ledger holds addresses, password hashes and DKIM keys: owner-only from the start
            # (SQLite gives its -wal and -shm files the database file's permissions).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only an OS crash or
            # power loss can lose the last transactions, which is Postfix's own trade-off too.
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            # Every delete overwrites the cells it frees: personal data removed by any path (an
            # erasure, the purge, a delivered outbox copy) is not left readable in free pages. The
            # cost falls on deletes only, which the relay's hot path does not do. Debian builds
            # SQLite with this on by default; other builds (and Python wheels) may not.
            await conn.execute("PRAGMA secure_delete = ON")
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open SQLite database {path}: {exc}") from None
        return cls(conn, path)

    def _mine(self) -> bool:
        """Whether the current task holds the transaction (statements then skip the lock)."""
        return self._in_tx is not None and self._in_tx is asyncio.current_task()

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Take the lock unless this task is inside its own transaction; map driver errors."""
        try:
            if self._mine():
                yield
            else:
                async with self._lock:
                    yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc) or "unable to open" in str(exc):
                raise DatabaseUnavailable(f"SQLite database unavailable: {exc}") from None
            raise

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one statement."""
        async with self._guard():
            await self._conn.execute(sqlite_placeholders(sql), args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""
        async with self._guard():
            await self._conn.executemany(sqlite_placeholders(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query and return every row."""
        async with self._guard():
            return list(await self._conn.execute_fetchall(sqlite_placeholders(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run a query and return its first row, or None."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query and return the first column of its first row, or None."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def fetch_committed(self, sql: str, *args: Any) -> list[Row]:
        """Run a short query on the latest committed state, synchronously, without the lock.

        For the gateway's per-recipient read (DESIGN §7: ~15 µs on the loop instead of ~146 µs
        through aiosqlite's thread, and no wait behind the event log's write transactions). A
        separate read-only connection in autocommit mode: every statement sees everything
        committed by any connection or process (WAL readers never wait for the writer), so a
        fresh unsubscribe is seen at once. Inside this task's own transaction, or on an
        in-memory database, it falls back to :meth:`fetch` (which sees uncommitted own writes).
        """
        if self._mine() or self.path == ":memory:":
            return await self.fetch(sql, *args)
        try:
            if self._reader is None:
                self._reader = self._open_reader()
            return self._reader.execute(sqlite_placeholders(sql), args).fetchall()
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"SQLite database unavailable: {exc}") from None

    def _open_reader(self) -> sqlite3.Connection:
        """The read-only connection of :meth:`fetch_committed` (opened on first use)."""
        uri = f"file:{quote(str(Path(self.path).resolve()))}?mode=ro"
        reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        # It runs on the event loop: never wait long (WAL readers only wait during recovery).
        reader.execute("PRAGMA busy_timeout = 200")
        return reader

    async def iterate(self, sql: str, *args: Any, batch: int = 1000) -> AsyncIterator[Row]:
        """Stream rows in batches (each batch read under the lock, so writers interleave)."""
        cursor = await self._conn.execute(sqlite_placeholders(sql), args)
        try:
            while True:
                rows = await cursor.fetchmany(batch)
                if not rows:
                    return
                for row in rows:
                    yield row
        finally:
            await cursor.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""
        if self._mine():
            yield self
            return
        async with self._guard():
            self._in_tx = asyncio.current_task()
            try:
                await self._control("BEGIN IMMEDIATE")
                yield self
                await self._control("COMMIT")
            except BaseException:
                # Ask the connection, not the code path: a cancelled BEGIN or a failed COMMIT
                # can leave a transaction open that the next BEGIN would trip over.
                if self._conn.in_transaction:
                    await self._control("ROLLBACK")
                raise
            finally:
                self._in_tx = None

    async def _control(self, statement: str) -> None:
        """Run BEGIN/COMMIT/ROLLBACK to completion even when the caller is cancelled.

        aiosqlite executes the statement in its own thread whatever happens to the awaiting
        task; returning before it finished would leave our idea of the connection's state
        (in a transaction or not) out of step with SQLite's.
        """
        done = asyncio.ensure_future(self._conn.execute(statement))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await done
            raise

    async def run_script(self, script: str) -> None:
        """Run each statement of ``script`` in one transaction."""
        async with self.transaction() as tx:
            for statement in split_script(script):
                await tx.execute(statement)

    async def close(self) -> None:
        """Close the connections."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._conn.close()

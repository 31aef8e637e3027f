"""PostgreSQL driver (asyncpg pool): several gateway nodes share one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ledger.errors import DatabaseUnavailable
from ledger.store.database import Database, Row

CONNECT_TIMEOUT_S = 5.0

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    # A connection the server terminated can surface while the pool resets it on release.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
)


class _Conn:
    """Statement helpers shared by the pool and a transaction's connection."""

    dialect = "postgresql"

    def __init__(self, target: Any) -> None:
        """``target`` is an asyncpg pool or connection (both have the same query methods)."""
        self._target = target

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Turn a lost or refused connection into :class:`DatabaseUnavailable`."""
        try:
            yield
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"PostgreSQL unavailable: {exc}") from None

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one statement."""
        async with self._guard():
            await self._target.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""
        async with self._guard():
            await self._target.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query and return every row."""
        async with self._guard():
            return list(await self._target.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run a query and return its first row, or None."""
        async with self._guard():
            row: Row | None = await self._target.fetchrow(sql, *args)
            return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query and return the first column of its first row, or None."""
        async with self._guard():
            return await self._target.fetchval(sql, *args)

    async def close(self) -> None:
        """A transaction's connection goes back to the pool when its block ends: nothing to do."""

    async def run_script(self, script: str) -> None:
        """Run a multi-statement script in one transaction."""
        async with self.transaction() as tx:
            await tx.execute(script)

    async def iterate(self, sql: str, *args: Any, batch: int = 1000) -> AsyncIterator[Row]:
        """Stream rows through a server-side cursor."""
        async with self.transaction() as tx:
            assert isinstance(tx, _Conn)
            async for row in tx._target.cursor(sql, *args, prefetch=batch):
                yield row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """A transaction on one pooled connection (nested calls reuse it)."""
        if isinstance(self._target, asyncpg.Connection):
            async with self._guard(), self._target.transaction():
                yield self
            return
        async with self._guard(), self._target.acquire() as conn, conn.transaction():
            yield _Conn(conn)


class PostgresDatabase(_Conn):
    """An asyncpg pool; ``schema`` (tests) confines every statement to one schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Wrap an open pool (use :meth:`open`)."""
        super().__init__(pool)
        self.pool = pool
        # Where the pool connects, for connections that must live outside it (LISTEN).
        self._url = ""
        self._server_settings: dict[str, str] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 30.0,
    ) -> PostgresDatabase:
        """Connect a pool to ``url``, failing fast with :class:`DatabaseUnavailable`."""
        settings = {"search_path": schema} if schema else None
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=settings,
                command_timeout=command_timeout,
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
        db = cls(pool)
        db._url, db._server_settings = url, settings
        return db

    async def dedicated_connection(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (a LISTEN must outlive any one statement)."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._url, timeout=CONNECT_TIMEOUT_S, server_settings=self._server_settings
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
        return conn

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()

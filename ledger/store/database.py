"""The driver seam: one small async interface over aiosqlite and asyncpg.

The ledger's SQL is written once, in PostgreSQL's ``$1`` placeholder style (SQLite understands
the same numbered parameters as ``?1``), so both backends run the same statements and the
store's logic exists in one place.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

Row = Sequence[Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PLACEHOLDER = re.compile(r"\$(\d+)")


def to_db_time(moment: datetime) -> int:
    """Encode an aware datetime as integer microseconds since the epoch (exact, sortable)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to the ledger; pass an aware UTC datetime")
    return (moment - EPOCH) // _MICROSECOND


def from_db_time(value: int | None) -> datetime | None:
    """Decode :func:`to_db_time`; ``None`` stays ``None``."""
    return None if value is None else EPOCH + value * _MICROSECOND


def sqlite_placeholders(sql: str) -> str:
    """Rewrite ``$n`` placeholders into SQLite's ``?n``."""
    return _PLACEHOLDER.sub(r"?\1", sql)


def in_list(dialect: str, column: str, first: int, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """``column`` is one of ``values``, as SQL with parameters from ``$first`` on, and those parameters.

    SQLite takes one numbered parameter per value, PostgreSQL one array (``= ANY``), which plans
    and binds far faster. ``column`` is an SQL expression of the caller's, never input.
    """
    if dialect == "postgresql":
        return f"{column} = ANY(${first})", [list(values)]
    marks = ",".join(f"${first + i}" for i in range(len(values)))
    return f"{column} IN ({marks})", list(values)


class Database(Protocol):
    """What the store needs from a database connection (or a transaction on one)."""

    dialect: str

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one statement."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query and return every row."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run a query and return its first row, or None."""

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query and return the first column of its first row, or None."""

    def iterate(self, sql: str, *args: Any, batch: int = 1000) -> AsyncIterator[Row]:
        """Stream a query's rows without loading them all."""

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """A transaction: commits on success, rolls back on an exception."""

    async def run_script(self, script: str) -> None:
        """Run a multi-statement DDL script inside one transaction."""

    async def close(self) -> None:
        """Release every connection."""

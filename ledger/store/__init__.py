"""Storage adapters: the ledger on SQLite (embedded default) or PostgreSQL, picked by URL scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from ledger.errors import StoreError
from ledger.store.database import Database
from ledger.store.ledger_store import SqlLedgerStore

SUPPORTED_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL (relative paths stay relative)."""
    return url.removeprefix("sqlite:///") or ":memory:"


async def open_database(
    url: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    pool_min_size: int = 1,
    command_timeout: float = 30.0,
) -> Database:
    """Open the database named by ``url``; raises :class:`StoreError` for an unknown scheme.

    ``pool_size``, ``pool_min_size`` and ``command_timeout`` (seconds) apply to PostgreSQL only.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise StoreError(f"SQLite URLs look like sqlite:///path/to/file.db, not {url!r}")
        from ledger.store.sqlite import SqliteDatabase

        return await SqliteDatabase.open(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from ledger.store.postgresql import PostgresDatabase

        return await PostgresDatabase.open(
            url,
            schema=schema,
            min_size=min(pool_min_size, pool_size),
            max_size=pool_size,
            command_timeout=command_timeout,
        )
    raise StoreError(
        f"unknown database URL scheme {scheme!r} in {url!r}: use sqlite:///PATH or postgresql://…"
    )


async def open_store(
    url: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    pool_min_size: int = 1,
    command_timeout: float = 30.0,
) -> SqlLedgerStore:
    """Open the ledger store at ``url`` (the schema is not migrated here; see ``migrate``)."""
    db = await open_database(
        url, schema=schema, pool_size=pool_size, pool_min_size=pool_min_size, command_timeout=command_timeout
    )
    return SqlLedgerStore(db)


__all__ = ["Database", "SqlLedgerStore", "open_database", "open_store"]

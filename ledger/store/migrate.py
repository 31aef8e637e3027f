"""Forward-only numbered SQL migrations, one folder per dialect, tracked in ``schema_version``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from ledger.errors import SchemaOutdated
from ledger.store.database import Database, to_db_time

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered script."""

    version: int
    name: str
    sql: str


def available(dialect: str) -> list[Migration]:
    """Every migration shipped for ``dialect``, in order."""
    folder = resources.files("ledger.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def current_version(db: Database) -> int:
    """The highest applied migration (0 for an empty database)."""
    await db.execute(_VERSION_TABLE)
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))


async def pending(db: Database) -> list[Migration]:
    """Migrations not yet applied (by number, so one that lands after a higher one still runs)."""
    await db.execute(_VERSION_TABLE)
    applied = {int(row[0]) for row in await db.fetch("SELECT version FROM schema_version")}
    return [m for m in available(db.dialect) if m.version not in applied]


# Any fixed 64-bit number: the advisory lock that serialises `db migrate` across nodes.
_MIGRATE_LOCK = 0x636F6E73656E7401


async def migrate(db: Database) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return what was applied.

    Safe to run from several nodes at once: each migration's transaction first takes the
    migration lock (PostgreSQL: a transaction advisory lock; SQLite: BEGIN IMMEDIATE already
    serialises writers) and skips a migration another runner applied meanwhile.
    """
    applied = []
    for migration in await pending(db):
        async with db.transaction() as tx:
            if db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
            done = await tx.fetchval("SELECT 1 FROM schema_version WHERE version = $1", migration.version)
            if done:
                continue
            await tx.run_script(migration.sql)
            await tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                to_db_time(datetime.now(UTC)),
            )
        applied.append(migration)
    return applied


async def require_current(db: Database) -> None:
    """Raise :class:`SchemaOutdated` unless every shipped migration has been applied."""
    todo = await pending(db)
    if todo:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in todo)
        raise SchemaOutdated(
            f"the database schema is older than the code (pending: {names}): run `consentgate db migrate`"
        )

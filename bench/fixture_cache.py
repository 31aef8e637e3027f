"""The benchmarks' cached SQLite fixtures: where they live, how a build starts and ends.

A fixture takes seconds to minutes to build, so each is built once per machine under
``bench/.cache/`` and copied per run. Its file name carries the schema version (the newest
migration): a fixture built before a migration is never reused with the new code.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"


def schema_version() -> int:
    """The number of the newest SQLite migration shipped with the code."""
    from ledger.store.migrate import available

    return available("sqlite")[-1].version


def cached(stem: str) -> Path:
    """The cache path of fixture ``stem`` (its name versioned by the schema)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / f"{stem}-schema{schema_version()}.db"


def build_path(db: Path) -> Path:
    """Where ``db`` is built before it is renamed into place; leftovers of an interrupted build removed."""
    tmp = db.with_suffix(".building")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    return tmp


def bulk_connection(path: Path, cache_mb: int) -> sqlite3.Connection:
    """A connection for filling a throwaway file: no journal, no fsync, a big page cache."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(f"PRAGMA cache_size = -{cache_mb * 1024}")
    return conn


def finish(conn: sqlite3.Connection, tmp: Path, db: Path) -> None:
    """Gather the planner's statistics, switch to WAL as the gateway runs it, move into place."""
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    tmp.rename(db)

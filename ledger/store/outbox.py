"""The durable outbox: copies the upstream did not take at once, waiting for a retry.

Rows are claimed with a lease (``lease_owner``, ``lease_until``) in one atomic statement, so two
retry workers — in two processes or on two nodes — never send the same copy at the same time.
On PostgreSQL the claim skips rows another transaction is claiming (``FOR UPDATE SKIP LOCKED``);
on SQLite the single UPDATE statement holds the database's write lock for its duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.store.database import Database, Row, from_db_time, to_db_time

_COLUMNS = (
    "id, client_id, campaign_num, subject_key, mail_from, rcpt, message, attempts, "
    "next_attempt_at, created_at, last_error"
)


@dataclass(frozen=True, slots=True)
class OutboxCopy:
    """One rendered, signed copy waiting for the upstream (``id`` is 0 until stored)."""

    client_id: str
    campaign_num: int | None
    subject_key: bytes | None
    mail_from: str
    rcpt: str
    message: bytes
    attempts: int = 0
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    last_error: str = ""
    id: int = 0


def _copy_from_row(row: Row) -> OutboxCopy:
    """Build an :class:`OutboxCopy` from a row in ``_COLUMNS`` order."""
    return OutboxCopy(
        id=int(row[0]),
        client_id=row[1],
        campaign_num=None if row[2] is None else int(row[2]),
        subject_key=None if row[3] is None else bytes(row[3]),
        mail_from=row[4],
        rcpt=row[5],
        message=bytes(row[6]),
        attempts=int(row[7]),
        next_attempt_at=from_db_time(row[8]),
        created_at=from_db_time(row[9]),
        last_error=row[10],
    )


class OutboxStore:
    """Reads and writes of the ``outbox`` table, the same SQL on SQLite and PostgreSQL."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` (shared with the ledger store, which owns and closes it)."""
        self.db = db

    async def add(self, copies: Sequence[OutboxCopy], now: datetime, first_attempt_at: datetime) -> None:
        """Spool ``copies`` in one transaction: either every copy is durable or none is."""
        if not copies:
            return
        rows = [
            (
                c.client_id,
                c.campaign_num,
                c.subject_key,
                c.mail_from,
                c.rcpt,
                c.message,
                c.attempts,
                to_db_time(first_attempt_at),
                to_db_time(c.created_at or now),
                c.last_error,
            )
            for c in copies
        ]
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO outbox (client_id, campaign_num, subject_key, mail_from, rcpt, message, "
                "attempts, next_attempt_at, created_at, last_error) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                rows,
            )

    async def claim(self, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[OutboxCopy]:
        """Lease up to ``limit`` due copies to ``owner`` until ``lease_until`` and return them.

        A copy whose previous lease ran out (its worker died mid-send) is due again: that is the
        at-least-once side of "never lose a copy".
        """
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        rows = await self.db.fetch(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN ("
            "SELECT id FROM outbox WHERE next_attempt_at <= $3 AND lease_until <= $3 "
            f"ORDER BY next_attempt_at LIMIT $4{lock}) RETURNING {_COLUMNS}",
            owner,
            to_db_time(lease_until),
            to_db_time(now),
            limit,
        )
        return sorted((_copy_from_row(row) for row in rows), key=lambda c: c.id)

    async def complete(self, copy_id: int, owner: str) -> bool:
        """Remove a copy that was delivered (or given up); False if the lease was lost meanwhile."""
        gone = await self.db.fetch(
            "DELETE FROM outbox WHERE id = $1 AND lease_owner = $2 RETURNING id", copy_id, owner
        )
        return bool(gone)

    async def reschedule(
        self, copy_id: int, owner: str, next_attempt_at: datetime, error: str, attempts: int
    ) -> None:
        """Release the lease and set the next attempt after a temporary failure."""
        await self.db.execute(
            "UPDATE outbox SET attempts = $3, next_attempt_at = $4, last_error = $5, "
            "lease_owner = '', lease_until = 0 WHERE id = $1 AND lease_owner = $2",
            copy_id,
            owner,
            attempts,
            to_db_time(next_attempt_at),
            error[:500],
        )

    async def lease_owners(self) -> list[str]:
        """The owners of the leases currently held (live or lapsed)."""
        rows = await self.db.fetch("SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner <> ''")
        return [str(row[0]) for row in rows]

    async def release_leases(self, owner: str) -> None:
        """Make the copies leased to ``owner`` (a worker known to be dead) due again now."""
        await self.db.execute(
            "UPDATE outbox SET lease_owner = '', lease_until = 0 WHERE lease_owner = $1", owner
        )

    async def depth(self) -> int:
        """How many copies wait in the outbox."""
        return int(await self.db.fetchval("SELECT COUNT(*) FROM outbox"))

    async def all(self) -> list[OutboxCopy]:
        """Every waiting copy, oldest first (operators and tests; the outbox is small)."""
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM outbox ORDER BY id")
        return [_copy_from_row(row) for row in rows]

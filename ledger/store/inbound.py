"""Storage of the inbound-mail rules: soft-bounce scores and the complaint-rate guard's counts.

Written once in ``$1`` style for SQLite and PostgreSQL, over the same :class:`Database` as the
ledger (tables from migration 0005).
"""

from __future__ import annotations

from datetime import datetime

from ledger.bounce_rules import SoftBounce
from ledger.models import EventKind
from ledger.store.database import Database, from_db_time, to_db_time
from ledger.store.event_subjects import subject_events

_ENGAGEMENT = (str(EventKind.OPENED), str(EventKind.CLICKED))


class InboundStore:
    """Soft-bounce scores per (client, subject) and complaint-rate counts per client."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` (owned by the ledger store; this class never closes it)."""
        self.db = db

    # -- soft bounces --------------------------------------------------------------------------

    async def soft_bounces(self, client_id: str, subject_key: bytes) -> list[SoftBounce]:
        """The soft bounces on record for (client, subject), oldest first."""
        rows = await self.db.fetch(
            "SELECT at, campaign_num FROM soft_bounces WHERE client_id = $1 AND subject_key = $2 ORDER BY at",
            client_id,
            subject_key,
        )
        return [SoftBounce(from_db_time(row[0]) or _never(), int(row[1])) for row in rows]

    async def replace_soft_bounces(
        self, client_id: str, subject_key: bytes, kept: tuple[SoftBounce, ...]
    ) -> None:
        """Store exactly ``kept`` as the soft bounces of (client, subject) (pruning the rest)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM soft_bounces WHERE client_id = $1 AND subject_key = $2",
                client_id,
                subject_key,
            )
            if kept:
                await tx.executemany(
                    "INSERT INTO soft_bounces (client_id, subject_key, campaign_num, at) "
                    "VALUES ($1, $2, $3, $4)",
                    [(client_id, subject_key, b.campaign_num, to_db_time(b.at)) for b in kept],
                )

    async def clear_soft_bounces(self, client_id: str, subject_keys: list[bytes]) -> None:
        """Forget the soft bounces of these subjects for the client (a delivery was confirmed)."""
        if subject_keys:
            await self.db.executemany(
                "DELETE FROM soft_bounces WHERE client_id = $1 AND subject_key = $2",
                [(client_id, key) for key in subject_keys],
            )

    async def last_engagement(self, client_id: str, subject_key: bytes) -> datetime | None:
        """The latest open or click of the subject for the client: proof a copy got through."""
        of_subject, days = await subject_events(self.db, 1, 5)
        value = await self.db.fetchval(
            f"SELECT MAX(at) FROM events WHERE {of_subject} AND client_id = $2 AND kind IN ($3, $4)",
            subject_key,
            client_id,
            *_ENGAGEMENT,
            *days,
        )
        return from_db_time(None if value is None else int(value))

    # -- the complaint-rate guard --------------------------------------------------------------

    async def window_start(self, client_id: str) -> datetime | None:
        """When the client's guard window was last reset (by `client resume`), or None."""
        value = await self.db.fetchval(
            "SELECT window_start FROM complaint_guard WHERE client_id = $1", client_id
        )
        return from_db_time(None if value is None else int(value))

    async def reset_window(self, client_id: str, now: datetime) -> None:
        """Start counting the client's complaint rate afresh from ``now``."""
        await self.db.execute(
            "INSERT INTO complaint_guard (client_id, window_start) VALUES ($1, $2) "
            "ON CONFLICT (client_id) DO UPDATE SET window_start = excluded.window_start",
            client_id,
            to_db_time(now),
        )

    async def rate_counts(self, client_id: str, window: int, since: datetime | None) -> tuple[int, int]:
        """(complaints, delivered) over the client's last ``window`` delivered copies after ``since``.

        The complaints counted are those received since the oldest of those deliveries (or since
        ``since`` while fewer than ``window`` copies were delivered after it).
        """
        floor = 0 if since is None else to_db_time(since)
        row = await self.db.fetchrow(
            "SELECT COUNT(*), MIN(at) FROM (SELECT at FROM events WHERE client_id = $1 AND kind = $2 "
            "AND at >= $3 ORDER BY at DESC LIMIT $4) recent",
            client_id,
            str(EventKind.DELIVERED),
            floor,
            window,
        )
        delivered = int(row[0]) if row else 0
        start = floor if delivered < window or row is None or row[1] is None else max(floor, int(row[1]))
        complaints = await self.db.fetchval(
            "SELECT COUNT(*) FROM events WHERE client_id = $1 AND kind = $2 AND at >= $3",
            client_id,
            str(EventKind.COMPLAINED),
            start,
        )
        return int(complaints or 0), delivered


def _never() -> datetime:
    """Placeholder for a NOT NULL time column that read NULL (cannot happen by schema)."""
    raise ValueError("NULL in a NOT NULL time column")

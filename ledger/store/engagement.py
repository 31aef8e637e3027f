"""Interaction events from the link service (clicks, opens, unsubscribes) and engagement dates.

Written once in ``$1`` style for SQLite and PostgreSQL. What is stored is the minimum the design
allows: client, campaign, subject key, kind, link id, country, time — never an IP address or a
user agent (the schema has no column for either).
"""

from __future__ import annotations

from datetime import datetime

from ledger.store.database import Database, from_db_time, to_db_time
from ledger.store.ledger_store import InteractionEvent

_INSERT_EVENT = (
    "INSERT INTO events (client_id, campaign_num, subject_key, kind, reason, link_id, country, at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)

# A relationship row may not exist yet (suppression-only clients need no recorded consent):
# create it holding just the engagement date, which is all the inactivity rule needs. An older
# engagement (a late retry, clocks of two nodes) never moves the date backwards.
_TOUCH_ENGAGEMENT = (
    "INSERT INTO relationships (client_id, subject_key, last_engagement_at, changed_at) "
    "VALUES ($1, $2, $3, $3) ON CONFLICT (client_id, subject_key) DO UPDATE SET "
    "last_engagement_at = CASE WHEN relationships.last_engagement_at IS NULL "
    "OR relationships.last_engagement_at < excluded.last_engagement_at "
    "THEN excluded.last_engagement_at ELSE relationships.last_engagement_at END"
)


class EngagementStore:
    """Records what recipients did with a message, over a :class:`Database`."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` (shared with the ledger store; this class does not close it)."""
        self.db = db

    async def record(self, event: InteractionEvent, *, engagement: bool) -> None:
        """Append ``event``; when ``engagement``, also move the relationship's last engagement.

        Both happen in one transaction, so a click is either counted as engagement and recorded,
        or neither.
        """
        async with self.db.transaction() as tx:
            await tx.execute(
                _INSERT_EVENT,
                event.client_id,
                event.campaign_num,
                event.subject_key,
                str(event.kind),
                event.reason,
                event.link_id,
                event.country,
                to_db_time(event.at),
            )
            if engagement and event.subject_key is not None:
                await tx.execute(_TOUCH_ENGAGEMENT, event.client_id, event.subject_key, to_db_time(event.at))

    async def last_engagement(self, client_id: str, subject_key: bytes) -> datetime | None:
        """The last engagement of a (client, subject) relationship, or None."""
        value = await self.db.fetchval(
            "SELECT last_engagement_at FROM relationships WHERE client_id = $1 AND subject_key = $2",
            client_id,
            subject_key,
        )
        return from_db_time(None if value is None else int(value))

"""What the gateway writes per delivered copy, batched: subjects seen and relationships' send times.

Kept apart from :mod:`ledger.store.ledger_store` so the hot path's writes are one small module:
each call is one transaction with one ``executemany`` per table, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.identity import Identity
from ledger.store.database import Database, to_db_time


@dataclass(frozen=True, slots=True)
class Send:
    """A copy of ``client_id``'s campaign reached the upstream for ``subject_key`` at ``at``."""

    client_id: str
    subject_key: bytes
    at: datetime


class SendStore:
    """Batched writes of the subjects table and of ``relationships.first/last_sent_at``."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` (shared with the ledger store, which owns and closes it)."""
        self.db = db

    async def record(self, subjects: Sequence[Identity], sends: Sequence[Send], now: datetime) -> None:
        """Make sure every subject has a row (tokens resolve through it), then record the sends.

        A known subject keeps its row untouched: an erased address (NULL) stays erased.
        """
        if not subjects and not sends:
            return
        async with self.db.transaction() as tx:
            if subjects:
                await tx.executemany(
                    "INSERT INTO subjects (subject_key, address, restricted, created_at) "
                    "VALUES ($1, $2, 0, $3) ON CONFLICT (subject_key) DO NOTHING",
                    [(s.subject_key, s.address, to_db_time(now)) for s in _unique_subjects(subjects)],
                )
            if sends:
                await tx.executemany(
                    "INSERT INTO relationships (client_id, subject_key, first_sent_at, last_sent_at, "
                    "changed_at) VALUES ($1, $2, $3, $3, $3) ON CONFLICT (client_id, subject_key) "
                    "DO UPDATE SET last_sent_at = excluded.last_sent_at, "
                    "first_sent_at = COALESCE(relationships.first_sent_at, excluded.first_sent_at)",
                    [(s.client_id, s.subject_key, to_db_time(s.at)) for s in sorted(sends, key=_send_order)],
                )


def _unique_subjects(subjects: Sequence[Identity]) -> list[Identity]:
    """One row per key, in key order (a stable lock order on PostgreSQL: no deadlocks)."""
    return sorted({s.subject_key: s for s in subjects}.values(), key=lambda s: s.subject_key)


def _send_order(send: Send) -> tuple[str, bytes, datetime]:
    """Rows in primary-key order, then time (the last send of a key wins as last_sent_at)."""
    return (send.client_id, send.subject_key, send.at)

"""A subject's interaction events, found through the day-bucketed subject index.

``events`` is indexed by ``(at / BUCKET_US, subject_key)`` (migration 0011), not by
``subject_key`` alone. The retention purge deletes events oldest first. With a plain subject
index every deleted row dirtied a random page of an index as large as the table, and each
dirtied page is written again (WAL, ``secure_delete``): 12,600 rows/s over 10 M events. Bucketed
by day, the index pages one purge batch dirties are those of the day or two it covers.

The price is on the lookup by subject (access, erasure, rectification, the soft-bounce reset):
one index search per day between the oldest and newest event, ~400 searches with the 395-day
event retention, about a millisecond.
"""

from __future__ import annotations

from typing import Any

from ledger.store.database import Database, in_list

BUCKET_US = 86_400 * 1_000_000
# The index's expression, written exactly so: SQLite uses an expression index only for the same
# expression.
BUCKET = f"at / {BUCKET_US}"


async def subject_events(
    db: Database, key_param: int, first: int, *, alias: str = ""
) -> tuple[str, list[Any]]:
    """SQL selecting the events of the subject in ``$key_param``, with parameters from ``$first`` on.

    Read in the caller's transaction, so inside a write transaction on SQLite the days listed
    are exactly those holding events.
    """
    prefix = f"{alias}." if alias else ""
    row = await db.fetchrow(f"SELECT MIN(at) / {BUCKET_US}, MAX(at) / {BUCKET_US} FROM events")
    days = [] if row is None or row[0] is None else list(range(int(row[0]), int(row[1]) + 1))
    where, args = in_list(db.dialect, prefix + BUCKET, first, days)
    return f"{where} AND {prefix}subject_key = ${key_param}", args

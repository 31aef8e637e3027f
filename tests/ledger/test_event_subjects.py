"""A subject's events through the day-bucketed index: every one found, none of anyone else's."""

from __future__ import annotations

from datetime import timedelta

from conftest import NOW

from ledger.store import SqlLedgerStore
from ledger.store.database import to_db_time
from ledger.store.event_subjects import subject_events

ANN, BOB = b"a" * 32, b"b" * 32
DAY = timedelta(days=1)
# Day edges, a gap of days without events, the first and the last day of the table.
ANN_TIMES = [
    NOW - 400 * DAY,
    NOW.replace(hour=0, minute=0, second=0, microsecond=0) - 30 * DAY,
    NOW.replace(hour=23, minute=59, second=59, microsecond=999_999) - 30 * DAY,
    NOW - 2 * DAY,
    NOW + DAY,
]


async def _insert(store: SqlLedgerStore, key: bytes, at_values: list[int]) -> list[int]:
    """Insert one 'delivered' event per time for ``key``; their ids."""
    ids = []
    for at in at_values:
        row = await store.db.fetchrow(
            "INSERT INTO events (client_id, subject_key, kind, at) VALUES ('acme', $1, 'delivered', $2) RETURNING id",
            key,
            at,
        )
        assert row is not None
        ids.append(int(row[0]))
    return ids


async def _ids_of(store: SqlLedgerStore, key: bytes) -> list[int]:
    """The ids ``subject_events`` selects for ``key``."""
    where, days = await subject_events(store.db, 1, 2)
    return sorted(int(r[0]) for r in await store.db.fetch(f"SELECT id FROM events WHERE {where}", key, *days))


async def test_every_event_of_the_subject_is_found_and_no_other(store: SqlLedgerStore) -> None:
    """Events on day edges, across gaps and at both ends of the table are all found; Bob's are not."""
    ann = await _insert(store, ANN, [to_db_time(t) for t in ANN_TIMES])
    bob = await _insert(store, BOB, [to_db_time(t) for t in (NOW - 500 * DAY, NOW - 30 * DAY, NOW + 5 * DAY)])
    assert await _ids_of(store, ANN) == sorted(ann)
    assert await _ids_of(store, BOB) == sorted(bob)
    assert await _ids_of(store, b"c" * 32) == []


async def test_empty_table_selects_nothing(store: SqlLedgerStore) -> None:
    """No events at all: the lookup is valid SQL and finds nothing."""
    assert await _ids_of(store, ANN) == []


async def test_lookup_searches_the_day_index(store: SqlLedgerStore) -> None:
    """The statement is answered by events_subject_day (an index search), not a table scan."""
    await _insert(store, ANN, [to_db_time(t) for t in ANN_TIMES])
    where, days = await subject_events(store.db, 1, 2)
    sql = f"SELECT id FROM events WHERE {where}"
    if store.db.dialect == "sqlite":
        plan = " ".join(str(r[3]) for r in await store.db.fetch(f"EXPLAIN QUERY PLAN {sql}", ANN, *days))
        assert "USING INDEX events_subject_day" in plan
    else:
        async with store.db.transaction() as tx:
            # A handful of rows: PostgreSQL would rightly scan them; forbid that to see the index is usable.
            await tx.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(r[0]) for r in await tx.fetch(f"EXPLAIN {sql}", ANN, *days))
        assert "events_subject_day" in plan
    assert "events_subject " not in plan

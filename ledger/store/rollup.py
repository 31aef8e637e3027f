"""Deleting interaction events without losing campaign figures: roll them up first.

Used by the purge (old events, unsubscribed relationships) and by erasure. The aggregates hold
counts only — per campaign, day, kind, reason, link and country — never a subject.

The roll-up is done by the database (``INSERT … SELECT … GROUP BY``) over the same ``WHERE`` as
the delete that follows, in one transaction: no event row travels to Python. Returning every
deleted row and counting it in Python took about as long as the delete itself (the purge's
old-events rule, 10 M events: docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

from ledger.store.database import Database

DAY_US = 86_400 * 1_000_000
ACCEPTED_KINDS = ("delivered", "deferred", "bounced")
_ACCEPTED = ", ".join(f"'{kind}'" for kind in ACCEPTED_KINDS)

# Each statement is completed with the caller's WHERE (SQL of the store's own, never input). The
# WHERE before GROUP BY also keeps SQLite from reading ON CONFLICT as a join constraint.
_STATS = (
    "INSERT INTO campaign_stats (client_id, campaign_num, day, kind, reason, link_id, country, events) "
    f"SELECT client_id, COALESCE(campaign_num, 0), at / {DAY_US}, kind, reason, link_id, country, COUNT(*) "
    "FROM events WHERE {where} "
    f"GROUP BY client_id, COALESCE(campaign_num, 0), at / {DAY_US}, kind, reason, link_id, country "
    "ON CONFLICT (campaign_num, client_id, day, kind, reason, link_id, country) "
    "DO UPDATE SET events = campaign_stats.events + excluded.events"
)
# Distinct recipients per campaign: unique opens and clicks, unique clicks per link, and accepted
# recipients (delivered, deferred or bounced). The three groupings never share a key.
_UNIQUES = (
    "INSERT INTO campaign_uniques (client_id, campaign_num, kind, link_id, subjects) "
    "SELECT client_id, COALESCE(campaign_num, 0), kind, '', COUNT(DISTINCT subject_key) FROM events "
    "WHERE ({where}) AND subject_key IS NOT NULL AND kind IN ('opened', 'clicked') "
    "GROUP BY client_id, COALESCE(campaign_num, 0), kind "
    "UNION ALL "
    "SELECT client_id, COALESCE(campaign_num, 0), 'clicked', link_id, COUNT(DISTINCT subject_key) FROM events "
    "WHERE ({where}) AND subject_key IS NOT NULL AND kind = 'clicked' AND link_id <> '' "
    "GROUP BY client_id, COALESCE(campaign_num, 0), link_id "
    "UNION ALL "
    "SELECT client_id, COALESCE(campaign_num, 0), 'accepted', '', COUNT(DISTINCT subject_key) FROM events "
    f"WHERE ({{where}}) AND subject_key IS NOT NULL AND kind IN ({_ACCEPTED}) "
    "GROUP BY client_id, COALESCE(campaign_num, 0) "
    "ON CONFLICT (campaign_num, client_id, kind, link_id) "
    "DO UPDATE SET subjects = campaign_uniques.subjects + excluded.subjects"
)


async def rollup_and_delete(tx: Database, where: str, *args: Any) -> int:
    """Add the events ``WHERE {where}`` to the campaign aggregates, delete them; how many were deleted.

    The three statements must see the same rows. Inside a SQLite write transaction nobody else
    writes. On PostgreSQL (read committed) a concurrent erasure, purge or re-consent could change
    what ``where`` selects between them, so the rows are locked first and then named by id.
    """
    if tx.dialect == "postgresql":
        ids = [int(r[0]) for r in await tx.fetch(f"SELECT id FROM events WHERE {where} FOR UPDATE", *args)]
        if not ids:
            return 0
        where, args = "id = ANY($1)", (ids,)
    await tx.execute(_STATS.format(where=where), *args)
    await tx.execute(_UNIQUES.format(where=where), *args)
    return len(await tx.fetch(f"DELETE FROM events WHERE {where} RETURNING id", *args))

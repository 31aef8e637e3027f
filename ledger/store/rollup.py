"""Deleting interaction events without losing campaign figures: roll them up first.

Used by the purge (old events, unsubscribed relationships) and by erasure. The aggregates hold
counts only — per campaign, day, kind, reason, link and country — never a subject.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ledger.store.database import Database

DAY_US = 86_400 * 1_000_000
EVENT_COLUMNS = "id, client_id, campaign_num, subject_key, kind, reason, link_id, country, at"
ACCEPTED_KINDS = ("delivered", "deferred", "bounced")


async def rollup_and_delete(tx: Database, rows: Sequence[Sequence[Any]]) -> int:
    """Add ``rows`` (``EVENT_COLUMNS`` order) to the campaign aggregates and delete them; returns the count."""
    if not rows:
        return 0
    await roll_up(tx, rows)
    await tx.executemany("DELETE FROM events WHERE id = $1", [(row[0],) for row in rows])
    return len(rows)


async def roll_up(tx: Database, rows: Sequence[Sequence[Any]]) -> None:
    """Add ``rows`` (``EVENT_COLUMNS`` order) to the campaign aggregates (the purge deletes them itself)."""
    if not rows:
        return
    counts: Counter[tuple[str, int, int, str, str, str, str]] = Counter()
    uniques: dict[tuple[str, int, str, str], set[bytes]] = {}
    for _id, client_id, campaign_num, subject_key, kind, reason, link_id, country, at in rows:
        campaign = int(campaign_num or 0)
        counts[(client_id, campaign, int(at) // DAY_US, kind, reason, link_id, country)] += 1
        if subject_key is None:
            continue
        key = bytes(subject_key)
        if kind in ("opened", "clicked"):
            uniques.setdefault((client_id, campaign, kind, ""), set()).add(key)
        if kind == "clicked" and link_id:
            uniques.setdefault((client_id, campaign, kind, link_id), set()).add(key)
        if kind in ACCEPTED_KINDS:
            uniques.setdefault((client_id, campaign, "accepted", ""), set()).add(key)
    await tx.executemany(
        "INSERT INTO campaign_stats (client_id, campaign_num, day, kind, reason, link_id, country, events) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (campaign_num, client_id, day, kind, reason, "
        "link_id, country) DO UPDATE SET events = campaign_stats.events + excluded.events",
        [(*group, n) for group, n in counts.items()],
    )
    if uniques:
        await tx.executemany(
            "INSERT INTO campaign_uniques (client_id, campaign_num, kind, link_id, subjects) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (campaign_num, client_id, kind, link_id) "
            "DO UPDATE SET subjects = campaign_uniques.subjects + excluded.subjects",
            [(*group, len(keys)) for group, keys in uniques.items()],
        )

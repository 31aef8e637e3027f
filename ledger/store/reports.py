"""Campaign reports: aggregates only — counts per kind, reason, link, country and day, never a person.

Live events and the aggregates the purge keeps (``campaign_stats``/``campaign_uniques``) are
added together, so a report reads the same before and after the purge (unique counts become an
upper bound once a campaign is partly purged: a person counted in two purge batches counts twice).
Free-text values that could carry an address (bounce diagnostics, link ids) are reduced to
categories or redacted, so no report ever prints one.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ledger.errors import LedgerError
from ledger.models import Reason
from ledger.store.database import Database, from_db_time
from ledger.store.rollup import ACCEPTED_KINDS, DAY_US

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_REASONS = {str(r) for r in Reason}


class UnknownCampaign(LedgerError):
    """No campaign of that name (or several, for different clients: name the client)."""


@dataclass
class CampaignReport:
    """The figures of one campaign."""

    client: str
    campaign: str
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    deferred: int = 0
    bounced: dict[str, int] = field(default_factory=dict)
    unique_opens: int = 0
    unique_clicks: int = 0
    clicks_per_link: dict[str, int] = field(default_factory=dict)
    unsubscribes: int = 0
    complaints: int = 0
    countries: dict[str, int] = field(default_factory=dict)
    timeline: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "client": self.client,
            "campaign": self.campaign,
            "accepted": self.accepted,
            "refused": self.refused,
            "delivered": self.delivered,
            "deferred": self.deferred,
            "bounced": self.bounced,
            "unique_opens": self.unique_opens,
            "unique_clicks": self.unique_clicks,
            "clicks_per_link": self.clicks_per_link,
            "unsubscribes": self.unsubscribes,
            "complaints": self.complaints,
            "countries": self.countries,
            "timeline": self.timeline,
        }

    def funnel(self) -> list[tuple[str, int]]:
        """The funnel stages, widest first."""
        return [
            ("accepted", self.accepted),
            ("delivered", self.delivered),
            ("opened", self.unique_opens),
            ("clicked", self.unique_clicks),
            ("unsubscribed", self.unsubscribes),
        ]


def bounce_class(reason: str) -> str:
    """hard / soft / other from a bounce reason (diagnostic text never reaches the report)."""
    text = reason.strip().lower()
    if "hard" in text or text.startswith("5"):
        return "hard"
    if "soft" in text or text.startswith("4"):
        return "soft"
    return "other"


def safe_link(link_id: str) -> str:
    """A link id fit for a report: one that could name a person is redacted."""
    return "(redacted link)" if "@" in link_id or "%40" in link_id.lower() else link_id


def _day(day: int) -> str:
    """Day number since the epoch as ISO date."""
    return date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat()


async def find_campaign(db: Database, name: str, client_id: str | None) -> tuple[int, str]:
    """(campaign number, client) of campaign ``name``; raises :class:`UnknownCampaign`."""
    if client_id is None:
        rows = await db.fetch("SELECT num, client_id FROM campaigns WHERE name = $1 ORDER BY client_id", name)
    else:
        rows = await db.fetch(
            "SELECT num, client_id FROM campaigns WHERE name = $1 AND client_id = $2", name, client_id
        )
    if not rows:
        whose = f" of client {client_id}" if client_id else ""
        raise UnknownCampaign(f"no campaign {name!r}{whose}")
    if len(rows) > 1:
        clients = ", ".join(r[1] for r in rows)
        raise UnknownCampaign(f"campaign {name!r} exists for several clients ({clients}): give --client")
    return int(rows[0][0]), str(rows[0][1])


@dataclass(frozen=True)
class CampaignInfo:
    """One campaign of a client: its name (as the mailer's header gave it) and first sighting."""

    name: str
    created_at: datetime


async def list_campaigns(db: Database, client_id: str) -> list[CampaignInfo]:
    """The campaigns of ``client_id``, oldest first (a range of the ``(client_id, name)`` index)."""
    rows = await db.fetch(
        "SELECT name, created_at FROM campaigns WHERE client_id = $1 ORDER BY num", client_id
    )
    return [CampaignInfo(str(name), _moment(int(created))) for name, created in rows]


def _moment(value: int) -> datetime:
    """A NOT NULL DB time as a datetime."""
    moment = from_db_time(value)
    assert moment is not None
    return moment


async def campaign_report(db: Database, name: str, client_id: str | None = None) -> CampaignReport:
    """Aggregate one campaign's events (live and purged) into a :class:`CampaignReport`."""
    num, client = await find_campaign(db, name, client_id)
    report = CampaignReport(client, name)
    grouped = await db.fetch(
        f"SELECT kind, reason, link_id, country, at / {DAY_US} AS day, COUNT(*) FROM events "
        f"WHERE campaign_num = $1 AND client_id = $2 GROUP BY kind, reason, link_id, country, at / {DAY_US}",
        num,
        client,
    )
    grouped += await db.fetch(
        "SELECT kind, reason, link_id, country, day, events FROM campaign_stats WHERE campaign_num = $1 AND client_id = $2",
        num,
        client,
    )
    refused: Counter[str] = Counter()
    bounced: Counter[str] = Counter()
    countries: Counter[str] = Counter()
    timeline: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for kind, reason, _link, country, day, count in grouped:
        n = int(count)
        timeline[_day(int(day))][kind] += n
        if kind == "suppressed":
            refused[reason if reason in _REASONS else "other"] += n
        elif kind == "delivered":
            report.delivered += n
        elif kind == "deferred":
            report.deferred += n
        elif kind == "bounced":
            bounced[bounce_class(reason)] += n
        elif kind == "unsubscribed":
            report.unsubscribes += n
        elif kind == "complained":
            report.complaints += n
        if country:
            countries[country.upper() if _COUNTRY.match(country.upper()) else "other"] += n
    accepted_marks = ", ".join(f"'{k}'" for k in ACCEPTED_KINDS)
    uniques = await db.fetch(
        "SELECT kind, '' AS link_id, COUNT(DISTINCT subject_key) FROM events "
        "WHERE campaign_num = $1 AND client_id = $2 AND kind IN ('opened', 'clicked') GROUP BY kind "
        "UNION ALL SELECT kind, link_id, COUNT(DISTINCT subject_key) FROM events "
        "WHERE campaign_num = $1 AND client_id = $2 AND kind = 'clicked' AND link_id <> '' GROUP BY kind, link_id "
        "UNION ALL SELECT 'accepted', '', COUNT(DISTINCT subject_key) FROM events "
        f"WHERE campaign_num = $1 AND client_id = $2 AND kind IN ({accepted_marks}) "
        "UNION ALL SELECT kind, link_id, subjects FROM campaign_uniques WHERE campaign_num = $1 AND client_id = $2",
        num,
        client,
    )
    per_link: Counter[str] = Counter()
    for kind, link, count in uniques:
        n = int(count)
        if kind == "accepted":
            report.accepted += n
        elif link:
            per_link[safe_link(link)] += n
        elif kind == "opened":
            report.unique_opens += n
        elif kind == "clicked":
            report.unique_clicks += n
    report.refused = dict(refused.most_common())
    report.bounced = dict(sorted(bounced.items()))
    report.countries = dict(countries.most_common())
    report.clicks_per_link = dict(per_link.most_common())
    report.timeline = {day: dict(sorted(kinds.items())) for day, kinds in sorted(timeline.items())}
    return report


def generated_at(now: datetime) -> str:
    """A report's timestamp line."""
    return now.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

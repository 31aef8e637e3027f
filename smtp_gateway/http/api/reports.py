"""``/clients/{id}/campaigns``: a client's campaigns and each one's report (aggregates only).

The same report as ``consentgate report CAMPAIGN --format json``
(:func:`ledger.store.reports.campaign_report`). A campaign name is whatever the mailer's header
said (``/``, ``?``, ``#``, ``%``, spaces…), so it travels percent-encoded in the path and the route
takes the rest of the path up to ``/report`` as the name.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path

from ledger.store.reports import UnknownCampaign, campaign_report, list_campaigns
from smtp_gateway.http.api.context import ClientId, Ctx, Key
from smtp_gateway.http.api.schemas_subjects import CampaignList, CampaignReportBody, CampaignSummary
from smtp_gateway.http.errors import NotFound

router = APIRouter(tags=["reports"])

CampaignName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        # The gateway refuses control characters in campaign headers, so no name holds one (and
        # PostgreSQL cannot even compare a string with NUL in it).
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The campaign's name, percent-encoded (`/` as `%2F`).",
        examples=["spring-2026"],
    ),
]


def report_path(client_id: str, campaign: str) -> str:
    """The report's path under ``/api/v1``, every reserved character of the name encoded.

    A name that is just ``.`` or ``..`` is sent as ``%2E``s, or a URL library would resolve it as
    a dot segment (WHATWG URL parsers, i.e. browsers, resolve even ``%2E%2E``: such a name is
    reachable only from a client that keeps ``%2E`` as sent, like httpx).
    """
    encoded = quote(campaign, safe="")
    if campaign in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return f"/clients/{client_id}/campaigns/{encoded}/report"


@router.get("/clients/{client_id}/campaigns", summary="List a client's campaigns")
async def campaigns(client_id: ClientId, key: Key, ctx: Ctx) -> CampaignList:
    """Every campaign the gateway has seen for the client, oldest first, with its report's path."""
    client = await ctx.client_for(key, client_id)
    found = await list_campaigns(ctx.service.store.db, client.id)
    return CampaignList(
        campaigns=[
            CampaignSummary(name=c.name, created_at=c.created_at, report=report_path(client.id, c.name))
            for c in found
        ]
    )


# ``:path`` lets the name hold ``/`` (sent as %2F, which the server decodes before routing).
@router.get("/clients/{client_id}/campaigns/{campaign:path}/report", summary="A campaign's report")
async def report(client_id: ClientId, campaign: CampaignName, key: Key, ctx: Ctx) -> CampaignReportBody:
    """Accepted, refused per reason, delivered, deferred, bounces per class, unique opens and
    clicks, clicks per link, unsubscribes, complaints, countries and a per-day timeline."""
    client = await ctx.client_for(key, client_id)
    try:
        figures = await campaign_report(ctx.service.store.db, campaign, client.id)
    except UnknownCampaign:
        raise NotFound("no such campaign") from None
    return CampaignReportBody.model_validate(figures.as_dict())

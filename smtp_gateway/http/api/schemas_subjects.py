"""Bodies of the data-subject endpoints (``/subjects/…``) and the campaign report (pydantic models).

The export models forbid unknown fields like the request models: when the store starts exporting
something new, the tests fail until the model (and so the OpenAPI schema) says so, instead of an
Art. 15 answer silently dropping data.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from smtp_gateway.http.api.schemas import ApiModel, Mailbox, Source

DSR_SOURCE = "data-subject request"


class SubjectRequest(ApiModel):
    """The person whose data to export."""

    address: Mailbox


class SubjectChangeRequest(ApiModel):
    """A data-subject request that changes the ledger (erase, restrict, unrestrict)."""

    address: Mailbox
    source: Source = Field(DSR_SOURCE, description="Reference of the request (no personal data).")


class RectifyRequest(ApiModel):
    """Move everything held under a wrong address to the corrected one (Art. 16)."""

    old_address: Mailbox = Field(description="The wrong address.", examples=["jane@exmaple.com"])
    new_address: Mailbox = Field(
        description="The corrected address (must be another person once normalised).",
        examples=["jane@example.com"],
    )
    source: Source = Field(DSR_SOURCE, description="Reference of the request (no personal data).")


class ExportedSuppression(ApiModel):
    """One suppression of the person, on a client's list, the global list or an imported hashed list."""

    scope: str = Field(description="The client id, or 'global'.")
    reason: str
    since: datetime | None
    source: str
    hashed_list: str | None = Field(
        default=None, description="The hash algorithm when the entry is on an imported hashed list."
    )


class ExportedRelationship(ApiModel):
    """The person's standing with one client."""

    client: str
    status: str | None
    consent_at: datetime | None
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    last_engagement_at: datetime | None


class ExportedConsentEvent(ApiModel):
    """One event of the hash-chained consent ledger (opt-in with its proof, opt-out, restriction…)."""

    client: str = Field(description="The client id, or 'global'.")
    seq: int
    kind: str
    at: datetime | None
    source: str
    method: str
    notice_version: str
    legal_basis: str
    detail: str


class ExportedEvent(ApiModel):
    """One interaction event (delivery, bounce, open, click, unsubscribe…); a country at most."""

    client: str
    campaign: str | None
    kind: str
    reason: str
    link: str
    country: str
    at: datetime | None


class SubjectExport(ApiModel):
    """Everything held about one person, across clients (Art. 15 access, Art. 20 portability)."""

    address: str = Field(description="The address asked about, normalised.")
    subject_key: str = Field(description="The keyed hash the ledger files the person under (hex).")
    known: bool = Field(description="Whether the ledger has a subject row for the person.")
    stored_address: str | None = Field(
        description="The address as stored (null once erased or never stored)."
    )
    name: str | None
    restricted: bool = Field(description="Processing restricted (Art. 18): every client's mail is refused.")
    first_seen: datetime | None
    suppressions: list[ExportedSuppression]
    relationships: list[ExportedRelationship]
    consent_events: list[ExportedConsentEvent]
    events: list[ExportedEvent]


class ErasureResult(BaseModel):
    """What the erasure removed; only the keyed hash stays, so the person is never mailed or re-added."""

    deleted: dict[str, int] = Field(description="Rows deleted, per table.")
    chains_checkpointed: int = Field(description="Consent chains whose base moved to their head.")
    global_suppression_added: bool = Field(description="A global 'erased' suppression was added.")
    wal_truncated: bool = Field(
        description="False when another process held the SQLite file open: old page copies stay in "
        "its write-ahead log until the next checkpoint."
    )


class RestrictionResult(BaseModel):
    """The person's restriction of processing, as it now stands."""

    restricted: bool


class RectifyResult(BaseModel):
    """What moved from the wrong address to the corrected one."""

    suppressions: int
    relationships: int
    events: int
    chains: int


class CampaignSummary(BaseModel):
    """One campaign of the client."""

    name: str = Field(description="As the mailer's campaign header gave it.")
    created_at: datetime = Field(description="When the gateway first saw it.")
    report: str = Field(
        description="The report's path under /api/v1, the name percent-encoded.",
        examples=["/clients/acme/campaigns/spring%2F2026/report"],
    )


class CampaignList(BaseModel):
    """The client's campaigns, oldest first."""

    campaigns: list[CampaignSummary]


class CampaignReportBody(BaseModel):
    """A campaign's aggregates: counts only, never a person (live events and purged roll-ups added)."""

    client: str
    campaign: str
    accepted: int = Field(description="Recipients the gateway accepted (unique).")
    refused: dict[str, int] = Field(description="Recipients refused at RCPT, per reason.")
    delivered: int
    deferred: int
    bounced: dict[str, int] = Field(description="Bounces per class: hard, soft, other.")
    unique_opens: int
    unique_clicks: int
    clicks_per_link: dict[str, int] = Field(description="Unique clickers per link id.")
    unsubscribes: int
    complaints: int
    countries: dict[str, int] = Field(description="Events per ISO 3166 country code ('other' when unknown).")
    timeline: dict[str, dict[str, int]] = Field(description="Per day (ISO date): events per kind.")

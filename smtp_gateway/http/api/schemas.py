"""Request and response bodies of the admin API (pydantic models; they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ledger.models import Reason

# RFC 5321 caps a path at 256 octets; anything longer is not an address.
Address = Annotated[str, Field(min_length=1, max_length=320, examples=["jane@example.com"])]
# One address a request acts on: it must parse (422 naming the field otherwise), so the schema
# says so; a list check takes any string instead and answers ``invalid_address`` for it.
Mailbox = Annotated[
    str,
    Field(
        min_length=1, max_length=320, examples=["jane@example.com"], json_schema_extra={"format": "idn-email"}
    ),
]
# No control characters in what the ledger records: PostgreSQL text cannot hold NUL, and a line
# break in a source or proof field would forge lines in an export or a log.
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"
Source = Annotated[
    str,
    Field(max_length=200, pattern=PLAIN_TEXT, description="Where the request came from (no personal data)."),
]
ProofText = Annotated[str, Field(max_length=200, pattern=PLAIN_TEXT)]


def _iso_text(value: object) -> object:
    """Refuse what pydantic would read as Unix seconds: the schema promises an ISO 8601 string."""
    if isinstance(value, bool | int | float):
        raise ValueError("give an ISO 8601 date-time, e.g. 2026-11-22T10:00:00Z")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("give an ISO 8601 date-time, e.g. 2026-11-22T10:00:00Z")
    return value


# A date-time as the schema says (schemathesis sent 6.8e-203 for one: pydantic took it as Unix
# seconds and the consent was recorded as given in 1970).
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]


class ApiModel(BaseModel):
    """Base of every body: unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (every error answer)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None


class Me(BaseModel):
    """Who the presented key acts for."""

    key_id: str
    client_id: str | None = Field(description="The key's client; null for an operator key.")
    admin: bool


class CheckRequest(ApiModel):
    """Addresses to check (1 to 1,000 per call)."""

    addresses: list[Address] = Field(min_length=1, max_length=1000)


class ApiReason(StrEnum):
    """Why an address is refused; ``global`` when a client key may not learn the global reason."""

    UNSUBSCRIBED = Reason.UNSUBSCRIBED.value
    GLOBAL_OPTOUT = Reason.GLOBAL_OPTOUT.value
    COMPLAINT = Reason.COMPLAINT.value
    HARD_BOUNCE = Reason.HARD_BOUNCE.value
    RESTRICTED = Reason.RESTRICTED.value
    INACTIVE = Reason.INACTIVE.value
    NO_CONSENT = Reason.NO_CONSENT.value
    INVALID_ADDRESS = Reason.INVALID_ADDRESS.value
    MANUAL = Reason.MANUAL.value
    ERASED = Reason.ERASED.value
    GLOBAL = "global"


class CheckResult(BaseModel):
    """The decision for one address, in the order asked."""

    address: str
    allowed: bool
    reason: ApiReason | None = None
    scope: str | None = Field(default=None, description="The client id, or 'global', whose list refuses it.")


class CheckResponse(BaseModel):
    """Decisions for every address asked."""

    results: list[CheckResult]


class ClientSuppressionReason(StrEnum):
    """Reasons a client's key may record: a person's unsubscribe, or the client's own entry."""

    UNSUBSCRIBED = Reason.UNSUBSCRIBED.value
    MANUAL = Reason.MANUAL.value


class GlobalSuppressionReason(StrEnum):
    """Reasons an operator key may record on the global list."""

    GLOBAL_OPTOUT = Reason.GLOBAL_OPTOUT.value
    MANUAL = Reason.MANUAL.value


class SuppressionRequest(ApiModel):
    """Suppress one address for the client (an unsubscribe by phone, a do-not-contact entry)."""

    address: Mailbox
    reason: ClientSuppressionReason = ClientSuppressionReason.UNSUBSCRIBED
    source: Source = "api"


class GlobalSuppressionRequest(ApiModel):
    """Suppress one address for every client."""

    address: Mailbox
    reason: GlobalSuppressionReason = GlobalSuppressionReason.GLOBAL_OPTOUT
    source: Source = "api"


class SuppressionResult(BaseModel):
    """Whether the suppression is new (false: it already existed)."""

    added: bool


class RemovalRequest(ApiModel):
    """Remove a ``manual`` suppression of one address (operator keys only)."""

    address: Mailbox
    source: Source = "api"


class RemovalResult(BaseModel):
    """The suppression was removed."""

    removed: bool


class ConsentRequest(ApiModel):
    """An opt-in with its proof. A suppressed address is refused unless ``reconsent`` is true."""

    address: Mailbox
    source: Source = Field(min_length=1)
    at: IsoDateTime | None = Field(
        default=None, description="When consent was given (default: now). ISO 8601."
    )
    method: ProofText = Field("", examples=["double-opt-in"])
    notice_version: ProofText = ""
    legal_basis: ProofText = Field("consent", max_length=50)
    reconsent: bool = Field(False, description="A fresh opt-in that lifts this client's unsubscribe.")


class ConsentResult(BaseModel):
    """The opt-in was recorded."""

    recorded: bool

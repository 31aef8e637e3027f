"""Value types of the ledger domain (pure data, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

GLOBAL_SCOPE = "global"
"""The suppression scope that refuses an address for every client."""

CLIENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class Reason(StrEnum):
    """Why an address is refused (suppression reasons and policy outcomes share one vocabulary)."""

    UNSUBSCRIBED = "unsubscribed"
    GLOBAL_OPTOUT = "global_optout"
    COMPLAINT = "complaint"
    HARD_BOUNCE = "hard_bounce"
    RESTRICTED = "restricted"
    INACTIVE = "inactive"
    NO_CONSENT = "no_consent"
    INVALID_ADDRESS = "invalid_address"
    MANUAL = "manual"
    ERASED = "erased"


class ClientMode(StrEnum):
    """Whether a client may mail unknown addresses (suppression-only) or needs recorded consent."""

    SUPPRESSION_ONLY = "suppression-only"
    REQUIRE_CONSENT = "require-consent"


class OnSuppressed(StrEnum):
    """What the gateway does with a refused recipient: 550 at RCPT, or accept and never deliver."""

    REJECT = "reject"
    DROP = "drop"


class ConsentStatus(StrEnum):
    """State of a (client, subject) relationship's consent."""

    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class LedgerEventKind(StrEnum):
    """Kinds of append-only consent-ledger events (the compliance record)."""

    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    COMPLAINT = "complaint"
    HARD_BOUNCE = "hard_bounce"
    INACTIVITY_EXPIRY = "inactivity_expiry"
    RESTRICTION = "restriction"
    RESTRICTION_LIFTED = "restriction_lifted"
    ERASURE = "erasure"
    RECTIFICATION = "rectification"
    SUPPRESSION_REMOVED = "suppression_removed"


class EventKind(StrEnum):
    """Kinds of interaction events (minimal: no IP address, no user agent, country at most)."""

    SUPPRESSED = "suppressed"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"


def is_valid_client_id(client_id: str) -> bool:
    """Return whether ``client_id`` is a usable slug (and not the reserved global scope)."""
    return bool(CLIENT_ID_PATTERN.match(client_id)) and client_id != GLOBAL_SCOPE


@dataclass(frozen=True, slots=True)
class Suppression:
    """One row of the materialised do-not-send state: (scope, subject) -> reason."""

    scope: str
    reason: Reason
    since: datetime
    source: str = ""


@dataclass(frozen=True, slots=True)
class ConsentProof:
    """What proves an opt-in: where, how, under which notice and legal basis, and when."""

    source: str
    at: datetime
    method: str = ""
    notice_version: str = ""
    legal_basis: str = "consent"


@dataclass(frozen=True, slots=True)
class Relationship:
    """Consent and engagement of one subject with one client."""

    client_id: str
    status: ConsentStatus | None = None
    consent_at: datetime | None = None
    first_sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    last_engagement_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one recipient."""

    allowed: bool
    reason: Reason | None = None
    scope: str | None = None

    @classmethod
    def allow(cls) -> Decision:
        """An allowed decision."""
        return cls(True)

    @classmethod
    def refuse(cls, reason: Reason, scope: str | None = None) -> Decision:
        """A refusal with its reason (and the scope of the suppression that caused it)."""
        return cls(False, reason, scope)


@dataclass(frozen=True, slots=True)
class Client:
    """A tenant of the gateway: an agency's client with its sending identity and settings."""

    id: str
    name: str
    num: int = 0
    domains: tuple[str, ...] = ()
    postal_address: str = ""
    mode: ClientMode = ClientMode.SUPPRESSION_ONLY
    on_suppressed: OnSuppressed = OnSuppressed.REJECT
    tracking: bool = True
    password_hash: str = ""
    dkim_selector: str = ""
    dkim_private_key: str = ""
    trusted_networks: tuple[str, ...] = ()
    paused_reason: str = ""
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One consent-ledger event as stored, with its place in the (client, subject) hash chain."""

    client_id: str
    subject_key: bytes
    seq: int
    kind: LedgerEventKind
    at: datetime
    source: str = ""
    method: str = ""
    notice_version: str = ""
    legal_basis: str = ""
    detail: str = ""
    prev_hash: bytes = b""
    hash: bytes = b""
    id: int = 0

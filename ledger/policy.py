"""The decision rule: may this client mail this subject now? (pure: time is passed in)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from ledger.models import (
    GLOBAL_SCOPE,
    ClientMode,
    ConsentStatus,
    Decision,
    Reason,
    Relationship,
    Suppression,
)

DEFAULT_INACTIVITY_DAYS = 730

# What a person's fresh opt-in (re-consent, with its own proof) may lift: only their own
# unsubscribe from that client. A complaint or a bounce is not theirs to take back by a form, a
# client's manual entry is removed only by the operator, and the global list never by a client.
LIFTED_BY_RECONSENT = frozenset({Reason.UNSUBSCRIBED})


def reconsent_lifts(reason: str) -> bool:
    """Whether a re-consent may lift a client suppression with this ``reason``."""
    return reason in LIFTED_BY_RECONSENT


def _scope_reason(suppression: Suppression) -> Reason:
    """The reason to report for a suppression row; any global row reads as a global opt-out
    unless it names something more specific (a complaint, a bounce, an erasure)."""
    if suppression.scope == GLOBAL_SCOPE and suppression.reason in (
        Reason.UNSUBSCRIBED,
        Reason.MANUAL,
    ):
        return Reason.GLOBAL_OPTOUT
    if suppression.reason is Reason.MANUAL:
        return Reason.UNSUBSCRIBED
    return suppression.reason


def activity_baseline(relationship: Relationship) -> datetime | None:
    """The moment inactivity is counted from: last engagement, else consent, else first send."""
    candidates = [
        moment for moment in (relationship.last_engagement_at, relationship.consent_at) if moment is not None
    ]
    if candidates:
        return max(candidates)
    return relationship.first_sent_at


def is_inactive(relationship: Relationship, now: datetime, inactivity_days: int) -> bool:
    """Whether the relationship has gone ``inactivity_days`` without engagement or fresh consent."""
    if relationship.status is ConsentStatus.EXPIRED:
        return True
    baseline = activity_baseline(relationship)
    return baseline is not None and now - baseline > timedelta(days=inactivity_days)


def decide(
    *,
    client_id: str,
    suppressions: Iterable[Suppression],
    relationship: Relationship | None,
    restricted: bool,
    mode: ClientMode,
    now: datetime,
    inactivity_days: int = DEFAULT_INACTIVITY_DAYS,
) -> Decision:
    """Decide whether ``client_id`` may mail a subject, given everything the ledger holds on it.

    Order matters: global scope first (a signed written request stops every client), then a
    restriction of processing, then the client's own suppressions, then consent and inactivity.
    """
    relevant = [s for s in suppressions if s.scope in (GLOBAL_SCOPE, client_id)]
    for suppression in relevant:
        if suppression.scope == GLOBAL_SCOPE:
            return Decision.refuse(_scope_reason(suppression), GLOBAL_SCOPE)
    if restricted:
        return Decision.refuse(Reason.RESTRICTED, GLOBAL_SCOPE)
    for suppression in relevant:
        return Decision.refuse(_scope_reason(suppression), client_id)
    if relationship is None or relationship.status is ConsentStatus.WITHDRAWN:
        if mode is ClientMode.REQUIRE_CONSENT:
            return Decision.refuse(Reason.NO_CONSENT, client_id)
        return Decision.allow()
    if mode is ClientMode.REQUIRE_CONSENT and relationship.consent_at is None:
        return Decision.refuse(Reason.NO_CONSENT, client_id)
    if is_inactive(relationship, now, inactivity_days):
        return Decision.refuse(Reason.INACTIVE, client_id)
    return Decision.allow()

"""Retention rules as pure functions: what the purge deletes as of ``now``.

The defaults come from the privacy policies the project implements (DESIGN §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.models import ConsentStatus, Reason, Relationship
from ledger.policy import activity_baseline


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of data is kept, in days."""

    inactivity_days: int = 730
    event_days: int = 395
    unsubscribed_relationship_days: int = 30
    consent_proof_days: int = 730
    outbox_days: int = 7


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """The moments before which each kind of data is due for deletion."""

    inactive_before: datetime
    events_before: datetime
    unsubscribed_before: datetime
    consent_proof_before: datetime
    outbox_before: datetime


def cutoffs(policy: RetentionPolicy, now: datetime) -> Cutoffs:
    """Turn the policy's day counts into absolute cut-off instants for ``now``."""
    return Cutoffs(
        inactive_before=now - timedelta(days=policy.inactivity_days),
        events_before=now - timedelta(days=policy.event_days),
        unsubscribed_before=now - timedelta(days=policy.unsubscribed_relationship_days),
        consent_proof_before=now - timedelta(days=policy.consent_proof_days),
        outbox_before=now - timedelta(days=policy.outbox_days),
    )


def relationship_expires(relationship: Relationship, cut: Cutoffs) -> bool:
    """Whether a relationship has had no engagement (or fresh consent) since the inactivity cut-off."""
    baseline = activity_baseline(relationship)
    return baseline is not None and baseline < cut.inactive_before


def event_due(at: datetime, cut: Cutoffs) -> bool:
    """Whether an interaction event is older than the event retention period."""
    return at < cut.events_before


def relationship_events_due(unsubscribed_at: datetime, cut: Cutoffs) -> bool:
    """Whether an unsubscribed relationship's events must now be deleted (30 days after)."""
    return unsubscribed_at < cut.unsubscribed_before


def consent_proof_due(last_activity: datetime, cut: Cutoffs) -> bool:
    """Whether consent proof is past its keeping period (after withdrawal or last engagement)."""
    return last_activity < cut.consent_proof_before


UNSUBSCRIBE_REASONS = (
    Reason.UNSUBSCRIBED,
    Reason.GLOBAL_OPTOUT,
    Reason.MANUAL,
    Reason.COMPLAINT,
)
"""Suppression reasons that end a relationship at the person's request: its events go after 30 days."""


def consent_proof_deletable(last_event_at: datetime, relationship: Relationship | None, cut: Cutoffs) -> bool:
    """Whether a chain's consent record may go: nothing recorded, and no engagement, since the cut-off.

    An active consent is never deleted here (the inactivity rule expires it first, which is itself
    a recorded event that restarts the 730 days).
    """
    if relationship is not None:
        if relationship.status is ConsentStatus.ACTIVE:
            return False
        engaged = relationship.last_engagement_at
        if engaged is not None and not consent_proof_due(engaged, cut):
            return False
    return consent_proof_due(last_event_at, cut)


def expires_now(relationship: Relationship, cut: Cutoffs) -> bool:
    """Whether the purge must expire this relationship now (still active or never consented, but idle)."""
    if relationship.status not in (None, ConsentStatus.ACTIVE):
        return False
    return relationship_expires(relationship, cut)

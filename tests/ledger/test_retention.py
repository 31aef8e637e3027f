"""Retention rules as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.models import ConsentStatus, Relationship
from ledger.retention import (
    RetentionPolicy,
    consent_proof_due,
    cutoffs,
    event_due,
    relationship_events_due,
    relationship_expires,
)

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CUT = cutoffs(RetentionPolicy(), NOW)


def test_default_periods_come_from_the_privacy_policy() -> None:
    """730 days inactivity, 395 days events, 30 days after unsubscribe, 730 days of consent proof."""
    assert NOW - CUT.inactive_before == timedelta(days=730)
    assert NOW - CUT.events_before == timedelta(days=395)
    assert NOW - CUT.unsubscribed_before == timedelta(days=30)
    assert NOW - CUT.consent_proof_before == timedelta(days=730)


def test_relationship_expiry_uses_the_latest_activity() -> None:
    """A click within two years keeps an old consent alive."""
    old = Relationship("acme", ConsentStatus.ACTIVE, consent_at=NOW - timedelta(days=800))
    assert relationship_expires(old, CUT)
    clicked = Relationship(
        "acme", ConsentStatus.ACTIVE, consent_at=NOW - timedelta(days=800), last_engagement_at=NOW
    )
    assert not relationship_expires(clicked, CUT)
    assert not relationship_expires(Relationship("acme"), CUT)


def test_event_and_proof_cutoffs() -> None:
    """Events, unsubscribed relationships and consent proof fall due exactly after their periods."""
    assert event_due(NOW - timedelta(days=396), CUT)
    assert not event_due(NOW - timedelta(days=394), CUT)
    assert relationship_events_due(NOW - timedelta(days=31), CUT)
    assert not relationship_events_due(NOW - timedelta(days=29), CUT)
    assert consent_proof_due(NOW - timedelta(days=731), CUT)
    assert not consent_proof_due(NOW - timedelta(days=729), CUT)

"""The decision rule, without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.models import (
    GLOBAL_SCOPE,
    ClientMode,
    ConsentStatus,
    Reason,
    Relationship,
    Suppression,
)
from ledger.policy import decide

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def sup(scope: str, reason: Reason) -> Suppression:
    """A suppression row as of a year ago."""
    return Suppression(scope, reason, NOW - timedelta(days=365))


def run(**kwargs: object) -> tuple[bool, Reason | None]:
    """decide() with defaults for acme in suppression-only mode."""
    args: dict[str, object] = {
        "client_id": "acme",
        "suppressions": [],
        "relationship": None,
        "restricted": False,
        "mode": ClientMode.SUPPRESSION_ONLY,
        "now": NOW,
    }
    args.update(kwargs)
    decision = decide(**args)  # type: ignore[arg-type]
    return decision.allowed, decision.reason


def test_unknown_address_allowed_in_suppression_only_mode() -> None:
    """With no record at all, suppression-only clients may mail."""
    assert run() == (True, None)


def test_unknown_address_refused_when_consent_required() -> None:
    """require-consent clients need a recorded opt-in."""
    assert run(mode=ClientMode.REQUIRE_CONSENT) == (False, Reason.NO_CONSENT)


def test_global_scope_wins_over_client_scope() -> None:
    """A global opt-out is reported even when the client also has its own suppression."""
    rows = [sup("acme", Reason.COMPLAINT), sup(GLOBAL_SCOPE, Reason.GLOBAL_OPTOUT)]
    assert run(suppressions=rows) == (False, Reason.GLOBAL_OPTOUT)


def test_global_unsubscribe_reads_as_global_optout() -> None:
    """An 'unsubscribed' row in global scope is a global opt-out."""
    assert run(suppressions=[sup(GLOBAL_SCOPE, Reason.UNSUBSCRIBED)]) == (False, Reason.GLOBAL_OPTOUT)


def test_other_clients_suppressions_do_not_apply() -> None:
    """A suppression of client beta does not refuse acme."""
    assert run(suppressions=[sup("beta", Reason.UNSUBSCRIBED)]) == (True, None)


def test_client_reasons_pass_through() -> None:
    """Complaint and hard bounce keep their own reason; manual reads as unsubscribed."""
    assert run(suppressions=[sup("acme", Reason.COMPLAINT)]) == (False, Reason.COMPLAINT)
    assert run(suppressions=[sup("acme", Reason.HARD_BOUNCE)]) == (False, Reason.HARD_BOUNCE)
    assert run(suppressions=[sup("acme", Reason.MANUAL)]) == (False, Reason.UNSUBSCRIBED)


def test_restriction_refuses_before_client_rows() -> None:
    """A restriction of processing refuses every client."""
    assert run(restricted=True, suppressions=[sup("acme", Reason.COMPLAINT)]) == (False, Reason.RESTRICTED)


def test_inactivity_after_730_days_without_engagement() -> None:
    """Consent older than the inactivity period with no engagement since refuses with inactive."""
    old = Relationship("acme", ConsentStatus.ACTIVE, consent_at=NOW - timedelta(days=731))
    assert run(relationship=old) == (False, Reason.INACTIVE)
    recent_click = Relationship(
        "acme",
        ConsentStatus.ACTIVE,
        consent_at=NOW - timedelta(days=900),
        last_engagement_at=NOW - timedelta(days=10),
    )
    assert run(relationship=recent_click) == (True, None)
    edge = Relationship("acme", ConsentStatus.ACTIVE, consent_at=NOW - timedelta(days=730))
    assert run(relationship=edge) == (True, None)


def test_inactivity_counts_from_first_send_without_consent_record() -> None:
    """In suppression-only mode, two years of sending without a click expires the address too."""
    rel = Relationship("acme", None, first_sent_at=NOW - timedelta(days=800), last_sent_at=NOW)
    assert run(relationship=rel) == (False, Reason.INACTIVE)
    assert run(relationship=rel, inactivity_days=1000) == (True, None)


def test_expired_relationship_stays_inactive() -> None:
    """After the purge expired a relationship, only a fresh consent reopens it."""
    rel = Relationship("acme", ConsentStatus.EXPIRED, consent_at=NOW - timedelta(days=1))
    assert run(relationship=rel) == (False, Reason.INACTIVE)


def test_require_consent_with_consent_allowed() -> None:
    """A recorded, recent consent allows a require-consent client."""
    rel = Relationship("acme", ConsentStatus.ACTIVE, consent_at=NOW - timedelta(days=3))
    assert run(mode=ClientMode.REQUIRE_CONSENT, relationship=rel) == (True, None)

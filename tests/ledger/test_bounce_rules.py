"""The pure bounce and complaint rules: status classification, soft-bounce scores, the rate guard."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import NOW

from ledger.bounce_rules import (
    BounceKind,
    InboundPolicy,
    RateVerdict,
    SoftBounce,
    classify_reply,
    classify_status,
    complaint_rate,
    enhanced_status,
    rate_verdict,
    soft_bounce_outcome,
)

POLICY = InboundPolicy(soft_threshold=3, soft_window_days=7)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("status", "permanent", "kind"),
    [
        ("5.1.1", True, BounceKind.HARD),
        ("5.1.10", True, BounceKind.HARD),
        ("5.0.0", True, BounceKind.HARD),
        ("5.2.1", True, BounceKind.HARD),
        ("5.2.2", True, BounceKind.SOFT),
        ("5.7.1", True, BounceKind.SOFT),
        ("5.3.4", True, BounceKind.SOFT),
        ("5.4.7", True, BounceKind.SOFT),
        ("4.4.1", True, BounceKind.SOFT),
        ("4.2.2", False, BounceKind.SOFT),
        (None, True, BounceKind.HARD),
        (None, False, BounceKind.SOFT),
    ],
)
def test_classify_status(status: str | None, permanent: bool, kind: BounceKind) -> None:
    """Address failures are hard; full mailboxes, policy blocks and 4.x.x are soft."""
    assert classify_status(status, permanent=permanent) is kind


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (550, "5.1.1 <a@b.example>: Recipient address rejected: User unknown", BounceKind.HARD),
        (550, "Requested action not taken: mailbox unavailable", BounceKind.HARD),
        (552, "Requested mail action aborted: exceeded storage allocation", BounceKind.SOFT),
        (554, "5.7.1 Service unavailable; client host blocked using Spamhaus", BounceKind.SOFT),
        (550, "4.2.0 inconsistent code", BounceKind.HARD),
        (451, "4.3.0 try again later", BounceKind.SOFT),
        (250, "2.0.0 OK", None),
    ],
)
def test_classify_reply(code: int, text: str, kind: BounceKind | None) -> None:
    """A synchronous upstream reply goes through the same classification as a DSN."""
    assert classify_reply(code, text) is kind


def test_enhanced_status_ignores_ip_addresses_and_versions() -> None:
    """Only a real x.y.z status code is read, not part of an IP address or a version number."""
    assert enhanced_status("host 192.0.2.25 said: 550 5.1.1 unknown") == "5.1.1"
    assert enhanced_status("Exim 4.94.2 at 10.5.1.1") is None


def test_soft_bounces_suppress_at_the_threshold_within_the_window() -> None:
    """Three soft bounces of distinct campaigns within seven days suppress; two do not."""
    first = soft_bounce_outcome([], SoftBounce(NOW, 1), POLICY)
    second = soft_bounce_outcome(first.kept, SoftBounce(NOW + DAY, 2), POLICY)
    third = soft_bounce_outcome(second.kept, SoftBounce(NOW + 2 * DAY, 3), POLICY)
    assert (first.suppress, second.suppress, third.suppress) == (False, False, True)
    assert len(third.kept) == 3


def test_soft_bounces_decay_out_of_the_window() -> None:
    """A bounce older than the window no longer counts."""
    kept = (SoftBounce(NOW, 1), SoftBounce(NOW + DAY, 2))
    later = soft_bounce_outcome(kept, SoftBounce(NOW + 7 * DAY, 3), POLICY)
    assert not later.suppress
    assert [b.campaign_num for b in later.kept] == [2, 3]


def test_repeated_reports_about_one_copy_count_once() -> None:
    """Delay warnings at 4 h and 24 h and the final failure of the same copy are one soft bounce."""
    outcome = soft_bounce_outcome([], SoftBounce(NOW, 7), POLICY)
    for hours in (4, 24, 48):
        outcome = soft_bounce_outcome(outcome.kept, SoftBounce(NOW + timedelta(hours=hours), 7), POLICY)
        assert not outcome.counted
    assert len(outcome.kept) == 1 and not outcome.suppress


def test_a_delivery_signal_resets_the_score() -> None:
    """Soft bounces before a confirmed delivery (or engagement) are wiped."""
    kept = (SoftBounce(NOW, 1), SoftBounce(NOW + DAY, 2))
    outcome = soft_bounce_outcome(kept, SoftBounce(NOW + 3 * DAY, 3), POLICY, reset_at=NOW + 2 * DAY)
    assert not outcome.suppress
    assert [b.campaign_num for b in outcome.kept] == [3]


def test_complaint_rate_and_verdicts() -> None:
    """Above 0.1% warns, above 0.3% pauses; a young client's rate is over the full window."""
    policy = InboundPolicy(complaint_window=1000)
    assert complaint_rate(1, 50, 1000) == 0.001
    assert rate_verdict(complaint_rate(1, 1000, 1000), policy) is RateVerdict.OK
    assert rate_verdict(complaint_rate(2, 1000, 1000), policy) is RateVerdict.WARN
    assert rate_verdict(complaint_rate(3, 1000, 1000), policy) is RateVerdict.WARN
    assert rate_verdict(complaint_rate(4, 1000, 1000), policy) is RateVerdict.PAUSE


def test_policy_refuses_nonsense() -> None:
    """A zero threshold or a warning rate above the pause rate is a configuration error."""
    with pytest.raises(ValueError):
        InboundPolicy(soft_threshold=0)
    with pytest.raises(ValueError):
        InboundPolicy(warn_rate=0.01, pause_rate=0.001)

"""Rules for bounces, complaints and the complaint-rate guard (pure: no I/O, time passed in).

What turns a delivery failure into a suppression, when soft bounces add up to one, and when a
client's complaint rate is high enough to warn or to pause its campaigns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# RFC 3463 class.subject.detail; only subjects 0-7 are defined (keeps "Exim 4.94.2" out).
_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.([0-7])\.(\d{1,3})(?![\d.])")

# Permanent (5.x.x) codes that say nothing about the address itself: a full mailbox (5.2.2),
# a message too big (5.3.4 / 5.2.3), the sender's reputation or content (5.7.x). Suppressing the
# address for them would punish the recipient for the message or the sender, so they count as
# soft bounces: repeated, they still end in a suppression through the soft-bounce threshold.
_SOFT_PERMANENT = {("2", "2"), ("2", "3"), ("3", "4"), ("4", "7")}
_SOFT_PERMANENT_SUBJECTS = {"7"}


class BounceKind(StrEnum):
    """A hard bounce suppresses at once; soft bounces only add up to one."""

    HARD = "hard"
    SOFT = "soft"


class ComplaintScope(StrEnum):
    """Where a complaint suppresses the address: for the client it came through, or for everyone."""

    CLIENT = "client"
    GLOBAL = "global"


class RateVerdict(StrEnum):
    """What the complaint-rate guard concludes for a client."""

    OK = "ok"
    WARN = "warn"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """The knobs of the bounce and complaint rules (the CLI maps the settings onto this)."""

    soft_threshold: int = 3
    soft_window_days: int = 7
    complaint_scope: ComplaintScope = ComplaintScope.CLIENT
    complaint_window: int = 1000
    warn_rate: float = 0.001
    pause_rate: float = 0.003

    def __post_init__(self) -> None:
        """Refuse settings that would make the rules meaningless."""
        if self.soft_threshold < 1 or self.soft_window_days < 1 or self.complaint_window < 1:
            raise ValueError("soft_threshold, soft_window_days and complaint window must be >= 1")
        if not 0 <= self.warn_rate <= self.pause_rate <= 1:
            raise ValueError("need 0 <= warn_rate <= pause_rate <= 1")


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code (``5.1.1``) in ``text``, or None."""
    found = _ENHANCED_STATUS.search(text)
    return None if found is None else ".".join(found.groups())


def classify_status(status: str | None, *, permanent: bool) -> BounceKind:
    """Hard or soft for a failure with enhanced ``status`` (None: trust the ``permanent`` hint)."""
    if status is None:
        return BounceKind.HARD if permanent else BounceKind.SOFT
    klass, subject, detail = status.split(".")
    if klass != "5":
        return BounceKind.SOFT
    if (subject, detail) in _SOFT_PERMANENT or subject in _SOFT_PERMANENT_SUBJECTS:
        return BounceKind.SOFT
    return BounceKind.HARD


def classify_reply(code: int, text: str) -> BounceKind | None:
    """Classify a synchronous SMTP reply from the upstream (None: it is not a failure)."""
    if code < 400:
        return None
    status = enhanced_status(text)
    if status is not None and status[0] != str(code)[0]:
        status = None  # a 5yz reply with a 4.x.x code is inconsistent: trust the reply code
    if status is None and code == 552:
        return BounceKind.SOFT  # RFC 5321: 552 means "exceeded storage allocation" (mailbox full)
    return classify_status(status, permanent=code >= 500)


@dataclass(frozen=True, slots=True)
class SoftBounce:
    """One counted soft bounce: when, and for which campaign's copy."""

    at: datetime
    campaign_num: int


@dataclass(frozen=True, slots=True)
class SoftOutcome:
    """The soft bounces still counting after a new one, and whether they now suppress."""

    kept: tuple[SoftBounce, ...]
    suppress: bool
    counted: bool


def soft_bounce_outcome(
    recent: Sequence[SoftBounce],
    new: SoftBounce,
    policy: InboundPolicy,
    reset_at: datetime | None = None,
) -> SoftOutcome:
    """Add ``new`` to the soft bounces of one (client, subject) and decide on a suppression.

    The score is the number of distinct campaigns that soft-bounced within the window: older
    bounces fall out (they decay), a delivery signal at ``reset_at`` wipes those before it, and
    several DSNs about the same copy (delay warnings at 4 h, 24 h, then the failure) count once.
    """
    horizon = new.at - timedelta(days=policy.soft_window_days)
    kept = [b for b in recent if b.at > horizon and (reset_at is None or b.at > reset_at) and b.at <= new.at]
    counted = all(b.campaign_num != new.campaign_num for b in kept)
    if counted:
        kept.append(new)
    kept.sort(key=lambda b: b.at)
    return SoftOutcome(tuple(kept), len(kept) >= policy.soft_threshold, counted)


def complaint_rate(complaints: int, delivered: int, window: int) -> float:
    """The complaint rate over the last ``window`` delivered copies.

    Until a client has delivered a full window the denominator stays ``window``: a young client
    with 1 complaint among 50 copies is not paused at "2 %" on a sample too small to mean it.
    """
    return complaints / max(delivered, window)


def rate_verdict(rate: float, policy: InboundPolicy) -> RateVerdict:
    """PAUSE above the pause rate, WARN above the warning rate (strictly above), else OK."""
    if rate > policy.pause_rate:
        return RateVerdict.PAUSE
    if rate > policy.warn_rate:
        return RateVerdict.WARN
    return RateVerdict.OK


def pause_reason(rate: float, window: int, policy: InboundPolicy) -> str:
    """The text stored in ``clients.paused_reason`` (shown by `client list` and in the 451 log)."""
    return (
        f"complaint rate {rate:.2%} over the last {window} delivered is above "
        f"{policy.pause_rate:.2%}: run `consentgate client resume` after fixing the list"
    )

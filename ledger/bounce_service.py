"""Use cases of inbound mail: bounces, complaints and mailto unsubscribes written to the ledger.

One place for the rules whichever way a failure arrives: a DSN through the inbound listener,
or a synchronous 5xx from the upstream during relay (:meth:`InboundLedger.record_bounce` and
:meth:`InboundLedger.record_upstream_reply` serve both).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ledger.bounce_rules import (
    BounceKind,
    ComplaintScope,
    InboundPolicy,
    RateVerdict,
    SoftBounce,
    classify_reply,
    complaint_rate,
    pause_reason,
    rate_verdict,
    soft_bounce_outcome,
)
from ledger.models import GLOBAL_SCOPE, Client, EventKind, Reason
from ledger.store.inbound import InboundStore
from ledger.store.ledger_store import InteractionEvent, SqlLedgerStore

log = logging.getLogger("consentgate.inbound")


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    """What a bounce did: its kind, whether it suppressed the address now, the soft score."""

    kind: BounceKind
    suppressed: bool
    soft_score: int = 0


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """The complaint-rate guard's verdict for a client after a complaint."""

    verdict: RateVerdict
    rate: float
    complaints: int
    delivered: int
    paused_now: bool = False


@dataclass(frozen=True, slots=True)
class ComplaintOutcome:
    """What a complaint did: the scope suppressed, whether newly, and the guard's verdict."""

    scope: str
    suppressed: bool
    guard: GuardOutcome


@dataclass
class InboundLedger:
    """Bounce, complaint and unsubscribe rules applied to the ledger store."""

    store: SqlLedgerStore
    policy: InboundPolicy = field(default_factory=InboundPolicy)

    def __post_init__(self) -> None:
        """The inbound tables share the ledger's database."""
        self.inbound = InboundStore(self.store.db)

    async def record_bounce(
        self,
        client_id: str,
        subject_key: bytes,
        campaign_num: int | None,
        kind: BounceKind,
        now: datetime,
        source: str,
    ) -> BounceOutcome:
        """Record one bounce of a copy and apply the rules (the one entry for DSNs and sync 5xx).

        Hard: a ``bounced`` event (reason hard) and a client-scope ``hard_bounce`` suppression.
        Soft: a ``bounced`` event (reason soft); a suppression only once the soft bounces of
        distinct campaigns within the window reach the threshold.
        """
        event = InteractionEvent(client_id, EventKind.BOUNCED, now, campaign_num, subject_key, str(kind))
        if kind is BounceKind.HARD:
            suppressed = await self.store.suppress(client_id, subject_key, Reason.HARD_BOUNCE, source, now)
            await self.store.record_events([event])
            await self.inbound.clear_soft_bounces(client_id, [subject_key])
            return BounceOutcome(kind, suppressed)
        recent = await self.inbound.soft_bounces(client_id, subject_key)
        reset_at = await self.inbound.last_engagement(client_id, subject_key)
        outcome = soft_bounce_outcome(
            recent, SoftBounce(now, campaign_num or 0), self.policy, reset_at=reset_at
        )
        await self.store.record_events([event])
        suppressed = False
        if outcome.suppress:
            why = f"{source}; {len(outcome.kept)} soft bounces in {self.policy.soft_window_days} days"
            suppressed = await self.store.suppress(client_id, subject_key, Reason.HARD_BOUNCE, why, now)
            await self.inbound.clear_soft_bounces(client_id, [subject_key])
        else:
            await self.inbound.replace_soft_bounces(client_id, subject_key, outcome.kept)
        return BounceOutcome(kind, suppressed, len(outcome.kept))

    async def record_upstream_reply(
        self,
        client_id: str,
        subject_key: bytes,
        campaign_num: int | None,
        code: int,
        text: str,
        now: datetime,
    ) -> BounceOutcome | None:
        """Apply the bounce rules to a synchronous upstream reply (None for a non-failure).

        Only a final answer is a bounce: the gateway calls this for a permanent (5xx) failure,
        or for a temporary one it has given up retrying.
        """
        kind = classify_reply(code, text)
        if kind is None:
            return None
        return await self.record_bounce(client_id, subject_key, campaign_num, kind, now, f"smtp {code}")

    async def record_delivery(self, client_id: str, subject_keys: Sequence[bytes]) -> None:
        """A confirmed delivery (a success DSN, a final MX's 250) resets those soft-bounce scores."""
        await self.inbound.clear_soft_bounces(client_id, list(subject_keys))

    async def record_unsubscribe(
        self, client_id: str, subject_key: bytes, campaign_num: int | None, now: datetime, source: str
    ) -> bool:
        """Unsubscribe like the one-click POST: client-scope suppression and an ``unsubscribed`` event.

        Returns whether the address was newly suppressed (a repeat changes nothing).
        """
        suppressed = await self.store.suppress(client_id, subject_key, Reason.UNSUBSCRIBED, source, now)
        if suppressed:
            await self.store.record_events(
                [InteractionEvent(client_id, EventKind.UNSUBSCRIBED, now, campaign_num, subject_key)]
            )
        return suppressed

    async def record_complaint(
        self, client_id: str, subject_key: bytes, campaign_num: int | None, now: datetime, source: str
    ) -> ComplaintOutcome:
        """A ``complained`` event, a ``complaint`` suppression, then the client's rate guard.

        The suppression's scope is the client the token was minted for (or global when the
        policy says so): never a client named anywhere else in the report.
        """
        scope = GLOBAL_SCOPE if self.policy.complaint_scope is ComplaintScope.GLOBAL else client_id
        suppressed = await self.store.suppress(scope, subject_key, Reason.COMPLAINT, source, now)
        await self.store.record_events(
            [InteractionEvent(client_id, EventKind.COMPLAINED, now, campaign_num, subject_key)]
        )
        guard = await self.check_complaint_rate(client_id, now)
        return ComplaintOutcome(scope, suppressed, guard)

    async def check_complaint_rate(self, client_id: str, now: datetime) -> GuardOutcome:
        """Evaluate the client's complaint rate; pause the client above the pause rate."""
        window = self.policy.complaint_window
        since = await self.inbound.window_start(client_id)
        complaints, delivered = await self.inbound.rate_counts(client_id, window, since)
        rate = complaint_rate(complaints, delivered, window)
        verdict = rate_verdict(rate, self.policy)
        paused_now = False
        if verdict is RateVerdict.PAUSE:
            client = await self.store.get_client(client_id)
            if not client.paused_reason:
                reason = pause_reason(rate, window, self.policy)
                await self.store.update_client(client_id, paused_reason=reason)
                paused_now = True
                log.warning("client %s paused: %s (%d complaints)", client_id, reason, complaints)
        elif verdict is RateVerdict.WARN:
            log.warning(
                "client %s complaint rate %.2f%% over the last %d delivered is above the warning "
                "rate %.2f%% (%d complaints)",
                client_id,
                rate * 100,
                window,
                self.policy.warn_rate * 100,
                complaints,
            )
        return GuardOutcome(verdict, rate, complaints, delivered, paused_now)

    async def resume_client(self, client_id: str, now: datetime) -> Client:
        """Lift a pause and restart the complaint-rate window, so old complaints cannot re-pause."""
        client = await self.store.update_client(client_id, paused_reason="")
        await self.inbound.reset_window(client_id, now)
        log.info("client %s resumed by the operator", client_id)
        return client

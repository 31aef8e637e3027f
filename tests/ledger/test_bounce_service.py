"""The inbound rules on a real store: bounces, soft-bounce scores, complaints and the rate guard."""

from __future__ import annotations

import secrets
from datetime import timedelta

from conftest import NOW

from ledger.bounce_rules import BounceKind, ComplaintScope, InboundPolicy, RateVerdict
from ledger.bounce_service import InboundLedger
from ledger.models import GLOBAL_SCOPE, Client, EventKind
from ledger.store import SqlLedgerStore
from ledger.store.ledger_store import InteractionEvent

DAY = timedelta(days=1)


async def _client(store: SqlLedgerStore, client_id: str = "acme") -> None:
    """A minimal client."""
    await store.add_client(Client(id=client_id, name=client_id, password_hash="x"), NOW)


async def _reasons(store: SqlLedgerStore, key: bytes, client_id: str = "acme") -> dict[str, str]:
    """scope -> reason of the suppressions that apply to (client, key)."""
    return {s.scope: str(s.reason) for s in (await store.lookup(client_id, key)).suppressions}


async def _delivered(store: SqlLedgerStore, count: int, client_id: str = "acme") -> None:
    """Record ``count`` delivered copies (the gateway's events), one second apart before NOW."""
    await store.record_events(
        [
            InteractionEvent(
                client_id, EventKind.DELIVERED, NOW - timedelta(seconds=count - i), 1, secrets.token_bytes(32)
            )
            for i in range(count)
        ]
    )


async def test_hard_bounce_suppresses_and_records(store: SqlLedgerStore) -> None:
    """A hard bounce: a `bounced` event (hard) and a client-scope hard_bounce suppression."""
    await _client(store)
    key = secrets.token_bytes(32)
    outcome = await InboundLedger(store).record_bounce("acme", key, 1, BounceKind.HARD, NOW, "dsn 5.1.1")
    assert outcome.suppressed
    assert await _reasons(store, key) == {"acme": "hard_bounce"}
    rows = await store.db.fetch("SELECT kind, reason FROM events WHERE subject_key = $1", key)
    assert [tuple(r) for r in rows] == [("bounced", "hard")]
    ledger_kinds = [e.kind for e in await store.chain_events("acme", key)]
    assert [str(k) for k in ledger_kinds] == ["hard_bounce"]


async def test_synchronous_upstream_replies_use_the_same_rules(store: SqlLedgerStore) -> None:
    """A 550 5.1.1 during relay suppresses like a DSN; a policy block does not; a 250 is no bounce."""
    await _client(store)
    ledger = InboundLedger(store)
    gone, blocked = secrets.token_bytes(32), secrets.token_bytes(32)
    hard = await ledger.record_upstream_reply("acme", gone, 1, 550, "5.1.1 <x@y.example>: User unknown", NOW)
    soft = await ledger.record_upstream_reply("acme", blocked, 1, 554, "5.7.1 blocked by policy", NOW)
    assert hard is not None and hard.kind is BounceKind.HARD and hard.suppressed
    assert soft is not None and soft.kind is BounceKind.SOFT and not soft.suppressed
    assert await ledger.record_upstream_reply("acme", gone, 1, 250, "2.0.0 OK", NOW) is None
    assert await _reasons(store, gone) == {"acme": "hard_bounce"}
    assert await _reasons(store, blocked) == {}


async def test_soft_bounces_add_up_to_a_suppression(store: SqlLedgerStore) -> None:
    """Three campaigns soft-bouncing within the window suppress; repeats of one copy do not count."""
    await _client(store)
    ledger = InboundLedger(store, InboundPolicy(soft_threshold=3, soft_window_days=7))
    key = secrets.token_bytes(32)
    for hours in (0, 4, 24):  # delay warnings about the same copy
        outcome = await ledger.record_bounce(
            "acme", key, 1, BounceKind.SOFT, NOW + timedelta(hours=hours), "dsn"
        )
        assert outcome.soft_score == 1 and not outcome.suppressed
    second = await ledger.record_bounce("acme", key, 2, BounceKind.SOFT, NOW + 2 * DAY, "dsn")
    assert second.soft_score == 2 and not second.suppressed
    assert await _reasons(store, key) == {}
    third = await ledger.record_bounce("acme", key, 3, BounceKind.SOFT, NOW + 3 * DAY, "dsn")
    assert third.suppressed
    assert await _reasons(store, key) == {"acme": "hard_bounce"}
    count = await store.db.fetchval(
        "SELECT COUNT(*) FROM events WHERE subject_key = $1 AND reason = 'soft'", key
    )
    assert count == 5


async def test_old_soft_bounces_decay_and_engagement_resets(store: SqlLedgerStore) -> None:
    """Bounces outside the window and bounces before a click no longer count."""
    await _client(store)
    ledger = InboundLedger(store, InboundPolicy(soft_threshold=2, soft_window_days=7))
    old, clicked = secrets.token_bytes(32), secrets.token_bytes(32)
    await ledger.record_bounce("acme", old, 1, BounceKind.SOFT, NOW, "dsn")
    late = await ledger.record_bounce("acme", old, 2, BounceKind.SOFT, NOW + 8 * DAY, "dsn")
    assert late.soft_score == 1 and not late.suppressed
    await ledger.record_bounce("acme", clicked, 1, BounceKind.SOFT, NOW, "dsn")
    await store.record_events([InteractionEvent("acme", EventKind.CLICKED, NOW + DAY, 1, clicked)])
    after = await ledger.record_bounce("acme", clicked, 2, BounceKind.SOFT, NOW + 2 * DAY, "dsn")
    assert after.soft_score == 1 and not after.suppressed
    await ledger.record_delivery("acme", [clicked])
    assert await ledger.inbound.soft_bounces("acme", clicked) == []


async def test_complaint_scope_client_or_global(store: SqlLedgerStore) -> None:
    """A complaint suppresses for its client by default, for everyone with complaints.scope = global."""
    await _client(store)
    await _client(store, "beta")
    key = secrets.token_bytes(32)
    outcome = await InboundLedger(store).record_complaint("acme", key, 1, NOW, "arf")
    assert outcome.scope == "acme" and outcome.suppressed
    assert await _reasons(store, key, "beta") == {}
    wide = InboundLedger(store, InboundPolicy(complaint_scope=ComplaintScope.GLOBAL))
    other = secrets.token_bytes(32)
    assert (await wide.record_complaint("acme", other, 1, NOW, "arf")).scope == GLOBAL_SCOPE
    assert await _reasons(store, other, "beta") == {GLOBAL_SCOPE: "complaint"}


async def test_rate_guard_warns_then_pauses_and_resume_restarts_the_window(store: SqlLedgerStore) -> None:
    """Over 1000 delivered: 2 complaints warn, the 4th (0.4%) pauses; resume lifts it for good."""
    await _client(store)
    await _client(store, "beta")
    await _delivered(store, 1000)
    ledger = InboundLedger(store, InboundPolicy(complaint_window=1000))
    verdicts = []
    for i in range(4):
        outcome = await ledger.record_complaint(
            "acme", secrets.token_bytes(32), 1, NOW + timedelta(minutes=i), "arf"
        )
        verdicts.append(outcome.guard.verdict)
    assert verdicts == [RateVerdict.OK, RateVerdict.WARN, RateVerdict.WARN, RateVerdict.PAUSE]
    assert "complaint rate 0.40%" in (await store.get_client("acme")).paused_reason
    assert (await store.get_client("beta")).paused_reason == ""
    resumed = await ledger.resume_client("acme", NOW + DAY)
    assert resumed.paused_reason == ""
    again = await ledger.record_complaint("acme", secrets.token_bytes(32), 1, NOW + 2 * DAY, "arf")
    assert again.guard.verdict is RateVerdict.OK and not again.guard.paused_now
    assert (await store.get_client("acme")).paused_reason == ""

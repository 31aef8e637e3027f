"""Relay first, spool on failure: nothing the mailer got 250 for is lost, nothing is sent twice."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from conftest import NOW
from submission_support import (
    MESSAGE,
    add_client,
    dropping_upstream,
    free_port,
    gateway,
    make_service,
    sink,
    submit,
)

from ledger.models import Reason
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.outbox import OutboxCopy, OutboxStore
from smtp_gateway.outbox_worker import OutboxConfig, next_delay

RCPTS = ["one@example.org", "two@example.org"]


async def kinds(store: SqlLedgerStore) -> list[str]:
    """Event kinds in order."""
    return [r[0] for r in await store.db.fetch("SELECT kind FROM events ORDER BY id")]


def _copy(n: int) -> OutboxCopy:
    """A small spooled copy."""
    return OutboxCopy(
        "acme", 1, bytes([n]) * 32, "bounces+x@b.example", f"r{n}@example.org", b"Subject: x\r\n\r\nx\r\n"
    )


async def test_claims_are_exclusive_and_leases_expire(store: SqlLedgerStore) -> None:
    """Two workers claiming at once get disjoint copies; a lapsed lease makes a copy due again."""
    await add_client(store)
    outbox = OutboxStore(store.db)
    await outbox.add([_copy(n) for n in range(10)], NOW, NOW)
    lease = NOW + timedelta(minutes=5)
    first, second = await asyncio.gather(outbox.claim("w1", NOW, lease, 6), outbox.claim("w2", NOW, lease, 6))
    ids_1, ids_2 = {c.id for c in first}, {c.id for c in second}
    assert not ids_1 & ids_2 and len(ids_1 | ids_2) == 10
    assert await outbox.claim("w3", NOW, lease, 10) == []
    assert not await outbox.complete(first[0].id, "w2")  # not w2's lease
    assert await outbox.complete(first[0].id, "w1")
    later = lease + timedelta(seconds=1)
    reclaimed = await outbox.claim("w3", later, later + timedelta(minutes=5), 20)
    assert len(reclaimed) == 9 and reclaimed[0].message == b"Subject: x\r\n\r\nx\r\n"
    await outbox.reschedule(reclaimed[0].id, "w3", later + timedelta(hours=1), "451 later", 2)
    assert reclaimed[0].id not in {c.id for c in await outbox.claim("w4", later, later, 20)}
    assert await outbox.depth() == 9


def test_backoff_grows_and_is_capped() -> None:
    """Retry delays double from the base and stop at the maximum."""
    config = OutboxConfig(retry_base=timedelta(seconds=60), retry_max=timedelta(hours=1))
    delays = [next_delay(n, config, jitter=0).total_seconds() for n in (1, 2, 3, 10, 50)]
    assert delays == [60, 120, 240, 3600, 3600]


@pytest.mark.parametrize("failure", ["down", "421", "451", "drop"])
async def test_upstream_failure_spools_then_delivers_exactly_once(
    store: SqlLedgerStore, test_secrets: Secrets, failure: str
) -> None:
    """Down, 421, 451 or a drop mid-DATA: 250 only with the copies in the outbox; after recovery each arrives once."""
    service = make_service(store, test_secrets)
    await add_client(store)
    outbox = OutboxStore(store.db)
    if failure == "drop":
        async with dropping_upstream() as (dropped, port), gateway(service, port) as gw:
            assert await asyncio.to_thread(submit, gw.port, RCPTS) == {}
            assert len(dropped) >= 2  # both copies reached DATA and were cut off
            spooled = await outbox.all()
            assert await gw.worker.run_once() == 2  # still dropping: rescheduled, not lost
            assert await outbox.depth() == 2
        async with sink(port) as (upstream, _), gateway(service, port) as gw:
            await _drain(gw)
    elif failure == "down":
        port = free_port()
        async with gateway(service, port) as gw:
            assert await asyncio.to_thread(submit, gw.port, RCPTS) == {}
            spooled = await outbox.all()
            async with sink(port) as (upstream, _):
                await _drain(gw)
    else:
        reply = "421 4.3.2 Service shutting down" if failure == "421" else "451 4.3.0 Try again later"
        async with sink() as (upstream, port), gateway(service, port) as gw:
            upstream.fail_with = reply
            assert await asyncio.to_thread(submit, gw.port, RCPTS) == {}
            spooled = await outbox.all()
            assert upstream.received == []
            upstream.fail_with = None
            await _drain(gw)
    assert sorted(c.rcpt for c in spooled) == RCPTS
    assert all(c.message.startswith(b"DKIM-Signature:") for c in spooled)
    assert sorted(r.rcpt_tos[0] for r in upstream.received) == RCPTS
    assert len(upstream.received) == 2
    assert await outbox.depth() == 0
    events = await kinds(store)
    assert events.count("deferred") >= 2 and events.count("delivered") == 2


async def _drain(gw: object) -> None:
    """Run the retry worker until a round attempts nothing, then flush the event log."""
    from smtp_gateway.gateway import Gateway

    assert isinstance(gw, Gateway)
    for _ in range(5):
        if await gw.worker.run_once() == 0:
            break
    await gw.delivery_log.flush()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_unwritable_outbox_answers_451_and_records_nothing(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Upstream down and the ledger locked by another writer: 451 4.3.0; the retry after unlock gets 250."""
    import sqlite3

    service = make_service(store, test_secrets)
    await add_client(store)
    await store.campaign_num("acme", "spring-2026", NOW)
    await store.db.execute("PRAGMA busy_timeout = 200")
    path = getattr(store.db, "path")  # noqa: B009
    outbox = OutboxStore(store.db)

    def mailer(port: int, lock: sqlite3.Connection) -> tuple[tuple[int, bytes], dict[str, tuple[int, bytes]]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("mailer.test")
            client.login("acme", "correct horse battery staple")
            client.mail("news@acme.example")
            client.rcpt(RCPTS[0])
            lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock now
            first = client.data(MESSAGE)
            lock.execute("ROLLBACK")
            return first, client.sendmail("news@acme.example", [RCPTS[0]], MESSAGE)

    lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        async with gateway(service, free_port()) as gw:
            first, retry = await asyncio.to_thread(mailer, gw.port, lock)
            await gw.delivery_log.flush()
    finally:
        lock.close()
    assert first == (451, b"4.3.0 Ledger temporarily unavailable, try again later")
    assert retry == {}
    assert [c.rcpt for c in await outbox.all()] == [RCPTS[0]]  # once: the refused attempt left nothing
    assert await kinds(store) == ["deferred"]


async def test_upstream_5xx_is_a_hard_bounce(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """A synchronous 5xx: `bounced` event, client-scope hard-bounce suppression, next message refused at RCPT."""
    service = make_service(store, test_secrets)
    await add_client(store)
    async with sink() as (upstream, port), gateway(service, port) as gw:
        upstream.fail_rcpt_with = "550 5.1.1 <one@example.org>: no such user"
        assert await asyncio.to_thread(submit, gw.port, [RCPTS[0]]) == {}
        await gw.delivery_log.flush()
        upstream.fail_rcpt_with = None
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(submit, gw.port, [RCPTS[0]])
    assert refused.value.recipients == {
        RCPTS[0]: (550, b"5.7.1 <one@example.org>: recipient suppressed (hard_bounce)")
    }
    assert await kinds(store) == ["bounced", "suppressed"]
    assert await OutboxStore(store.db).depth() == 0
    decision = await service.check(RCPTS[0], "acme", NOW)
    assert decision.reason is Reason.HARD_BOUNCE and decision.scope == "acme"


async def test_copy_expires_into_a_bounce(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """A copy still undeliverable after outbox.max_age is removed and recorded as bounced."""
    service = make_service(store, test_secrets)
    await add_client(store)
    outbox = OutboxStore(store.db)
    async with gateway(service, free_port()) as gw:
        assert await asyncio.to_thread(submit, gw.port, [RCPTS[0]]) == {}
        gw.worker.clock = lambda: datetime.now(UTC) + timedelta(days=6)  # past the 120 h default
        assert await gw.worker.run_once() == 1
        await gw.delivery_log.flush()
    assert await outbox.depth() == 0
    rows = await store.db.fetch("SELECT kind, reason FROM events ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [
        ("deferred", "upstream unreachable"),
        ("bounced", "expired in outbox"),
    ]


async def test_pooled_connection_is_reused_and_survives_upstream_restart(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Messages share one upstream session; after the upstream restarts, the stale one is replaced, not spooled."""
    service = make_service(store, test_secrets)
    await add_client(store)
    port = free_port()
    async with gateway(service, port) as gw:
        async with sink(port) as (first, _):
            for _ in range(3):
                assert await asyncio.to_thread(submit, gw.port, [RCPTS[0]]) == {}
            assert first.sessions == 1 and len(first.received) == 3
        async with sink(port) as (second, _):  # the pooled session died with the first sink
            assert await asyncio.to_thread(submit, gw.port, [RCPTS[0]]) == {}
    assert len(second.received) == 1
    assert await OutboxStore(store.db).depth() == 0

"""Faults: an upstream that is down, refuses at random, hangs up mid-DATA or answers too slowly, and a
PostgreSQL whose connections are killed — every accepted message arrives, the outbox depth rises and falls.

(The ledger locked while the upstream is down → 451 is in test_outbox.py.)
"""

from __future__ import annotations

import asyncio
import random
import smtplib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import PG_URL, drop_schema, make_store
from submission_support import (
    MESSAGE,
    PASSWORD,
    SinkController,
    SinkHandler,
    add_client,
    free_port,
    make_service,
)

from ledger.models import Client
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.outbox import OutboxCopy, OutboxStore
from smtp_gateway import metrics
from smtp_gateway.delivery import DeliveryLog
from smtp_gateway.gateway import Gateway
from smtp_gateway.outbox_worker import OutboxConfig, OutboxWorker
from smtp_gateway.relay import MaildirRelay, UpstreamConfig
from smtp_gateway.submission import SubmissionConfig


class FlakyHandler(SinkHandler):
    """A sink that answers DATA with 451, hangs up, or stalls past the relay's timeout — at random."""

    def __init__(self, seed: int, failure_rate: float) -> None:
        """Fail about ``failure_rate`` of the transactions."""
        super().__init__()
        self.rng = random.Random(seed)
        self.failure_rate = failure_rate
        self.faults = {"451": 0, "hangup": 0, "slow": 0}

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Fail, or keep the message."""
        if self.rng.random() < self.failure_rate:
            fault = self.rng.choice(list(self.faults))
            self.faults[fault] += 1
            if fault == "451":
                return "451 4.3.0 try again"
            if fault == "hangup":
                assert server.transport is not None
                server.transport.close()
                return "421 closing"
            await asyncio.sleep(2.5)  # the relay gives up after 1 s: it may arrive twice, never zero times
        return await super().handle_DATA(server, session, envelope)


def _send(port: int, count: int, prefix: str) -> list[int]:
    """Send ``count`` one-recipient messages; the final reply code of each."""
    codes = []
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("acme", PASSWORD)
            try:
                client.sendmail("news@acme.example", [f"{prefix}{n}@example.org"], MESSAGE)
                codes.append(250)
            except smtplib.SMTPResponseException as exc:
                codes.append(exc.smtp_code)
    return codes


async def test_upstream_down_then_flaky_everything_arrives(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Down 3 s, then 40% of transactions fail (451, hang-up, timeout): all 250'd messages arrive; depth rises and falls."""
    service = make_service(store, test_secrets)
    await add_client(store)
    upstream_port = free_port()
    gw = Gateway.build(
        service,
        host="127.0.0.1",
        port=0,
        submission=SubmissionConfig(hostname="gw.test", inbound_domain="b.example", first_retry_seconds=0.2),
        upstream=UpstreamConfig(url=f"smtp://127.0.0.1:{upstream_port}", pool_size=4, timeout_seconds=1.0),
        outbox=OutboxConfig(
            retry_base=timedelta(seconds=0.2), retry_max=timedelta(seconds=1), poll_seconds=0.1, batch=20
        ),
    )
    await gw.start()
    depths: list[float] = []

    async def watch() -> None:
        while True:
            depths.append(metrics.OUTBOX_DEPTH._value.get())
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    handler = FlakyHandler(seed=3, failure_rate=0.4)
    controller = SinkController(handler, hostname="127.0.0.1", port=upstream_port)
    try:
        down_codes = await asyncio.to_thread(_send, gw.port, 10, "down")
        await asyncio.sleep(0.5)  # the worker notices the spooled copies
        peak_while_down = max(depths)
        await asyncio.to_thread(controller.start)  # the upstream comes back, unreliable
        flaky_codes = await asyncio.to_thread(_send, gw.port, 20, "flaky")
        for _ in range(100):  # up to 20 s for the retries to drain the outbox
            if await gw.worker.outbox.depth() == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
    finally:
        watcher.cancel()
        await gw.stop()
        await asyncio.to_thread(controller.stop)
    accepted = {f"down{n}@example.org" for n, c in enumerate(down_codes) if c == 250}
    accepted |= {f"flaky{n}@example.org" for n, c in enumerate(flaky_codes) if c == 250}
    arrived = [r.rcpt_tos[0] for r in handler.received]
    assert all(c == 250 for c in down_codes + flaky_codes)  # spooling makes every one a 250
    assert sum(handler.faults.values()) >= 4, handler.faults  # the faults did happen
    assert accepted - set(arrived) == set()  # zero losses (duplicates allowed: at-least-once)
    assert peak_while_down >= 10 and depths[-1] == 0


@pytest.fixture
async def pg_store(tmp_path: Path) -> AsyncIterator[SqlLedgerStore]:
    """A migrated store on PostgreSQL only (this fault cannot happen to an SQLite file)."""
    opened, _url, schema = await make_store("postgresql", tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
        await drop_schema(schema)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="needs TEST_DATABASE_URL (.ci/run sets it when PostgreSQL answers)")
async def test_postgresql_connections_killed_answers_451_or_250_never_loses(
    pg_store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """pg_terminate_backend on every pool connection mid-run: each reply is 250 (copy spooled) or 4xx, then service resumes."""
    store = pg_store
    service = make_service(store, test_secrets)
    await add_client(store)
    gw = Gateway.build(
        service,
        host="127.0.0.1",
        port=0,
        submission=SubmissionConfig(hostname="gw.test", inbound_domain="b.example"),
        upstream=UpstreamConfig(url=f"smtp://127.0.0.1:{free_port()}", timeout_seconds=1.0),  # down: spool
        outbox=OutboxConfig(poll_seconds=3600),
    )
    await gw.start()
    await gw.worker.stop()
    killer = await asyncpg.connect(PG_URL)
    codes: list[int] = []
    try:
        for round_ in range(3):
            pids = {await store.db.fetchval("SELECT pg_backend_pid()") for _ in range(20)}
            pids |= set(
                await asyncio.gather(*(store.db.fetchval("SELECT pg_backend_pid()") for _ in range(10)))
            )
            for pid in pids:
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
            codes += await asyncio.to_thread(_send, gw.port, 3, f"r{round_}-")
        spooled = {c.rcpt for c in await gw.worker.outbox.all()}
    finally:
        await killer.close()
        await gw.stop()
    accepted = {f"r{r}-{n}@example.org" for r in range(3) for n in range(3) if codes[r * 3 + n] == 250}
    assert all(c == 250 or 400 <= c < 500 for c in codes), codes  # never a wrong 5xx
    assert codes[-1] == 250  # recovered by itself
    assert accepted <= spooled  # every 250 is durably in the outbox


async def test_restart_frees_the_leases_of_a_killed_worker(store: SqlLedgerStore) -> None:
    """Copies leased by a SIGKILLed worker on this host are due again at restart; other hosts' leases are left."""
    dead = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
    )
    dead_owner = f"{socket.gethostname()}:{int(dead.stdout)}:aaaaaa"
    outbox = OutboxStore(store.db)
    now = datetime.now(UTC)
    copies = [OutboxCopy("acme", None, None, "b@x.example", f"r{n}@example.org", b"m") for n in range(2)]
    await store.add_client(Client(id="acme", name="Acme", domains=("acme.example",)), now)
    await outbox.add(copies, now, now)
    lease = now + timedelta(minutes=5)
    assert len(await outbox.claim(dead_owner, now, lease, 1)) == 1
    assert len(await outbox.claim("elsewhere.example:1:bbbbbb", now, lease, 1)) == 1
    worker = OutboxWorker(outbox, MaildirRelay(Path("/nonexistent")), DeliveryLog(store), OutboxConfig())
    assert await worker.release_dead_leases() == 1
    freed = await outbox.claim("me", now, lease, 10)
    assert [c.rcpt for c in freed] == ["r0@example.org"]  # the dead worker's copy; not the other host's

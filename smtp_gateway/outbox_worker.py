"""The retry worker: delivers the outbox with exponential back-off until each copy's lifetime ends.

Every process of ``serve --workers N`` (and every node sharing a PostgreSQL ledger) may run one:
copies are claimed with a lease, so none is sent by two workers at once. A worker that dies
mid-send leaves a lease that runs out, after which the copy is due again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.errors import LedgerError
from ledger.models import EventKind
from ledger.store.ledger_store import InteractionEvent
from ledger.store.outbox import OutboxCopy, OutboxStore
from ledger.store.sends import Send
from smtp_gateway import metrics
from smtp_gateway.delivery import DeliveryLog
from smtp_gateway.relay import Copy, Outcome, Relay, RelayResult, send_all
from smtp_gateway.submission import Clock, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Retry schedule (mapped from ``[outbox]`` by the CLI)."""

    max_age: timedelta = timedelta(hours=120)
    retry_base: timedelta = timedelta(seconds=60)
    retry_max: timedelta = timedelta(hours=1)
    poll_seconds: float = 1.0
    batch: int = 50
    lease: timedelta = timedelta(minutes=5)


def next_delay(attempts: int, config: OutboxConfig, jitter: float = 0.1) -> timedelta:
    """Back-off after ``attempts`` failed attempts: base·2^(n-1), capped, with a little jitter."""
    exponent = min(max(attempts - 1, 0), 30)
    delay: timedelta = min(config.retry_base * (2**exponent), config.retry_max)
    # Jitter spreads retries of a burst that failed together (an upstream restart).
    return delay * (1 + random.uniform(-jitter, jitter))


class OutboxWorker:
    """Claims due copies, relays them, and records delivered / deferred / bounced."""

    def __init__(
        self,
        outbox: OutboxStore,
        relay: Relay,
        delivery_log: DeliveryLog,
        config: OutboxConfig,
        *,
        clock: Clock = utc_now,
        owner: str | None = None,
    ) -> None:
        """``owner`` names this worker in the leases (host, pid and a random suffix by default)."""
        self.outbox = outbox
        self.relay = relay
        self.delivery_log = delivery_log
        self.config = config
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    async def run_once(self) -> int:
        """Claim and attempt one batch of due copies; return how many were attempted."""
        now = self.clock()
        claimed = await self.outbox.claim(self.owner, now, now + self.config.lease, self.config.batch)
        if not claimed:
            return 0
        results = await send_all(self.relay, [Copy(c.mail_from, c.rcpt, c.message) for c in claimed])
        done = self.clock()
        for copy, result in zip(claimed, results, strict=True):
            await self._settle(copy, result, done)
        return len(claimed)

    async def _settle(self, copy: OutboxCopy, result: RelayResult, now: datetime) -> None:
        """Record one attempt's outcome and remove or reschedule the copy."""
        if result.outcome is Outcome.DELIVERED:
            if await self.outbox.complete(copy.id, self.owner):
                self._event(copy, EventKind.DELIVERED, now)
                if copy.subject_key is not None:
                    self.delivery_log.add(sends=[Send(copy.client_id, copy.subject_key, now)])
                metrics.COPIES_RELAYED.inc()
            return
        if result.outcome is Outcome.PERMANENT:
            if await self.outbox.complete(copy.id, self.owner):
                await self.delivery_log.handle_permanent_failure(
                    copy.client_id, copy.campaign_num, copy.subject_key, result, now
                )
            return
        created = copy.created_at or now
        if now - created >= self.config.max_age:
            if await self.outbox.complete(copy.id, self.owner):
                metrics.BOUNCES.labels(kind="expired").inc()
                self._event(copy, EventKind.BOUNCED, now, "expired in outbox")
            return
        attempts = copy.attempts + 1
        await self.outbox.reschedule(
            copy.id, self.owner, now + next_delay(attempts, self.config), result.detail, attempts
        )
        self._event(
            copy, EventKind.DEFERRED, now, f"upstream {result.code}" if result.code else "unreachable"
        )

    def _event(self, copy: OutboxCopy, kind: EventKind, now: datetime, reason: str = "") -> None:
        """Queue one event about ``copy``."""
        self.delivery_log.add(
            events=[InteractionEvent(copy.client_id, kind, now, copy.campaign_num, copy.subject_key, reason)]
        )

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        """Poll until stopped; a failing database only delays the next round."""
        while not self._stopping:
            try:
                attempted = await self.run_once()
                metrics.OUTBOX_DEPTH.set(await self.outbox.depth())
            except LedgerError as exc:
                log.warning("outbox round failed, will retry: %s", exc)
                attempted = 0
            if attempted >= self.config.batch:
                continue  # more may be due right away
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            self._wake.clear()

    async def release_dead_leases(self) -> int:
        """Free the leases of workers on this host whose process is gone (a crash, SIGKILL).

        Without this their copies would wait for the lease to lapse (minutes) before a retry.
        Only same-host owners are judged; a reused pid merely means waiting for the lapse.
        """
        host = socket.gethostname()
        released = 0
        for owner in await self.outbox.lease_owners():
            parts = owner.split(":")
            if len(parts) < 3 or ":".join(parts[:-2]) != host or owner == self.owner:
                continue
            try:
                pid = int(parts[-2])
            except ValueError:
                continue
            if pid == os.getpid() or _process_alive(pid):
                continue
            await self.outbox.release_leases(owner)
            released += 1
        return released

    async def start(self) -> None:
        """Free dead workers' leases, then start polling in the background."""
        try:
            if released := await self.release_dead_leases():
                log.info("released the outbox leases of %d dead worker(s)", released)
        except LedgerError as exc:
            log.warning("could not check outbox leases: %s", exc)
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let the round in progress settle its copies, then stop.

        Only if that takes longer than ``grace_seconds`` is the round cancelled; its copies keep
        their leases and are retried once those run out (at-least-once, never lost).
        """
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


def _process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True

"""What happened to each copy, written to the ledger in batches: events, subjects, send times.

The gateway and the outbox worker report outcomes here without awaiting a write per copy: a
background task flushes the buffer every few milliseconds in one transaction per table, so
many messages share one write. If the database is briefly unavailable the buffer is kept and
retried (events are statistics; the copies themselves are already delivered or spooled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime

from ledger.bounce_service import InboundLedger
from ledger.errors import LedgerError
from ledger.identity import Identity
from ledger.models import EventKind
from ledger.store.ledger_store import InteractionEvent, SqlLedgerStore
from ledger.store.sends import Send, SendStore
from smtp_gateway import metrics
from smtp_gateway.relay import RelayResult

log = logging.getLogger(__name__)


class DeliveryLog:
    """A buffer of ledger writes flushed by a background task (or explicitly, by :meth:`flush`)."""

    def __init__(
        self,
        store: SqlLedgerStore,
        *,
        flush_interval: float = 0.02,
        max_batch: int = 2000,
        bounces: InboundLedger | None = None,
    ) -> None:
        """Write through ``store``; flush at most every ``flush_interval`` seconds.

        ``bounces`` applies the bounce rules to permanent upstream failures (default policy
        unless given; `serve` passes the configured one).
        """
        self.store = store
        self.bounces = bounces or InboundLedger(store)
        self.sends = SendStore(store.db)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._events: list[InteractionEvent] = []
        self._subjects: list[Identity] = []
        self._sends: list[Send] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(
        self,
        *,
        events: Iterable[InteractionEvent] = (),
        subjects: Iterable[Identity] = (),
        sends: Iterable[Send] = (),
    ) -> None:
        """Queue writes (never blocks, never fails); they reach the database within milliseconds."""
        self._events.extend(events)
        self._subjects.extend(subjects)
        self._sends.extend(sends)
        self._wake.set()

    @property
    def pending(self) -> int:
        """How many writes wait in the buffer."""
        return len(self._events) + len(self._subjects) + len(self._sends)

    async def flush(self) -> None:
        """Write everything buffered; on failure the batch stays queued and the error propagates."""
        async with self._lock:
            while self.pending:
                subjects, self._subjects = self._subjects[: self.max_batch], self._subjects[self.max_batch :]
                sends, self._sends = self._sends[: self.max_batch], self._sends[self.max_batch :]
                events, self._events = self._events[: self.max_batch], self._events[self.max_batch :]
                try:
                    if subjects or sends:
                        await self.sends.record(subjects, sends, _latest(sends, events))
                        subjects, sends = [], []
                    await self.store.record_events(events)
                except BaseException:
                    # Put back what was not written, in front, so a retry keeps the order.
                    self._subjects[:0] = subjects
                    self._sends[:0] = sends
                    self._events[:0] = events
                    raise

    async def start(self) -> None:
        """Start the background flusher."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="delivery-log")

    async def stop(self) -> None:
        """Stop the flusher and write what is left (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except LedgerError as exc:
            log.error("could not write %d buffered ledger rows at shutdown: %s", self.pending, exc)

    async def _run(self) -> None:
        """Flush whenever something was added, batching what arrives within ``flush_interval``."""
        backoff = self.flush_interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(backoff)
            try:
                await self.flush()
                backoff = self.flush_interval
            except LedgerError as exc:
                log.warning("ledger write failed, will retry: %s", exc)
                backoff = min(max(backoff * 2, 0.1), 5.0)
                self._wake.set()

    async def handle_permanent_failure(
        self,
        client_id: str,
        campaign_num: int | None,
        subject_key: bytes | None,
        result: RelayResult,
        now: datetime,
    ) -> None:
        """The upstream refused a copy for good: the bounce rules decide (as for a DSN).

        A ``bounced`` event, and a client-scope hard-bounce suppression for an address failure
        (5.1.1); a full mailbox or a policy block (5.2.2, 5.7.x) counts as a soft bounce. The
        upstream's text is not stored: it often quotes the address, and events never hold one.
        """
        if subject_key is None or not 500 <= result.code <= 599:
            # No reply code (an extension the upstream lacks…): says nothing about the address.
            metrics.BOUNCES.labels(kind="hard").inc()
            reason = f"upstream {result.code or 'refused'}"
            self.add(
                events=[
                    InteractionEvent(client_id, EventKind.BOUNCED, now, campaign_num, subject_key, reason)
                ]
            )
            return
        outcome = await self.bounces.record_upstream_reply(
            client_id, subject_key, campaign_num, result.code, result.detail, now
        )
        metrics.BOUNCES.labels(kind=str(outcome.kind) if outcome else "hard").inc()


def _latest(sends: list[Send], events: list[InteractionEvent]) -> datetime:
    """The creation time to give new subject rows: the newest moment in the batch."""
    moments = [s.at for s in sends] + [e.at for e in events]
    return max(moments) if moments else datetime.now().astimezone()

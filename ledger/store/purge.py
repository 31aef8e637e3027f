"""The retention purge: applies ``ledger.retention`` to the store, in short batches.

Each batch is its own transaction of at most a few hundred rows (a few tens of milliseconds on
SQLite), so the gateway's writes never wait long behind it. Every rule only touches rows that are
due, so running the purge twice deletes nothing the second time. Deleted interaction events are
rolled up into campaign aggregates first; deleted consent records move their chain's base to its
head (the checkpoint), so ``ledger verify`` passes afterwards.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.models import GLOBAL_SCOPE, ConsentStatus, LedgerEventKind, Relationship
from ledger.retention import (
    UNSUBSCRIBE_REASONS,
    Cutoffs,
    RetentionPolicy,
    consent_proof_deletable,
    cutoffs,
    expires_now,
)
from ledger.store.database import Database, from_db_time, to_db_time
from ledger.store.imports import fetch_in
from ledger.store.ledger_store import SqlLedgerStore
from ledger.store.rollup import EVENT_COLUMNS, rollup_and_delete

EVENT_BATCH = 2000
CHAIN_BATCH = 200

RULES = {
    "inactivity_expiry": "relationships expired after {inactivity_days} days without engagement",
    "old_events": "interaction events older than {event_days} days (campaign aggregates kept)",
    "unsubscribed_events": "events of relationships unsubscribed more than {unsubscribed_relationship_days} days ago",
    "unsubscribed_relationships": "relationships unsubscribed more than {unsubscribed_relationship_days} days ago",
    "consent_proof": "consent-ledger events {consent_proof_days} days after withdrawal or last engagement",
    "outbox": "outbox copies older than {outbox_days} days",
}

Progress = Callable[[str, int], None]
TransactionTimer = Callable[[str, float], None]
"""Called after each write transaction with its rule and how long it held the write lock (seconds)."""


@dataclass
class PurgeReport:
    """What the purge deleted (or, dry, would delete) per rule, and how many transactions it took."""

    now: datetime
    dry_run: bool = False
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    transactions: int = 0

    def describe(self, policy: RetentionPolicy) -> list[tuple[str, int, str]]:
        """(rule, count, description) rows in rule order."""
        values = {name: getattr(policy, name) for name in policy.__dataclass_fields__}
        return [(rule, self.deleted[rule], text.format(**values)) for rule, text in RULES.items()]


def _relationship(client_id: str, row: Sequence[Any]) -> Relationship:
    """A relationship from (status, consent_at, first_sent_at, last_sent_at, last_engagement_at)."""
    status, consent, first, last, engaged = row
    return Relationship(
        client_id=client_id,
        status=ConsentStatus(status) if status else None,
        consent_at=from_db_time(consent),
        first_sent_at=from_db_time(first),
        last_sent_at=from_db_time(last),
        last_engagement_at=from_db_time(engaged),
    )


class Purger:
    """Runs each retention rule to completion, batch by batch."""

    def __init__(
        self,
        store: SqlLedgerStore,
        policy: RetentionPolicy,
        now: datetime,
        *,
        dry_run: bool,
        progress: Progress | None,
        on_transaction: TransactionTimer | None = None,
    ) -> None:
        """Purge ``store`` as of ``now``."""
        self.store = store
        self.db: Database = store.db
        self.policy = policy
        self.cut: Cutoffs = cutoffs(policy, now)
        self.report = PurgeReport(now, dry_run)
        self.progress = progress
        self.on_transaction = on_transaction

    @asynccontextmanager
    async def _write(self, rule: str) -> AsyncIterator[Database]:
        """One write transaction of ``rule``, counted, and timed from BEGIN to COMMIT for the hook."""
        async with self.db.transaction() as tx:
            # Started once BEGIN (IMMEDIATE on SQLite) has returned: the write lock is ours from here.
            started = time.perf_counter()
            yield tx
        if self.on_transaction is not None:
            self.on_transaction(rule, time.perf_counter() - started)
        self.report.transactions += 1

    def _count(self, rule: str, n: int) -> None:
        """Add ``n`` to a rule's count."""
        self.report.deleted[rule] += n
        if self.progress is not None and n:
            self.progress(rule, n)

    async def inactivity(self) -> None:
        """Expire idle relationships: status ``expired`` plus an ``inactivity_expiry`` ledger event."""
        cut = to_db_time(self.cut.inactive_before)
        after: tuple[str, bytes] = ("", b"")
        while True:
            rows = await self.db.fetch(
                "SELECT client_id, subject_key, status, consent_at, first_sent_at, last_sent_at, last_engagement_at "
                "FROM relationships WHERE (status IS NULL OR status = $1) "
                "AND COALESCE(last_engagement_at, consent_at, first_sent_at) < $2 "
                "AND (client_id > $3 OR (client_id = $3 AND subject_key > $4)) "
                "ORDER BY client_id, subject_key LIMIT $5",
                str(ConsentStatus.ACTIVE),
                cut,
                after[0],
                after[1],
                CHAIN_BATCH,
            )
            if not rows:
                return
            after = (rows[-1][0], bytes(rows[-1][1]))
            due = [
                (r[0], bytes(r[1])) for r in rows if expires_now(_relationship(r[0], list(r[2:])), self.cut)
            ]
            if self.report.dry_run or not due:
                self._count("inactivity_expiry", len(due))
                continue
            async with self._write("inactivity_expiry") as tx:
                for client_id, key in due:
                    await tx.execute(
                        "UPDATE relationships SET status = $3, changed_at = $4 WHERE client_id = $1 AND subject_key = $2",
                        client_id,
                        key,
                        str(ConsentStatus.EXPIRED),
                        to_db_time(self.report.now),
                    )
                    await self.store.append_ledger_event(
                        tx,
                        client_id=client_id,
                        subject_key=key,
                        kind=LedgerEventKind.INACTIVITY_EXPIRY,
                        at=self.report.now,
                        source="purge",
                        detail=f"no engagement for {self.policy.inactivity_days} days",
                    )
            self._count("inactivity_expiry", len(due))

    async def _events_loop(self, rule: str, source: str, cut: int) -> None:
        """Roll up and delete the events ``FROM events e … WHERE …`` (``source``, with ``$1`` = cut)."""
        if self.report.dry_run:
            count = await self.db.fetchval(f"SELECT COUNT(*) FROM (SELECT DISTINCT e.id {source}) due", cut)
            self._count(rule, int(count))
            return
        cols = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        while True:
            async with self._write(rule) as tx:
                rows = await tx.fetch(
                    f"SELECT DISTINCT {cols} {source} ORDER BY e.id LIMIT $2", cut, EVENT_BATCH
                )
                self._count(rule, await rollup_and_delete(tx, rows))
            if len(rows) < EVENT_BATCH:
                return

    async def old_events(self) -> None:
        """Delete events older than the event retention period."""
        await self._events_loop(
            "old_events", "FROM events e WHERE e.at < $1", to_db_time(self.cut.events_before)
        )

    def _unsubscribed_join(self, alias: str, client_column: str) -> str:
        """JOIN onto the suppressions that end a relationship and are older than the cut-off."""
        reasons = ", ".join(f"'{r}'" for r in UNSUBSCRIBE_REASONS)
        return (
            f"JOIN suppressions s ON s.subject_key = {alias}.subject_key "
            f"AND (s.scope = {alias}.{client_column} OR s.scope = '{GLOBAL_SCOPE}') "
            f"AND s.reason IN ({reasons}) AND s.since < $1"
        )

    async def unsubscribed(self) -> None:
        """Delete events and relationships of subjects unsubscribed more than 30 days ago."""
        cut = to_db_time(self.cut.unsubscribed_before)
        await self._events_loop(
            "unsubscribed_events", f"FROM events e {self._unsubscribed_join('e', 'client_id')}", cut
        )
        select = (
            "SELECT DISTINCT r.client_id, r.subject_key FROM relationships r "
            f"{self._unsubscribed_join('r', 'client_id')} ORDER BY r.client_id, r.subject_key"
        )
        if self.report.dry_run:
            self._count("unsubscribed_relationships", len(await self.db.fetch(select, cut)))
            return
        while True:
            async with self._write("unsubscribed_relationships") as tx:
                rows = await tx.fetch(f"{select} LIMIT $2", cut, EVENT_BATCH)
                await tx.executemany(
                    "DELETE FROM relationships WHERE client_id = $1 AND subject_key = $2",
                    [(r[0], bytes(r[1])) for r in rows],
                )
            self._count("unsubscribed_relationships", len(rows))
            if len(rows) < EVENT_BATCH:
                return

    async def consent_proof(self) -> None:
        """Delete whole consent chains idle past the proof period; the chain's base moves to its head."""
        cut = to_db_time(self.cut.consent_proof_before)
        candidates = await self.db.fetch(
            "SELECT c.client_id, c.subject_key, c.head_seq, MAX(e.at) FROM ledger_chains c "
            "JOIN ledger_events e ON e.client_id = c.client_id AND e.subject_key = c.subject_key "
            "WHERE c.head_seq > c.base_seq GROUP BY c.client_id, c.subject_key, c.head_seq HAVING MAX(e.at) < $1",
            cut,
        )
        for start in range(0, len(candidates), CHAIN_BATCH):
            batch = candidates[start : start + CHAIN_BATCH]
            relationships: dict[tuple[str, bytes], Relationship] = {}
            for client_id in {r[0] for r in batch}:
                keys = [bytes(r[1]) for r in batch if r[0] == client_id]
                for row in await fetch_in(
                    self.db,
                    "SELECT subject_key, status, consent_at, first_sent_at, last_sent_at, last_engagement_at "
                    "FROM relationships WHERE client_id = $1 AND",
                    (client_id,),
                    "subject_key",
                    keys,
                ):
                    relationships[(client_id, bytes(row[0]))] = _relationship(client_id, list(row[1:]))
            due = [
                (r[0], bytes(r[1]), int(r[2]))
                for r in batch
                if consent_proof_deletable(
                    from_db_time(int(r[3])) or self.report.now,
                    relationships.get((r[0], bytes(r[1]))),
                    self.cut,
                )
            ]
            if self.report.dry_run or not due:
                for client_id, key, _head in due:
                    self._count("consent_proof", int(await self._chain_size(self.db, client_id, key)))
                continue
            async with self._write("consent_proof") as tx:
                for client_id, key, head_seq in due:
                    head = await tx.fetchrow(
                        "SELECT head_seq, head_hash FROM ledger_chains WHERE client_id = $1 AND subject_key = $2",
                        client_id,
                        key,
                    )
                    if head is None or int(head[0]) != head_seq:
                        continue  # the chain moved since it was read: it is not idle any more
                    self._count("consent_proof", await self._chain_size(tx, client_id, key))
                    await tx.execute(
                        "DELETE FROM ledger_events WHERE client_id = $1 AND subject_key = $2 AND seq <= $3",
                        client_id,
                        key,
                        head_seq,
                    )
                    await tx.execute(
                        "UPDATE ledger_chains SET base_seq = head_seq, base_hash = head_hash "
                        "WHERE client_id = $1 AND subject_key = $2",
                        client_id,
                        key,
                    )

    @staticmethod
    async def _chain_size(db: Database, client_id: str, key: bytes) -> int:
        """How many events a chain still holds."""
        return int(
            await db.fetchval(
                "SELECT COUNT(*) FROM ledger_events WHERE client_id = $1 AND subject_key = $2", client_id, key
            )
        )

    async def outbox(self) -> None:
        """Delete outbox copies older than the outbox period (delivered or expired long ago)."""
        cut = to_db_time(self.cut.outbox_before)
        if self.report.dry_run:
            self._count(
                "outbox",
                int(await self.db.fetchval("SELECT COUNT(*) FROM outbox WHERE created_at < $1", cut)),
            )
            return
        while True:
            async with self._write("outbox") as tx:
                ids = await tx.fetch(
                    "SELECT id FROM outbox WHERE created_at < $1 ORDER BY id LIMIT $2", cut, EVENT_BATCH
                )
                await tx.executemany("DELETE FROM outbox WHERE id = $1", [(r[0],) for r in ids])
            self._count("outbox", len(ids))
            if len(ids) < EVENT_BATCH:
                return


async def run_purge(
    store: SqlLedgerStore,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_transaction: TransactionTimer | None = None,
) -> PurgeReport:
    """Apply every retention rule as of ``now``; ``serve`` calls this daily, the CLI on demand.

    Order matters: inactivity expiry first (it records an event that restarts the consent-proof
    period), consent proof after the event rules. ``on_transaction`` (the benchmark's) learns how
    long each write transaction held the write lock.
    """
    if store.db.dialect == "sqlite":
        # Purged personal data is overwritten, not left readable in free pages.
        await store.db.execute("PRAGMA secure_delete = ON")
    purger = Purger(store, policy, now, dry_run=dry_run, progress=progress, on_transaction=on_transaction)
    await purger.inactivity()
    await purger.old_events()
    await purger.unsubscribed()
    await purger.consent_proof()
    await purger.outbox()
    return purger.report

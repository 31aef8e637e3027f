"""The retention purge: applies ``ledger.retention`` to the store, in short batches.

Each batch is its own transaction, sized from the time the previous ones took so that each holds
the write lock about ``TX_TARGET_S`` (50 ms), so the gateway's writes never wait long behind it;
searches for what is due run outside the write transactions, and on SQLite the purge leaves the
lock free between transactions for as long as it held it (the gap is spent on the WAL
checkpoint). Every rule only touches rows that are due, re-checked inside the deleting statement,
so running the purge twice deletes nothing the second time. Deleted interaction events are rolled
up into campaign aggregates in the same transaction, from the rows the DELETE returned; deleted
consent records move their chain's base to its head (the checkpoint), so ``ledger verify`` passes
afterwards. ``python -m bench purge`` measures it (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
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
from ledger.store.database import Database, Row, from_db_time, in_list, to_db_time
from ledger.store.imports import fetch_in
from ledger.store.ledger_store import SqlLedgerStore
from ledger.store.rollup import EVENT_COLUMNS, roll_up

EVENT_BATCH = 5000  # rows per transaction at most
FIRST_BATCH = 500  # rows in the first transaction: sizes grow from there while transactions stay short
CHAIN_BATCH = 200  # relationships or chains read per statement
CHAIN_TX = 50  # relationships expired or chains deleted per transaction at most (a few statements each)
FIRST_CHAIN_TX = 10
MIN_BATCH = 5
TX_TARGET_S = 0.05  # what each write transaction aims to hold the write lock for
# The lock-free gap after each write transaction (SQLite): as long as the transaction up to 25 ms,
# half of it beyond 50 ms. SQLite's busy handler retries a waiting writer after 1, 2, 5, 10, 15,
# 20, then 25, 25, 25 ms: a gap as long as the transaction or 25 ms is one no waiter misses (a
# model of that schedule: the longest wait behind 50 ms transactions is 53 ms either way), and
# a shorter one is (5 ms gaps: waits of 103 ms).
GAP_SHARE = 0.5
GAP_FLOOR_S = 0.025
ID_WINDOW = 50_000  # event ids scanned per statement when looking for unsubscribed relationships' events

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


@dataclass
class BatchSize:
    """Rows per write transaction, adapted so that each holds the write lock about ``TX_TARGET_S``.

    What a row costs depends on the database, its size and the machine's load (on SQLite mostly
    the random index pages it dirties), so the size follows the measured time, not a constant.
    """

    size: int
    largest: int

    def update(self, seconds: float) -> None:
        """Shrink after a transaction that took longer than the target; grow slowly after quick ones."""
        if seconds > TX_TARGET_S:
            self.size = max(MIN_BATCH, int(self.size * TX_TARGET_S / seconds * 0.9))
        elif seconds < TX_TARGET_S / 2:
            self.size = min(self.largest, self.size + self.size // 4 + 1)


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
        self.rows = BatchSize(FIRST_BATCH, EVENT_BATCH)
        self.chains = BatchSize(FIRST_CHAIN_TX, CHAIN_TX)

    @asynccontextmanager
    async def _write(self, rule: str, batch: BatchSize) -> AsyncIterator[Database]:
        """One write transaction of ``rule``: counted, timed from BEGIN to COMMIT, ``batch`` adapted."""
        async with self.db.transaction() as tx:
            # Started once BEGIN (IMMEDIATE on SQLite) has returned: the write lock is ours from here.
            started = time.perf_counter()
            yield tx
        held = time.perf_counter() - started
        batch.update(held)
        if self.on_transaction is not None:
            self.on_transaction(rule, held)
        self.report.transactions += 1
        if self.db.dialect == "sqlite":
            await self._yield_lock(held)

    async def _yield_lock(self, held: float) -> None:
        """SQLite: leave the write lock free for a while after each transaction (``GAP_*``).

        Other processes wait for the lock in SQLite's busy handler, which retries after sleeps of
        up to 100 ms: back-to-back transactions would starve them (measured: 1.2 s waits behind
        108 ms transactions). The gap is spent copying the WAL back into the database, work the
        automatic checkpoint would otherwise do inside COMMIT (run_purge turned it off here).
        """
        started = time.perf_counter()
        await self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        rest = max(min(held, GAP_FLOOR_S), held * GAP_SHARE) - (time.perf_counter() - started)
        if rest > 0:
            await asyncio.sleep(rest)

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
            while due:
                size = self.chains.size
                await self._expire(due[:size])
                due = due[size:]

    async def _expire(self, due: list[tuple[str, bytes]]) -> None:
        """Expire ``due`` relationships in one transaction."""
        async with self._write("inactivity_expiry", self.chains) as tx:
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

    async def _delete_events(self, tx: Database, rule: str, where: str, *args: Any) -> list[Row]:
        """Delete the events ``WHERE {where}`` in ``tx``, rolling exactly the deleted rows up; those rows."""
        rows = await tx.fetch(f"DELETE FROM events WHERE {where} RETURNING {EVENT_COLUMNS}", *args)
        await roll_up(tx, rows)
        self._count(rule, len(rows))
        return rows

    async def old_events(self) -> None:
        """Delete events older than the event retention period, oldest first, a batch per transaction.

        Each batch is found through the ``events_at`` index inside its own DELETE: the work per
        transaction is the batch's, never a scan of the rows that stay (which is what ordering
        by id cost once only recent events were left). Batches resume after the last (at, id)
        deleted: PostgreSQL keeps deleted rows in the index until VACUUM, and starting each
        batch from the oldest made every batch step over all the earlier ones.
        """
        cut = to_db_time(self.cut.events_before)
        if self.report.dry_run:
            self._count(
                "old_events", int(await self.db.fetchval("SELECT COUNT(*) FROM events WHERE at < $1", cut))
            )
            return
        after = (-(1 << 62), 0)
        while True:
            size = self.rows.size
            async with self._write("old_events", self.rows) as tx:
                rows = await self._delete_events(
                    tx,
                    "old_events",
                    "id IN (SELECT id FROM events WHERE at < $1 AND at >= $3 AND (at > $3 OR id > $4) "
                    "ORDER BY at, id LIMIT $2)",
                    cut,
                    size,
                    *after,
                )
            if len(rows) < size:
                return
            after = max((int(r[8]), int(r[0])) for r in rows)

    def _unsubscribed(self, table: str) -> str:
        """SQL: ``table``'s row belongs to a relationship ended at the person's request before ``$1``."""
        reasons = ", ".join(f"'{r}'" for r in UNSUBSCRIBE_REASONS)
        return (
            f"EXISTS (SELECT 1 FROM suppressions s WHERE s.subject_key = {table}.subject_key "
            f"AND (s.scope = {table}.client_id OR s.scope = '{GLOBAL_SCOPE}') "
            f"AND s.reason IN ({reasons}) AND s.since < $1)"
        )

    async def unsubscribed(self) -> None:
        """Delete events and relationships of subjects unsubscribed more than 30 days ago.

        Which rows are due is read outside the write transactions, a bounded window of event ids
        (or a page of relationships) per statement; each delete re-checks the rule, so a row whose
        suppression went away in between stays.
        """
        cut = to_db_time(self.cut.unsubscribed_before)
        events_due, relationships_due = self._unsubscribed("events"), self._unsubscribed("relationships")
        if self.report.dry_run:
            for rule, table, due in (
                ("unsubscribed_events", "events", events_due),
                ("unsubscribed_relationships", "relationships", relationships_due),
            ):
                self._count(
                    rule, int(await self.db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE {due}", cut))
                )
            return
        bounds = await self.db.fetchrow("SELECT MIN(id), MAX(id) FROM events")
        if bounds is not None and bounds[0] is not None:
            for low in range(int(bounds[0]) - 1, int(bounds[1]), ID_WINDOW):
                ids = [
                    int(r[0])
                    for r in await self.db.fetch(
                        f"SELECT id FROM events WHERE id > $2 AND id <= $3 AND {events_due} ORDER BY id",
                        cut,
                        low,
                        low + ID_WINDOW,
                    )
                ]
                while ids:
                    size = self.rows.size
                    where, args = in_list(self.db.dialect, "id", 2, ids[:size])
                    ids = ids[size:]
                    async with self._write("unsubscribed_events", self.rows) as tx:
                        await self._delete_events(
                            tx, "unsubscribed_events", f"{where} AND {events_due}", cut, *args
                        )
        after: tuple[str, bytes] = ("", b"")
        while True:
            size = self.rows.size
            page = await self.db.fetch(
                f"SELECT client_id, subject_key FROM relationships WHERE {relationships_due} "
                "AND (client_id > $2 OR (client_id = $2 AND subject_key > $3)) "
                "ORDER BY client_id, subject_key LIMIT $4",
                cut,
                after[0],
                after[1],
                size,
            )
            if not page:
                return
            after = (page[-1][0], bytes(page[-1][1]))
            async with self._write("unsubscribed_relationships", self.rows) as tx:
                for client_id in sorted({r[0] for r in page}):
                    where, args = in_list(
                        self.db.dialect, "subject_key", 3, [bytes(r[1]) for r in page if r[0] == client_id]
                    )
                    deleted = await tx.fetch(
                        f"DELETE FROM relationships WHERE client_id = $2 AND {where} AND {relationships_due} "
                        "RETURNING subject_key",
                        cut,
                        client_id,
                        *args,
                    )
                    self._count("unsubscribed_relationships", len(deleted))
            if len(page) < size:
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
            while due:
                size = self.chains.size
                await self._checkpoint_chains(due[:size])
                due = due[size:]

    async def _checkpoint_chains(self, due: list[tuple[str, bytes, int]]) -> None:
        """Delete the events of ``due`` chains (client, key, head seq read) and move each base to its head."""
        async with self._write("consent_proof", self.chains) as tx:
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
            size = self.rows.size
            async with self._write("outbox", self.rows) as tx:
                ids = await tx.fetch(
                    "SELECT id FROM outbox WHERE created_at < $1 ORDER BY id LIMIT $2", cut, size
                )
                await tx.executemany("DELETE FROM outbox WHERE id = $1", [(r[0],) for r in ids])
            self._count("outbox", len(ids))
            if len(ids) < size:
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
    sqlite = store.db.dialect == "sqlite"
    autocheckpoint = 0
    if sqlite:
        # Checkpoints run between the purge's transactions instead (Purger._write): the
        # automatic one would run inside each COMMIT, since every batch outgrows the WAL limit.
        autocheckpoint = int(await store.db.fetchval("PRAGMA wal_autocheckpoint"))
        await store.db.execute("PRAGMA wal_autocheckpoint = 0")
    purger = Purger(store, policy, now, dry_run=dry_run, progress=progress, on_transaction=on_transaction)
    try:
        await purger.inactivity()
        await purger.old_events()
        await purger.unsubscribed()
        await purger.consent_proof()
        await purger.outbox()
    finally:
        if sqlite:
            await store.db.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
            await store.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return purger.report

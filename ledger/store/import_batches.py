"""The tamper evidence of bulk-imported suppressions: removal records and verification.

Each bulk-imported suppression row names its batch (``suppressions.batch``, the seq of the batch's
event on the scope's :data:`IMPORT_BATCHES_SUBJECT` chain; see :mod:`ledger.import_batch`).
Paths that legitimately change or delete such a row (erasure, re-consent, rectification) call
:func:`remove_from_batches` first; :func:`verify_import_batches` recomputes every batch's digest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ledger.chain import ChainBreak
from ledger.import_batch import (
    IMPORT_BATCHES_SUBJECT,
    RowHasher,
    parse_batch_detail,
    parse_removal_detail,
    removal_detail,
    row_hash,
    verify_batch,
)
from ledger.models import GLOBAL_SCOPE, LedgerEventKind
from ledger.store.database import Database

if TYPE_CHECKING:
    from ledger.store.ledger_store import SqlLedgerStore


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What :func:`verify_import_batches` checked, and the first break (None if all verify)."""

    batches: int
    rows: int
    broken: ChainBreak | None


async def remove_from_batches(
    store: SqlLedgerStore,
    tx: Database,
    subject_key: bytes,
    now: datetime,
    why: str,
    scope: str | None = None,
) -> int:
    """Record, then clear, the batch membership of a subject's imported suppressions (all scopes or one).

    Call inside the transaction that is about to delete or alter those rows. Returns how many
    rows were released.
    """
    sql = "SELECT scope, batch, reason, since, source FROM suppressions WHERE subject_key = $1 AND batch IS NOT NULL"
    args: tuple[object, ...] = (subject_key,)
    if scope is not None:
        sql += " AND scope = $2"
        args += (scope,)
    rows = await tx.fetch(sql, *args)
    for row_scope, batch, reason, since, source in rows:
        digest = row_hash(row_scope, subject_key, reason, int(since), source)
        await store.append_ledger_event(
            tx,
            client_id=row_scope,
            subject_key=IMPORT_BATCHES_SUBJECT,
            kind=LedgerEventKind.SUPPRESSION_REMOVED,
            at=now,
            detail=removal_detail(int(batch), subject_key, digest, why),
        )
        await tx.execute(
            "UPDATE suppressions SET batch = NULL WHERE subject_key = $1 AND scope = $2",
            subject_key,
            row_scope,
        )
    return len(rows)


async def verify_import_batches(db: Database) -> BatchReport:
    """Recompute the digest of every import batch whose event the purge has not checkpointed.

    The batch events themselves are checked by the chain walk; here the rows are checked against
    them: a row altered, deleted, added to a batch or naming a batch that does not exist is a break
    naming the batch. Batches at or below their chain's base were purged with their evidence
    (as per-person consent proof is, after the retention period): their rows are not checked.
    """
    scopes = [GLOBAL_SCOPE, *[r[0] for r in await db.fetch("SELECT id FROM clients ORDER BY id")]]
    bounds: dict[str, tuple[int, int]] = {}
    recorded: dict[tuple[str, int], tuple[int, bytes, int]] = {}
    removed: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
    for scope in scopes:
        chain = await db.fetchrow(
            "SELECT base_seq, head_seq FROM ledger_chains WHERE client_id = $1 AND subject_key = $2",
            scope,
            IMPORT_BATCHES_SUBJECT,
        )
        if chain is None:
            continue
        bounds[scope] = (int(chain[0]), int(chain[1]))
        for event_id, seq, kind, detail in await db.fetch(
            "SELECT id, seq, kind, detail FROM ledger_events WHERE client_id = $1 AND subject_key = $2",
            scope,
            IMPORT_BATCHES_SUBJECT,
        ):
            if kind == str(LedgerEventKind.SUPPRESSION_REMOVED):
                removal = parse_removal_detail(detail)
                if removal is not None:
                    removed[(scope, removal[0])].append((removal[1], removal[2]))
                continue
            batch = parse_batch_detail(detail)
            if batch is not None:
                recorded[(scope, int(seq))] = (batch[0], batch[1], int(event_id))
    stored: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
    hashers: dict[str, RowHasher] = {}
    rows = 0
    async for scope, batch, key, reason, since, source in db.iterate(
        "SELECT scope, batch, subject_key, reason, since, source FROM suppressions WHERE batch IS NOT NULL"
    ):
        number = int(batch)
        base, _head = bounds.get(scope, (0, 0))
        if number <= base:
            continue  # purged with its batch event (the chain's checkpoint)
        if (scope, number) not in recorded:
            why = f"a suppression names import batch {number}, which this scope's batch chain does not hold"
            return BatchReport(len(recorded), rows, ChainBreak(scope, IMPORT_BATCHES_SUBJECT, number, 0, why))
        hasher = hashers.get(scope)
        if hasher is None:
            hasher = hashers[scope] = RowHasher(scope)
        subject_key = bytes(key)
        stored[(scope, number)].append((subject_key, hasher.hash(subject_key, reason, int(since), source)))
        rows += 1
    for (scope, number), (count, digest, event_id) in sorted(recorded.items()):
        why_not = verify_batch(
            number, (count, digest), stored.get((scope, number), []), removed[(scope, number)]
        )
        if why_not is not None:
            broken = ChainBreak(scope, IMPORT_BATCHES_SUBJECT, number, event_id, why_not)
            return BatchReport(len(recorded), rows, broken)
    return BatchReport(len(recorded), rows, None)


__all__ = ["BatchReport", "remove_from_batches", "verify_import_batches"]

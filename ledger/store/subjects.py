"""Data-subject requests (GDPR Art. 15-21): export, erase, rectify — over any backend.

Erasure keeps exactly one thing: the keyed hash with scope, reason and date in ``suppressions``
(plus a global ``erased`` suppression), so the person is never mailed or re-added. Everything
else personal goes: the address, consent proof, interaction events (rolled up into campaign
counts first), engagement, queued copies. Each chain of the subject is checkpointed (its base
moves to its head) and an ``erasure`` event without personal data is appended, so
``ledger verify`` still passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.errors import LedgerError
from ledger.identity import Identity
from ledger.importing import HashAlgo, hash_address
from ledger.models import GLOBAL_SCOPE, ConsentProof, LedgerEventKind, Reason
from ledger.store.database import Database, from_db_time, to_db_time
from ledger.store.event_subjects import subject_events
from ledger.store.import_batches import remove_from_batches
from ledger.store.ledger_store import SqlLedgerStore
from ledger.store.rollup import EVENT_COLUMNS, rollup_and_delete

# Tables erasure handles itself; any other table with a subject_key column (added by later
# migrations) is swept generically, as are columns that hold a plain address.
_HANDLED = {"subjects", "suppressions", "ledger_events", "ledger_chains", "events", "relationships"}
_ADDRESS_COLUMNS = {"rcpt", "recipient", "address", "email", "rcpt_to"}


def _iso(value: int | None) -> str | None:
    """DB microseconds as ISO 8601, or None."""
    moment = from_db_time(value)
    return None if moment is None else moment.isoformat()


class SameSubject(LedgerError):
    """A rectification whose two addresses are one person once normalised (nothing to move)."""


@dataclass
class ErasureReport:
    """What an erasure removed, per table."""

    deleted: dict[str, int] = field(default_factory=dict)
    chains_checkpointed: int = 0
    global_suppression_added: bool = False
    wal_truncated: bool = True


async def _tables_with(db: Database, columns: set[str]) -> list[tuple[str, str]]:
    """(table, column) pairs of the current schema whose column name is in ``columns``."""
    if db.dialect == "postgresql":
        rows = await db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        )
        return [(r[0], r[1]) for r in rows if r[1] in columns]
    found = []
    for (table,) in await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for info in await db.fetch(f'PRAGMA table_info("{table}")'):
            if info[1] in columns:
                found.append((str(table), str(info[1])))
    return found


class SubjectStore:
    """Data-subject requests over the ledger store."""

    def __init__(self, store: SqlLedgerStore) -> None:
        """Work on ``store``'s database."""
        self.store = store
        self.db = store.db

    async def export(self, identity: Identity) -> dict[str, Any]:
        """Everything held about one person, across clients, machine-readable (Art. 15/20)."""
        key = identity.subject_key
        db = self.db
        subject = await db.fetchrow(
            "SELECT address, name, restricted, created_at FROM subjects WHERE subject_key = $1", key
        )
        suppressions = [
            {"scope": r[0], "reason": r[1], "since": _iso(r[2]), "source": r[3]}
            for r in await db.fetch(
                "SELECT scope, reason, since, source FROM suppressions WHERE subject_key = $1 ORDER BY scope",
                key,
            )
        ]
        for algo in HashAlgo:
            for r in await db.fetch(
                "SELECT scope, reason, since, source FROM hashed_suppressions WHERE digest = $1 AND algo = $2",
                hash_address(identity.address, algo),
                str(algo),
            ):
                suppressions.append(
                    {
                        "scope": r[0],
                        "reason": r[1],
                        "since": _iso(r[2]),
                        "source": r[3],
                        "hashed_list": str(algo),
                    }
                )
        relationships = [
            {
                "client": r[0],
                "status": r[1],
                "consent_at": _iso(r[2]),
                "first_sent_at": _iso(r[3]),
                "last_sent_at": _iso(r[4]),
                "last_engagement_at": _iso(r[5]),
            }
            for r in await db.fetch(
                "SELECT client_id, status, consent_at, first_sent_at, last_sent_at, last_engagement_at "
                "FROM relationships WHERE subject_key = $1 ORDER BY client_id",
                key,
            )
        ]
        consent_events = [
            {
                "client": r[0],
                "seq": int(r[1]),
                "kind": r[2],
                "at": _iso(r[3]),
                "source": r[4],
                "method": r[5],
                "notice_version": r[6],
                "legal_basis": r[7],
                "detail": r[8],
            }
            for r in await db.fetch(
                "SELECT client_id, seq, kind, at, source, method, notice_version, legal_basis, detail "
                "FROM ledger_events WHERE subject_key = $1 ORDER BY client_id, seq",
                key,
            )
        ]
        of_subject, days = await subject_events(db, 1, 2, alias="e")
        events = [
            {
                "client": r[0],
                "campaign": r[1],
                "kind": r[2],
                "reason": r[3],
                "link": r[4],
                "country": r[5],
                "at": _iso(r[6]),
            }
            for r in await db.fetch(
                "SELECT e.client_id, c.name, e.kind, e.reason, e.link_id, e.country, e.at FROM events e "
                f"LEFT JOIN campaigns c ON c.num = e.campaign_num WHERE {of_subject} ORDER BY e.at, e.id",
                key,
                *days,
            )
        ]
        return {
            "address": identity.address,
            "subject_key": key.hex(),
            "known": subject is not None,
            "stored_address": subject[0] if subject else None,
            "name": subject[1] if subject else None,
            "restricted": bool(subject[2]) if subject else False,
            "first_seen": _iso(subject[3]) if subject else None,
            "suppressions": suppressions,
            "relationships": relationships,
            "consent_events": consent_events,
            "events": events,
        }

    async def erase(self, identity: Identity, source: str, now: datetime) -> ErasureReport:
        """Erase the person (Art. 17), keeping only the keyed hash in ``suppressions``."""
        key = identity.subject_key
        report = ErasureReport()
        sweep = [t for t in await _tables_with(self.db, {"subject_key"}) if t[0] not in _HANDLED]
        plain = [t for t in await _tables_with(self.db, _ADDRESS_COLUMNS) if t[0] not in _HANDLED]
        async with self.db.transaction() as tx:
            await self.store._ensure_key(tx, key, now)
            of_subject, days = await subject_events(tx, 1, 2)
            rows = await tx.fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE {of_subject}", key, *days)
            report.deleted["events"] = await rollup_and_delete(tx, rows)
            report.deleted["relationships"] = await _delete(tx, "relationships", "subject_key", key)
            for table, column in sweep:
                report.deleted[table] = report.deleted.get(table, 0) + await _delete(tx, table, column, key)
            for table, column in plain:
                report.deleted[table] = report.deleted.get(table, 0) + await _delete(
                    tx, table, column, identity.address
                )
            # Hashed-list rows of this address become keyed suppressions (unkeyed digests of an
            # address are reversible by guessing, the keyed hash is not).
            for algo in HashAlgo:
                digest = hash_address(identity.address, algo)
                for scope, reason, since in await tx.fetch(
                    "SELECT scope, reason, since FROM hashed_suppressions WHERE digest = $1 AND algo = $2",
                    digest,
                    str(algo),
                ):
                    await tx.execute(
                        "INSERT INTO suppressions (subject_key, scope, reason, since, source) "
                        "VALUES ($1, $2, $3, $4, '') ON CONFLICT (subject_key, scope) DO NOTHING",
                        key,
                        scope,
                        reason,
                        since,
                    )
                report.deleted["hashed_suppressions"] = report.deleted.get(
                    "hashed_suppressions", 0
                ) + await _delete2(tx, digest, str(algo))
            chains = await tx.fetch(
                "SELECT client_id, head_seq, head_hash FROM ledger_chains WHERE subject_key = $1", key
            )
            deleted_events = 0
            for client_id, head_seq, head_hash in chains:
                deleted_events += int(
                    await tx.fetchval(
                        "SELECT COUNT(*) FROM ledger_events WHERE client_id = $1 AND subject_key = $2",
                        client_id,
                        key,
                    )
                )
                await tx.execute(
                    "DELETE FROM ledger_events WHERE client_id = $1 AND subject_key = $2", client_id, key
                )
                await tx.execute(
                    "UPDATE ledger_chains SET base_seq = $3, base_hash = $4 WHERE client_id = $1 AND subject_key = $2",
                    client_id,
                    key,
                    head_seq,
                    head_hash,
                )
            report.deleted["ledger_events"] = deleted_events
            report.chains_checkpointed = len(chains)
            # Suppressions lose their free-text source (it may name the person); scope, reason
            # and date stay: that is what keeps the promise never to mail or re-add them.
            await remove_from_batches(self.store, tx, key, now, "erasure")
            await tx.execute("UPDATE suppressions SET source = '' WHERE subject_key = $1", key)
            has_global = await tx.fetchval(
                "SELECT 1 FROM suppressions WHERE subject_key = $1 AND scope = $2", key, GLOBAL_SCOPE
            )
            if not has_global:
                await tx.execute(
                    "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES ($1, $2, $3, $4, '')",
                    key,
                    GLOBAL_SCOPE,
                    str(Reason.ERASED),
                    to_db_time(now),
                )
                report.global_suppression_added = True
            await tx.execute("UPDATE subjects SET address = NULL, name = NULL WHERE subject_key = $1", key)
            await self.store.append_ledger_event(
                tx,
                client_id=GLOBAL_SCOPE,
                subject_key=key,
                kind=LedgerEventKind.ERASURE,
                at=now,
                source=source,
                detail="erased",
            )
        if self.db.dialect == "sqlite":
            report.wal_truncated = await truncate_wal(self.db)
        return report

    async def rectify(self, old: Identity, new: Identity, source: str, now: datetime) -> dict[str, int]:
        """Move consent, suppressions, engagement and events from a wrong address to the right one (Art. 16).

        Each chain of the old key gets a ``rectification`` event naming the new key, and the new
        key's chain for the same client one naming the old key, with the latest opt-in proof
        copied over; the old address itself is removed (it was wrong). Raises
        :class:`SameSubject` when both addresses are one person.
        """
        if old.subject_key == new.subject_key:
            raise SameSubject("the two addresses are the same person once normalised")
        moved = {"suppressions": 0, "relationships": 0, "events": 0, "chains": 0}
        async with self.db.transaction() as tx:
            await self.store.ensure_subject(new, now, tx)
            await self.store._ensure_key(tx, old.subject_key, now)
            for scope, reason, since, src in await tx.fetch(
                "SELECT scope, reason, since, source FROM suppressions WHERE subject_key = $1",
                old.subject_key,
            ):
                await tx.execute(
                    "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (subject_key, scope) DO NOTHING",
                    new.subject_key,
                    scope,
                    reason,
                    since,
                    src,
                )
                moved["suppressions"] += 1
            await remove_from_batches(self.store, tx, old.subject_key, now, "rectification")
            await tx.execute("DELETE FROM suppressions WHERE subject_key = $1", old.subject_key)
            for row in await tx.fetch(
                "SELECT client_id, status, consent_at, first_sent_at, last_sent_at, last_engagement_at, changed_at "
                "FROM relationships WHERE subject_key = $1",
                old.subject_key,
            ):
                await tx.execute(
                    "INSERT INTO relationships (client_id, subject_key, status, consent_at, first_sent_at, "
                    "last_sent_at, last_engagement_at, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "ON CONFLICT (client_id, subject_key) DO NOTHING",
                    row[0],
                    new.subject_key,
                    *row[1:],
                )
                moved["relationships"] += 1
            await tx.execute("DELETE FROM relationships WHERE subject_key = $1", old.subject_key)
            of_subject, days = await subject_events(tx, 1, 3)
            moved["events"] = len(
                await tx.fetch(
                    f"UPDATE events SET subject_key = $2 WHERE {of_subject} RETURNING id",
                    old.subject_key,
                    new.subject_key,
                    *days,
                )
            )
            restricted = await tx.fetchval(
                "SELECT restricted FROM subjects WHERE subject_key = $1", old.subject_key
            )
            if restricted:
                await tx.execute("UPDATE subjects SET restricted = 1 WHERE subject_key = $1", new.subject_key)
            for (client_id,) in await tx.fetch(
                "SELECT client_id FROM ledger_chains WHERE subject_key = $1", old.subject_key
            ):
                proof = await tx.fetchrow(
                    "SELECT at, source, method, notice_version, legal_basis FROM ledger_events "
                    "WHERE client_id = $1 AND subject_key = $2 AND kind = $3 ORDER BY seq DESC LIMIT 1",
                    client_id,
                    old.subject_key,
                    str(LedgerEventKind.OPT_IN),
                )
                await self.store.append_ledger_event(
                    tx,
                    client_id=client_id,
                    subject_key=old.subject_key,
                    kind=LedgerEventKind.RECTIFICATION,
                    at=now,
                    source=source,
                    detail=f"moved to {new.subject_key.hex()}",
                )
                await self.store.append_ledger_event(
                    tx,
                    client_id=client_id,
                    subject_key=new.subject_key,
                    kind=LedgerEventKind.RECTIFICATION,
                    at=now,
                    source=source,
                    detail=f"moved from {old.subject_key.hex()}",
                )
                if proof is not None:
                    await self.store.append_ledger_event(
                        tx,
                        client_id=client_id,
                        subject_key=new.subject_key,
                        kind=LedgerEventKind.OPT_IN,
                        at=from_db_time(proof[0]) or now,
                        proof=ConsentProof(
                            proof[1], from_db_time(proof[0]) or now, proof[2], proof[3], proof[4]
                        ),
                        detail=f"rectified from {old.subject_key.hex()}",
                    )
                moved["chains"] += 1
            await tx.execute(
                "UPDATE subjects SET address = NULL, name = NULL WHERE subject_key = $1", old.subject_key
            )
        return moved


async def _delete(tx: Database, table: str, column: str, value: Any) -> int:
    """Delete rows where ``column = value``; returns how many (table/column from the schema, not input)."""
    count = int(await tx.fetchval(f'SELECT COUNT(*) FROM "{table}" WHERE "{column}" = $1', value))
    if count:
        await tx.execute(f'DELETE FROM "{table}" WHERE "{column}" = $1', value)
    return count


async def _delete2(tx: Database, digest: bytes, algo: str) -> int:
    """Delete the hashed-list rows of one digest."""
    count = int(
        await tx.fetchval(
            "SELECT COUNT(*) FROM hashed_suppressions WHERE digest = $1 AND algo = $2", digest, algo
        )
    )
    if count:
        await tx.execute("DELETE FROM hashed_suppressions WHERE digest = $1 AND algo = $2", digest, algo)
    return count


async def truncate_wal(db: Database) -> bool:
    """Copy the WAL into the database file and truncate it, so no old page version lingers there.

    Returns False when a reader still holds an old snapshot (the WAL then keeps old frames until
    the next checkpoint); the caller says so.
    """
    row = await db.fetchrow("PRAGMA wal_checkpoint(TRUNCATE)")
    return row is not None and int(row[0]) == 0

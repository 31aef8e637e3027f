"""The ledger store: every read and write of the consent ledger, written once for both dialects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ledger.chain import GENESIS_HASH, ChainBreak, ChainHead, event_hash, verify_chain
from ledger.errors import ClientExists, SuppressedAddress, SuppressionNotRemovable, UnknownClient
from ledger.identity import Identity
from ledger.models import (
    GLOBAL_SCOPE,
    Client,
    ClientMode,
    ConsentProof,
    ConsentStatus,
    EventKind,
    LedgerEvent,
    LedgerEventKind,
    OnSuppressed,
    Reason,
    Relationship,
    Suppression,
)
from ledger.policy import reconsent_lifts
from ledger.store.database import Database, Row, from_db_time, to_db_time
from ledger.store.import_batches import BatchReport, remove_from_batches, verify_import_batches

_CLIENT_COLUMNS = (
    "id, num, name, domains, postal_address, mode, on_suppressed, tracking, password_hash, "
    "dkim_selector, dkim_private_key, trusted_networks, paused_reason, settings"
)

_SUPPRESSION_EVENT = {
    Reason.COMPLAINT: LedgerEventKind.COMPLAINT,
    Reason.HARD_BOUNCE: LedgerEventKind.HARD_BOUNCE,
}


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Everything the policy needs about one (client, subject)."""

    suppressions: tuple[Suppression, ...]
    relationship: Relationship | None
    restricted: bool


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    """An interaction event to record: never an address, an IP or a user agent."""

    client_id: str
    kind: EventKind
    at: datetime
    campaign_num: int | None = None
    subject_key: bytes | None = None
    reason: str = ""
    link_id: str = ""
    country: str = ""


def _client_from_row(row: Row) -> Client:
    """Build a :class:`Client` from a row in ``_CLIENT_COLUMNS`` order."""
    return Client(
        id=row[0],
        num=int(row[1]),
        name=row[2],
        domains=tuple(json.loads(row[3])),
        postal_address=row[4],
        mode=ClientMode(row[5]),
        on_suppressed=OnSuppressed(row[6]),
        tracking=bool(row[7]),
        password_hash=row[8],
        dkim_selector=row[9],
        dkim_private_key=row[10],
        trusted_networks=tuple(json.loads(row[11])),
        paused_reason=row[12],
        settings=json.loads(row[13]),
    )


def _relationship_from_row(client_id: str, row: Row) -> Relationship:
    """Build a :class:`Relationship` from (status, consent_at, first, last_sent, last_engagement)."""
    return Relationship(
        client_id=client_id,
        status=ConsentStatus(row[0]) if row[0] else None,
        consent_at=from_db_time(row[1]),
        first_sent_at=from_db_time(row[2]),
        last_sent_at=from_db_time(row[3]),
        last_engagement_at=from_db_time(row[4]),
    )


class SqlLedgerStore:
    """The consent ledger over a :class:`Database` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every statement; the store owns it and closes it."""
        self.db = db

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    # -- clients -------------------------------------------------------------------------------

    async def add_client(self, client: Client, now: datetime) -> Client:
        """Insert a new client, assigning its small token number; raises :class:`ClientExists`."""
        async with self.db.transaction() as tx:
            if await tx.fetchval("SELECT 1 FROM clients WHERE id = $1", client.id):
                raise ClientExists(f"client {client.id!r} already exists")
            num = int(await tx.fetchval("SELECT COALESCE(MAX(num), 0) + 1 FROM clients"))
            await tx.execute(
                f"INSERT INTO clients ({_CLIENT_COLUMNS}, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                client.id,
                num,
                client.name,
                json.dumps(list(client.domains)),
                client.postal_address,
                str(client.mode),
                str(client.on_suppressed),
                int(client.tracking),
                client.password_hash,
                client.dkim_selector,
                client.dkim_private_key,
                json.dumps(list(client.trusted_networks)),
                client.paused_reason,
                json.dumps(client.settings),
                to_db_time(now),
            )
        return replace(client, num=num)

    async def get_client(self, client_id: str) -> Client:
        """The client with ``client_id``; raises :class:`UnknownClient`."""
        row = await self.db.fetchrow(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE id = $1", client_id)
        if row is None:
            raise UnknownClient(f"no client {client_id!r} (see `consentgate client list`)")
        return _client_from_row(row)

    async def client_by_num(self, num: int) -> Client | None:
        """The client whose token number is ``num``, or None (deleted or never existed)."""
        row = await self.db.fetchrow(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE num = $1", num)
        return None if row is None else _client_from_row(row)

    async def list_clients(self) -> list[Client]:
        """Every client, by id."""
        rows = await self.db.fetch(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY id")
        return [_client_from_row(row) for row in rows]

    async def update_client(self, client_id: str, **fields: Any) -> Client:
        """Change some of a client's columns (lists and dicts are stored as JSON)."""
        await self.get_client(client_id)
        allowed = set(_CLIENT_COLUMNS.split(", ")) - {"id", "num"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"not client columns: {sorted(unknown)}")
        for column, value in fields.items():
            if isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, list | tuple):
                value = json.dumps(list(value))
            elif isinstance(value, bool):
                value = int(value)
            # the column name comes from the allow-list above, never from input
            await self.db.execute(f"UPDATE clients SET {column} = $2 WHERE id = $1", client_id, value)
        return await self.get_client(client_id)

    # -- subjects and decisions ----------------------------------------------------------------

    async def ensure_subject(self, identity: Identity, now: datetime, db: Database | None = None) -> None:
        """Record the subject (its address once) unless known; a known erased address stays erased."""
        await (db or self.db).execute(
            "INSERT INTO subjects (subject_key, address, restricted, created_at) "
            "VALUES ($1, $2, 0, $3) ON CONFLICT (subject_key) DO NOTHING",
            identity.subject_key,
            identity.address,
            to_db_time(now),
        )

    async def _ensure_key(self, tx: Database, subject_key: bytes, now: datetime) -> None:
        """Make sure a subjects row exists for a bare key (address unknown)."""
        await tx.execute(
            "INSERT INTO subjects (subject_key, address, restricted, created_at) "
            "VALUES ($1, NULL, 0, $2) ON CONFLICT (subject_key) DO NOTHING",
            subject_key,
            to_db_time(now),
        )

    async def subject_key_by_ref(self, ref: bytes) -> bytes | None:
        """The full subject key starting with ``ref`` (the prefix tokens carry), or None."""
        # A prefix range scan on the primary key: [ref, ref + 1) in big-endian byte order.
        upper = (int.from_bytes(ref, "big") + 1).to_bytes(len(ref) + 1, "big")[1:]
        rows = await self.db.fetch(
            "SELECT subject_key FROM subjects WHERE subject_key >= $1 AND subject_key < $2 LIMIT 2",
            ref,
            upper if upper > ref else b"\xff" * (len(ref) + 1),
        )
        return bytes(rows[0][0]) if len(rows) == 1 else None

    async def lookup(self, client_id: str, subject_key: bytes) -> SubjectState:
        """Read what the policy needs for (client, subject): suppressions, relationship, restriction."""
        sup_rows = await self.db.fetch(
            "SELECT scope, reason, since, source FROM suppressions "
            "WHERE subject_key = $1 AND scope IN ($2, $3)",
            subject_key,
            GLOBAL_SCOPE,
            client_id,
        )
        rel_row = await self.db.fetchrow(
            "SELECT status, consent_at, first_sent_at, last_sent_at, last_engagement_at "
            "FROM relationships WHERE client_id = $1 AND subject_key = $2",
            client_id,
            subject_key,
        )
        restricted = await self.db.fetchval(
            "SELECT restricted FROM subjects WHERE subject_key = $1", subject_key
        )
        suppressions = tuple(
            Suppression(row[0], Reason(row[1]), from_db_time(row[2]) or _never(), row[3]) for row in sup_rows
        )
        relationship = None if rel_row is None else _relationship_from_row(client_id, rel_row)
        return SubjectState(suppressions, relationship, bool(restricted))

    # -- the consent ledger --------------------------------------------------------------------

    async def append_ledger_event(
        self,
        tx: Database,
        *,
        client_id: str,
        subject_key: bytes,
        kind: LedgerEventKind,
        at: datetime,
        proof: ConsentProof | None = None,
        source: str = "",
        detail: str = "",
    ) -> LedgerEvent:
        """Append an event to the (client, subject) chain inside the caller's transaction ``tx``."""
        head = await tx.fetchrow(
            "SELECT head_seq, head_hash FROM ledger_chains WHERE client_id = $1 AND subject_key = $2",
            client_id,
            subject_key,
        )
        seq, prev = (1, GENESIS_HASH) if head is None else (int(head[0]) + 1, bytes(head[1]))
        event = LedgerEvent(
            client_id=client_id,
            subject_key=subject_key,
            seq=seq,
            kind=kind,
            at=at,
            source=proof.source if proof else source,
            method=proof.method if proof else "",
            notice_version=proof.notice_version if proof else "",
            legal_basis=proof.legal_basis if proof else "",
            detail=detail,
            prev_hash=prev,
        )
        event = replace(event, hash=event_hash(event, prev))
        await tx.execute(
            "INSERT INTO ledger_events (client_id, subject_key, seq, kind, at, source, method, "
            "notice_version, legal_basis, detail, prev_hash, hash) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            event.client_id,
            event.subject_key,
            event.seq,
            str(event.kind),
            to_db_time(event.at),
            event.source,
            event.method,
            event.notice_version,
            event.legal_basis,
            event.detail,
            event.prev_hash,
            event.hash,
        )
        if head is None:
            await tx.execute(
                "INSERT INTO ledger_chains (client_id, subject_key, base_seq, base_hash, "
                "head_seq, head_hash) VALUES ($1, $2, 0, $3, $4, $5)",
                client_id,
                subject_key,
                GENESIS_HASH,
                seq,
                event.hash,
            )
        else:
            await tx.execute(
                "UPDATE ledger_chains SET head_seq = $3, head_hash = $4 "
                "WHERE client_id = $1 AND subject_key = $2",
                client_id,
                subject_key,
                seq,
                event.hash,
            )
        return event

    async def suppress(
        self,
        scope: str,
        identity: Identity | bytes,
        reason: Reason,
        source: str,
        now: datetime,
    ) -> bool:
        """Suppress ``identity`` in ``scope`` (a client id or global); False when it already was.

        Writes the ledger event and withdraws the relationship's consent in the same transaction,
        so an unsubscribe is either wholly recorded or not at all. ``identity`` may be a bare
        subject key (from a token: the address may be erased or never known).
        """
        if scope != GLOBAL_SCOPE:
            await self.get_client(scope)
        key = identity if isinstance(identity, bytes) else identity.subject_key
        async with self.db.transaction() as tx:
            if isinstance(identity, Identity):
                await self.ensure_subject(identity, now, tx)
            else:
                await self._ensure_key(tx, key, now)
            exists = await tx.fetchval(
                "SELECT 1 FROM suppressions WHERE subject_key = $1 AND scope = $2",
                key,
                scope,
            )
            if exists:
                return False
            await tx.execute(
                "INSERT INTO suppressions (subject_key, scope, reason, since, source) "
                "VALUES ($1, $2, $3, $4, $5)",
                key,
                scope,
                str(reason),
                to_db_time(now),
                source,
            )
            await self.append_ledger_event(
                tx,
                client_id=scope,
                subject_key=key,
                kind=_SUPPRESSION_EVENT.get(reason, LedgerEventKind.OPT_OUT),
                at=now,
                source=source,
                detail=str(reason),
            )
            if scope != GLOBAL_SCOPE:
                await tx.execute(
                    "UPDATE relationships SET status = $3, changed_at = $4 "
                    "WHERE client_id = $1 AND subject_key = $2",
                    scope,
                    key,
                    str(ConsentStatus.WITHDRAWN),
                    to_db_time(now),
                )
        return True

    async def remove_suppression(self, scope: str, subject_key: bytes, source: str, now: datetime) -> bool:
        """Remove a ``manual`` suppression (an operator's own entry); False when there is none.

        Any other reason raises :class:`SuppressionNotRemovable`: an unsubscribe, a complaint or a
        bounce is lifted only by the person's re-consent (:meth:`record_consent`), never by a client.
        The removal is a ledger event on the (scope, subject) chain, in the same transaction.
        """
        if scope != GLOBAL_SCOPE:
            await self.get_client(scope)
        async with self.db.transaction() as tx:
            reason = await tx.fetchval(
                "SELECT reason FROM suppressions WHERE subject_key = $1 AND scope = $2", subject_key, scope
            )
            if reason is None:
                return False
            if reason != str(Reason.MANUAL):
                raise SuppressionNotRemovable(
                    f"a {reason!r} suppression cannot be removed; only the person's re-consent lifts it"
                )
            await remove_from_batches(self, tx, subject_key, now, "removal", scope)
            await tx.execute(
                "DELETE FROM suppressions WHERE subject_key = $1 AND scope = $2", subject_key, scope
            )
            await self.append_ledger_event(
                tx,
                client_id=scope,
                subject_key=subject_key,
                kind=LedgerEventKind.SUPPRESSION_REMOVED,
                at=now,
                source=source,
                detail=str(Reason.MANUAL),
            )
        return True

    async def record_consent(
        self,
        client_id: str,
        identity: Identity | bytes,
        proof: ConsentProof,
        now: datetime,
        *,
        reconsent: bool = False,
    ) -> None:
        """Record an opt-in with its proof.

        A suppressed address is never re-subscribed by an ordinary opt-in (raises
        :class:`SuppressedAddress`); only an explicit re-consent — the person's own fresh opt-in,
        with its proof — lifts the client's suppression. A global opt-out is never lifted here.
        ``identity`` may be a bare subject key (the undo button of the unsubscribe page knows
        only the token's subject, not the address).
        """
        await self.get_client(client_id)
        key = identity if isinstance(identity, bytes) else identity.subject_key
        who = identity.address if isinstance(identity, Identity) else "this subject"
        async with self.db.transaction() as tx:
            if isinstance(identity, Identity):
                await self.ensure_subject(identity, now, tx)
            else:
                await self._ensure_key(tx, key, now)
            rows = await tx.fetch(
                "SELECT scope, reason FROM suppressions WHERE subject_key = $1 AND scope IN ($2, $3)",
                key,
                GLOBAL_SCOPE,
                client_id,
            )
            scopes = {row[0]: row[1] for row in rows}
            if GLOBAL_SCOPE in scopes or (client_id in scopes and not reconsent):
                scope = GLOBAL_SCOPE if GLOBAL_SCOPE in scopes else client_id
                raise SuppressedAddress(
                    f"{who} is suppressed ({scopes[scope]}, scope {scope}): "
                    "not re-subscribed without an explicit re-consent"
                )
            if client_id in scopes and not reconsent_lifts(scopes[client_id]):
                raise SuppressedAddress(
                    f"{who} is suppressed ({scopes[client_id]}, scope {client_id}): "
                    "a re-consent lifts only an unsubscribe"
                )
            if client_id in scopes:
                await remove_from_batches(self, tx, key, now, "re-consent", client_id)
                await tx.execute(
                    "DELETE FROM suppressions WHERE subject_key = $1 AND scope = $2",
                    key,
                    client_id,
                )
            await self.append_ledger_event(
                tx,
                client_id=client_id,
                subject_key=key,
                kind=LedgerEventKind.OPT_IN,
                at=proof.at,
                proof=proof,
                detail="reconsent" if client_id in scopes else "",
            )
            await self._upsert_consent(tx, client_id, key, proof.at, now)

    async def _upsert_consent(
        self, tx: Database, client_id: str, subject_key: bytes, consent_at: datetime, now: datetime
    ) -> None:
        """Mark the relationship's consent active as of ``consent_at``."""
        await tx.execute(
            "INSERT INTO relationships (client_id, subject_key, status, consent_at, changed_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client_id, subject_key) DO UPDATE SET "
            "status = excluded.status, consent_at = excluded.consent_at, "
            "changed_at = excluded.changed_at",
            client_id,
            subject_key,
            str(ConsentStatus.ACTIVE),
            to_db_time(consent_at),
            to_db_time(now),
        )

    async def set_restricted(self, identity: Identity, restricted: bool, source: str, now: datetime) -> None:
        """Restrict (GDPR Art. 18) or lift the restriction of processing for a subject."""
        async with self.db.transaction() as tx:
            await self.ensure_subject(identity, now, tx)
            await tx.execute(
                "UPDATE subjects SET restricted = $2 WHERE subject_key = $1",
                identity.subject_key,
                int(restricted),
            )
            await self.append_ledger_event(
                tx,
                client_id=GLOBAL_SCOPE,
                subject_key=identity.subject_key,
                kind=LedgerEventKind.RESTRICTION if restricted else LedgerEventKind.RESTRICTION_LIFTED,
                at=now,
                source=source,
            )

    async def chains(self) -> AsyncIterator[ChainHead]:
        """Every chain head."""
        async for row in self.db.iterate(
            "SELECT client_id, subject_key, base_seq, base_hash, head_seq, head_hash "
            "FROM ledger_chains ORDER BY client_id, subject_key"
        ):
            yield ChainHead(row[0], bytes(row[1]), int(row[2]), bytes(row[3]), int(row[4]), bytes(row[5]))

    async def chain_events(self, client_id: str, subject_key: bytes) -> list[LedgerEvent]:
        """The remaining events of one chain, by seq."""
        rows = await self.db.fetch(
            "SELECT id, seq, kind, at, source, method, notice_version, legal_basis, detail, "
            "prev_hash, hash FROM ledger_events WHERE client_id = $1 AND subject_key = $2 "
            "ORDER BY seq",
            client_id,
            subject_key,
        )
        return [
            LedgerEvent(
                id=int(row[0]),
                client_id=client_id,
                subject_key=subject_key,
                seq=int(row[1]),
                kind=LedgerEventKind(row[2]),
                at=from_db_time(row[3]) or _never(),
                source=row[4],
                method=row[5],
                notice_version=row[6],
                legal_basis=row[7],
                detail=row[8],
                prev_hash=bytes(row[9]),
                hash=bytes(row[10]),
            )
            for row in rows
        ]

    async def verify_ledger(self) -> tuple[int, ChainBreak | None]:
        """Walk every chain, then check the import batches; return (chains checked, first break or None).

        Events whose chain head row is missing are a break too (a chain deleted outside the purge).
        """
        checked, broken = await self._verify_chains()
        if broken is None:
            broken = (await verify_import_batches(self.db)).broken
        return checked, broken

    async def verify_ledger_report(self) -> tuple[int, BatchReport]:
        """Like :meth:`verify_ledger`, with what the import-batch check covered (for the CLI)."""
        checked, broken = await self._verify_chains()
        if broken is not None:
            return checked, BatchReport(0, 0, broken)
        return checked, await verify_import_batches(self.db)

    async def _verify_chains(self) -> tuple[int, ChainBreak | None]:
        """Walk every chain; return (chains checked, first break or None)."""
        checked = 0
        async for head in self.chains():
            broken = verify_chain(head, await self.chain_events(head.client_id, head.subject_key))
            if broken is not None:
                return checked, broken
            checked += 1
        orphan = await self.db.fetchrow(
            "SELECT e.id, e.client_id, e.subject_key, e.seq FROM ledger_events e "
            "LEFT JOIN ledger_chains c ON c.client_id = e.client_id "
            "AND c.subject_key = e.subject_key WHERE c.client_id IS NULL LIMIT 1"
        )
        if orphan is not None:
            why = "event belongs to no chain (its chain head was deleted)"
            return checked, ChainBreak(orphan[1], bytes(orphan[2]), int(orphan[3]), int(orphan[0]), why)
        return checked, None

    # -- campaigns and interaction events ------------------------------------------------------

    async def campaign_num(self, client_id: str, name: str, now: datetime) -> int:
        """The small number of campaign ``name`` of ``client_id``, created on first sight."""
        existing = await self.db.fetchval(
            "SELECT num FROM campaigns WHERE client_id = $1 AND name = $2", client_id, name
        )
        if existing is not None:
            return int(existing)
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO campaigns (client_id, name, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (client_id, name) DO NOTHING",
                client_id,
                name,
                to_db_time(now),
            )
            return int(
                await tx.fetchval(
                    "SELECT num FROM campaigns WHERE client_id = $1 AND name = $2", client_id, name
                )
            )

    async def record_events(self, events: Sequence[InteractionEvent]) -> None:
        """Append interaction events in one statement."""
        if not events:
            return
        await self.db.executemany(
            "INSERT INTO events (client_id, campaign_num, subject_key, kind, reason, link_id, "
            "country, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (
                    e.client_id,
                    e.campaign_num,
                    e.subject_key,
                    str(e.kind),
                    e.reason,
                    e.link_id,
                    e.country,
                    to_db_time(e.at),
                )
                for e in events
            ],
        )


def _never() -> datetime:
    """Placeholder for a NOT NULL time column that somehow read NULL (cannot happen by schema)."""
    raise ValueError("NULL in a NOT NULL time column")

"""Store-level tests of the operator tools (imports, erasure, purge, reports) on every backend."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from conftest import NOW

from ledger.errors import InvalidAddress
from ledger.importing import ConsentRow, HashAlgo, HashedRow, SuppressionRow, hash_address
from ledger.models import Client, ConsentProof, EventKind, Reason
from ledger.retention import RetentionPolicy
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.database import to_db_time
from ledger.store.imports import SuppressionImporter, import_consents, import_hashed
from ledger.store.ledger_store import InteractionEvent
from ledger.store.purge import run_purge
from ledger.store.reports import campaign_report
from ledger.store.subjects import SubjectStore

DAY = timedelta(days=1)


async def _client(store: SqlLedgerStore, client_id: str = "acme") -> Client:
    """Add a client."""
    return await store.add_client(Client(id=client_id, name=client_id, password_hash="x"), NOW)


async def _verify(store: SqlLedgerStore) -> int:
    """Assert the ledger verifies; return the number of chains."""
    checked, broken = await store.verify_ledger()
    assert broken is None, broken.describe()
    return checked


async def dump_everything(store: SqlLedgerStore) -> str:
    """Every row of every table as text (PostgreSQL: ``row::text``; SQLite: repr of each row)."""
    db = store.db
    if db.dialect == "postgresql":
        tables = [
            r[0]
            for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ]
        parts = []
        for table in tables:
            parts += [str(r[0]) for r in await db.fetch(f'SELECT t::text FROM "{table}" t')]
        return "\n".join(parts)
    tables = [r[0] for r in await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")]
    parts = []
    for table in tables:
        parts += [repr(tuple(r)) for r in await db.fetch(f'SELECT * FROM "{table}"')]
    return "\n".join(parts)


def _rows(addresses: list[str], start: int = 1) -> list[SuppressionRow]:
    """Suppression rows without dates or reasons."""
    return [SuppressionRow(start + i, a, None, None, "") for i, a in enumerate(addresses)]


async def test_bulk_import_is_idempotent_and_chained(store: SqlLedgerStore, service: LedgerService) -> None:
    """Rows land sorted in small batches, each recorded by one batch event; a rerun adds nothing; verify passes."""
    await _client(store)
    addresses = [f"user{i}@example.org" for i in range(250)] + ["user3@example.org"]
    importer = SuppressionImporter(store, service.pepper, "acme", "file", NOW, batch_rows=40, window_rows=100)
    await importer.check_scope()
    await importer.add(_rows(addresses))
    counts = await importer.finish()
    assert counts.imported == 250
    assert counts.duplicates + counts.already_suppressed == 1  # user3 twice, in one window or two
    again = SuppressionImporter(store, service.pepper, "acme", "file", NOW, batch_rows=64)
    await again.add(_rows(addresses[:250]))
    assert (await again.finish()).imported == 0
    assert await _verify(store) == 1  # the scope's import-batch chain: no per-person chains
    _chains, batches = await store.verify_ledger_report()
    assert batches.broken is None and batches.rows == 250 and batches.batches >= 250 // 40
    decision = await service.check("USER7@example.org", "acme", NOW)
    assert decision.reason is Reason.UNSUBSCRIBED


async def test_import_extends_an_existing_chain(store: SqlLedgerStore, service: LedgerService) -> None:
    """A subject with consent events gets its opt-out as seq 2 of the same chain, and is withdrawn."""
    await _client(store)
    await service.consent("ann@example.org", "acme", ConsentProof("form", NOW - DAY), NOW - DAY)
    importer = SuppressionImporter(store, service.pepper, "acme", "file", NOW)
    await importer.add([SuppressionRow(2, "ann@example.org", NOW - DAY / 2, Reason.COMPLAINT, "fbl")])
    assert (await importer.finish()).imported == 1
    events = await store.chain_events("acme", service.identify("ann@example.org").subject_key)
    assert [(e.seq, str(e.kind)) for e in events] == [(1, "opt_in"), (2, "complaint")]
    assert (await service.check("ann@example.org", "acme", NOW)).reason is Reason.COMPLAINT
    await _verify(store)


async def test_hashed_list_refuses_at_decision_time(store: SqlLedgerStore, service: LedgerService) -> None:
    """A sha256 list for a client and an md5 list globally are both matched by address digest."""
    await _client(store)
    sha_row = HashedRow(1, hash_address("bob@example.org", HashAlgo.SHA256), None, "")
    md5_row = HashedRow(1, hash_address("eve@example.org", HashAlgo.MD5), None, "")
    assert (await import_hashed(store, "acme", HashAlgo.SHA256, [sha_row, sha_row], "esp", NOW)).imported == 1
    await import_hashed(store, "global", HashAlgo.MD5, [md5_row], "esp", NOW)
    assert (
        await import_hashed(store, "acme", HashAlgo.SHA256, [sha_row], "esp", NOW)
    ).already_suppressed == 1
    assert not (await service.check("Bob@Example.org", "acme", NOW)).allowed
    assert (await service.check("bob@example.org", None, NOW)).allowed
    assert (await service.check("eve@example.org", "acme", NOW)).reason is Reason.GLOBAL_OPTOUT
    assert (await service.check("carl@example.org", "acme", NOW)).allowed
    await _verify(store)


async def test_consent_import_never_resubscribes(store: SqlLedgerStore, service: LedgerService) -> None:
    """Unsubscribed, complained and erased addresses are refused; --reconsent needs per-row proof."""
    await _client(store)
    await service.unsubscribe("u@example.org", "acme", "link", NOW - 3 * DAY)
    await service.unsubscribe("c@example.org", "acme", "fbl", NOW - 3 * DAY, Reason.COMPLAINT)
    await SubjectStore(store).erase(service.identify("e@example.org"), "dsr", NOW - 3 * DAY)
    defaults = ConsentProof("list upload", NOW - DAY)

    def row(line: int, address: str, at: datetime | None = None, source: str = "") -> ConsentRow:
        return ConsentRow(line, address, at, source, "", "", "")

    rows = [
        row(2, "u@example.org"),
        row(3, "c@example.org"),
        row(4, "e@example.org"),
        row(5, "n@example.org"),
    ]
    counts = await import_consents(store, service.pepper, "acme", rows, defaults, NOW)
    assert counts.imported == 1
    assert [line for line, _ in counts.suppressed] == [2, 3, 4]
    assert all(why.startswith("suppressed, not imported") for _, why in counts.suppressed)
    fresh = [
        row(2, "u@example.org", NOW - DAY, "double opt-in"),
        row(3, "c@example.org"),
        row(4, "e@example.org", NOW - DAY, "form"),
    ]
    again = await import_consents(store, service.pepper, "acme", fresh, defaults, NOW, reconsent=True)
    assert again.imported == 1 and [line for line, _ in again.suppressed] == [3, 4]
    assert (await service.check("u@example.org", "acme", NOW)).allowed
    assert not (await service.check("c@example.org", "acme", NOW)).allowed
    assert not (await service.check("e@example.org", "acme", NOW)).allowed
    await _verify(store)


async def test_erasure_leaves_only_the_keyed_hash(store: SqlLedgerStore, service: LedgerService) -> None:
    """After erase the address is in no row of any table; mail and imports are refused; verify passes."""
    await _client(store)
    address = "Erin.Erased@Example.org"
    normal = "erin.erased@example.org"
    await service.consent(address, "acme", ConsentProof("form", NOW - DAY, "double opt-in"), NOW - DAY)
    identity = service.identify(address)
    num = await store.campaign_num("acme", "spring", NOW)
    await store.record_events(
        [InteractionEvent("acme", EventKind.OPENED, NOW, num, identity.subject_key, country="FR")]
    )
    await import_hashed(
        store,
        "acme",
        HashAlgo.SHA256,
        [HashedRow(1, hash_address(normal, HashAlgo.SHA256), None, "")],
        "esp",
        NOW,
    )
    await store.set_restricted(identity, True, "dsr", NOW)
    assert normal in await dump_everything(store)
    report = await SubjectStore(store).erase(identity, "dsr 42", NOW)
    assert report.global_suppression_added and report.deleted["events"] == 1
    text = await dump_everything(store)
    for needle in (normal, normal.encode().hex(), hash_address(normal, HashAlgo.SHA256).hex()):
        assert needle not in text.lower()
    assert (await service.check(address, "acme", NOW)).reason is Reason.ERASED
    importer = SuppressionImporter(store, service.pepper, "acme", "file", NOW)
    await importer.add(_rows([normal]))
    assert (await importer.finish()).imported == 0
    assert normal not in await dump_everything(store)
    figures = await campaign_report(store.db, "spring")
    assert figures.unique_opens == 1 and figures.countries == {"FR": 1}
    await _verify(store)


async def test_invalid_address_is_a_ledger_error(service: LedgerService) -> None:
    """identify() refuses garbage (the CLI turns it into a one-line error)."""
    with pytest.raises(InvalidAddress):
        service.identify("not an address")


async def _prepare_purge_ledger(store: SqlLedgerStore, service: LedgerService) -> dict[str, bytes]:
    """The ledger the purge tests run on (see test_purge_deletes_exactly_what_the_policy_says)."""
    await _client(store)
    keys = {name: service.identify(f"{name}@example.org").subject_key for name in "abcd"}
    await service.consent("a@example.org", "acme", ConsentProof("form", NOW - 800 * DAY), NOW - 800 * DAY)
    await service.consent("b@example.org", "acme", ConsentProof("form", NOW - 100 * DAY), NOW - 100 * DAY)
    await store.db.execute(
        "UPDATE relationships SET last_engagement_at = $1 WHERE subject_key = $2",
        to_db_time(NOW - 20 * DAY),
        keys["b"],
    )
    await service.consent("c@example.org", "acme", ConsentProof("form", NOW - 60 * DAY), NOW - 60 * DAY)
    await service.unsubscribe("c@example.org", "acme", "link", NOW - 40 * DAY)
    await service.consent("d@example.org", "acme", ConsentProof("form", NOW - 1000 * DAY), NOW - 1000 * DAY)
    await service.unsubscribe("d@example.org", "acme", "link", NOW - 800 * DAY)
    num = await store.campaign_num("acme", "spring", NOW - 500 * DAY)
    events = [
        InteractionEvent("acme", EventKind.DELIVERED, NOW - 400 * DAY, num, keys["b"]) for _ in range(2)
    ]
    events += [InteractionEvent("acme", EventKind.OPENED, NOW - 50 * DAY, num, keys["c"]) for _ in range(3)]
    events += [InteractionEvent("acme", EventKind.CLICKED, NOW - 10 * DAY, num, keys["b"], link_id="l1")]
    await store.record_events(events)
    for age in (10, 1):
        await store.db.execute(
            "INSERT INTO outbox (client_id, mail_from, rcpt, message, next_attempt_at, created_at) "
            "VALUES ('acme', 'n@acme.example', 'b@example.org', $1, $2, $2)",
            b"Subject: x\r\n\r\nbody",
            to_db_time(NOW - age * DAY),
        )
    return keys


async def test_purge_deletes_exactly_what_the_policy_says(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """At NOW and at NOW+800 days each rule deletes exactly the prepared rows; reruns delete nothing."""
    await _prepare_purge_ledger(store, service)
    policy = RetentionPolicy()
    dry = await run_purge(store, policy, NOW, dry_run=True)
    first = await run_purge(store, policy, NOW)
    expected = {
        "inactivity_expiry": 1,
        "old_events": 2,
        "unsubscribed_events": 3,
        "unsubscribed_relationships": 2,
        "consent_proof": 2,
        "outbox": 1,
    }
    assert first.deleted == expected
    assert dry.deleted == expected
    await _verify(store)
    assert set((await run_purge(store, policy, NOW)).deleted.values()) == {0}
    assert (await service.check("a@example.org", "acme", NOW)).reason is Reason.INACTIVE
    later = await run_purge(store, policy, NOW + 800 * DAY)
    assert later.deleted == {
        "inactivity_expiry": 1,
        "old_events": 1,
        "unsubscribed_events": 0,
        "unsubscribed_relationships": 0,
        "consent_proof": 4,
        "outbox": 1,
    }
    await _verify(store)
    assert set((await run_purge(store, policy, NOW + 800 * DAY)).deleted.values()) == {0}
    figures = await campaign_report(store.db, "spring")
    assert (figures.delivered, figures.unique_opens, figures.clicks_per_link) == (2, 1, {"l1": 1})
    await service.consent(
        "a@example.org", "acme", ConsentProof("form again", NOW + 801 * DAY), NOW + 801 * DAY
    )
    assert (await service.check("a@example.org", "acme", NOW + 802 * DAY)).allowed


async def test_purge_in_many_batches_keeps_every_figure(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """1,500 old events and 700 of an unsubscriber go in several timed transactions; the report keeps them all."""
    await _client(store)
    keys = [service.identify(f"p{i}@example.org").subject_key for i in range(50)]
    gone = service.identify("gone@example.org").subject_key
    await service.consent("gone@example.org", "acme", ConsentProof("form", NOW - 90 * DAY), NOW - 90 * DAY)
    await service.unsubscribe("gone@example.org", "acme", "link", NOW - 40 * DAY)
    num = await store.campaign_num("acme", "bulk", NOW - 500 * DAY)
    await store.record_events(
        [
            InteractionEvent("acme", EventKind.DELIVERED, NOW - 400 * DAY, num, keys[i % 50])
            for i in range(1500)
        ]
        + [InteractionEvent("acme", EventKind.OPENED, NOW - 20 * DAY, num, gone) for _ in range(700)]
        + [InteractionEvent("acme", EventKind.OPENED, NOW - 20 * DAY, num, keys[0]) for _ in range(5)]
    )
    held: list[tuple[str, float]] = []
    report = await run_purge(
        store, RetentionPolicy(), NOW, on_transaction=lambda rule, s: held.append((rule, s))
    )
    assert (report.deleted["old_events"], report.deleted["unsubscribed_events"]) == (1500, 700)
    assert sum(1 for rule, _s in held if rule == "old_events") >= 2
    assert len(held) == report.transactions and all(s > 0 for _rule, s in held)
    assert await store.db.fetchval("SELECT COUNT(*) FROM events") == 5
    assert (await campaign_report(store.db, "bulk")).delivered == 1500


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_purged_campaign_reports_the_same_figures(store: SqlLedgerStore, seed: int) -> None:
    """Random events of every kind, purged in one batch: every figure of the report stays the same."""
    rng = random.Random(seed)
    await _client(store)
    nums = [await store.campaign_num("acme", name, NOW - 500 * DAY) for name in ("spring", "autumn")]
    subjects: list[bytes | None] = [bytes([i]) * 32 for i in range(12)] + [None]
    events = [
        InteractionEvent(
            "acme",
            kind,
            NOW - 400 * DAY - timedelta(hours=rng.randrange(24 * 6)),
            rng.choice([*nums, None]),
            rng.choice(subjects),
            reason=rng.choice(["", "hard: 550 5.1.1 unknown", "soft", "unsubscribed", "complaint"]),
            link_id=rng.choice(["", "l1", "l2"]) if kind is EventKind.CLICKED else "",
            country=rng.choice(["", "FR", "RO", "de"]),
        )
        for kind in (rng.choice(list(EventKind)) for _ in range(400))
    ]
    await store.record_events(events)
    before = [(await campaign_report(store.db, name)).as_dict() for name in ("spring", "autumn")]
    report = await run_purge(store, RetentionPolicy(), NOW)
    assert report.deleted["old_events"] == 400
    assert await store.db.fetchval("SELECT COUNT(*) FROM events") == 0
    after = [(await campaign_report(store.db, name)).as_dict() for name in ("spring", "autumn")]
    assert after == before
    assert before[0]["accepted"] + before[1]["accepted"] > 0 and before[0]["unique_opens"] > 0


async def test_report_is_aggregates_only(store: SqlLedgerStore, service: LedgerService) -> None:
    """Accepted, refusals, bounces, uniques, links and countries are counted; no address appears."""
    await _client(store)
    num = await store.campaign_num("acme", "launch", NOW)
    k = [service.identify(f"p{i}@example.org").subject_key for i in range(4)]
    e = EventKind
    await store.record_events(
        [
            *(InteractionEvent("acme", e.DELIVERED, NOW, num, key) for key in k[:3]),
            InteractionEvent(
                "acme", e.BOUNCED, NOW, num, k[3], reason="hard: 550 5.1.1 <p3@example.org> unknown"
            ),
            InteractionEvent("acme", e.SUPPRESSED, NOW, num, None, reason="unsubscribed"),
            InteractionEvent("acme", e.OPENED, NOW, num, k[0], country="DE"),
            InteractionEvent("acme", e.OPENED, NOW + DAY, num, k[0], country="DE"),
            InteractionEvent("acme", e.OPENED, NOW + DAY, num, k[1]),
            InteractionEvent("acme", e.CLICKED, NOW + DAY, num, k[0], link_id="l1"),
            InteractionEvent(
                "acme", e.CLICKED, NOW + DAY, num, k[1], link_id="https://x.example/?u=p1@example.org"
            ),
            InteractionEvent("acme", e.UNSUBSCRIBED, NOW + DAY, num, k[2]),
        ]
    )
    r = await campaign_report(store.db, "launch")
    assert (r.accepted, r.delivered, r.unique_opens, r.unique_clicks, r.unsubscribes) == (4, 3, 2, 2, 1)
    assert r.bounced == {"hard": 1} and r.refused == {"unsubscribed": 1} and r.countries == {"DE": 2}
    assert r.clicks_per_link == {"l1": 1, "(redacted link)": 1}
    assert "@" not in repr(r.as_dict())
    assert len(r.timeline) == 2

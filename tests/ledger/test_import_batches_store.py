"""Import batches on every backend: verify catches tampering, legitimate removals keep it green."""

from __future__ import annotations

from datetime import timedelta

from conftest import NOW

from ledger.import_batch import IMPORT_BATCHES_SUBJECT
from ledger.importing import ConsentRow, SuppressionRow
from ledger.models import Client, ConsentProof, Reason
from ledger.retention import RetentionPolicy
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.imports import SuppressionImporter, import_consents
from ledger.store.purge import run_purge
from ledger.store.subjects import SubjectStore

DAY = timedelta(days=1)
ADDRESSES = [f"person{i}@example.org" for i in range(30)]


async def _import(store: SqlLedgerStore, service: LedgerService, addresses: list[str], **kw: object) -> int:
    """Import ``addresses`` into acme in batches of 8; return how many were imported."""
    importer = SuppressionImporter(store, service.pepper, "acme", "list 7", NOW, batch_rows=8, **kw)  # type: ignore[arg-type]
    await importer.check_scope()
    await importer.add([SuppressionRow(i + 1, a, None, None, "") for i, a in enumerate(addresses)])
    return (await importer.finish()).imported


async def _setup(store: SqlLedgerStore, service: LedgerService) -> None:
    """Client acme with 30 imported suppressions (4 batches)."""
    await store.add_client(Client(id="acme", name="acme", password_hash="x"), NOW - DAY)
    assert await _import(store, service, ADDRESSES) == 30


async def _broken(store: SqlLedgerStore) -> str:
    """The description of the ledger's first break ('' when it verifies)."""
    _checked, broken = await store.verify_ledger()
    return "" if broken is None else broken.describe()


async def test_imported_rows_are_covered_and_stores_no_address(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """4 batches cover the 30 rows; no subjects row or address is written; a re-run writes nothing."""
    await _setup(store, service)
    chains, report = await store.verify_ledger_report()
    assert (chains, report.batches, report.rows, report.broken) == (1, 4, 30, None)
    assert await store.db.fetchval("SELECT COUNT(*) FROM subjects") == 0
    assert await _import(store, service, ADDRESSES) == 0
    assert (await store.verify_ledger_report())[1].batches == 4
    assert not (await service.check("person3@example.org", "acme", NOW)).allowed


async def test_dry_run_writes_nothing(store: SqlLedgerStore, service: LedgerService) -> None:
    """--dry-run counts what would be imported and writes no row and no event."""
    await store.add_client(Client(id="acme", name="acme", password_hash="x"), NOW - DAY)
    assert await _import(store, service, ADDRESSES, dry_run=True) == 30
    assert await store.db.fetchval("SELECT COUNT(*) FROM suppressions") == 0
    assert await store.db.fetchval("SELECT COUNT(*) FROM ledger_events") == 0


async def test_verify_names_the_batch_of_a_deleted_altered_or_added_row(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """Deleting, altering or slipping a row into a batch outside the legitimate paths breaks verify."""
    await _setup(store, service)
    key = service.identify("person5@example.org").subject_key
    batch = int(await store.db.fetchval("SELECT batch FROM suppressions WHERE subject_key = $1", key))
    saved = await store.db.fetchrow(
        "SELECT reason, since, source FROM suppressions WHERE subject_key = $1", key
    )
    assert saved is not None
    await store.db.execute("DELETE FROM suppressions WHERE subject_key = $1", key)
    broken = await _broken(store)
    assert f"import batch {batch}:" in broken and "fewer than recorded" in broken and "client acme" in broken
    await store.db.execute(
        "INSERT INTO suppressions (subject_key, scope, reason, since, source, batch) VALUES ($1, 'acme', $2, $3, $4, $5)",
        key,
        "unsubscribed",
        saved[1],
        "someone else",
        batch,
    )
    assert f"import batch {batch}:" in (broken := await _broken(store)) and "altered" in broken
    await store.db.execute("UPDATE suppressions SET source = $2 WHERE subject_key = $1", key, saved[2])
    assert await _broken(store) == ""
    await store.db.execute("UPDATE suppressions SET batch = NULL WHERE subject_key = $1", key)
    assert "fewer than recorded" in await _broken(store)
    await store.db.execute("UPDATE suppressions SET batch = $2 WHERE subject_key = $1", key, batch)
    stranger = service.identify("stranger@example.org").subject_key
    await store.db.execute(
        "INSERT INTO suppressions (subject_key, scope, reason, since, source, batch) VALUES ($1, 'acme', 'manual', 1, '', $2)",
        stranger,
        batch,
    )
    assert "more than recorded" in await _broken(store)
    await store.db.execute("UPDATE suppressions SET batch = 99 WHERE subject_key = $1", stranger)
    assert "names import batch 99" in await _broken(store)


async def test_erasure_reconsent_and_rectification_keep_verify_green(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """The legitimate paths that change imported rows record what they removed; verify passes."""
    await _setup(store, service)
    await SubjectStore(store).erase(service.identify("person1@example.org"), "dsr 4", NOW)
    assert await _broken(store) == ""
    await service.store.record_consent(
        "acme",
        service.identify("person2@example.org"),
        ConsentProof("double opt-in", NOW),
        NOW,
        reconsent=True,
    )
    assert (await service.check("person2@example.org", "acme", NOW)).allowed
    assert await _broken(store) == ""
    fresh_optin = ConsentRow(2, "person4@example.org", NOW + DAY / 24, "form", "double opt-in", "", "")
    defaults = ConsentProof("crm", NOW)
    assert (
        await import_consents(store, service.pepper, "acme", [fresh_optin], defaults, NOW, reconsent=True)
    ).imported == 1
    assert await _broken(store) == ""
    await SubjectStore(store).rectify(
        service.identify("person3@example.org"), service.identify("person3@example.com"), "typo", NOW
    )
    assert not (await service.check("person3@example.com", "acme", NOW)).allowed
    assert await _broken(store) == ""
    removals = await store.db.fetchval(
        "SELECT COUNT(*) FROM ledger_events WHERE subject_key = $1 AND kind = 'suppression_removed'",
        IMPORT_BATCHES_SUBJECT,
    )
    assert removals == 4
    # Re-importing the re-consented address makes it a row of a new batch.
    assert await _import(store, service, ["person2@example.org"]) == 1
    assert await _broken(store) == ""


async def test_purge_of_old_batches_keeps_verify_green(store: SqlLedgerStore, service: LedgerService) -> None:
    """Batch events past the consent-proof period are purged with a checkpoint; their rows stay suppressed."""
    await _setup(store, service)
    await run_purge(store, RetentionPolicy(), NOW + 800 * DAY)
    assert (
        await store.db.fetchval(
            "SELECT COUNT(*) FROM ledger_events WHERE subject_key = $1", IMPORT_BATCHES_SUBJECT
        )
        == 0
    )
    _chains, report = await store.verify_ledger_report()
    assert report.broken is None and report.batches == 0
    assert (await service.check("person9@example.org", "acme", NOW + 800 * DAY)).reason is Reason.UNSUBSCRIBED
    assert await _import(store, service, ["new@example.org"]) == 1
    assert await _broken(store) == ""

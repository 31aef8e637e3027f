"""The ledger store on SQLite (always) and PostgreSQL (when TEST_DATABASE_URL is set)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import NOW

from ledger.errors import ClientExists, SuppressedAddress, UnknownClient
from ledger.models import Client, ClientMode, ConsentProof, Reason
from ledger.passwords import hash_password, verify_password
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.database import from_db_time, to_db_time
from ledger.store.migrate import available, pending


async def add_acme(store: SqlLedgerStore, mode: ClientMode = ClientMode.SUPPRESSION_ONLY) -> Client:
    """Add client acme."""
    return await store.add_client(
        Client(
            id="acme", name="Acme", domains=("acme.example",), mode=mode, password_hash=hash_password("pw")
        ),
        NOW,
    )


def test_time_encoding_round_trips_exactly() -> None:
    """Microsecond timestamps survive the integer encoding."""
    moment = NOW + timedelta(microseconds=123457)
    assert from_db_time(to_db_time(moment)) == moment


async def test_migrations_applied_and_idempotent(store: SqlLedgerStore) -> None:
    """A fresh store has every migration applied."""
    assert await pending(store.db) == []
    assert available(store.db.dialect)


async def test_clients_get_numbers_and_unique_ids(store: SqlLedgerStore) -> None:
    """Clients are numbered in order; a duplicate id is refused; unknown ids raise."""
    acme = await add_acme(store)
    beta = await store.add_client(Client(id="beta", name="Beta", password_hash="x"), NOW)
    assert (acme.num, beta.num) == (1, 2)
    with pytest.raises(ClientExists):
        await add_acme(store)
    with pytest.raises(UnknownClient):
        await store.get_client("nobody")
    fetched = await store.get_client("acme")
    assert fetched.domains == ("acme.example",)
    assert verify_password("pw", fetched.password_hash)
    assert (await store.client_by_num(2)) == beta


async def test_global_optout_matches_every_spelling(service: LedgerService) -> None:
    """A global opt-out refuses the address whatever its case or IDNA form, for every client."""
    await add_acme(service.store)
    await service.unsubscribe("Bob@Bücher.Example", None, "written request 17", NOW)
    for spelling in ("bob@bücher.example", "BOB@xn--bcher-kva.example"):
        decision = await service.check(spelling, "acme", NOW)
        assert (decision.allowed, decision.reason) == (False, Reason.GLOBAL_OPTOUT)
    assert (await service.check("bob@bücher.example", None, NOW)).reason == Reason.GLOBAL_OPTOUT


async def test_client_unsubscribe_is_client_scoped(service: LedgerService) -> None:
    """An unsubscribe from acme does not refuse beta."""
    await add_acme(service.store)
    await service.store.add_client(Client(id="beta", name="Beta", password_hash="x"), NOW)
    assert await service.unsubscribe("ann@example.org", "acme", "one-click", NOW)
    assert not await service.unsubscribe("ANN@example.org", "acme", "one-click", NOW)
    assert (await service.check("ann@example.org", "acme", NOW)).reason == Reason.UNSUBSCRIBED
    assert (await service.check("ann@example.org", "beta", NOW)).allowed


async def test_opt_in_never_lifts_a_suppression_without_reconsent(service: LedgerService) -> None:
    """An ordinary opt-in is refused for a suppressed address; an explicit re-consent lifts it."""
    await add_acme(service.store)
    await service.unsubscribe("ann@example.org", "acme", "one-click", NOW)
    proof = ConsentProof("import 2026-11", NOW, "csv")
    with pytest.raises(SuppressedAddress):
        await service.consent("ann@example.org", "acme", proof, NOW)
    assert not (await service.check("ann@example.org", "acme", NOW)).allowed
    fresh = ConsentProof("unsubscribe-page-undo", NOW + timedelta(minutes=1), "button")
    await service.consent("ann@example.org", "acme", fresh, NOW, reconsent=True)
    assert (await service.check("ann@example.org", "acme", NOW)).allowed


async def test_reconsent_never_lifts_a_global_optout(service: LedgerService) -> None:
    """A client's re-consent cannot undo a signed global opt-out."""
    await add_acme(service.store)
    await service.unsubscribe("ann@example.org", None, "written request", NOW)
    with pytest.raises(SuppressedAddress, match="global"):
        await service.consent("ann@example.org", "acme", ConsentProof("x", NOW), NOW, reconsent=True)


async def test_require_consent_mode(service: LedgerService) -> None:
    """A require-consent client may mail only recorded opt-ins."""
    await add_acme(service.store, ClientMode.REQUIRE_CONSENT)
    assert (await service.check("cy@example.org", "acme", NOW)).reason == Reason.NO_CONSENT
    await service.consent("cy@example.org", "acme", ConsentProof("form", NOW, "double-opt-in", "v3"), NOW)
    assert (await service.check("cy@example.org", "acme", NOW)).allowed
    later = NOW + timedelta(days=731)
    assert (await service.check("cy@example.org", "acme", later)).reason == Reason.INACTIVE


async def test_restriction_refuses_all_clients(service: LedgerService) -> None:
    """A restricted subject is refused for every client until lifted."""
    await add_acme(service.store)
    identity = service.identify("dee@example.org")
    await service.store.set_restricted(identity, True, "art. 18 request", NOW)
    assert (await service.check("dee@example.org", "acme", NOW)).reason == Reason.RESTRICTED
    await service.store.set_restricted(identity, False, "resolved", NOW)
    assert (await service.check("dee@example.org", "acme", NOW)).allowed


async def test_ledger_verifies_and_detects_tampering(service: LedgerService) -> None:
    """Every write leaves a verifiable chain; an altered row is named by id."""
    await add_acme(service.store)
    await service.consent("eve@example.org", "acme", ConsentProof("form", NOW), NOW)
    await service.unsubscribe("eve@example.org", "acme", "one-click", NOW)
    await service.unsubscribe("eve@example.org", None, "letter", NOW)
    checked, broken = await service.store.verify_ledger()
    assert (checked, broken) == (2, None)
    row_id = await service.store.db.fetchval("SELECT MIN(id) FROM ledger_events")
    await service.store.db.execute("UPDATE ledger_events SET source = 'tampered' WHERE id = $1", row_id)
    _, broken = await service.store.verify_ledger()
    assert broken is not None and broken.event_id == row_id


async def test_deleted_chain_head_is_detected(service: LedgerService) -> None:
    """Deleting a chain's head row outside the purge leaves orphan events that verify reports."""
    await add_acme(service.store)
    await service.unsubscribe("fay@example.org", "acme", "one-click", NOW)
    await service.store.db.execute("DELETE FROM ledger_chains")
    _, broken = await service.store.verify_ledger()
    assert broken is not None and "no chain" in broken.why


async def test_subject_key_by_ref_finds_the_full_key(service: LedgerService) -> None:
    """The 12-byte prefix a token carries finds the subject's full key."""
    identity = service.identify("gil@example.org")
    await service.store.ensure_subject(identity, NOW)
    assert await service.store.subject_key_by_ref(identity.subject_key[:12]) == identity.subject_key
    assert await service.store.subject_key_by_ref(b"\xff" * 12) is None


async def test_campaign_numbers_are_stable(store: SqlLedgerStore) -> None:
    """The same campaign name gets the same number; another gets a new one."""
    await add_acme(store)
    first = await store.campaign_num("acme", "spring-sale", NOW)
    assert await store.campaign_num("acme", "spring-sale", NOW) == first
    assert await store.campaign_num("acme", "autumn", NOW) != first


@pytest.mark.parametrize("reason", [Reason.COMPLAINT, Reason.HARD_BOUNCE, Reason.MANUAL])
async def test_reconsent_lifts_only_an_unsubscribe(store: SqlLedgerStore, reason: Reason) -> None:
    """A fresh opt-in lifts the person's own unsubscribe, never a complaint, a bounce or a manual entry."""
    await add_acme(store)
    service = LedgerService(store, b"p" * 32)
    proof = ConsentProof("signup form", NOW, "double-opt-in")
    await service.unsubscribe("u@example.com", "acme", "one-click", NOW)
    await service.unsubscribe("k@example.com", "acme", "inbound", NOW, reason=reason)
    await service.consent("u@example.com", "acme", proof, NOW + timedelta(days=1), reconsent=True)
    assert (await service.check("u@example.com", "acme", NOW + timedelta(days=1))).allowed
    with pytest.raises(SuppressedAddress, match="lifts only an unsubscribe"):
        await service.consent("k@example.com", "acme", proof, NOW + timedelta(days=1), reconsent=True)
    assert not (await service.check("k@example.com", "acme", NOW + timedelta(days=1))).allowed
    state = await store.lookup("acme", service.identify("k@example.com").subject_key)
    assert [(s.scope, s.reason) for s in state.suppressions] == [("acme", reason)]

"""The batched policy read (the API's list check) agrees with the per-RCPT read, subject by subject."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import NOW

from ledger.errors import SuppressionNotRemovable
from ledger.importing import HashAlgo, HashedRow, hash_address
from ledger.models import GLOBAL_SCOPE, Client, ClientMode, ConsentProof, Decision, Reason
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.imports import import_hashed
from ledger.store.policy_read import BATCH_CHUNK, policy_state, policy_states


async def _seed(service: LedgerService) -> list[str]:
    """Clients and subjects in every state the policy distinguishes; returns the addresses."""
    store = service.store
    await store.add_client(Client("acme", "Acme"), NOW)
    await store.add_client(Client("strict", "Strict", mode=ClientMode.REQUIRE_CONSENT), NOW)
    addresses = [f"person{i}@example.com" for i in range(BATCH_CHUNK + 40)]
    proof = ConsentProof("signup form", NOW - timedelta(days=3), "double-opt-in")
    for i, address in enumerate(addresses):
        match i % 7:
            case 0:
                await service.unsubscribe(address, "acme", "test", NOW)
            case 1:
                await service.unsubscribe(address, None, "test", NOW)
            case 2:
                await service.consent(address, "strict", proof, NOW)
                await service.consent(address, "acme", proof, NOW)
            case 3:
                await store.set_restricted(service.identify(address), True, "dsr", NOW)
            case 4:
                await service.unsubscribe(address, "strict", "test", NOW, reason=Reason.COMPLAINT)
    hashed = [
        HashedRow(n, hash_address(a, HashAlgo.SHA256), None, "other esp")
        for n, a in enumerate(addresses[5::14], 1)
    ]
    await import_hashed(store, "acme", HashAlgo.SHA256, hashed, "other esp", NOW)
    md5 = [HashedRow(1, hash_address(addresses[6], HashAlgo.MD5), None, "md5 list")]
    await import_hashed(store, GLOBAL_SCOPE, HashAlgo.MD5, md5, "md5 list", NOW)
    return addresses


@pytest.mark.parametrize("client_id", ["acme", "strict", GLOBAL_SCOPE])
async def test_batched_read_equals_single_reads(store: SqlLedgerStore, client_id: str) -> None:
    """For every subject (more than one chunk, duplicates included) the batch returns the single read's state."""
    service = LedgerService(store, b"p" * 32)
    addresses = await _seed(service)
    identities = [service.identify(a) for a in [*addresses, addresses[0], addresses[5]]]
    batched = await policy_states(store.db, client_id, identities)
    single = [await policy_state(store.db, client_id, i) for i in identities]
    assert len(batched) == len(identities)
    for got, want in zip(batched, single, strict=True):
        assert (set(got[0].suppressions), got[0].relationship, got[0].restricted, set(got[1])) == (
            set(want[0].suppressions),
            want[0].relationship,
            want[0].restricted,
            set(want[1]),
        )
    # The seed covers the cases the batch must not mix up between subjects.
    kinds = {bool(s.suppressions) for s, _ in batched} | {bool(h) for _, h in batched}
    assert kinds == {True, False}


async def test_check_many_matches_check(store: SqlLedgerStore) -> None:
    """check_many gives the same decisions as check, address by address, and refuses bad input in place."""
    service = LedgerService(store, b"p" * 32)
    addresses = await _seed(service)
    asked = [*addresses[:60], "not an address", "Person0@Example.com"]
    for client_id in ("acme", "strict", None):
        client = None if client_id is None else await store.get_client(client_id)
        many = await service.check_many(asked, client, NOW)
        for address, decision in zip(asked, many, strict=True):
            if address == "not an address":
                assert decision == Decision.refuse(Reason.INVALID_ADDRESS)
            else:
                assert decision == await service.check(address, client_id, NOW), (client_id, address)
    assert len({d.reason for d in many}) >= 3


async def test_only_manual_suppressions_can_be_removed(store: SqlLedgerStore) -> None:
    """A manual entry is removed (with a ledger event); an unsubscribe is never removed this way."""
    service = LedgerService(store, b"p" * 32)
    await store.add_client(Client("acme", "Acme"), NOW)
    manual, unsub = service.identify("m@example.com"), service.identify("u@example.com")
    await store.suppress("acme", manual, Reason.MANUAL, "ops", NOW)
    await store.suppress("acme", unsub, Reason.UNSUBSCRIBED, "one-click", NOW)
    with pytest.raises(SuppressionNotRemovable):
        await store.remove_suppression("acme", unsub.subject_key, "crm", NOW)
    assert not (await service.check("u@example.com", "acme", NOW)).allowed
    assert await store.remove_suppression("acme", manual.subject_key, "crm", NOW)
    assert not await store.remove_suppression("acme", manual.subject_key, "crm", NOW)
    assert (await service.check("m@example.com", "acme", NOW)).allowed
    kinds = [e.kind.value for e in await store.chain_events("acme", manual.subject_key)]
    assert kinds == ["opt_out", "suppression_removed"]
    assert (await store.verify_ledger())[1] is None

"""The per-RCPT ledger read is fast *and* fresh: an unsubscribe is refused at the very next RCPT.

The gateway reads the policy state in one statement, synchronously on a separate read-only
SQLite connection (ledger.store.policy_read); these tests prove nothing is cached: writes made
through another connection — as another process or another node would — are seen at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiosmtplib
import pytest
from conftest import NOW, drop_schema, make_store
from submission_support import PASSWORD, add_client, gateway, make_service, sink

from ledger.identity import identify
from ledger.importing import HashAlgo
from ledger.models import GLOBAL_SCOPE, ConsentProof, Reason
from ledger.secret_file import Secrets
from ledger.store import open_store
from ledger.store.database import to_db_time
from ledger.store.imports import hashed_suppressions_for
from ledger.store.policy_read import policy_state


async def _rcpt(client: aiosmtplib.SMTP, address: str) -> int:
    """The reply code of one RCPT."""
    try:
        return (await client.rcpt(address)).code
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code


async def test_unsubscribe_from_another_connection_refused_at_next_rcpt(
    backend: str, tmp_path: Path, test_secrets: Secrets
) -> None:
    """Client and global opt-outs written by another connection are refused at the very next RCPT."""
    store, url, schema = await make_store(backend, tmp_path)
    other = await open_store(url, schema=schema)  # what another process or node writes through
    try:
        service = make_service(store, test_secrets)
        other_service = make_service(other, test_secrets)
        await add_client(store)
        async with sink() as (_handler, up_port), gateway(service, up_port) as gw:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10)
            await client.connect()
            try:
                await client.login("acme", PASSWORD)
                await client.mail("news@acme.example")
                assert await _rcpt(client, "you@example.org") == 250
                assert await _rcpt(client, "them@example.org") == 250
                await other_service.unsubscribe("you@example.org", "acme", "one-click", NOW)
                assert await _rcpt(client, "you@example.org") == 550
                await other_service.unsubscribe("them@example.org", None, "signed letter", NOW)
                assert await _rcpt(client, "Them@Example.org") == 550
                assert await _rcpt(client, "else@example.org") == 250
                await client.rset()
            finally:
                await client.quit()
    finally:
        await other.close()
        await store.close()
        await drop_schema(schema)


async def test_hashed_list_restriction_and_consent_read_in_one_statement(
    store: object, test_secrets: Secrets
) -> None:
    """The one-statement read sees hashed-list entries (same digests as the import), restrictions, consent."""
    from ledger.store import SqlLedgerStore

    assert isinstance(store, SqlLedgerStore)
    service = make_service(store, test_secrets)
    client = await add_client(store)
    listed = identify(test_secrets.pepper, "Listed@Example.org")
    digest = hashlib.md5(listed.address.lower().encode(), usedforsecurity=False).digest()
    await store.db.execute(
        "INSERT INTO hashed_suppressions (digest, algo, scope, reason, since, source) "
        "VALUES ($1, $2, $3, $4, $5, 'other provider')",
        digest,
        str(HashAlgo.MD5),
        GLOBAL_SCOPE,
        str(Reason.GLOBAL_OPTOUT),
        to_db_time(NOW),
    )
    state, hashed = await policy_state(store.db, client.id, listed)
    assert [s.source for s in hashed] == ["other provider"]
    assert hashed == tuple(await hashed_suppressions_for(store.db, listed.address, (GLOBAL_SCOPE, client.id)))
    assert not (await service.decide_for_client(listed, client, NOW)).allowed

    restricted = identify(test_secrets.pepper, "restricted@example.org")
    await store.set_restricted(restricted, True, "art. 18 request", NOW)
    await store.record_consent(client.id, restricted, ConsentProof("signup form", NOW), NOW)
    state, hashed = await policy_state(store.db, client.id, restricted)
    assert state.restricted and hashed == ()
    assert state.relationship is not None and state.relationship.consent_at == NOW
    assert not (await service.decide_for_client(restricted, client, NOW)).allowed

    plain = identify(test_secrets.pepper, "plain@example.org")
    state, hashed = await policy_state(store.db, client.id, plain)
    assert (state.suppressions, state.relationship, state.restricted, hashed) == ((), None, False, ())
    assert (await service.decide_for_client(plain, client, NOW)).allowed


@pytest.mark.parametrize("address", ["", "x@example.org"])
async def test_policy_state_of_unknown_subject_is_empty(
    store: object, test_secrets: Secrets, address: str
) -> None:
    """A subject the ledger has never seen reads as no suppression, no relationship, not restricted."""
    from ledger.identity import Identity
    from ledger.store import SqlLedgerStore

    assert isinstance(store, SqlLedgerStore)
    identity = Identity(address, hashlib.sha256(address.encode()).digest())
    state, hashed = await policy_state(store.db, "acme", identity)
    assert (state.suppressions, state.relationship, state.restricted, hashed) == ((), None, False, ())

"""Engagement store: interaction events and last-engagement dates, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from conftest import NOW

from ledger.models import Client, ConsentProof, ConsentStatus, EventKind, Reason
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.engagement import EngagementStore
from ledger.store.ledger_store import InteractionEvent


async def test_click_creates_or_moves_engagement_forward_only(
    store: SqlLedgerStore, service: LedgerService
) -> None:
    """A click creates the relationship if needed; an older click never moves the date back."""
    await store.add_client(Client("acme", "Acme"), NOW)
    key = service.identify("ana@example.org").subject_key
    engagement = EngagementStore(store.db)
    click = InteractionEvent("acme", EventKind.CLICKED, NOW, 3, key, link_id="abc", country="RO")
    await engagement.record(click, engagement=True)
    assert await engagement.last_engagement("acme", key) == NOW
    older = InteractionEvent("acme", EventKind.CLICKED, NOW - timedelta(days=3), 3, key, link_id="abc")
    await engagement.record(older, engagement=True)
    assert await engagement.last_engagement("acme", key) == NOW
    opened = InteractionEvent("acme", EventKind.OPENED, NOW + timedelta(days=1), 3, key)
    await engagement.record(opened, engagement=False)
    assert await engagement.last_engagement("acme", key) == NOW
    rows = await store.db.fetch("SELECT kind, link_id, country FROM events ORDER BY id")
    assert [tuple(r) for r in rows] == [("clicked", "abc", "RO"), ("clicked", "abc", ""), ("opened", "", "")]
    state = await store.lookup("acme", key)
    assert state.relationship is not None and state.relationship.status is None


async def test_reconsent_by_bare_subject_key(store: SqlLedgerStore, service: LedgerService) -> None:
    """record_consent with a bare key lifts the client's suppression only with reconsent=True."""
    import pytest

    from ledger.errors import SuppressedAddress

    await store.add_client(Client("acme", "Acme"), NOW)
    key = service.identify("ana@example.org").subject_key
    await store.suppress("acme", key, Reason.UNSUBSCRIBED, "link", NOW)
    proof = ConsentProof("unsubscribe-page-undo", NOW)
    with pytest.raises(SuppressedAddress, match="this subject"):
        await store.record_consent("acme", key, proof, NOW)
    await store.record_consent("acme", key, proof, NOW, reconsent=True)
    state = await store.lookup("acme", key)
    assert state.suppressions == () and state.relationship is not None
    assert state.relationship.status is ConsentStatus.ACTIVE
    assert (await store.verify_ledger())[1] is None

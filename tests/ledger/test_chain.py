"""Hash-chain verification without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from ledger.chain import GENESIS_HASH, ChainHead, event_hash, verify_chain
from ledger.models import LedgerEvent, LedgerEventKind

AT = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"k" * 32


def build(n: int) -> tuple[ChainHead, list[LedgerEvent]]:
    """A valid chain of ``n`` events and its head."""
    events, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = LedgerEvent(
            "acme", KEY, seq, LedgerEventKind.OPT_IN, AT, source=f"form {seq}", prev_hash=prev
        )
        event = replace(event, hash=event_hash(event, prev), id=seq)
        events.append(event)
        prev = event.hash
    return ChainHead("acme", KEY, 0, GENESIS_HASH, n, prev), events


def test_valid_chain_verifies() -> None:
    """An untouched chain has no break."""
    head, events = build(4)
    assert verify_chain(head, events) is None


def test_altered_event_is_named() -> None:
    """Changing one field of event 2 is reported at event 2."""
    head, events = build(4)
    events[1] = replace(events[1], source="forged")
    broken = verify_chain(head, events)
    assert broken is not None and broken.event_id == 2 and "altered" in broken.why


def test_deleted_middle_event_is_found() -> None:
    """Removing event 2 breaks the sequence at event 3."""
    head, events = build(4)
    del events[1]
    broken = verify_chain(head, events)
    assert broken is not None and broken.seq == 3


def test_deleted_last_event_is_found_by_the_head() -> None:
    """Removing the newest event is caught by the stored head."""
    head, events = build(4)
    broken = verify_chain(head, events[:-1])
    assert broken is not None and "head" in broken.why


def test_checkpoint_base_lets_a_purged_chain_verify() -> None:
    """After a purge of events 1–2, a base at seq 2 with event 2's hash keeps the rest verifiable."""
    head, events = build(4)
    purged = replace(head, base_seq=2, base_hash=events[1].hash)
    assert verify_chain(purged, events[2:]) is None
    assert verify_chain(head, events[2:]) is not None

"""Tamper evidence: each consent-ledger event hashes the previous one of its (client, subject) chain.

A chain has a *base* (the hash and sequence number of the last event removed by a purge or an
erasure: the checkpoint) and a *head* (the newest event). Verification recomputes every remaining
event's hash and checks the links from base to head, so a row altered, inserted or deleted outside
the purge is found and named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.models import LedgerEvent

GENESIS_HASH = b"\x00" * 32


def event_hash(event: LedgerEvent, prev_hash: bytes) -> bytes:
    """Return the SHA-256 over the previous hash and a canonical encoding of the event's content."""
    content = json.dumps(
        [
            event.client_id,
            event.subject_key.hex(),
            event.seq,
            str(event.kind),
            event.at.isoformat(),
            event.source,
            event.method,
            event.notice_version,
            event.legal_basis,
            event.detail,
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    return hashlib.sha256(prev_hash + content).digest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The stored ends of one chain: where the remaining events start and end."""

    client_id: str
    subject_key: bytes
    base_seq: int
    base_hash: bytes
    head_seq: int
    head_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place a chain does not verify, and why."""

    client_id: str
    subject_key: bytes
    seq: int
    event_id: int
    why: str

    def describe(self) -> str:
        """A one-line human description naming the broken event."""
        where = f"event id {self.event_id}" if self.event_id else "chain head"
        return (
            f"{where} (client {self.client_id}, subject {self.subject_key.hex()[:16]}…, "
            f"seq {self.seq}): {self.why}"
        )


def verify_chain(head: ChainHead, events: Sequence[LedgerEvent]) -> ChainBreak | None:
    """Check ``events`` (ordered by seq) against ``head``; return the first break or None."""
    expected_seq = head.base_seq + 1
    prev = head.base_hash
    for event in events:
        if event.seq != expected_seq:
            why = f"expected seq {expected_seq}, found {event.seq} (an event is missing)"
            return ChainBreak(head.client_id, head.subject_key, event.seq, event.id, why)
        if event.prev_hash != prev:
            why = "previous-hash link does not match"
            return ChainBreak(head.client_id, head.subject_key, event.seq, event.id, why)
        if event_hash(event, prev) != event.hash:
            why = "content does not match its hash (the row was altered)"
            return ChainBreak(head.client_id, head.subject_key, event.seq, event.id, why)
        prev = event.hash
        expected_seq += 1
    if expected_seq - 1 != head.head_seq or prev != head.head_hash:
        why = f"chain ends at seq {expected_seq - 1} but its head says {head.head_seq}"
        return ChainBreak(head.client_id, head.subject_key, head.head_seq, 0, why)
    return None

"""The bounce corpus, table-driven: each real-world message's classification and resulting ledger state."""

from __future__ import annotations

import email
import tomllib
from email.policy import compat32
from typing import Any

import pytest
from inbound_support import CORPUS, bounce_address, corpus, make_inbound

from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.bounces import classify

CASES: list[dict[str, Any]] = tomllib.loads((CORPUS / "expected.toml").read_text())["case"]


def test_every_corpus_file_has_an_expectation() -> None:
    """No message in tests/data/bounces is left out of the table."""
    assert sorted(c["file"] for c in CASES) == sorted(p.name for p in CORPUS.glob("*.eml"))


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_classification(case: dict[str, Any]) -> None:
    """flufl.bounce plus the RFC 3464 fields name the expected permanent and temporary recipients."""
    msg = email.message_from_bytes(corpus(case["file"], "a" * 40), policy=compat32)
    report = classify(msg)
    assert sorted(report.permanent) == case["permanent"]
    assert sorted(report.temporary) == case["temporary"]


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
async def test_ledger_state(case: dict[str, Any], store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Sent to the copy's VERP address, each message leaves the expected suppression and events."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", case["recipient"])
    action = await inbound.process(bounce_address(token), corpus(case["file"], token))
    assert action == case["action"]
    expected = {"acme": case["suppression"]} if case["suppression"] else {}
    assert await inbound.suppressions(case["recipient"]) == expected
    assert await inbound.events(case["recipient"]) == case["events"]
    # Never another client's scope, never the global one (complaints.scope defaults to client).
    assert await inbound.suppressions(case["recipient"], "beta") == {}

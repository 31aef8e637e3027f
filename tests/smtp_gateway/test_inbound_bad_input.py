"""Bad inbound mail: forged or foreign tokens, malformed MIME, loops, automated mail — ignored, logged, nothing wrongly suppressed."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import timedelta

import pytest
from conftest import NOW
from inbound_support import (
    INBOUND_DOMAIN,
    Inbound,
    bounce_address,
    corpus,
    listening,
    make_inbound,
    send,
    unsubscribe_address,
)

from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.inbound import RetryLater

ALICE = "alice@example.org"
QUINN = "quinn@yahoo.com"
FBL = f"fbl@{INBOUND_DOMAIN}"


@pytest.fixture
async def inbound(store: SqlLedgerStore, test_secrets: Secrets) -> Inbound:
    """Clients acme and beta and the inbound processor."""
    return await make_inbound(store, test_secrets)


async def _nothing_recorded(inbound: Inbound, *addresses: str) -> None:
    """No suppression in any scope and no event for these addresses."""
    for address in addresses:
        for client_id in ("acme", "beta"):
            assert await inbound.suppressions(address, client_id) == {}
        assert await inbound.events(address) == []


async def test_dsn_returning_a_copy_of_another_client_is_ignored(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """A DSN to acme's VERP address that returns a copy carrying beta's token is crafted: ignored."""
    ours = await inbound.token("acme", ALICE)
    theirs = await inbound.token("beta", ALICE)
    assert await inbound.process(bounce_address(ours), corpus("postfix_hard.eml", theirs)) == "ignored"
    assert "token of another client" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_dsn_returning_a_copy_of_another_recipient_is_ignored(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """A VERP address of one recipient cannot bounce the copy of another."""
    ours = await inbound.token("acme", "mallory@example.org")
    victim = await inbound.token("acme", ALICE)
    assert await inbound.process(bounce_address(ours), corpus("postfix_hard.eml", victim)) == "ignored"
    assert "token of another recipient" in caplog.text
    await _nothing_recorded(inbound, ALICE, "mallory@example.org")


async def test_forged_and_expired_tokens(inbound: Inbound, caplog: pytest.LogCaptureFixture) -> None:
    """Forged, truncated, missing or expired tokens are refused at RCPT and ignored at DATA."""
    good = await inbound.token("acme", ALICE)
    forged = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    old = await inbound.token("acme", ALICE, now=NOW - timedelta(days=500))
    for token in (forged, good[:30], old):
        assert inbound.processor.check_recipient(bounce_address(token), NOW) is None
        assert await inbound.process(bounce_address(token), corpus("postfix_hard.eml", token)) == "ignored"
    assert inbound.processor.check_recipient(f"bounces@{INBOUND_DOMAIN}", NOW) is None
    assert inbound.processor.check_recipient(f"bounces+@{INBOUND_DOMAIN}", NOW) is None
    assert "does not verify" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_arf_without_token_or_naming_two_clients_is_ignored(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """An ARF report needs exactly one genuine token; Original-Rcpt-To alone names no client."""
    no_token = corpus("arf_abuse.eml", "x").replace(b"bounces+x@", b"news@").replace(b"unsubscribe+x@", b"u@")
    no_token = no_token.replace(b"/u/x>", b"/>")
    assert await inbound.process(FBL, no_token, "feedback@arf.example") == "ignored"
    assert "Original-Rcpt-To alone" in caplog.text
    acme = await inbound.token("acme", QUINN)
    beta = await inbound.token("beta", QUINN)
    two = corpus("arf_abuse.eml", acme).replace(f"/u/{acme}".encode(), f"/u/{beta}".encode())
    assert await inbound.process(FBL, two, "feedback@arf.example") == "ignored"
    assert "several copies" in caplog.text
    await _nothing_recorded(inbound, QUINN)


async def test_complaint_is_bound_to_the_token_client(inbound: Inbound) -> None:
    """An ARF whose copy claims to be from beta's domain but carries acme's token affects acme only."""
    token = await inbound.token("acme", QUINN)
    report = corpus("arf_abuse.eml", token).replace(b"news@acme.example", b"news@beta.example")
    report = report.replace(b"Reported-Domain: acme.example", b"Reported-Domain: beta.example")
    assert await inbound.process(FBL, report, "feedback@arf.example") == "complaint"
    assert await inbound.suppressions(QUINN, "acme") == {"acme": "complaint"}
    assert await inbound.suppressions(QUINN, "beta") == {}


async def test_feedback_that_is_not_abuse_is_ignored(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """`Feedback-Type: not-spam` is the opposite of a complaint."""
    token = await inbound.token("acme", QUINN)
    report = corpus("arf_abuse.eml", token).replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert await inbound.process(FBL, report, "feedback@arf.example") == "ignored"
    assert "not-spam" in caplog.text
    await _nothing_recorded(inbound, QUINN)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\r\n\r\n\x00\x01\x02 binary garbage",
        # multipart/report without a boundary: the parser could only guess the parts
        b"From: MAILER-DAEMON@relay.example\r\nContent-Type: multipart/report; report-type=delivery-status\r\n\r\n"
        b"Final-Recipient: rfc822; alice@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n",
        # a boundary that never occurs
        b'From: MAILER-DAEMON@relay.example\r\nContent-Type: multipart/report; boundary="zz"\r\n\r\n'
        b"--yy\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; alice@example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n--yy--\r\n",
    ],
    ids=["empty", "garbage", "no-boundary", "boundary-missing"],
)
async def test_malformed_mime_is_ignored(
    inbound: Inbound, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Unreadable messages are dropped with a logged reason, never guessed at."""
    token = await inbound.token("acme", ALICE)
    assert await inbound.process(bounce_address(token), content) == "ignored"
    assert "malformed message" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_bounce_of_a_bounce_is_a_loop(inbound: Inbound, caplog: pytest.LogCaptureFixture) -> None:
    """A DSN whose returned message is itself a DSN is a mail loop: ignored."""
    token = await inbound.token("acme", ALICE)
    inner = corpus("postfix_hard.eml", token)
    outer = (
        b"From: MAILER-DAEMON@other.example\r\nTo: " + bounce_address(token).encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="loop"\r\n\r\n'
        b"--loop\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; other.example\r\n\r\n"
        b"Final-Recipient: rfc822; MAILER-DAEMON@relay.agency.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--loop\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--loop--\r\n"
    )
    assert await inbound.process(bounce_address(token), outer) == "ignored"
    assert "mail loop" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_automated_mail_never_unsubscribes(inbound: Inbound, caplog: pytest.LogCaptureFixture) -> None:
    """An auto-reply, a null-sender notification or a DSN sent to the mailto address changes nothing."""
    token = await inbound.token("acme", ALICE)
    target = unsubscribe_address(token)
    assert await inbound.process(target, corpus("vacation.eml", token), "olivia@example.org") == "ignored"
    assert await inbound.process(target, corpus("normal.eml", token), "<>") == "ignored"
    assert await inbound.process(target, corpus("postfix_hard.eml", token), "x@relay.example") == "ignored"
    assert "auto-submitted" in caplog.text and "null reverse path" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_complaint_address_ignores_ordinary_mail(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """A person writing to abuse@ is logged, not acted on (no ARF, no token to trust)."""
    token = await inbound.token("acme", ALICE)
    assert (
        await inbound.process(f"abuse@{INBOUND_DOMAIN}", corpus("normal.eml", token), "p@example.net")
        == "ignored"
    )
    assert "not an ARF feedback report" in caplog.text
    await _nothing_recorded(inbound, ALICE)


async def test_fresh_token_of_an_unrecorded_copy_is_deferred(inbound: Inbound) -> None:
    """A genuine token minted today whose copy is not written yet gets 451 (retry); an old one is dropped."""
    client = await inbound.store.get_client("acme")
    key = inbound.key("unrecorded@example.org")
    fresh = inbound.service.mint_token(client, 1, key, NOW)
    old = inbound.service.mint_token(client, 1, key, NOW - timedelta(days=10))
    with pytest.raises(RetryLater):
        await inbound.process(bounce_address(fresh), corpus("postfix_hard.eml", fresh))
    assert await inbound.process(bounce_address(old), corpus("postfix_hard.eml", old)) == "ignored"
    async with listening(inbound) as listener:
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            await asyncio.to_thread(
                send, listener.port, "", [bounce_address(fresh)], corpus("postfix_hard.eml", fresh)
            )
    assert deferred.value.smtp_code == 451
    await _nothing_recorded(inbound, "unrecorded@example.org")

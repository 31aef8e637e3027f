"""The upstream relays: URL parsing, the maildir writer, and SMTP results by reply class."""

from __future__ import annotations

from pathlib import Path

import pytest
from submission_support import free_port, sink

from smtp_gateway.relay import (
    Copy,
    MaildirRelay,
    Outcome,
    SmtpRelay,
    UpstreamConfig,
    UpstreamConfigError,
    make_relay,
)

COPY = Copy("bounces+tok@b.example", "reader@example.org", b"Subject: hi\r\n\r\nhello\r\n")


def test_upstream_urls() -> None:
    """Each scheme maps onto the right relay and TLS mode; credentials are URL-decoded."""
    starttls = make_relay(UpstreamConfig(url="smtp+starttls://us%40er:p%3Ass@mx.example"))
    assert isinstance(starttls, SmtpRelay) and starttls.port == 587 and starttls._start_tls
    assert (starttls._username, starttls._password) == ("us@er", "p:ss")
    smtps = make_relay(UpstreamConfig(url="smtps://mx.example:2465?verify=no"))
    assert (
        isinstance(smtps, SmtpRelay) and smtps.port == 2465 and smtps._use_tls and not smtps._validate_certs
    )
    plain = make_relay(UpstreamConfig(url="smtp://10.0.0.5"))
    assert isinstance(plain, SmtpRelay) and plain.port == 25 and not plain._start_tls
    assert isinstance(make_relay(UpstreamConfig(url="maildir:data/outbox")), MaildirRelay)


@pytest.mark.parametrize("url", ["http://mx.example", "smtp://", "maildir:", "smtp://mx.example:99999"])
def test_bad_upstream_urls_are_refused_clearly(url: str) -> None:
    """A URL the relay cannot use is a configuration error naming the URL."""
    with pytest.raises(UpstreamConfigError, match=r"upstream|maildir"):
        make_relay(UpstreamConfig(url=url))


async def test_maildir_writes_one_complete_file_per_copy(tmp_path: Path) -> None:
    """Each copy becomes NAME.eml with the envelope on top; no temp file remains."""
    relay = MaildirRelay(tmp_path / "outbox")
    assert (await relay.send(COPY)).outcome is Outcome.DELIVERED
    assert (await relay.send(COPY)).outcome is Outcome.DELIVERED
    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 2 and all(f.suffix == ".eml" for f in files)
    assert files[0].read_bytes() == (
        b"Return-Path: <bounces+tok@b.example>\r\nDelivered-To: reader@example.org\r\n" + COPY.message
    )


async def test_maildir_on_a_file_is_a_temporary_failure(tmp_path: Path) -> None:
    """A maildir path that is a file (not a folder) fails temporarily with the reason."""
    (tmp_path / "taken").write_text("not a folder")
    result = await MaildirRelay(tmp_path / "taken").send(COPY)
    assert result.outcome is Outcome.TEMPORARY and "maildir write failed" in result.detail


async def test_smtp_results_by_reply_class() -> None:
    """250 delivered, 4xx temporary, 5xx permanent (with the code), no listener temporary."""
    async with sink() as (upstream, port):
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=2, timeout=5)
        assert (await relay.send(COPY)).outcome is Outcome.DELIVERED
        upstream.fail_rcpt_with = "452 4.2.2 mailbox full"
        assert (await relay.send(COPY)).outcome is Outcome.TEMPORARY
        upstream.fail_rcpt_with = "550 5.1.1 no such user"
        refused = await relay.send(COPY)
        assert (refused.outcome, refused.code) == (Outcome.PERMANENT, 550)
        upstream.fail_rcpt_with = None
        upstream.fail_with = "554 5.7.1 spam"
        assert (await relay.send(COPY)).outcome is Outcome.PERMANENT
        await relay.close()
    assert [r.rcpt_tos for r in upstream.received] == [["reader@example.org"]]
    down = SmtpRelay(host="127.0.0.1", port=free_port(), timeout=2)
    result = await down.send(COPY)
    assert result.outcome is Outcome.TEMPORARY and result.code == 0

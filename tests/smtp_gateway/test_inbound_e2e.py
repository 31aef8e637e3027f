"""End to end with the gateway: a relayed copy bounced (or complained about) by the upstream's side feeds the ledger."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import compat32

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from submission_support import INBOUND, SinkController, add_client, gateway, make_service, submit

from ledger.bounce_service import InboundLedger
from ledger.models import Reason
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from smtp_gateway.inbound import InboundConfig, InboundListener, build_inbound_listener

READER = "reader@example.org"
OTHER = "other@example.org"


def postfix_dsn(copy: bytes, mail_from: str, rcpt: str) -> bytes:
    """The DSN a Postfix relay writes when the recipient's MX says 550 5.1.1 (returning the copy's headers)."""
    headers = copy.split(b"\r\n\r\n", 1)[0]
    return (
        (
            f"From: MAILER-DAEMON@upstream.test (Mail Delivery System)\r\nTo: {mail_from}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn-b"\r\n\r\n'
            "--dsn-b\r\nContent-Description: Notification\r\nContent-Type: text/plain\r\n\r\n"
            f"This is the mail system at host upstream.test.\r\n\r\n<{rcpt}>: host mx.example.org said: 550 5.1.1\r\n"
            "    User unknown (in reply to RCPT TO command)\r\n\r\n"
            "--dsn-b\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; upstream.test\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: User unknown\r\n\r\n"
            "--dsn-b\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ).encode()
        + headers
        + b"\r\n\r\n--dsn-b--\r\n"
    )


def arf_report(copy: bytes, rcpt: str) -> bytes:
    """An RFC 5965 abuse report from a mailbox provider's feedback loop, returning the whole copy."""
    return (
        (
            "From: Feedback Loop <fbl@isp.test>\r\nTo: fbl@"
            + INBOUND
            + "\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="arf-b"\r\n\r\n'
            "--arf-b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
            "--arf-b\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n"
            "--arf-b\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + copy
        + b"\r\n--arf-b--\r\n"
    )


@dataclass
class BouncingUpstream:
    """An upstream that accepts every copy, then returns a DSN for it to its VERP address (like an MTA)."""

    inbound_port: int
    bounce: set[str] = field(default_factory=set)
    copies: list[tuple[str, str, bytes]] = field(default_factory=list)
    returned: threading.Event = field(default_factory=threading.Event)
    deferrals: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Take the copy; for a recipient in ``bounce``, deliver a DSN to the return path afterwards."""
        content = bytes(envelope.original_content)
        for rcpt in envelope.rcpt_tos:
            self.copies.append((str(envelope.mail_from), rcpt, content))
            if rcpt.lower() in self.bounce:
                asyncio.get_running_loop().create_task(self._return(str(envelope.mail_from), rcpt, content))
        return "250 2.0.0 queued"

    async def _return(self, mail_from: str, rcpt: str, content: bytes) -> None:
        """Send the DSN with a null reverse path to the inbound listener, retrying on 4xx like an MTA."""
        for _attempt in range(100):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.inbound_port, timeout=10)
            async with client:
                try:
                    await client.sendmail("", [mail_from], postfix_dsn(content, mail_from, rcpt))
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code // 100 != 4:
                        raise
                    self.deferrals += 1
                    await asyncio.sleep(0.05)
                    continue
            self.returned.set()
            return


@asynccontextmanager
async def bouncing_upstream(
    inbound_port: int, bounce: set[str]
) -> AsyncIterator[tuple[BouncingUpstream, int]]:
    """The bouncing upstream in its own thread; yields (handler, port)."""
    handler = BouncingUpstream(inbound_port, bounce)
    controller = SinkController(handler, hostname="127.0.0.1", port=0)
    await asyncio.to_thread(controller.start)
    try:
        yield handler, controller.port
    finally:
        await asyncio.to_thread(controller.stop)


@asynccontextmanager
async def inbound_listener(service: LedgerService) -> AsyncIterator[InboundListener]:
    """The inbound listener for the gateway's inbound domain, on a free port."""
    listener = build_inbound_listener(
        service, InboundLedger(service.store), InboundConfig(domains=(INBOUND,)), "127.0.0.1:0"
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


async def test_bounced_copy_is_suppressed_and_next_message_refused(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Relay, the upstream's DSN to the VERP address, then 550 5.7.1 (hard_bounce) at RCPT for that client only."""
    service = make_service(store, test_secrets)
    await add_client(store)
    await add_client(store, "beta", domains=("beta.example",))
    async with (
        inbound_listener(service) as listener,
        bouncing_upstream(listener.port, {READER}) as (upstream, port),
        gateway(service, port) as gw,
    ):
        assert await asyncio.to_thread(submit, gw.port, [READER, OTHER]) == {}
        assert await asyncio.to_thread(upstream.returned.wait, 10)
        await gw.delivery_log.flush()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(submit, gw.port, [READER])
        assert await asyncio.to_thread(submit, gw.port, [OTHER]) == {}
    assert refused.value.recipients == {
        READER: (550, f"5.7.1 <{READER}>: recipient suppressed (hard_bounce)".encode())
    }
    mail_from = upstream.copies[0][0]
    assert mail_from.startswith("bounces+") and mail_from.endswith(f"@{INBOUND}")
    assert (await service.check(READER, "acme", datetime.now(UTC))).reason is Reason.HARD_BOUNCE
    assert (await service.check(READER, "beta", datetime.now(UTC))).allowed
    assert (await service.check(OTHER, "acme", datetime.now(UTC))).allowed
    kinds = [row[0] for row in await store.db.fetch("SELECT kind FROM events ORDER BY id")]
    assert kinds.count("bounced") == 1 and kinds.count("suppressed") == 1


async def test_complaint_about_a_relayed_copy(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """An ARF report returning the relayed copy (its tokens, not its headers, name the recipient) suppresses it."""
    service = make_service(store, test_secrets)
    await add_client(store)
    async with (
        inbound_listener(service) as listener,
        bouncing_upstream(listener.port, set()) as (upstream, port),
        gateway(service, port) as gw,
    ):
        assert await asyncio.to_thread(submit, gw.port, [READER]) == {}
        copy = upstream.copies[0][2]
        assert message_from_bytes(copy, policy=compat32)["List-Unsubscribe"]
        await gw.delivery_log.flush()  # complaints come long after the gateway's batched writes
        await aiosmtplib.send(
            arf_report(copy, "redacted@isp.test"),
            sender="fbl@isp.test",
            recipients=[f"fbl@{INBOUND}"],
            hostname="127.0.0.1",
            port=listener.port,
            timeout=10,
        )
        await gw.delivery_log.flush()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(submit, gw.port, [READER])
    assert refused.value.recipients == {
        READER: (550, f"5.7.1 <{READER}>: recipient suppressed (complaint)".encode())
    }

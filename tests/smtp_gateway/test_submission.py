"""The submission listener end to end: smtplib mailer → gateway (port 0) → aiosmtpd sink (port 0)."""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import dkim
import pytest
from conftest import NOW
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from submission_support import (
    DKIM_TXT,
    INBOUND,
    MESSAGE,
    PASSWORD,
    PUBLIC_URL,
    add_client,
    gateway,
    make_service,
    sink,
    submit,
)

from ledger.models import OnSuppressed
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.dkim_sign import DkimSigner

GLOBAL_OUT = "gone@example.org"
CLIENT_OUT = "left@example.org"
ALLOWED = "Reader@Example.org"


def dns_txt(name: bytes, timeout: int = 5) -> bytes:
    """The DKIM record of s2026._domainkey.acme.example (dkimpy's dnsfunc)."""
    assert name == b"s2026._domainkey.acme.example."
    return DKIM_TXT.encode("ascii")


async def event_kinds(store: SqlLedgerStore) -> list[tuple[str, str]]:
    """(kind, reason) of every event, in order."""
    rows = await store.db.fetch("SELECT kind, reason FROM events ORDER BY id")
    return [(r[0], r[1]) for r in rows]


async def test_three_recipients_one_copy_rewritten_and_signed(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Global and client opt-outs get 550 5.7.1 at RCPT; the one allowed copy is rewritten and DKIM-valid."""
    service = make_service(store, test_secrets)
    await add_client(store)
    await service.unsubscribe(GLOBAL_OUT, None, "signed letter", NOW)
    await service.unsubscribe(CLIENT_OUT, "acme", "one-click", NOW)
    async with sink() as (upstream, port), gateway(service, port) as gw:
        refused = await asyncio.to_thread(submit, gw.port, [GLOBAL_OUT, CLIENT_OUT, ALLOWED])
        await gw.delivery_log.flush()
    assert refused == {
        GLOBAL_OUT: (550, f"5.7.1 <{GLOBAL_OUT}>: recipient suppressed (global_optout)".encode()),
        CLIENT_OUT: (550, f"5.7.1 <{CLIENT_OUT}>: recipient suppressed (unsubscribed)".encode()),
    }
    assert len(upstream.received) == 1
    copy = upstream.received[0]
    assert copy.rcpt_tos == [ALLOWED]
    token = copy.mail_from.removeprefix("bounces+").removesuffix(f"@{INBOUND}")
    assert copy.mail_from == f"bounces+{token}@{INBOUND}" and re.fullmatch(r"[a-z2-7]{20,52}", token)
    assert dkim.verify(copy.content, dnsfunc=dns_txt)
    parsed = message_from_bytes(copy.content, policy=default_policy)
    assert parsed.get_all("List-Unsubscribe") == [
        f"<{PUBLIC_URL}/u/{token}>, <mailto:unsubscribe+{token}@{INBOUND}>"
    ]
    assert parsed.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert "X-Campaign-ID" not in parsed
    signature = parsed["DKIM-Signature"]
    assert "list-unsubscribe-post" in signature and "l=" not in signature.replace(" ", "").split(";")
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert f"Unsubscribe: {PUBLIC_URL}/u/{token}" in text and "1 Main Street, Springfield" in text
    assert f'href="{PUBLIC_URL}/c/{token}/' in html and 'href="https://shop.acme.example/sale"' not in html
    assert f"{PUBLIC_URL}/u/{token}" in html
    # The token points back at the recipient without carrying the address.
    target = await service.resolve_token(token, datetime.now(UTC))
    assert target.subject_key == service.identify(ALLOWED).subject_key
    assert target.client.id == "acme"
    assert await event_kinds(store) == [
        ("suppressed", "global_optout"),
        ("suppressed", "unsubscribed"),
        ("delivered", ""),
    ]
    campaigns = await store.db.fetch("SELECT DISTINCT campaign_num FROM events")
    assert len(campaigns) == 1 and campaigns[0][0] == await store.campaign_num("acme", "spring-2026", NOW)
    sent = await store.db.fetchrow(
        "SELECT first_sent_at, last_sent_at FROM relationships WHERE client_id = 'acme' AND subject_key = $1",
        target.subject_key,
    )
    assert sent is not None and sent[0] is not None and sent[0] == sent[1]
    assert "example.org" not in str(await store.db.fetch("SELECT * FROM events"))


async def test_drop_mode_accepts_and_never_delivers(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """on_suppressed=drop: the mailer sees 250 for everyone, the sink one copy, the ledger two `suppressed`."""
    service = make_service(store, test_secrets)
    await add_client(store, on_suppressed=OnSuppressed.DROP)
    await service.unsubscribe(GLOBAL_OUT, None, "signed letter", NOW)
    await service.unsubscribe(CLIENT_OUT, "acme", "one-click", NOW)
    async with sink() as (upstream, port), gateway(service, port) as gw:
        refused = await asyncio.to_thread(submit, gw.port, [GLOBAL_OUT, CLIENT_OUT, ALLOWED])
        await gw.delivery_log.flush()
    assert refused == {}
    assert [r.rcpt_tos for r in upstream.received] == [[ALLOWED]]
    assert sorted(await event_kinds(store)) == [
        ("delivered", ""),
        ("suppressed", "global_optout"),
        ("suppressed", "unsubscribed"),
    ]


async def test_everyone_dropped_still_answers_250(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """A message whose recipients are all dropped is accepted and nothing reaches the upstream."""
    service = make_service(store, test_secrets)
    await add_client(store, on_suppressed=OnSuppressed.DROP)
    await service.unsubscribe(GLOBAL_OUT, None, "signed letter", NOW)
    async with sink() as (upstream, port), gateway(service, port) as gw:
        assert await asyncio.to_thread(submit, gw.port, [GLOBAL_OUT]) == {}
        await gw.delivery_log.flush()
    assert upstream.received == []
    assert await event_kinds(store) == [("suppressed", "global_optout")]


def _session(port: int, host: str = "127.0.0.1") -> smtplib.SMTP:
    """An EHLO'd smtplib session."""
    client = smtplib.SMTP(host, port, timeout=10)
    client.ehlo("mailer.test")
    return client


async def test_refusals_and_the_gateway_keeps_serving(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Open-relay attempt, foreign sender, injected campaign header, oversize: each refused, then a send works."""
    service = make_service(store, test_secrets)
    await add_client(store)
    injected = MESSAGE.replace(
        b"X-Campaign-ID: spring-2026\r\n",
        b'X-SMTPAPI: {"category": ["spring\\r\\nBcc: victim@example.net"]}\r\n',
    )
    big = MESSAGE + b"filler line\r\n" * 500

    def scenario(port: int) -> dict[str, object]:
        seen: dict[str, object] = {}
        with _session(port) as client:  # no AUTH, not a trusted network: never an open relay
            seen["unauth_mail"] = client.mail("news@acme.example")
            seen["unauth_rcpt"] = client.rcpt("someone@example.net")
        with _session(port) as client:
            client.login("acme", PASSWORD)
            seen["foreign_sender"] = client.mail("ceo@bank.example")
            client.rset()
            seen["null_sender"] = client.mail("<>")
            client.rset()
            client.mail("news@acme.example")
            client.rcpt(ALLOWED)
            seen["injected"] = client.data(injected)
        with _session(port) as client:
            client.login("acme", PASSWORD)
            seen["size_at_mail"] = client.mail("news@acme.example", [f"SIZE={len(big)}"])
            client.rset()
            client.mail("news@acme.example")
            client.rcpt(ALLOWED)
            seen["size_at_data"] = client.data(big)
            seen["after"] = client.sendmail("news@acme.example", [ALLOWED], MESSAGE)
        with _session(port) as client:
            seen["wrong_password"] = _auth_code(client, "acme", "guess")
        return seen

    async with sink() as (upstream, port), gateway(service, port, max_message_size=len(MESSAGE) + 1000) as gw:
        seen = await asyncio.to_thread(scenario, gw.port)
    assert seen["unauth_mail"] == (530, b"5.7.0 Authentication required")
    assert seen["unauth_rcpt"][0] == 503  # type: ignore[index]
    assert seen["foreign_sender"] == (
        553,
        b"5.7.1 <ceo@bank.example>: sender address not in the client's domains",
    )
    assert seen["null_sender"][0] == 553  # type: ignore[index]
    assert seen["injected"] == (554, b"5.6.0 Invalid control header: control character in campaign header")
    assert seen["size_at_mail"] == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert seen["size_at_data"] == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert seen["after"] == {}
    assert seen["wrong_password"] == 535
    assert len(upstream.received) == 1 and b"Bcc: victim" not in upstream.received[0].content


def _auth_code(client: smtplib.SMTP, user: str, password: str) -> int:
    """The reply code of AUTH PLAIN (without smtplib's exception dance)."""
    blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {blob}")[0]


async def test_invalid_recipient_and_recipient_limit(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """An address the ledger cannot normalise gets 553 5.1.3; one RCPT too many gets 452 4.5.3."""
    service = make_service(store, test_secrets)
    await add_client(store)

    def scenario(port: int) -> list[tuple[int, bytes]]:
        with _session(port) as client:
            client.login("acme", PASSWORD)
            client.mail("news@acme.example")
            return [
                client.rcpt("a..b@example.com"),
                client.rcpt("one@example.org"),
                client.rcpt("two@example.org"),
                client.rcpt("three@example.org"),
            ]

    async with sink() as (_upstream, port), gateway(service, port, max_recipients=2) as gw:
        answers = await asyncio.to_thread(scenario, gw.port)
    assert answers == [
        (553, b"5.1.3 <a..b@example.com>: invalid address"),
        (250, b"2.1.5 Recipient OK"),
        (250, b"2.1.5 Recipient OK"),
        (452, b"4.5.3 Too many recipients"),
    ]


async def test_trusted_network_submits_without_auth(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """A connection from a client's trusted network submits as that client, like Postfix mynetworks."""
    service = make_service(store, test_secrets)
    await add_client(store, trusted_networks=("127.0.0.0/8",))
    async with sink() as (upstream, port), gateway(service, port) as gw:
        assert await asyncio.to_thread(submit, gw.port, [ALLOWED], login=False) == {}
    assert [r.rcpt_tos for r in upstream.received] == [[ALLOWED]]


async def test_paused_client_is_told_to_retry_later(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """A client paused by the complaint-rate guard gets 451 4.7.1 at MAIL FROM."""
    service = make_service(store, test_secrets)
    await add_client(store)
    await store.update_client("acme", paused_reason="complaint rate 0.5% over 1000 messages")

    def scenario(port: int) -> tuple[int, bytes]:
        with _session(port) as client:
            client.login("acme", PASSWORD)
            return client.mail("news@acme.example")

    async with sink() as (upstream, port), gateway(service, port) as gw:
        answer = await asyncio.to_thread(scenario, gw.port)
    assert answer == (451, b"4.7.1 Client paused: complaint rate 0.5% over 1000 messages")
    assert upstream.received == []


async def test_no_plain_auth_on_loopback_when_disabled(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """With the loopback exemption off, AUTH is neither offered nor accepted before STARTTLS."""
    service = make_service(store, test_secrets)
    await add_client(store)

    def scenario(port: int) -> tuple[bool, int, tuple[int, bytes]]:
        with _session(port) as client:
            offered = client.has_extn("auth")
            code = _auth_code(client, "acme", PASSWORD)
            return offered, code, client.mail("news@acme.example")

    async with sink() as (_upstream, port), gateway(service, port, allow_plain_auth_on_loopback=False) as gw:
        offered, code, mail = await asyncio.to_thread(scenario, gw.port)
    assert not offered and code == 538
    assert mail == (530, b"5.7.0 Authentication required")


def _non_loopback_address() -> str | None:
    """One of this machine's own non-loopback IPv4 addresses, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def _tls_context(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_auth_only_after_starttls_off_loopback(
    store: SqlLedgerStore, test_secrets: Secrets, tmp_path: Path
) -> None:
    """On a non-loopback address AUTH is refused (538) until STARTTLS, then works and mail flows."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    service = make_service(store, test_secrets)
    await add_client(store)

    def scenario(port: int) -> dict[str, object]:
        seen: dict[str, object] = {}
        with _session(port, address) as client:
            seen["offered_plain"] = client.has_extn("auth")
            seen["auth_plain"] = _auth_code(client, "acme", PASSWORD)
            seen["mail_plain"] = client.mail("news@acme.example")
            client.rset()
            trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
            trust.check_hostname = False  # the certificate names gateway.test, we dial an IP
            client.starttls(context=trust)
            client.ehlo("mailer.test")
            seen["offered_tls"] = client.has_extn("auth")
            client.login("acme", PASSWORD)
            seen["sent"] = client.sendmail("news@acme.example", [ALLOWED], MESSAGE)
        return seen

    async with (
        sink() as (upstream, port),
        gateway(service, port, host=address, tls_context=_tls_context(tmp_path)) as gw,
    ):
        seen = await asyncio.to_thread(scenario, gw.port)
    assert seen["offered_plain"] is False and seen["auth_plain"] == 538
    assert seen["mail_plain"] == (530, b"5.7.0 Authentication required")
    assert seen["offered_tls"] is True and seen["sent"] == {}
    assert len(upstream.received) == 1


class SlowRsaSigner(DkimSigner):
    """The real signer whose RSA step takes 0.4 s (as a slow key or a loaded core would)."""

    started = threading.Event()

    def rsa_sign(self, digest: bytes) -> bytes:
        """Say the RSA step began, sleep in the calling thread, then sign."""
        self.started.set()
        time.sleep(0.4)
        return super().rsa_sign(digest)


async def test_rsa_step_does_not_hold_up_other_sessions(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """While one copy's RSA signature is computed, another mailer's EHLO, AUTH, MAIL and RCPT are answered at once."""
    service = make_service(store, test_secrets)
    await add_client(store)
    SlowRsaSigner.started.clear()

    def slow_factory(domain: str, selector: str, pem: str) -> SlowRsaSigner:
        """A slow signer for the client's key."""
        return SlowRsaSigner(domain, selector, pem.encode("ascii"))

    async with sink() as (upstream, port), gateway(service, port, signer_factory=slow_factory) as gw:

        def second_session() -> float:
            """Once the first copy is in its RSA step: EHLO, AUTH, MAIL and RCPT; seconds they took."""
            # A thread of its own, waiting on a thread event: if the RSA step blocked the event
            # loop, this session would wait for it whatever the test coroutine does.
            assert SlowRsaSigner.started.wait(10)
            started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as client:
                client.ehlo("mailer.test")
                client.login("acme", PASSWORD)
                assert client.mail("news@acme.example")[0] == 250
                assert client.rcpt("other@example.org")[0] == 250
                took = time.perf_counter() - started
                client.rset()
            return took

        second = asyncio.create_task(asyncio.to_thread(second_session))
        refused = await asyncio.to_thread(submit, gw.port, [ALLOWED])
        took = await second
    assert refused == {}
    assert took < 0.3, f"the second session waited {took:.3f}s behind the RSA step"
    assert len(upstream.received) == 1 and dkim.verify(upstream.received[0].content, dnsfunc=dns_txt)


async def test_rsa_step_inline_signs_every_copy(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """With the RSA step on the loop (workers fill every core), each of three copies is DKIM-valid."""
    service = make_service(store, test_secrets)
    await add_client(store)
    rcpts = ["a@example.org", "b@example.org", "c@example.org"]
    async with sink() as (upstream, port), gateway(service, port, rsa_in_thread=False) as gw:
        assert await asyncio.to_thread(submit, gw.port, rcpts) == {}
    assert sorted(c.rcpt_tos[0] for c in upstream.received) == rcpts
    assert all(dkim.verify(c.content, dnsfunc=dns_txt) for c in upstream.received)

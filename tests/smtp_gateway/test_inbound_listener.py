"""The inbound listener over real sockets: relay refusal, DSNs, mailto unsubscribes, ARF, limits, the rate guard."""

from __future__ import annotations

import asyncio
import secrets
import smtplib
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW, make_store
from inbound_support import (
    INBOUND_DOMAIN,
    bounce_address,
    corpus,
    listening,
    make_inbound,
    send,
    unsubscribe_address,
)
from typer.testing import CliRunner

from cli.main import app
from ledger.errors import UnknownClient
from ledger.models import EventKind
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.ledger_store import InteractionEvent

ALICE = "alice@example.org"
QUINN = "quinn@yahoo.com"


def _rcpt_codes(port: int, mail_from: str, rcpts: list[str]) -> list[tuple[int, bytes]]:
    """MAIL FROM then one RCPT per address; the replies."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mx.sender.example")
        assert client.mail(mail_from)[0] == 250
        return [client.rcpt(r) for r in rcpts]


async def test_serves_only_its_addresses_and_is_never_a_relay(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Anything but bounces+TOKEN@, unsubscribe+TOKEN@ and the complaint addresses gets 550 5.7.1; <> is fine."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", ALICE)
    async with listening(inbound) as listener:
        replies = await asyncio.to_thread(
            _rcpt_codes,
            listener.port,
            "",
            [
                "someone@example.org",
                f"postmaster@{INBOUND_DOMAIN}",
                f"bounces@{INBOUND_DOMAIN}",
                f"bounces+{'a' * 40}@{INBOUND_DOMAIN}",
                f"bounces+{token}@elsewhere.example",
                bounce_address(token),
                unsubscribe_address(token.upper()),
                f"FBL@{INBOUND_DOMAIN}",
                f"abuse@{INBOUND_DOMAIN}",
            ],
        )
        ehlo = await asyncio.to_thread(_ehlo, listener.port)
    codes = [code for code, _text in replies]
    assert codes == [550] * 5 + [250] * 4
    assert all(text.startswith(b"5.7.1 ") for code, text in replies if code == 550)
    assert b"AUTH" not in ehlo


def _ehlo(port: int) -> bytes:
    """The EHLO answer of the listener."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.ehlo("probe.example")[1]


async def test_dsn_over_smtp_suppresses_the_copy_recipient(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """A Postfix DSN with MAIL FROM:<> to the VERP address ends in a hard_bounce suppression."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", ALICE)
    async with listening(inbound) as listener:
        refused = await asyncio.to_thread(
            send, listener.port, "", [bounce_address(token)], corpus("postfix_hard.eml", token)
        )
    assert refused == {}
    assert await inbound.suppressions(ALICE) == {"acme": "hard_bounce"}
    assert await inbound.events(ALICE) == ["bounced:hard"]


async def test_mailto_unsubscribe(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Mail from a person to unsubscribe+TOKEN@ unsubscribes like the one-click POST, once."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", ALICE)
    message = (
        f"From: Alice <{ALICE}>\r\nTo: {unsubscribe_address(token)}\r\nSubject: unsubscribe\r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n\r\nunsubscribe\r\n"
    ).encode()
    async with listening(inbound) as listener:
        for _ in range(2):
            assert (
                await asyncio.to_thread(send, listener.port, ALICE, [unsubscribe_address(token)], message)
                == {}
            )
    assert await inbound.suppressions(ALICE) == {"acme": "unsubscribed"}
    assert await inbound.suppressions(ALICE, "beta") == {}
    assert await inbound.events(ALICE) == ["unsubscribed"]


async def test_arf_to_the_complaint_address(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """An ARF report for a relayed copy, sent to fbl@, suppresses the recipient with reason complaint."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", QUINN)
    report = corpus("arf_abuse.eml", token).replace(
        bounce_address(token).encode(), f"fbl@{INBOUND_DOMAIN}".encode(), 1
    )
    async with listening(inbound) as listener:
        refused = await asyncio.to_thread(
            send, listener.port, "feedback@arf.mail.yahoo.example", [f"fbl@{INBOUND_DOMAIN}"], report
        )
    assert refused == {}
    assert await inbound.suppressions(QUINN) == {"acme": "complaint"}
    assert await inbound.events(QUINN) == ["complained"]


def _stream_data(port: int, rcpt: str, total: int) -> tuple[int, int]:
    """Send ``total`` bytes of DATA in small chunks over a raw socket; (MAIL reply code, final DATA code)."""
    line = b"X" * 998 + b"\r\n"
    chunk = line * 64
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")

        def reply() -> int:
            while True:
                text = reader.readline()
                if text[3:4] != b"-":
                    return int(text[:3])

        reply()
        for command in (b"EHLO big.example", b"MAIL FROM:<>", f"RCPT TO:<{rcpt}>".encode(), b"DATA"):
            sock.sendall(command + b"\r\n")
            code = reply()
        assert code == 354
        sock.sendall(b"Subject: huge\r\n\r\n")
        sent = 0
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b".\r\n")
        final = reply()
        sock.sendall(f"MAIL FROM:<> SIZE={total}\r\n".encode())
        declared = reply()
        return declared, final


def _peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_fifty_megabytes_refused_with_552_without_buffering(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """A 50 MB message is read and discarded, answered 552 at the end of DATA; SIZE= is refused at MAIL."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", ALICE)
    async with listening(inbound) as listener:
        before = _peak_rss_kib()
        declared, final = await asyncio.to_thread(
            _stream_data, listener.port, bounce_address(token), 50 * 1024 * 1024
        )
        grown = _peak_rss_kib() - before
    assert final == 552
    assert declared == 552
    # aiosmtpd keeps at most the 25 MB limit, then discards: buffering the whole 50 MB (and the
    # joined copy it makes of it) would raise the peak by 100 MB.
    assert grown < 40 * 1024, f"peak RSS grew by {grown} KiB"
    assert await inbound.events(ALICE) == []


async def test_rate_guard_pauses_and_client_resume_lifts_it(tmp_path: Path, test_secrets: Secrets) -> None:
    """Four ARF complaints over 1000 delivered (0.4%) pause acme; `consentgate client resume acme` lifts it."""
    store, url, _schema = await make_store("sqlite", tmp_path)
    try:
        inbound = await make_inbound(store, test_secrets)
        await store.record_events(
            [
                InteractionEvent(
                    "acme", EventKind.DELIVERED, NOW - timedelta(seconds=i), 1, secrets.token_bytes(32)
                )
                for i in range(1000)
            ]
        )
        async with listening(inbound) as listener:
            for i in range(4):
                address = f"reader{i}@example.org"
                token = await inbound.token("acme", address)
                report = corpus("arf_abuse.eml", token).replace(QUINN.encode(), address.encode())
                await asyncio.to_thread(
                    send, listener.port, "fbl@isp.example", [f"fbl@{INBOUND_DOMAIN}"], report
                )
                paused = (await store.get_client("acme")).paused_reason
                assert bool(paused) == (i == 3), (i, paused)
        assert (await store.get_client("beta")).paused_reason == ""
    finally:
        await store.close()
    config = tmp_path / "consentgate.toml"
    config.write_text(f'database_url = "{url}"\n')
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["--config", str(config), "client", "resume", "acme"]
    )
    assert result.exit_code == 0, result.output
    assert "resumed (was paused: complaint rate 0.40%" in result.output
    reopened, _url, _schema = await make_store("sqlite", tmp_path)
    try:
        assert (await reopened.get_client("acme")).paused_reason == ""
    finally:
        await reopened.close()
    missing = await asyncio.to_thread(
        CliRunner().invoke, app, ["--config", str(config), "client", "resume", "nope"]
    )
    # main() turns this LedgerError into "error: no client 'nope'" and exit status 2.
    assert isinstance(missing.exception, UnknownClient)


async def test_listener_stops_cleanly(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """After stop() the port is closed: nothing accepts mail any more."""
    inbound = await make_inbound(store, test_secrets)
    async with listening(inbound) as listener:
        port = listener.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

"""Shared pieces of the gateway tests: a real upstream sink, a misbehaving upstream, a client.

Imported by the test modules of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import NOW

from ledger.models import Client, OnSuppressed
from ledger.passwords import hash_password
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.tokens import TokenKeys
from smtp_gateway.dkim_sign import generate_rsa_key
from smtp_gateway.gateway import Gateway
from smtp_gateway.outbox_worker import OutboxConfig
from smtp_gateway.relay import UpstreamConfig
from smtp_gateway.submission import SignerFactory, SubmissionConfig, default_signer_factory

PASSWORD = "correct horse battery staple"
INBOUND = "bounce.example"
PUBLIC_URL = "https://links.example"
PEM, DKIM_TXT = generate_rsa_key(2048)

MESSAGE = (
    b"From: Acme News <news@acme.example>\r\n"
    b"To: you@example.org\r\n"
    b"Subject: Spring sale\r\n"
    b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <spring-1@acme.example>\r\n"
    b"X-Campaign-ID: spring-2026\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Spring sale! https://shop.acme.example/sale\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b'<html><body><p>Spring <a href="https://shop.acme.example/sale">sale</a></p></body></html>\r\n'
    b"--b1--\r\n"
)


def free_port() -> int:
    """A TCP port nothing listens on right now (the 'upstream down' address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    """One transaction the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Stores what it accepts; ``fail_with`` makes it answer DATA with that reply instead."""

    received: list[Received] = field(default_factory=list)
    fail_with: str | None = None
    fail_rcpt_with: str | None = None
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Count sessions (pooled connections say EHLO once)."""
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept, or refuse with ``fail_rcpt_with``."""
        if self.fail_rcpt_with:
            return self.fail_rcpt_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message, or refuse it temporarily."""
        if self.fail_with:
            return self.fail_with
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 queued"


class SinkController(Controller):
    """aiosmtpd's threaded Controller on a given port, or port 0 (learns the real port)."""

    def _trigger_server(self) -> None:
        """Read the bound port before the readiness probe connects to it."""
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@asynccontextmanager
async def sink(port: int = 0) -> AsyncIterator[tuple[SinkHandler, int]]:
    """A real aiosmtpd upstream in its own thread; yields (handler, port)."""
    handler = SinkHandler()
    controller = SinkController(handler, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    try:
        yield handler, controller.port
    finally:
        await asyncio.to_thread(controller.stop)


@asynccontextmanager
async def dropping_upstream() -> AsyncIterator[tuple[list[int], int]]:
    """An upstream that speaks SMTP until DATA, reads part of the message and hangs up.

    Yields (list of byte counts it read before dropping, port).
    """
    dropped: list[int] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 flaky ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-flaky\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    dropped.append(len(await reader.read(200)))
                    return  # mid-DATA: no final reply, connection gone
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield dropped, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def make_service(store: SqlLedgerStore, secrets: Secrets) -> LedgerService:
    """The ledger service with token keys (the gateway mints tokens)."""
    return LedgerService(store, secrets.pepper, token_keys=TokenKeys(secrets.token_keys, secrets.current_key))


async def add_client(store: SqlLedgerStore, client_id: str = "acme", **changes: Any) -> Client:
    """A client with a password, a DKIM key and the domain acme.example."""
    base: dict[str, Any] = {
        "id": client_id,
        "name": "Acme Inc",
        "domains": ("acme.example",),
        "postal_address": "1 Main Street, Springfield",
        "password_hash": hash_password(PASSWORD),
        "dkim_selector": "s2026",
        "dkim_private_key": PEM.decode("ascii"),
        "on_suppressed": OnSuppressed.REJECT,
    }
    base.update(changes)
    return await store.add_client(Client(**base), NOW)


@asynccontextmanager
async def gateway(
    service: LedgerService,
    upstream_port: int,
    *,
    host: str = "127.0.0.1",
    first_retry_seconds: float = 0.0,
    signer_factory: SignerFactory = default_signer_factory,
    **submission: Any,
) -> AsyncIterator[Gateway]:
    """The submission side in-process on port 0, relaying to 127.0.0.1:``upstream_port``.

    The background outbox worker is stopped: tests drive retries with ``worker.run_once()``.
    """
    config = SubmissionConfig(
        hostname="gateway.test",
        inbound_domain=INBOUND,
        public_url=PUBLIC_URL,
        first_retry_seconds=first_retry_seconds,
        **submission,
    )
    gw = Gateway.build(
        service,
        host=host,
        port=0,
        submission=config,
        upstream=UpstreamConfig(url=f"smtp://127.0.0.1:{upstream_port}", pool_size=4, timeout_seconds=5),
        outbox=OutboxConfig(retry_base=timedelta(0), poll_seconds=3600),
        signer_factory=signer_factory,
    )
    await gw.start()
    await gw.worker.stop()
    try:
        yield gw
    finally:
        await gw.stop()


def submit(
    port: int,
    rcpts: list[str],
    message: bytes = MESSAGE,
    *,
    sender: str = "news@acme.example",
    login: bool = True,
    host: str = "127.0.0.1",
) -> dict[str, tuple[int, bytes]]:
    """Send like a mailer (stdlib smtplib, blocking: call it through asyncio.to_thread)."""
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("mailer.test")
        if login:
            client.login("acme", PASSWORD)
        return client.sendmail(sender, rcpts, message)

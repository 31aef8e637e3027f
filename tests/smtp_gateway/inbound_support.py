"""Shared pieces of the inbound-listener tests: clients, tokens for copies, the corpus, the ledger state.

Imported by the test modules of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from conftest import NOW

from ledger.bounce_rules import InboundPolicy
from ledger.bounce_service import InboundLedger
from ledger.models import Client
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.tokens import TokenKeys
from smtp_gateway.inbound import InboundConfig, InboundListener, InboundProcessor, build_inbound_listener

INBOUND_DOMAIN = "bounces.agency.example"
CORPUS = Path(__file__).parent.parent / "data" / "bounces"


@dataclass
class Inbound:
    """The ledger, the inbound rules and the processor over one test store, with clients acme and beta."""

    store: SqlLedgerStore
    service: LedgerService
    ledger: InboundLedger
    processor: InboundProcessor
    config: InboundConfig

    async def token(
        self, client_id: str, address: str, campaign: str = "november", now: datetime = NOW
    ) -> str:
        """The token the gateway would mint for the copy of ``campaign`` sent to ``address``."""
        identity = self.service.identify(address)
        await self.store.ensure_subject(identity, now)
        client = await self.store.get_client(client_id)
        num = await self.store.campaign_num(client_id, campaign, now)
        return self.service.mint_token(client, num, identity.subject_key, now)

    def key(self, address: str) -> bytes:
        """The subject key of ``address``."""
        return self.service.identify(address).subject_key

    async def suppressions(self, address: str, client_id: str = "acme") -> dict[str, str]:
        """scope -> reason of the suppressions that apply to (client, address)."""
        state = await self.store.lookup(client_id, self.key(address))
        return {s.scope: str(s.reason) for s in state.suppressions}

    async def events(self, address: str) -> list[str]:
        """The interaction events of ``address`` as kind[:reason], oldest first."""
        rows = await self.store.db.fetch(
            "SELECT kind, reason FROM events WHERE subject_key = $1 ORDER BY id", self.key(address)
        )
        return [f"{kind}:{reason}" if reason else str(kind) for kind, reason in rows]

    async def process(self, rcpt: str, content: bytes, mail_from: str = "<>", now: datetime = NOW) -> str:
        """Feed one message to the processor; returns the action taken."""
        return str((await self.processor.process(mail_from, rcpt, content, now)).action)


async def make_inbound(
    store: SqlLedgerStore, secrets: Secrets, policy: InboundPolicy | None = None, **config: object
) -> Inbound:
    """Clients acme and beta, and the inbound processor for INBOUND_DOMAIN."""
    service = LedgerService(
        store, secrets.pepper, token_keys=TokenKeys(secrets.token_keys, secrets.current_key)
    )
    for client_id, domain in (("acme", "acme.example"), ("beta", "beta.example")):
        await store.add_client(
            Client(id=client_id, name=client_id, domains=(domain,), password_hash="x"), NOW
        )
    ledger = InboundLedger(store, policy or InboundPolicy())
    cfg = InboundConfig(domains=(INBOUND_DOMAIN,), **config)  # type: ignore[arg-type]
    return Inbound(store, service, ledger, InboundProcessor(service, ledger, cfg), cfg)


def corpus(name: str, token: str) -> bytes:
    """A corpus message with the copy's token filled in."""
    return (CORPUS / name).read_bytes().replace(b"@@TOKEN@@", token.encode())


def bounce_address(token: str) -> str:
    """The VERP return path of a copy."""
    return f"bounces+{token}@{INBOUND_DOMAIN}"


def unsubscribe_address(token: str) -> str:
    """The List-Unsubscribe mailto address of a copy."""
    return f"unsubscribe+{token}@{INBOUND_DOMAIN}"


@asynccontextmanager
async def listening(inbound: Inbound, now: datetime = NOW) -> AsyncIterator[InboundListener]:
    """The real inbound listener on 127.0.0.1, any free port, reading time ``now``."""
    listener = build_inbound_listener(
        inbound.service, inbound.ledger, inbound.config, "127.0.0.1:0", lambda: now
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


def send(port: int, mail_from: str, rcpts: list[str], message: bytes) -> dict[str, tuple[int, bytes]]:
    """Deliver like an MTA (blocking stdlib smtplib: call it through asyncio.to_thread)."""
    message = re.sub(rb"\r?\n", b"\r\n", message)  # the corpus files have bare LF line ends
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.sender.example")
        return client.sendmail(mail_from, rcpts, message)

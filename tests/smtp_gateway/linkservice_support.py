"""Helpers shared by the link-service tests: a ledger with two clients, tokens, an app over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from conftest import NOW
from starlette.applications import Starlette

from ledger import tokens
from ledger.identity import Identity
from ledger.models import Client
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from smtp_gateway.http import LinkServiceConfig, build_app

ADDRESS = "ana.popescu@example.ro"
PROXY = "10.1.2.3"
ROMANIAN_IP = "193.231.20.1"
US_IP = "8.8.8.8"


def token_keys(secrets: Secrets) -> tokens.TokenKeys:
    """The token keys of a secret file."""
    return tokens.TokenKeys(dict(secrets.token_keys), secrets.current_key)


@dataclass
class LinkEnv:
    """A ledger with clients ``acme`` and ``globex``, one subject, and a token for acme."""

    store: SqlLedgerStore
    service: LedgerService
    acme: Client
    globex: Client
    subject: Identity
    token: str
    config: LinkServiceConfig = field(default_factory=LinkServiceConfig)
    clock_now: datetime = NOW

    def app(self, **config: Any) -> Starlette:
        """A link-service app over this ledger (clock fixed at ``clock_now``)."""
        base = {"trusted_proxies": (PROXY + "/32",)}
        return build_app(self.service, LinkServiceConfig(**{**base, **config}), clock=lambda: self.clock_now)

    def client(self, app: Starlette, peer: str = "198.51.100.7") -> httpx.AsyncClient:
        """An httpx client calling ``app`` in process, from ``peer``, following no redirect."""
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://links.test", follow_redirects=False)

    def mint(self, client: Client | None = None, campaign: int = 7, now: datetime = NOW) -> str:
        """A token for the subject, as the gateway mints it."""
        return self.service.mint_token(client or self.acme, campaign, self.subject.subject_key, now)

    async def allowed(self, client_id: str) -> bool:
        """Whether the ledger would let ``client_id`` mail the subject now."""
        return (await self.service.check(ADDRESS, client_id, self.clock_now)).allowed

    async def events(self) -> list[tuple[Any, ...]]:
        """Every interaction event as (client, campaign, kind, reason, link_id, country)."""
        rows = await self.store.db.fetch(
            "SELECT client_id, campaign_num, kind, reason, link_id, country FROM events ORDER BY id"
        )
        return [tuple(row) for row in rows]


async def make_env(store: SqlLedgerStore, secrets: Secrets) -> LinkEnv:
    """Fill ``store`` with two clients and a known subject; mint acme's token."""
    service = LedgerService(store, secrets.pepper, token_keys=token_keys(secrets))
    acme = await store.add_client(
        Client(
            "acme",
            "Acme Books",
            settings={"accent_color": "#0b5394", "logo_url": "https://acme.example/l.png"},
        ),
        NOW,
    )
    globex = await store.add_client(Client("globex", "Globex"), NOW)
    subject = service.identify(ADDRESS)
    await store.ensure_subject(subject, NOW)
    token = service.mint_token(acme, 7, subject.subject_key, NOW)
    return LinkEnv(store, service, acme, globex, subject, token)

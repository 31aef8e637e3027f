"""Helpers shared by the admin API tests: a ledger with clients acme and globex and a key for each."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
from conftest import NOW
from linkservice_support import token_keys
from starlette.applications import Starlette

from ledger.models import Client
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.api_keys import ApiKeyStore
from smtp_gateway.http import LinkServiceConfig, build_app
from smtp_gateway.http.api import ApiConfig

BASE_URL = "http://api.test"


@dataclass
class ApiEnv:
    """A ledger with clients ``acme`` and ``globex`` and keys: admin, acme's, globex's."""

    store: SqlLedgerStore
    service: LedgerService
    acme: Client
    globex: Client
    admin_key: str
    acme_key: str
    globex_key: str
    clock_now: datetime = NOW
    api_config: ApiConfig = field(default_factory=ApiConfig)

    def app(self, **api: Any) -> Starlette:
        """The HTTP app (link service + API) over this ledger, clocks under the test's control."""
        config = LinkServiceConfig(api=replace(self.api_config, **api))
        return build_app(self.service, config, clock=lambda: self.clock_now)

    def client(self, app: Starlette, key: str | None) -> httpx.AsyncClient:
        """An httpx client calling ``app`` in process with ``key`` as the bearer token (or none)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)


async def make_api_env(store: SqlLedgerStore, secrets: Secrets) -> ApiEnv:
    """Two clients and three keys over ``store``."""
    service = LedgerService(store, secrets.pepper, token_keys=token_keys(secrets))
    acme = await store.add_client(Client("acme", "Acme Books", domains=("acme.example",)), NOW)
    globex = await store.add_client(Client("globex", "Globex", domains=("globex.example",)), NOW)
    keys = ApiKeyStore(store)
    _, admin = await keys.create(None, "ops", NOW)
    _, acme_key = await keys.create("acme", "acme crm", NOW)
    _, globex_key = await keys.create("globex", "globex crm", NOW)
    return ApiEnv(store, service, acme, globex, admin, acme_key, globex_key)

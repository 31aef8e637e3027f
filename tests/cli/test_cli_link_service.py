"""Wiring of the link service from the settings (what `consentgate serve` starts)."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import make_store

from cli.link_service import build_link_server, link_service_config
from cli.settings import Settings
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.tokens import TokenKeys


def test_http_settings_map_onto_the_link_service_config(tmp_path: Path) -> None:
    """Every [http] setting reaches LinkServiceConfig."""
    settings = Settings.model_validate(
        {
            "http": {
                "public_url": "https://links.example/",
                "trusted_proxies": ["10.0.0.0/8"],
                "offer_global_optout": True,
                "geoip_database": str(tmp_path / "c.mmdb"),
                "opens_count_as_engagement": True,
                "templates_dir": str(tmp_path),
                "metrics_networks": ["192.0.2.0/24"],
            }
        }
    )
    config = link_service_config(settings)
    assert config.public_url == "https://links.example"
    assert config.trusted_proxies == ("10.0.0.0/8",)
    assert config.offer_global_optout and config.opens_count_as_engagement
    assert config.geoip_database == tmp_path / "c.mmdb" and config.templates_dir == tmp_path
    assert config.metrics_networks == ("192.0.2.0/24",)


async def test_build_link_server_listens_on_http_listen(tmp_path: Path, test_secrets: Secrets) -> None:
    """The server built from the settings listens on http.listen and answers /healthz."""
    store, _url, _schema = await make_store("sqlite", tmp_path)
    try:
        keys = TokenKeys(test_secrets.token_keys, test_secrets.current_key)
        service = LedgerService(store, test_secrets.pepper, token_keys=keys)
        settings = Settings.model_validate({"http": {"listen": "127.0.0.1:0"}})
        server = build_link_server(settings, service)
        await server.start()
        try:
            assert server.address[0] == "127.0.0.1" and server.address[1] > 0
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.url}/healthz")).text == "ok\n"
        finally:
            await server.stop()
    finally:
        await store.close()

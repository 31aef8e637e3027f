"""Wiring of the HTTP link service: settings → LinkServiceConfig → app → HttpServer (for `serve`)."""

from __future__ import annotations

import socket

from cli.settings import Settings
from ledger.service import LedgerService
from smtp_gateway.http import HttpServer, LinkServiceConfig, build_app
from smtp_gateway.http.api import ApiConfig


def link_service_config(settings: Settings) -> LinkServiceConfig:
    """Map the ``[http]`` settings onto the link service's own config dataclass."""
    http = settings.http
    return LinkServiceConfig(
        public_url=http.public_url,
        trusted_proxies=tuple(http.trusted_proxies),
        offer_global_optout=http.offer_global_optout,
        geoip_database=http.geoip_database,
        opens_count_as_engagement=http.opens_count_as_engagement,
        templates_dir=http.templates_dir,
        metrics_networks=tuple(http.metrics_networks),
        api=ApiConfig(
            enabled=http.api.enabled,
            rate_per_minute=http.api.rate_per_minute,
            burst=http.api.burst,
            max_import_bytes=http.api.max_import_bytes,
        ),
    )


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 host in brackets) → (host, port); validated by the settings already."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def build_link_server(
    settings: Settings, service: LedgerService, *, sock: socket.socket | None = None, reuse_port: bool = False
) -> HttpServer:
    """The link service ready to ``await .start()`` in the serve loop (``service`` needs token keys).

    Give ``sock`` when the listening socket is pre-bound (``serve --workers N``), else it binds
    ``http.listen`` itself.
    """
    app = build_app(service, link_service_config(settings))
    host, port = split_listen(settings.http.listen)
    return HttpServer(app, host=host, port=port, sock=sock, reuse_port=reuse_port)

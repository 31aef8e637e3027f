"""Configuration of the link service: plain values, mapped from the CLI's settings by ``cli/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from smtp_gateway.http.api.config import ApiConfig

DEFAULT_MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LinkServiceConfig:
    """What the HTTP link service needs to know (``smtp_gateway`` never reads the CLI settings)."""

    public_url: str = "http://127.0.0.1:8025"
    trusted_proxies: tuple[str, ...] = ()
    offer_global_optout: bool = False
    geoip_database: Path | None = None
    opens_count_as_engagement: bool = False
    # Per-client overrides: ``templates_dir/<client id>/<page>.html`` replaces a built-in page.
    templates_dir: Path | None = None
    # A one-click POST body is ~30 bytes; anything near this limit is not a browser or a mail
    # client, and is refused before it is parsed.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    default_language: str = "en"
    # /metrics answers only direct (unproxied) peers in these networks: it names clients.
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # The admin API under /api/v1 (its own body limits: imports stream large bodies).
    api: ApiConfig = field(default_factory=ApiConfig)

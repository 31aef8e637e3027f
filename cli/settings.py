"""Configuration: one pydantic-settings object from a TOML file plus CONSENTGATE_* variables.

Precedence, highest first: environment (``CONSENTGATE_SMTP__LISTEN`` for ``[smtp] listen``),
then the TOML file (``--config``, ``CONSENTGATE_CONFIG`` or ``./consentgate.toml``), then the
embedded defaults below, which run everything on this machine with SQLite under ``data/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("consentgate.toml")


class ConfigError(Exception):
    """The configuration file or an environment override is invalid."""


def _check_hostport(value: str) -> str:
    """Validate ``host:port`` (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class SmtpSettings(BaseModel):
    """The submission listener (mailers) and the inbound listener (bounces, complaints)."""

    listen: str = "127.0.0.1:2525"
    inbound_listen: str = "127.0.0.1:2526"
    hostname: str = "localhost"
    inbound_domain: str = "localhost"
    allow_plain_auth_on_loopback: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    # The longest a client change (pause, password) may go unseen by a process: `serve` also
    # hears every change at once through the change feed; this only bounds a missed one.
    client_cache_seconds: float = Field(default=2.0, gt=0)

    _hostport = field_validator("listen", "inbound_listen")(_check_hostport)


class ApiSettings(BaseModel):
    """The admin API under /api/v1 on the same listener (bearer API keys)."""

    enabled: bool = True
    # Per key: `burst` requests at once, refilled at `rate_per_minute` (per serve worker).
    rate_per_minute: int = Field(default=600, gt=0)
    burst: int = Field(default=60, gt=0)
    max_import_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)


class HttpSettings(BaseModel):
    """The link service: unsubscribe pages, one-click POST, click and open tracking."""

    listen: str = "127.0.0.1:8025"
    public_url: str = "http://127.0.0.1:8025"
    trusted_proxies: list[str] = Field(default_factory=list)
    offer_global_optout: bool = False
    geoip_database: Path | None = None
    opens_count_as_engagement: bool = False
    # Per-client page overrides: templates_dir/<client id>/confirm.html (and done.html, …).
    templates_dir: Path | None = None
    # /metrics answers only direct, unproxied peers in these networks.
    metrics_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    api: ApiSettings = Field(default_factory=ApiSettings)

    _hostport = field_validator("listen")(_check_hostport)

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        """Links are built as public_url + '/u/…': no trailing slash."""
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")


class UpstreamSettings(BaseModel):
    """Where accepted copies go: an SMTP relay, or a folder of .eml files (the embedded default)."""

    url: str = "maildir:data/outbox"
    pool_size: int = 8
    timeout_seconds: float = 30.0


class OutboxSettings(BaseModel):
    """The durable retry queue for copies the upstream did not take at once."""

    max_age_hours: float = 120.0
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    # How often the retry worker looks for due copies, and how long a claimed copy stays leased
    # to it: a node that dies mid-send leaves leases that other nodes take over once they end.
    poll_seconds: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(default=300.0, gt=0)


class BounceSettings(BaseModel):
    """Soft bounces turn into a suppression only after this many within the window."""

    soft_threshold: int = 3
    soft_window_days: int = 7


class ComplaintSettings(BaseModel):
    """Complaint handling and the per-client complaint-rate guard."""

    scope: Literal["client", "global"] = "client"
    window: int = 1000
    warn_rate: float = 0.001
    pause_rate: float = 0.003
    # Local parts of the inbound domain that receive ARF reports (feedback loops, abuse desks).
    addresses: list[str] = Field(default_factory=lambda: ["fbl", "abuse"])


class RetentionSettings(BaseModel):
    """The retention policy the purge applies (days), and the hour `serve` runs it."""

    inactivity_days: int = 730
    event_days: int = 395
    unsubscribed_relationship_days: int = 30
    consent_proof_days: int = 730
    outbox_days: int = 7
    purge_hour: int = 3


class TokenSettings(BaseModel):
    """Signed links: how long they stay valid."""

    max_age_days: int = 400


class Settings(BaseSettings):
    """Everything configurable, passed into constructors (there is no global config object)."""

    model_config = SettingsConfigDict(env_prefix="CONSENTGATE_", env_nested_delimiter="__", extra="forbid")

    database_url: str = "sqlite:///data/consentgate.db"
    database_pool_size: int = Field(default=10, ge=1)
    # PostgreSQL only: connections each process keeps open, and the limit on one statement.
    database_pool_min_size: int = Field(default=1, ge=0)
    database_command_timeout_seconds: float = Field(default=30.0, gt=0)
    secret_file: Path = Path("data/secret.json")
    workers: int = 1
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    bounce: BounceSettings = Field(default_factory=BounceSettings)
    complaints: ComplaintSettings = Field(default_factory=ComplaintSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)


def config_path(explicit: Path | None) -> Path:
    """The config file to read: --config, else CONSENTGATE_CONFIG, else ./consentgate.toml."""
    if explicit is not None:
        return explicit
    return Path(os.environ.get("CONSENTGATE_CONFIG", str(DEFAULT_CONFIG)))


def load_settings(path: Path | None = None) -> Settings:
    """Build the settings; a missing default file is fine, a missing explicit one is an error."""
    chosen = config_path(path)
    explicit = path is not None or "CONSENTGATE_CONFIG" in os.environ
    if explicit and not chosen.is_file():
        raise ConfigError(f"config file {chosen} does not exist (create it with `consentgate init`)")

    class _FromFile(Settings):
        """Settings with the chosen TOML file as a source below the environment."""

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            """Init kwargs, then environment, then the TOML file."""
            toml = TomlConfigSettingsSource(settings_cls, toml_file=chosen)
            return (init_settings, env_settings, toml)

    try:
        return Settings.model_validate(_FromFile().model_dump())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration ({chosen}): {problems}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read config file {chosen}: {exc}") from None


CONFIG_TEMPLATE = """\
# consentgate configuration. Every key can also be set from the environment:
# CONSENTGATE_<KEY> at the top level, CONSENTGATE_<SECTION>__<KEY> inside a section
# (e.g. CONSENTGATE_UPSTREAM__URL=smtp://mx.internal:25).

# The ledger: sqlite:///PATH (embedded default) or postgresql://user@host/db
database_url = "sqlite:///data/consentgate.db"
# PostgreSQL pool per process (serve --workers N opens N pools): max and min connections,
# and the longest a single statement may run before it fails.
# database_pool_size = 10
# database_pool_min_size = 1
# database_command_timeout_seconds = 30.0
# Pepper for subject keys and token signing keys, created by `consentgate init` (mode 0600).
# Back it up: without it no token verifies and no address matches its suppression.
secret_file = "data/secret.json"

[smtp]
# Submission listener for the mailers (AUTH PLAIN/LOGIN with the credentials of `client add`).
listen = "127.0.0.1:2525"
# Inbound listener for bounces, complaints and mailto: unsubscribes (the MX of inbound_domain).
inbound_listen = "127.0.0.1:2526"
# Domain of the VERP return paths and mailto: unsubscribe addresses.
inbound_domain = "localhost"
hostname = "localhost"
# AUTH without TLS is allowed only on a loopback listener, and only while this is true.
allow_plain_auth_on_loopback = true
# tls_cert = "/etc/consentgate/tls/fullchain.pem"
# tls_key = "/etc/consentgate/tls/privkey.pem"
max_message_size = 26214400
max_recipients = 1000

[http]
listen = "127.0.0.1:8025"
# What unsubscribe and tracking links point at (your public HTTPS name in production).
public_url = "http://127.0.0.1:8025"
# X-Forwarded-For is honoured only from these proxies (CIDRs).
trusted_proxies = []
offer_global_optout = false
opens_count_as_engagement = false
# geoip_database = "/var/lib/GeoIP/GeoLite2-Country.mmdb"   (default: the database bundled with geoip2fast)
# templates_dir = "/etc/consentgate/pages"   (per-client overrides: <templates_dir>/<client id>/confirm.html)
metrics_networks = ["127.0.0.0/8", "::1/128"]

[http.api]
# The admin API (/api/v1, docs at /api/v1/docs). Keys: `consentgate client api-key create ID`.
enabled = true
rate_per_minute = 600
burst = 60

[upstream]
# smtp://host:port, smtp+starttls://user:pass@host:587, smtps://host:465, or maildir:PATH
url = "maildir:data/outbox"
pool_size = 8
timeout_seconds = 30.0

[outbox]
max_age_hours = 120.0
retry_base_seconds = 60.0
retry_max_seconds = 3600.0
# The retry worker's poll interval, and how long a claimed copy is leased to one node.
poll_seconds = 1.0
lease_seconds = 300.0

[bounce]
soft_threshold = 3
soft_window_days = 7

[complaints]
scope = "client"
window = 1000
warn_rate = 0.001
pause_rate = 0.003
# Local parts of inbound_domain where feedback loops send ARF complaint reports.
addresses = ["fbl", "abuse"]

[retention]
inactivity_days = 730
event_days = 395
unsubscribed_relationship_days = 30
consent_proof_days = 730
outbox_days = 7
purge_hour = 3

[tokens]
max_age_days = 400
"""

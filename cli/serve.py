"""`consentgate serve`: every listener and background job of one node, in one asyncio loop.

Each part is a *component* (``async start()`` / ``async stop()``, see
:mod:`smtp_gateway.server`); :func:`build_components` lists them in start order and they stop
in reverse order on SIGTERM/SIGINT. To add a part, append it in :func:`build_components`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import typer

from cli.context import EXIT_ERROR, err_console, open_ledger, out_console, read_secrets, run, state
from cli.settings import ConfigError, Settings
from ledger.errors import LedgerError
from ledger.service import LedgerService
from ledger.store.changes import ChangeFeed
from ledger.tokens import TokenKeys
from smtp_gateway.errors import GatewayError
from smtp_gateway.gateway import Gateway
from smtp_gateway.outbox_worker import OutboxConfig
from smtp_gateway.relay import UpstreamConfig
from smtp_gateway.server import Component, install_stop_signals, new_event_loop, run_components, run_workers
from smtp_gateway.server import split_hostport as split_listen
from smtp_gateway.submission import SubmissionConfig

log = logging.getLogger("consentgate")


def submission_config(settings: Settings) -> SubmissionConfig:
    """Map ``[smtp]``, ``[http]`` and ``[outbox]`` onto the submission listener's config."""
    smtp = settings.smtp
    return SubmissionConfig(
        hostname=smtp.hostname,
        inbound_domain=smtp.inbound_domain,
        public_url=settings.http.public_url,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        allow_plain_auth_on_loopback=smtp.allow_plain_auth_on_loopback,
        tls_context=tls_context(settings),
        first_retry_seconds=settings.outbox.retry_base_seconds,
        client_cache_seconds=smtp.client_cache_seconds,
        # A spare core for the DKIM RSA step only while the workers leave one free.
        rsa_in_thread=settings.workers < (os.cpu_count() or 1),
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context from ``smtp.tls_cert``/``smtp.tls_key`` (None when not configured)."""
    cert, key = settings.smtp.tls_cert, settings.smtp.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("smtp.tls_cert and smtp.tls_key go together: set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def upstream_config(settings: Settings) -> UpstreamConfig:
    """Map ``[upstream]`` onto the relay's config."""
    up = settings.upstream
    return UpstreamConfig(
        url=up.url,
        pool_size=up.pool_size,
        timeout_seconds=up.timeout_seconds,
        local_hostname=settings.smtp.hostname,
    )


def outbox_config(settings: Settings) -> OutboxConfig:
    """Map ``[outbox]`` onto the retry worker's config."""
    box = settings.outbox
    return OutboxConfig(
        max_age=timedelta(hours=box.max_age_hours),
        retry_base=timedelta(seconds=box.retry_base_seconds),
        retry_max=timedelta(seconds=box.retry_max_seconds),
        poll_seconds=box.poll_seconds,
        lease=timedelta(seconds=box.lease_seconds),
    )


def build_components(
    settings: Settings, service: LedgerService, *, worker_index: int, reuse_port: bool
) -> list[Component]:
    """Every part of the node, in start order."""
    host, port = split_listen(settings.smtp.listen)
    gateway = Gateway.build(
        service,
        host=host,
        port=port,
        submission=submission_config(settings),
        upstream=upstream_config(settings),
        outbox=outbox_config(settings),
        reuse_port=reuse_port,
        # Leases make concurrent retry workers safe on either backend; on one SQLite file a
        # single poller is enough and leaves the write lock to the hot path.
        retries=worker_index == 0 or service.store.db.dialect == "postgresql",
    )
    # Client changes (pause, delete, new password) made anywhere reach this process's directory.
    changes = ChangeFeed(service.store.db)
    changes.subscribe(gateway.handler.clients.invalidate)
    components: list[Component] = [changes, gateway]
    # Synchronous 5xx answers go through the configured bounce rules, like DSNs.
    from cli.inbound import inbound_policy
    from ledger.bounce_service import InboundLedger

    gateway.delivery_log.bounces = InboundLedger(service.store, inbound_policy(settings))

    # --- other components plug in here --------------------------------------------------------
    from cli.link_service import build_link_server

    components.append(build_link_server(settings, service, reuse_port=reuse_port))
    from cli.inbound import build_inbound

    # Every worker takes inbound mail too: a worker busy with a campaign must not leave DSNs,
    # complaints and mailto: unsubscribes waiting (their ledger writes are transactional).
    components.append(
        _ReusePort(build_inbound(settings, service)) if reuse_port else build_inbound(settings, service)
    )
    if worker_index == 0:  # the retention purge, daily at retention.purge_hour (one worker is enough)
        from cli.purge import DailyPurge

        components.append(DailyPurge(settings, service.store))
    return components


class _StartsWithOptions(Protocol):
    """A listener whose ``start`` passes options on to ``loop.create_server``."""

    async def start(self, **server_options: Any) -> None:
        """Bind and serve."""

    async def stop(self) -> None:
        """Stop serving."""


@dataclass
class _ReusePort:
    """Starts a listener with ``SO_REUSEPORT`` so every worker process can bind its port."""

    listener: _StartsWithOptions

    async def start(self) -> None:
        """Bind with ``reuse_port=True``."""
        await self.listener.start(reuse_port=True)

    async def stop(self) -> None:
        """Stop the listener."""
        await self.listener.stop()


async def serve_node(settings: Settings, *, worker_index: int = 0, reuse_port: bool = False) -> None:
    """Open the ledger, start every component, run until SIGTERM/SIGINT, stop cleanly."""
    secrets = read_secrets(settings)
    async with open_ledger(settings) as store:
        service = LedgerService(
            store,
            secrets.pepper,
            inactivity_days=settings.retention.inactivity_days,
            token_keys=TokenKeys(secrets.token_keys, secrets.current_key),
            token_max_age_days=settings.tokens.max_age_days,
        )
        stop = asyncio.Event()
        install_stop_signals(stop)
        components = build_components(settings, service, worker_index=worker_index, reuse_port=reuse_port)
        log.info(
            "worker %d: submission on %s, links on %s, inbound on %s, upstream %s",
            worker_index,
            settings.smtp.listen,
            settings.http.listen,
            settings.smtp.inbound_listen,
            settings.upstream.url.split("@")[-1],  # never log upstream credentials
        )
        await run_components(components, stop)


async def preflight(settings: Settings) -> None:
    """Fail before listening or forking: unreadable secret, unreachable database, old schema."""
    read_secrets(settings)
    tls_context(settings)
    async with open_ledger(settings):  # raises DatabaseUnavailable / SchemaOutdated
        pass


def _run_node(settings: Settings, worker_index: int, reuse_port: bool) -> None:
    """One process: a fresh event loop (uvloop unless STARTTLS is configured) running the node."""
    # aiosmtpd's STARTTLS swaps the transport's protocol in ways only the standard loop supports.
    prefer_uvloop = settings.smtp.tls_cert is None
    with asyncio.Runner(loop_factory=lambda: new_event_loop(prefer_uvloop)) as runner:
        runner.run(serve_node(settings, worker_index=worker_index, reuse_port=reuse_port))


def _run_worker(settings: Settings, worker_index: int) -> None:
    """A forked worker: an expected failure (port taken, database gone) is one line, not a traceback."""
    try:
        _run_node(settings, worker_index, reuse_port=True)
    except (LedgerError, GatewayError, ConfigError) as exc:
        err_console.print(f"[bold red]error:[/] worker {worker_index}: {exc}", markup=True, soft_wrap=True)
        raise SystemExit(EXIT_ERROR) from None


def serve(
    ctx: typer.Context,
    workers: int = typer.Option(
        0, "--workers", "-w", min=0, help="Processes sharing the ports (SO_REUSEPORT); default: settings."
    ),
) -> None:
    """Run the gateway: submission listener, outbox retries, link service, inbound listener."""
    settings = state(ctx).settings()
    count = workers or settings.workers
    settings = settings.model_copy(update={"workers": count})
    run(lambda: preflight(settings))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    # aiosmtpd logs every command line and every recipient address at INFO ("mail.log"): that
    # puts addresses in the logs (DESIGN §2: keep the minimum) and cost ~4% of the relay's CPU.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data on every AUTH and warns about it:
    # noise that would bury real warnings.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    out_console.print(
        f"consentgate serving: submission {settings.smtp.listen}, links {settings.http.listen}, "
        f"inbound {settings.smtp.inbound_listen}, {count} worker(s)"
    )
    if count <= 1:
        _run_node(settings, 0, reuse_port=False)
        return
    status = run_workers(count, lambda index: _run_worker(settings, index))
    if status:
        raise typer.Exit(status)

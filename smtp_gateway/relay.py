"""The upstream: where accepted copies go — an SMTP relay over pooled connections, or a folder.

``upstream.url`` picks the kind:

- ``smtp://[user:pass@]host[:port]`` — plain SMTP (no opportunistic STARTTLS: say what you want);
- ``smtp+starttls://[user:pass@]host[:port]`` — STARTTLS required;
- ``smtps://[user:pass@]host[:port]`` — implicit TLS;
- ``maildir:PATH`` — one ``.eml`` file per copy, written atomically (the embedded default).

For TLS upstreams ``?verify=no`` turns certificate checks off (a relay on the same host with a
self-signed certificate). Every relay answers per copy with a :class:`RelayResult`: delivered,
temporary failure (spool and retry) or permanent failure (bounce), and never raises for
anything the upstream does.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from smtp_gateway.errors import GatewayError
from smtp_gateway.upstream import (
    ConnectOptions,
    MissingExtension,
    UpstreamConnection,
    UpstreamRefused,
    UpstreamUnavailable,
)


class UpstreamConfigError(GatewayError):
    """The upstream URL cannot be used."""


class Outcome(StrEnum):
    """What became of one copy."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class RelayResult:
    """The upstream's answer for one copy (``code`` 0 when there was no SMTP answer at all)."""

    outcome: Outcome
    code: int = 250
    detail: str = ""


DELIVERED = RelayResult(Outcome.DELIVERED)


@dataclass(frozen=True, slots=True)
class Copy:
    """One recipient's rendered, signed message and its envelope."""

    mail_from: str
    rcpt: str
    message: bytes


class Relay(Protocol):
    """Delivers copies upstream; never raises for an upstream failure."""

    async def send(self, copy: Copy) -> RelayResult:
        """Deliver one copy and say what happened."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where and how to relay (mapped from the ``[upstream]`` settings by the CLI)."""

    url: str = "maildir:data/outbox"
    pool_size: int = 8
    timeout_seconds: float = 30.0
    local_hostname: str = "localhost"


async def send_all(relay: Relay, copies: Sequence[Copy]) -> list[RelayResult]:
    """Deliver ``copies`` concurrently (the relay's pool bounds the parallelism); results in order."""
    if len(copies) == 1:
        return [await relay.send(copies[0])]
    return list(await asyncio.gather(*(relay.send(c) for c in copies)))


def make_relay(config: UpstreamConfig) -> Relay:
    """Build the relay named by ``config.url``; raises :class:`UpstreamConfigError`."""
    if config.url.startswith("maildir:"):
        path = config.url.removeprefix("maildir:")
        if not path:
            raise UpstreamConfigError("maildir: needs a folder, e.g. maildir:data/outbox")
        return MaildirRelay(Path(path))
    parts = urlsplit(config.url)
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps"):
        raise UpstreamConfigError(
            f"unknown upstream {config.url!r}: use smtp://, smtp+starttls://, smtps:// or maildir:PATH"
        )
    if not parts.hostname:
        raise UpstreamConfigError(f"upstream {config.url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise UpstreamConfigError(f"upstream {config.url!r} has an invalid port") from None
    if (
        not config.local_hostname.isascii()
        or not config.local_hostname.strip()
        or " " in config.local_hostname
    ):
        raise UpstreamConfigError(f"local hostname {config.local_hostname!r} cannot follow EHLO")
    verify = parse_qs(parts.query).get("verify", ["yes"])[0].lower() not in ("no", "0", "false")
    default_port = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
    return SmtpRelay(
        host=parts.hostname,
        port=port or default_port,
        use_tls=parts.scheme == "smtps",
        start_tls=parts.scheme == "smtp+starttls",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        validate_certs=verify,
        pool_size=config.pool_size,
        timeout=config.timeout_seconds,
        local_hostname=config.local_hostname,
    )


def classify_code(code: int, detail: str) -> RelayResult:
    """An SMTP failure reply as a result: 5xx permanent, anything else temporary."""
    outcome = Outcome.PERMANENT if 500 <= code <= 599 else Outcome.TEMPORARY
    return RelayResult(outcome, code, detail[:300])


class SmtpRelay:
    """An SMTP upstream with a pool of reused, authenticated connections.

    Each copy is one transaction, pipelined when the upstream offers PIPELINING (see
    :mod:`smtp_gateway.upstream`). After a refused copy the connection stays in the pool and
    the next transaction starts with RSET; a connection that broke, timed out or got a 421 is
    dropped.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        use_tls: bool = False,
        start_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        validate_certs: bool = True,
        pool_size: int = 8,
        timeout: float = 30.0,
        local_hostname: str = "localhost",
    ) -> None:
        """Remember where to connect; connections open lazily, up to ``pool_size`` at once."""
        self.host, self.port = host, port
        self._use_tls, self._start_tls = use_tls, start_tls
        self._username, self._password = username, password
        self._validate_certs = validate_certs
        self._options = ConnectOptions(
            host=host,
            port=port,
            use_tls=use_tls,
            start_tls=start_tls,
            username=username,
            password=password,
            validate_certs=validate_certs,
            timeout=timeout,
            local_hostname=local_hostname,
        )
        self._slots = asyncio.Semaphore(max(1, pool_size))
        self._idle: list[UpstreamConnection] = []

    async def send(self, copy: Copy) -> RelayResult:
        """Send one copy on a pooled connection; a stale pooled connection is retried once fresh."""
        async with self._slots:
            for _attempt in range(2):
                reused = bool(self._idle)
                try:
                    conn = self._idle.pop() if reused else await UpstreamConnection.open(self._options)
                except UpstreamRefused as exc:  # greeting, EHLO, STARTTLS or AUTH refused
                    return classify_code(exc.code, f"connect: {exc.text}")
                except UpstreamUnavailable as exc:
                    return RelayResult(Outcome.TEMPORARY, 0, str(exc)[:300])
                result = await self._transact(conn, copy)
                if result is None:  # the connection died under us
                    if reused:
                        continue  # an idle connection the server had already closed: try afresh
                    return RelayResult(Outcome.TEMPORARY, 0, "connection lost")
                if not conn.closed:
                    self._idle.append(conn)
                return result
            return RelayResult(Outcome.TEMPORARY, 0, "connection lost")

    async def _transact(self, conn: UpstreamConnection, copy: Copy) -> RelayResult | None:
        """One MAIL/RCPT/DATA exchange; None when the connection was lost (or timed out)."""
        try:
            refusal = await conn.send_mail(copy.mail_from, copy.rcpt, copy.message)
        except UpstreamUnavailable:
            return None
        except MissingExtension as exc:
            return RelayResult(Outcome.PERMANENT, 0, f"upstream lacks a needed extension: {exc}")
        except ValueError as exc:  # an address that cannot go on a command line
            return RelayResult(Outcome.PERMANENT, 0, f"unsendable address: {exc}")
        if refusal is None:
            return DELIVERED
        if refusal.step == "RCPT":
            return classify_code(refusal.code, f"RCPT: {refusal.text}")
        return classify_code(refusal.code, refusal.text)

    async def close(self) -> None:
        """Say QUIT on every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.quit(), timeout=2)
            except TimeoutError:
                conn.abort()


class MaildirRelay:
    """Writes each copy to ``folder/NAME.eml`` (temp file, fsync, rename: readers never see half)."""

    _counter = itertools.count()

    def __init__(self, folder: Path) -> None:
        """Deliver into ``folder`` (created if missing)."""
        self.folder = folder

    def _write(self, copy: Copy) -> Path:
        """Blocking write of one copy; runs in a worker thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.{os.getpid()}.{next(self._counter)}"
        tmp = self.folder / f".{name}.tmp"
        final = self.folder / f"{name}.eml"
        # What an MTA adds on final delivery: the envelope, which a file would otherwise lose.
        envelope = f"Return-Path: <{copy.mail_from}>\r\nDelivered-To: {copy.rcpt}\r\n".encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(envelope + copy.message)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    async def send(self, copy: Copy) -> RelayResult:
        """Write the copy; a full or unwritable disk is a temporary failure (spooled, retried)."""
        try:
            await asyncio.to_thread(self._write, copy)
        except OSError as exc:
            return RelayResult(Outcome.TEMPORARY, 0, f"maildir write failed: {exc.strerror or exc}")
        return DELIVERED

    async def close(self) -> None:
        """Nothing to release."""

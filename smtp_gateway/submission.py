"""The submission listener: mailers hand campaigns to the gateway here (aiosmtpd).

Per message (DESIGN §5):

- EHLO / AUTH PLAIN|LOGIN with a client's credentials (only after STARTTLS, unless the listener
  is on loopback and plain AUTH there is allowed), or a connection from one of the client's
  trusted networks (Postfix's ``mynetworks``). Anything else is refused at MAIL: no open relay.
- MAIL FROM: the client must not be paused and the sender must be in one of its domains.
- RCPT TO: normalise, look up, decide — once; the decision is kept for DATA. A refused
  recipient gets ``550 5.7.1`` (or is accepted and dropped, per client) and a ``suppressed``
  event.
- DATA: parse once (:func:`smtp_gateway.rewrite.prepare`); per accepted recipient mint a token,
  render, DKIM-sign, relay with a VERP return path. Copies the upstream did not take are in the
  outbox before the mailer gets 250; if the outbox cannot be written the mailer gets 451.

Every exception becomes an SMTP reply here, and only here; the replies are named in
:mod:`smtp_gateway.replies`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any, Protocol

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from ledger import tokens
from ledger.errors import DatabaseUnavailable, InvalidAddress, LedgerError
from ledger.identity import Identity
from ledger.models import Client, EventKind, OnSuppressed
from ledger.passwords import hash_password, verify_password
from ledger.service import LedgerService
from ledger.store.ledger_store import InteractionEvent, SqlLedgerStore
from ledger.store.outbox import OutboxCopy, OutboxStore
from ledger.store.sends import Send
from smtp_gateway import metrics, replies
from smtp_gateway.auth_throttle import AuthThrottle, ThrottleConfig
from smtp_gateway.data_reader import DataState, read_data
from smtp_gateway.delivery import DeliveryLog
from smtp_gateway.errors import BadControlHeader, MalformedMessage
from smtp_gateway.relay import Copy, Outcome, Relay, RelayResult, send_all
from smtp_gateway.rewrite import MessageTemplate, RewriteOptions, prepare

if TYPE_CHECKING:
    from smtp_gateway.dkim_sign import PendingSignature

log = logging.getLogger(__name__)

DEFAULT_CAMPAIGN = "default"
_AUTH_CACHE_MAX = 10_000
_CAMPAIGN_CACHE_MAX = 10_000
# A plain "<local@domain>" path (dot-atom local part, ASCII domain) with optional parameters and
# no comments: aiosmtpd's _getaddr gives the same address and parameters, but through email's
# header parser (~10% of a worker's event-loop time for MAIL and RCPT in the relay benchmark).
_PLAIN_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+([A-Za-z0-9=+._-][A-Za-z0-9=+._ \t-]*)?)?\Z"
)
_FROM_FIELD_RE = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC (the adapters read it; the pure core is handed it)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """Settings of the submission listener (mapped from ``[smtp]``/``[http]``/``[outbox]`` by the CLI)."""

    hostname: str = "localhost"
    inbound_domain: str = "localhost"
    public_url: str = "http://127.0.0.1:8025"
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    allow_plain_auth_on_loopback: bool = True
    tls_context: ssl.SSLContext | None = None
    first_retry_seconds: float = 60.0
    client_cache_seconds: float = 2.0
    session_timeout_seconds: float = 300.0
    auth_throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    # The DKIM RSA step (~0.7 ms, OpenSSL without the GIL) in a thread: the loop serves other
    # sessions meanwhile and the process uses a spare core. Each hand-off costs ~0.2 ms of CPU, so
    # `serve` turns it off when its workers already fill every core (docs/benchmarks.md).
    rsa_in_thread: bool = True


class Signer(Protocol):
    """What the gateway needs from a DKIM signer: the signature in three steps.

    Only the middle one (the RSA signature, ~0.7 ms in OpenSSL without the GIL) runs in a thread;
    the two around it are Python and stay on the event loop.
    """

    def prepare(self, message: bytes) -> PendingSignature:
        """The header fields and the digest to sign."""

    def rsa_sign(self, digest: bytes) -> bytes:
        """The signature of ``digest`` (thread-safe)."""

    def finish(self, pending: PendingSignature, signature: bytes) -> bytes:
        """The message with its DKIM-Signature header."""


SignerFactory = Callable[[str, str, str], Signer]


def default_signer_factory(domain: str, selector: str, private_key_pem: str) -> Signer:
    """A :class:`smtp_gateway.dkim_sign.DkimSigner` (imported late: it loads the key once)."""
    from smtp_gateway.dkim_sign import DkimSigner

    signer: Signer = DkimSigner(domain, selector, private_key_pem.encode("ascii"))
    return signer


# --- clients ----------------------------------------------------------------------------------


class ClientDirectory:
    """The clients, cached in memory and re-read at most every ``ttl`` seconds.

    AUTH (a synchronous callback in aiosmtpd) and the trusted-network match read the cache; MAIL
    re-reads it when stale, so a pause set by the complaint-rate guard — in any process or on
    any node — takes effect within ``ttl`` seconds, or as soon as a change feed subscribed to
    :meth:`invalidate` reports it (``serve``: ``ledger.store.changes.ChangeFeed``).
    """

    def __init__(self, store: SqlLedgerStore, ttl: float = 2.0) -> None:
        """Read clients from ``store``."""
        self.store = store
        self.ttl = ttl
        self._clients: dict[str, Client] = {}
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self._domain_owner: dict[str, str] = {}
        self._loaded_at = -1e18
        self._refreshing: asyncio.Task[None] | None = None
        self._invalidations = 0

    async def refresh(self) -> None:
        """Read every client now (concurrent callers share one read)."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._load())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if self._refreshing is task and task.done():
                self._refreshing = None

    def invalidate(self, table: str | None = None) -> None:
        """A change feed's subscriber: re-read at the next MAIL once ``clients`` (or anything) changed."""
        if table is None or table == "clients":
            self._invalidations += 1
            self._loaded_at = -1e18

    async def _load(self) -> None:
        """Replace the cache with what the store holds."""
        invalidations = self._invalidations
        clients = await self.store.list_clients()
        networks = []
        for client in clients:
            for cidr in client.trusted_networks:
                try:
                    networks.append((ipaddress.ip_network(cidr, strict=False), client.id))
                except ValueError:
                    log.warning("client %s: ignoring bad trusted network %r", client.id, cidr)
        # Most specific network first: a /32 for one client beats a /8 for another.
        networks.sort(key=lambda pair: pair[0].prefixlen, reverse=True)
        self._clients = {c.id: c for c in clients}
        self._networks = networks
        self._domain_owner = {domain.lower(): c.id for c in clients for domain in c.domains}
        # A change reported while we were reading may be missing from what we read: stay stale.
        self._loaded_at = time.monotonic() if invalidations == self._invalidations else -1e18

    async def refresh_if_stale(self) -> None:
        """Re-read when the cache is older than ``ttl``."""
        if time.monotonic() - self._loaded_at > self.ttl:
            await self.refresh()

    def cached(self, client_id: str) -> Client | None:
        """The cached client, or None."""
        return self._clients.get(client_id)

    async def current(self, client_id: str) -> Client | None:
        """The client, no older than ``ttl`` seconds."""
        await self.refresh_if_stale()
        return self._clients.get(client_id)

    def domain_owner(self, address: str) -> str | None:
        """The id of the client one of whose domains ``address`` is in (or a subdomain of), if any."""
        domain = address.strip().strip("<>").rpartition("@")[2].lower().rstrip(".")
        labels = domain.split(".")
        for start in range(len(labels)):
            owner = self._domain_owner.get(".".join(labels[start:]))
            if owner is not None:
                return owner
        return None

    def trusted_client(self, peer_ip: str) -> str | None:
        """The id of the client whose trusted networks contain ``peer_ip``, if any."""
        try:
            ip = ipaddress.ip_address(peer_ip.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, client_id in self._networks:
            if ip.version == network.version and ip in network:
                return client_id
        return None


class CredentialCache:
    """Remembers credentials that verified, so scrypt (~50 ms, in a worker thread) runs once per login.

    Keyed by a keyed hash of the password (the clear password is never kept) and by the stored
    hash, so a password change invalidates the entry.
    """

    def __init__(self) -> None:
        """A per-process key; nothing survives a restart."""
        self._key = secrets.token_bytes(32)
        self._ok: set[tuple[str, str, bytes]] = set()
        self._dummy_hash: str | None = None

    async def verify(self, client: Client | None, password: bytes) -> bool:
        """Whether ``password`` is the client's; scrypt runs in a worker thread, never on the loop.

        An unknown client (None) costs the same scrypt as a known one: answer times do not tell
        which client ids exist.
        """
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        if client is not None and (client.id, client.password_hash, digest) in self._ok:
            return True
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        stored = client.password_hash if client is not None else self._dummy_hash
        text = password.decode("utf-8", "replace")
        matched = await asyncio.to_thread(verify_password, text, stored)
        if client is None or not matched or "\ufffd" in text:
            return False
        entry = (client.id, client.password_hash, digest)
        if len(self._ok) >= _AUTH_CACHE_MAX:
            self._ok.clear()
        self._ok.add(entry)
        return True


# --- per-envelope state -----------------------------------------------------------------------


@dataclass(slots=True)
class Recipient:
    """An accepted RCPT: the address as the mailer wrote it and who it is."""

    rcpt: str
    identity: Identity


@dataclass(frozen=True, slots=True)
class _PendingLogin:
    """Credentials parsed by aiosmtpd, not yet checked."""

    credentials: Any


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope plus what the gateway decided along the way."""

    def __init__(self, delivery_log: DeliveryLog) -> None:
        """Start empty."""
        super().__init__()
        self.client: Client | None = None
        self.recipients: list[Recipient] = []
        self.seen: set[bytes] = set()
        self.dropped = 0
        self.refused_events: list[InteractionEvent] = []
        self._log = delivery_log

    def abandon(self) -> None:
        """Hand over ``suppressed`` events of a transaction that ended without DATA."""
        if self.refused_events:
            self._log.add(events=self.refused_events)
            self.refused_events = []


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with our envelope type and our wording of its built-in limit replies."""

    def __init__(self, handler: SubmissionHandler, **kwargs: Any) -> None:
        """Serve ``handler``."""
        self._delivery_log = handler.delivery_log
        self._gateway = handler
        super().__init__(handler, **kwargs)

    # aiosmtpd calls its authenticator synchronously, on the event loop; scrypt (~50 ms) and the
    # brute-force back-off need to await. So the built-in mechanisms parse the exchange as usual,
    # _authenticate only hands the credentials back, and the check runs in check_login.
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """Defer the check: return the credentials for :meth:`_check` (never decides here)."""
        return AuthResult(success=False, handled=False, auth_data=_PendingLogin(auth_data))

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        """AUTH PLAIN, checked off the loop and throttled."""
        return await self._check(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        """AUTH LOGIN, checked off the loop and throttled."""
        return await self._check(await super().auth_LOGIN(_, args))

    async def _check(self, result: AuthResult) -> AuthResult:
        """Run the deferred credential check, if the exchange got that far."""
        pending = result.auth_data
        if not isinstance(pending, _PendingLogin) or self.session is None:
            return result
        return await self._gateway.check_login(self.session, pending.credentials)

    def _create_envelope(self) -> GatewayEnvelope:
        """A fresh envelope; the previous one's pending events are not lost."""
        previous = getattr(self, "envelope", None)
        if isinstance(previous, GatewayEnvelope):
            previous.abandon()
        return GatewayEnvelope(self._delivery_log)

    def connection_lost(self, exc: Exception | None) -> None:
        """The mailer went away: keep the events of its unfinished transaction."""
        if isinstance(self.envelope, GatewayEnvelope):
            self.envelope.abandon()
        super().connection_lost(exc)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parse of a MAIL/RCPT path, without email's header parser for a plain one."""
        found = _PLAIN_PATH.match(arg)
        if found is None or (self.local_part_limit and found.group(1).index("@") > self.local_part_limit):
            return super()._getaddr(arg)
        return found.group(1), found.group(2) or ""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the section read in large pieces (see smtp_gateway.data_reader)."""
        if self._decode_data:  # the gateway relays bytes; decoding stays aiosmtpd's business
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            section = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:  # aiosmtpd cancels the session when the mailer hangs up
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            return
        if section.state is not DataState.NOMINAL:
            too_long = section.state is DataState.TOO_LONG
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)" if too_long else "552 Error: Too much mail data"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = section.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: str) -> None:  # type: ignore[override]
        """Send a reply, replacing aiosmtpd's own wording where we name the reply differently."""
        await super().push(
            replies.AIOSMTPD_OVERRIDES.get(status, status) if isinstance(status, str) else status
        )


# --- the handler ------------------------------------------------------------------------------


class SubmissionHandler:
    """aiosmtpd hooks of the submission listener."""

    def __init__(
        self,
        *,
        service: LedgerService,
        relay: Relay,
        delivery_log: DeliveryLog,
        config: SubmissionConfig,
        clients: ClientDirectory | None = None,
        clock: Clock = utc_now,
        signer_factory: SignerFactory = default_signer_factory,
    ) -> None:
        """Wire the ledger, the upstream and the event log together."""
        self.service = service
        self.store = service.store
        self.outbox = OutboxStore(service.store.db)
        self.relay = relay
        self.delivery_log = delivery_log
        self.config = config
        self.clients = clients or ClientDirectory(service.store, config.client_cache_seconds)
        self.clock = clock
        self.credentials = CredentialCache()
        self.throttle = AuthThrottle(config.auth_throttle)
        self._signer_factory = signer_factory
        self._signers: dict[tuple[str, str, str, str], Signer | None] = {}
        self._campaigns: dict[tuple[str, str], int] = {}
        self._token_keys = service.token_keys

    # -- connection and authentication ---------------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Refresh the client cache if stale, so AUTH (synchronous) sees a just-added client."""
        try:
            await self.clients.refresh_if_stale()
        except LedgerError as exc:
            log.warning("cannot refresh clients: %s", exc)
        session.host_name = hostname
        return responses

    async def check_login(self, session: Session, credentials: Any) -> AuthResult:
        """The login is the client id, the password the one `client add` printed; throttled per IP and login.

        Past the free failures an address or login is locked out (454 4.7.0, password not even
        checked); every failure is logged and answered only after a short delay.
        """
        if not isinstance(credentials, LoginPassword):
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        peer = str(session.peer[0]) if session.peer else "unknown"
        login = _one_line(credentials.login.decode("utf-8", "replace"))
        wait = self.throttle.locked_for(peer, login)
        if wait > 0:
            log.warning(
                "AUTH refused without checking: %s / login %r locked out for %.0fs", peer, login, wait
            )
            return AuthResult(success=False, handled=False, message=replies.AUTH_THROTTLED)
        client = self.clients.cached(login)
        if await self.credentials.verify(client, credentials.password) and client is not None:
            self.throttle.succeeded(peer, login)
            return AuthResult(success=True, auth_data=client.id)
        by_ip, by_login, lockout = self.throttle.failed(peer, login)
        log.warning(
            "AUTH failed from %s for login %r (%d failures from this address, %d for this login%s)",
            peer,
            login,
            by_ip,
            by_login,
            f"; locked out for {lockout:.0f}s" if lockout else "",
        )
        await asyncio.sleep(self.config.auth_throttle.failure_delay_seconds)
        return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)

    # -- MAIL ------------------------------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: GatewayEnvelope, address: str, options: list[str]
    ) -> str:
        """Who submits (AUTH or trusted network), whether they may now, and from which domain."""
        client_id = session.auth_data if session.authenticated else None
        if client_id is None and session.peer:
            client_id = self.clients.trusted_client(str(session.peer[0]))
        if client_id is None:
            return replies.AUTH_REQUIRED
        try:
            client = await self.clients.current(client_id)
        except DatabaseUnavailable:
            return replies.LEDGER_UNAVAILABLE
        if client is None:  # deleted since it authenticated
            return replies.AUTH_REQUIRED
        if client.paused_reason:
            return replies.CLIENT_PAUSED.format(reason=_one_line(client.paused_reason))
        if not address or address == "<>":
            return replies.NULL_SENDER_NOT_ALLOWED
        if sender_domain(address, client.domains) is None:
            return replies.SENDER_NOT_ALLOWED.format(address=_one_line(address))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.client = client
        return replies.SENDER_OK

    # -- RCPT ------------------------------------------------------------------------------------

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: GatewayEnvelope, address: str, options: list[str]
    ) -> str:
        """Decide once, now: accept, refuse with the reason, or accept-and-drop."""
        client = envelope.client
        if client is None:
            return replies.AUTH_REQUIRED
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        try:
            identity = self.service.identify(address)
        except InvalidAddress:
            return replies.INVALID_ADDRESS.format(address=_one_line(address))
        now = self.clock()
        try:
            decision = await self.service.decide_for_client(identity, client, now)
        except DatabaseUnavailable:
            return replies.LEDGER_UNAVAILABLE
        if not decision.allowed:
            reason = str(decision.reason)
            metrics.RECIPIENTS_REFUSED.labels(reason=reason).inc()
            envelope.refused_events.append(
                InteractionEvent(client.id, EventKind.SUPPRESSED, now, None, identity.subject_key, reason)
            )
            if client.on_suppressed is OnSuppressed.REJECT:
                return replies.RECIPIENT_SUPPRESSED.format(address=_one_line(address), reason=reason)
            envelope.dropped += 1
        elif identity.subject_key not in envelope.seen:  # the same person twice gets one copy
            envelope.seen.add(identity.subject_key)
            envelope.recipients.append(Recipient(address, identity))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.RECIPIENT_OK

    # -- DATA ------------------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: GatewayEnvelope) -> str:
        """Render, sign and relay one copy per accepted recipient; 250 only once nothing can be lost."""
        client = envelope.client
        if client is None:
            return replies.AUTH_REQUIRED
        raw = envelope.original_content or b""
        now = self.clock()
        author = header_from(raw)
        if author and sender_domain(author, client.domains) is None:
            owner = self.clients.domain_owner(author)
            if owner is not None and owner != client.id:  # impersonating another tenant
                envelope.abandon()
                return replies.FROM_OTHER_CLIENT
        try:
            template = prepare(raw, self._rewrite_options(client), self._sign_link)
        except BadControlHeader as exc:
            envelope.abandon()
            return replies.BAD_CONTROL_HEADER.format(detail=_one_line(str(exc)))
        except MalformedMessage as exc:
            envelope.abandon()
            return replies.MALFORMED_MESSAGE.format(detail=_one_line(str(exc)))
        except Exception:  # a rewriter bug: keep the message (the mailer retries), show no internals
            log.exception("could not rewrite a message of client %s", client.id)
            return replies.LOCAL_ERROR
        try:
            campaign_num = await self._campaign_num(client.id, template.campaign or DEFAULT_CAMPAIGN, now)
        except DatabaseUnavailable:
            return replies.LEDGER_UNAVAILABLE
        for event in envelope.refused_events:
            event_campaign = InteractionEvent(
                event.client_id, event.kind, event.at, campaign_num, event.subject_key, event.reason
            )
            self.delivery_log.add(events=[event_campaign])
        envelope.refused_events = []
        try:
            outcome = await self._deliver(client, campaign_num, template, raw, envelope.recipients, now)
        except DatabaseUnavailable:
            return replies.LEDGER_UNAVAILABLE
        except Exception:  # never 250 for what is not relayed or spooled; never aiosmtpd's 500
            log.exception("could not deliver a message of client %s", client.id)
            return replies.LOCAL_ERROR
        metrics.MESSAGES_ACCEPTED.inc()
        delivered, spooled = outcome
        return replies.MESSAGE_ACCEPTED.format(delivered=delivered, spooled=spooled, dropped=envelope.dropped)

    async def _deliver(
        self,
        client: Client,
        campaign_num: int,
        template: MessageTemplate,
        raw: bytes,
        recipients: Sequence[Recipient],
        now: datetime,
    ) -> tuple[int, int]:
        """Relay every copy; spool the ones the upstream did not take. Returns (relayed, spooled).

        Raises DatabaseUnavailable when the spool cannot be written: then nothing was recorded
        and the mailer must retry (copies already relayed may then arrive twice: at-least-once).
        """
        if not recipients:
            return 0, 0
        signer = self._signer(client, raw)
        loop = asyncio.get_running_loop()
        tokens: list[str] = []
        messages: list[bytes] = []
        signing: list[tuple[PendingSignature, asyncio.Future[bytes]]] = []
        for recipient in recipients:
            token = self.service.mint_token(client, campaign_num, recipient.identity.subject_key, now)
            tokens.append(token)
            message = template.render(token)
            if signer is None:
                messages.append(message)
            else:
                pending = signer.prepare(message)
                signing.append((pending, self._rsa_sign(loop, signer, pending.digest)))
            if len(recipients) > 1:
                # Let other sessions run between copies: preparing ten copies back to back holds
                # the loop for milliseconds, and every other session's RCPT reply waits behind it.
                await asyncio.sleep(0)
        if signer is not None:
            messages = [signer.finish(pending, await signature) for pending, signature in signing]
        copies = [
            Copy(f"bounces+{token}@{self.config.inbound_domain}", recipient.rcpt, message)
            for token, recipient, message in zip(tokens, recipients, messages, strict=True)
        ]
        results = await send_all(self.relay, copies)
        temporary = [
            (r, c, res) for r, c, res in zip(recipients, copies, results, strict=True) if _is_temp(res)
        ]
        if temporary:
            await self.outbox.add(
                [
                    OutboxCopy(
                        client.id,
                        campaign_num,
                        r.identity.subject_key,
                        c.mail_from,
                        c.rcpt,
                        c.message,
                        attempts=1,
                        last_error=res.detail,
                    )
                    for r, c, res in temporary
                ],
                now,
                now + timedelta(seconds=self.config.first_retry_seconds),
            )
            metrics.COPIES_SPOOLED.inc(len(temporary))
        events: list[InteractionEvent] = []
        sends: list[Send] = []
        for recipient, result in zip(recipients, results, strict=True):
            key = recipient.identity.subject_key
            if result.outcome is Outcome.DELIVERED:
                events.append(InteractionEvent(client.id, EventKind.DELIVERED, now, campaign_num, key))
                sends.append(Send(client.id, key, now))
            elif result.outcome is Outcome.TEMPORARY:
                events.append(
                    InteractionEvent(client.id, EventKind.DEFERRED, now, campaign_num, key, _code(result))
                )
        self.delivery_log.add(events=events, subjects=[r.identity for r in recipients], sends=sends)
        metrics.COPIES_RELAYED.inc(len(sends))
        for recipient, result in zip(recipients, results, strict=True):
            if result.outcome is Outcome.PERMANENT:
                try:
                    await self.delivery_log.handle_permanent_failure(
                        client.id, campaign_num, recipient.identity.subject_key, result, now
                    )
                except LedgerError as exc:  # the copy's fate is settled; only the record failed
                    log.error("could not record a hard bounce for client %s: %s", client.id, exc)
        return len(sends), len(temporary)

    # -- caches ----------------------------------------------------------------------------------

    def _rewrite_options(self, client: Client) -> RewriteOptions:
        """The rewrite settings of one client."""
        return RewriteOptions(
            public_url=self.config.public_url,
            inbound_domain=self.config.inbound_domain,
            client_name=client.name,
            postal_address=client.postal_address,
            tracking=client.tracking,
        )

    def _sign_link(self, url: str) -> str:
        """The signed LINK segment of a click URL."""
        if self._token_keys is None:
            raise RuntimeError("the gateway needs token keys")
        return tokens.sign_link(url, self._token_keys)

    async def _campaign_num(self, client_id: str, name: str, now: datetime) -> int:
        """The campaign's number, cached (numbers never change once assigned)."""
        key = (client_id, name)
        num = self._campaigns.get(key)
        if num is None:
            num = await self.store.campaign_num(client_id, name, now)
            if len(self._campaigns) >= _CAMPAIGN_CACHE_MAX:
                self._campaigns.clear()
            self._campaigns[key] = num
        return num

    def _rsa_sign(
        self, loop: asyncio.AbstractEventLoop, signer: Signer, digest: bytes
    ) -> asyncio.Future[bytes]:
        """The RSA signature of ``digest``: in the default executor (``rsa_in_thread``) or at once."""
        if self.config.rsa_in_thread:
            # OpenSSL runs without the GIL: the loop answers other sessions and prepares the
            # next copy while this one is signed.
            return loop.run_in_executor(None, signer.rsa_sign, digest)
        done: asyncio.Future[bytes] = loop.create_future()
        done.set_result(signer.rsa_sign(digest))
        return done

    def _signer(self, client: Client, raw: bytes) -> Signer | None:
        """The client's DKIM signer for the From domain (None when the client has no key)."""
        if not client.dkim_private_key or not client.dkim_selector:
            return None
        domain = sender_domain(header_from(raw) or "", client.domains) or client.domains[0]
        key = (client.id, domain, client.dkim_selector, client.dkim_private_key)
        if key not in self._signers:
            if len(self._signers) >= 1000:
                self._signers.clear()
            self._signers[key] = self._signer_factory(domain, client.dkim_selector, client.dkim_private_key)
        return self._signers[key]


# --- helpers ----------------------------------------------------------------------------------


def sender_domain(address: str, domains: Sequence[str]) -> str | None:
    """The client domain ``address`` belongs to (the domain itself or a subdomain of it), or None."""
    _, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return None
    domain = domain.lower().rstrip(".")
    for allowed in domains:
        if domain == allowed or domain.endswith("." + allowed):
            return allowed
    return None


def header_from(raw: bytes) -> str | None:
    """The address in the message's From header (first one), read from the header block only."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _FROM_FIELD_RE.search(head)
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace")
    found = [addr for _, addr in getaddresses([value]) if "@" in addr]
    return found[0] if found else None


def _is_temp(result: RelayResult) -> bool:
    """Whether a copy goes to the outbox."""
    return result.outcome is Outcome.TEMPORARY


def _code(result: RelayResult) -> str:
    """A short, address-free reason for a deferral."""
    return f"upstream {result.code}" if result.code else "upstream unreachable"


def _one_line(text: str) -> str:
    """Text safe to echo inside one SMTP reply line."""
    return re.sub(r"[\x00-\x1f\x7f]", "", text)[:200]


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is a loopback one (plain AUTH may be allowed there)."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def smtp_factory(
    handler: SubmissionHandler, config: SubmissionConfig, *, loopback: bool
) -> Callable[[], GatewaySMTP]:
    """The protocol factory for one listener (``loopback``: whether it listens on loopback only)."""
    require_tls = not (loopback and config.allow_plain_auth_on_loopback)

    def make() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            hostname=config.hostname,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=config.tls_context,
            auth_require_tls=require_tls,
            timeout=config.session_timeout_seconds,
            loop=asyncio.get_running_loop(),
        )

    return make


__all__ = [
    "ClientDirectory",
    "GatewaySMTP",
    "SubmissionConfig",
    "SubmissionHandler",
    "smtp_factory",
]

"""The inbound SMTP listener: bounces, complaints and mailto unsubscribes feed the ledger.

It is the MX of the inbound domain(s) and serves exactly three kinds of address there:
``bounces+TOKEN@`` (the VERP return path of every copy), ``unsubscribe+TOKEN@`` (the
``List-Unsubscribe`` mailto) and the complaint address(es) (``fbl@``, ``abuse@``) where feedback
loops send their ARF reports. Everything else is refused with 550 5.7.1: it is never a relay.
No AUTH; a null reverse path (``MAIL FROM:<>``) is accepted, as DSNs use it. It never replies
to anything it receives (it generates no mail at all), and mail it accepts but cannot act on —
an auto-reply, a forged token, a bounce of a bounce, malformed MIME — is dropped with the
reason logged, after the ``250`` (answering 5xx to a null sender would only make more bounces).
"""

from __future__ import annotations

import asyncio
import email
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import errors as email_errors
from email.message import Message
from email.policy import compat32
from enum import StrEnum
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from ledger import tokens
from ledger.bounce_rules import BounceKind, RateVerdict
from ledger.bounce_service import InboundLedger
from ledger.errors import DatabaseUnavailable, InvalidAddress, InvalidToken
from ledger.service import LedgerService, TokenTarget
from smtp_gateway import metrics, replies
from smtp_gateway.bounces import BounceReport, classify, loop_reason, returned_messages
from smtp_gateway.complaints import (
    is_feedback_report,
    parse_feedback_report,
    tokens_in_message,
    tokens_in_text,
)
from smtp_gateway.errors import GatewayError, MalformedMessage

log = logging.getLogger("consentgate.inbound")

Clock = Callable[[], datetime]

# Structural defects that leave a multipart message unreadable (a missing or unmatched
# boundary): acting on what the parser guessed could suppress the wrong person.
_FATAL_DEFECTS = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
)


# A token minted at most this many days ago whose copy is unknown is probably still in the
# gateway's write buffer, not forged: the message is deferred rather than dropped.
FRESH_TOKEN_DAYS = 1


class RetryLater(GatewayError):
    """The message names a copy the ledger does not know yet: answer 451 so the sender retries."""


def utc_now() -> datetime:
    """The wall clock (the listener reads it once per command; the rules receive it)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """What the inbound listener serves (the CLI maps the settings onto this)."""

    domains: tuple[str, ...] = ("localhost",)
    complaint_local_parts: tuple[str, ...] = ("fbl", "abuse")
    bounce_local_part: str = "bounces"
    unsubscribe_local_part: str = "unsubscribe"
    hostname: str = "localhost"
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 20
    session_timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        """Compare domains and local parts case-insensitively."""
        object.__setattr__(self, "domains", tuple(d.lower().rstrip(".") for d in self.domains))
        object.__setattr__(
            self, "complaint_local_parts", tuple(p.lower() for p in self.complaint_local_parts)
        )


class InboundKind(StrEnum):
    """The three kinds of inbound address."""

    BOUNCE = "bounce"
    UNSUBSCRIBE = "unsubscribe"
    COMPLAINT = "complaint"


@dataclass(frozen=True, slots=True)
class InboundAddress:
    """An address the listener serves: its kind and (for bounces and unsubscribes) its token."""

    kind: InboundKind
    token: str = ""


class Action(StrEnum):
    """What the listener did with one message for one inbound address."""

    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    DELIVERY = "delivery"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Disposition:
    """The outcome for one (message, inbound address): the action, why, and what it changed."""

    recipient: str
    action: Action
    reason: str
    client_id: str = ""
    suppressed: bool = False


def parse_inbound_address(address: str, config: InboundConfig) -> InboundAddress | None:
    """The inbound address ``address`` names, or None when the listener does not serve it."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or domain.lower().rstrip(".") not in config.domains:
        return None
    local = local.lower()
    if local in config.complaint_local_parts:
        return InboundAddress(InboundKind.COMPLAINT)
    base, plus, token = local.partition("+")
    if not plus or not token:
        return None
    if base == config.bounce_local_part:
        return InboundAddress(InboundKind.BOUNCE, token)
    if base == config.unsubscribe_local_part:
        return InboundAddress(InboundKind.UNSUBSCRIBE, token)
    return None


def parse_message(content: bytes) -> Message:
    """Parse received DATA; raise :class:`MalformedMessage` for what cannot be read safely."""
    if not content.strip():
        raise MalformedMessage("empty message")
    msg = email.message_from_bytes(content, policy=compat32)
    if not msg.keys():
        raise MalformedMessage("no header section")
    for part in msg.walk():
        fatal = [d for d in part.defects if isinstance(d, _FATAL_DEFECTS)]
        if fatal:
            names = ", ".join(sorted({type(d).__name__ for d in fatal}))
            raise MalformedMessage(f"unreadable MIME structure ({names})")
    return msg


def auto_submitted(msg: Message) -> str:
    """The ``Auto-Submitted`` value when it is not ``no`` (RFC 3834), else the empty string."""
    value = str(msg.get("auto-submitted", "")).strip().lower()
    keyword = value.split(";")[0].strip()
    return "" if keyword in ("", "no") else keyword


class InboundProcessor:
    """Turns one received message for one inbound address into ledger writes (no sockets)."""

    def __init__(self, service: LedgerService, ledger: InboundLedger, config: InboundConfig) -> None:
        """Resolve tokens through ``service``, apply the rules through ``ledger``."""
        self.service = service
        self.ledger = ledger
        self.config = config

    def check_recipient(self, address: str, now: datetime) -> InboundAddress | None:
        """RCPT-time check: a served address whose token (if any) verifies; no database access."""
        parsed = parse_inbound_address(address, self.config)
        if parsed is None or not parsed.token:
            return parsed
        keys = self.service.token_keys
        if keys is None:
            return None
        try:
            tokens.verify(parsed.token, keys, tokens.day_number(now), self.service.token_max_age_days)
        except InvalidToken as exc:
            log.info("refused RCPT %s: %s", address, exc)
            return None
        return parsed

    async def process(self, mail_from: str, rcpt: str, content: bytes, now: datetime) -> Disposition:
        """Act on ``content`` received for inbound address ``rcpt``; log and return the outcome."""
        disposition = await self._process(mail_from, rcpt, content, now)
        level = logging.WARNING if disposition.action is Action.IGNORED else logging.INFO
        log.log(
            level,
            "inbound %s from <%s> to <%s>: %s%s",
            disposition.action,
            mail_from.strip("<>"),
            rcpt,
            disposition.reason,
            f" (client {disposition.client_id})" if disposition.client_id else "",
        )
        return disposition

    async def _process(self, mail_from: str, rcpt: str, content: bytes, now: datetime) -> Disposition:
        """:meth:`process` without the log line."""
        address = parse_inbound_address(rcpt, self.config)
        if address is None:
            return Disposition(rcpt, Action.IGNORED, "not an inbound address")
        try:
            msg = parse_message(content)
        except MalformedMessage as exc:
            return Disposition(rcpt, Action.IGNORED, f"malformed message: {exc}")
        target: TokenTarget | None = None
        if address.token:
            try:
                target = await self._resolve(address.token, now)
            except InvalidToken as exc:
                return Disposition(rcpt, Action.IGNORED, f"token of the address does not verify: {exc}")
        if is_feedback_report(msg):
            return await self._complaint(rcpt, msg, target, now)
        if address.kind is InboundKind.COMPLAINT:
            return Disposition(
                rcpt, Action.IGNORED, "not an ARF feedback report (RFC 5965): nothing to act on"
            )
        assert target is not None  # bounce and unsubscribe addresses always carry a token
        if address.kind is InboundKind.UNSUBSCRIBE:
            return await self._unsubscribe(rcpt, mail_from, msg, target, now)
        return await self._bounce(rcpt, msg, target, now)

    # -- bounces -------------------------------------------------------------------------------

    async def _bounce(self, rcpt: str, msg: Message, target: TokenTarget, now: datetime) -> Disposition:
        """A message to a VERP address: a DSN (hard or soft), a success DSN, or nothing."""
        client_id = target.client.id
        looped = loop_reason(msg)
        if looped:
            return Disposition(rcpt, Action.IGNORED, f"mail loop: {looped}", client_id)
        report = classify(msg)
        if not report.is_bounce:
            if report.delivered:
                await self.ledger.record_delivery(client_id, [target.subject_key])
                return Disposition(rcpt, Action.DELIVERY, "success DSN: soft-bounce score reset", client_id)
            auto = auto_submitted(msg)
            why = f"auto-submitted ({auto}) mail that is not a bounce" if auto else "not a bounce"
            if report.detector_error:
                why += f" (unreadable: {report.detector_error})"
            return Disposition(rcpt, Action.IGNORED, why, client_id)
        mismatch = await self._token_mismatch(msg, target, now)
        if mismatch:
            return Disposition(rcpt, Action.IGNORED, mismatch, client_id)
        kind, status = self._kind_for(report, target)
        outcome = await self.ledger.record_bounce(
            client_id, target.subject_key, target.campaign_num, kind, now, f"dsn {status or kind}"
        )
        metrics.BOUNCES.labels(kind=str(kind)).inc()
        action = Action.HARD_BOUNCE if kind is BounceKind.HARD else Action.SOFT_BOUNCE
        detail = f"{kind} bounce ({status or 'no status code'})"
        if kind is BounceKind.SOFT:
            detail += f", soft score {outcome.soft_score}/{self.ledger.policy.soft_threshold}"
        return Disposition(rcpt, action, detail, client_id, outcome.suppressed)

    def _kind_for(self, report: BounceReport, target: TokenTarget) -> tuple[BounceKind, str | None]:
        """The kind of the failure that concerns the token's subject.

        With VERP each copy has its own return path, so the token names the recipient; the
        address in the DSN may differ (a forward, an alias). When one of the reported addresses
        is the token's subject its verdict decides, otherwise the worst reported one.
        """
        for failure in report.failures:
            try:
                if self.service.identify(failure.address).subject_key == target.subject_key:
                    return failure.kind, failure.status
            except InvalidAddress:
                continue
        hard = [f for f in report.failures if f.kind is BounceKind.HARD]
        chosen = hard[0] if hard else report.failures[0]
        return chosen.kind, chosen.status

    async def _token_mismatch(self, msg: Message, target: TokenTarget, now: datetime) -> str | None:
        """Why the returned copy contradicts the envelope token, or None when it agrees.

        A DSN to one copy's VERP address that returns a copy carrying another client's (or
        another subject's) token is crafted: acting on either token could suppress wrongly.
        """
        for found in await self._targets_in(msg, now):
            if found.client.id != target.client.id:
                return "the returned copy carries a token of another client than the return path"
            if found.subject_key != target.subject_key:
                return "the returned copy carries a token of another recipient than the return path"
        return None

    async def _targets_in(self, msg: Message, now: datetime, extra: str = "") -> list[TokenTarget]:
        """Every genuine token in ``msg`` (its text and returned copies), resolved; forged ones skipped."""
        found = tokens_in_text(extra) + tokens_in_message(msg)
        for original in returned_messages(msg):
            found += tokens_in_message(original)
        targets: list[TokenTarget] = []
        for token in dict.fromkeys(found):
            try:
                targets.append(await self._resolve(token, now))
            except InvalidToken as exc:
                log.info("ignoring a token in a returned copy: %s", exc)
        return targets

    async def _resolve(self, token: str, now: datetime) -> TokenTarget:
        """Resolve a token; raise :class:`RetryLater` for a fresh genuine one whose copy is unknown."""
        try:
            return await self.service.resolve_token(token, now)
        except InvalidToken:
            keys = self.service.token_keys
            if keys is None:
                raise
            today = tokens.day_number(now)
            payload = tokens.verify(token, keys, today, self.service.token_max_age_days)
            if today - payload.issued_day <= FRESH_TOKEN_DAYS:
                raise RetryLater("a fresh token whose copy is not recorded yet") from None
            raise

    # -- unsubscribes --------------------------------------------------------------------------

    async def _unsubscribe(
        self, rcpt: str, mail_from: str, msg: Message, target: TokenTarget, now: datetime
    ) -> Disposition:
        """Mail to ``unsubscribe+TOKEN@``: unsubscribe like the one-click POST, unless automated."""
        client_id = target.client.id
        if mail_from.strip("<>") == "":
            return Disposition(
                rcpt, Action.IGNORED, "null reverse path: a notification, not a request", client_id
            )
        auto = auto_submitted(msg)
        if auto:
            return Disposition(
                rcpt, Action.IGNORED, f"auto-submitted ({auto}): only a person unsubscribes", client_id
            )
        if msg.get_content_type() == "multipart/report":
            return Disposition(
                rcpt, Action.IGNORED, "a delivery report, not an unsubscribe request", client_id
            )
        suppressed = await self.ledger.record_unsubscribe(
            client_id, target.subject_key, target.campaign_num, now, "mailto"
        )
        if suppressed:
            metrics.UNSUBSCRIBES.labels(channel="mailto").inc()
        why = "unsubscribed" if suppressed else "already suppressed for this client"
        return Disposition(rcpt, Action.UNSUBSCRIBE, why, client_id, suppressed)

    # -- complaints ----------------------------------------------------------------------------

    async def _complaint(
        self, rcpt: str, msg: Message, envelope_target: TokenTarget | None, now: datetime
    ) -> Disposition:
        """An ARF report: find the one copy it is about through its tokens, then complain."""
        report = parse_feedback_report(msg)
        if report is None:
            return Disposition(rcpt, Action.IGNORED, "feedback report without a Feedback-Type field")
        if report.feedback_type != "abuse":
            return Disposition(
                rcpt, Action.IGNORED, f"feedback type {report.feedback_type!r} is not a complaint"
            )
        targets = await self._targets_in(msg, now, extra=report.original_mail_from)
        if envelope_target is not None:
            targets.append(envelope_target)
        distinct = {(t.client.id, t.subject_key): t for t in targets}
        if not distinct:
            why = "no genuine token in the returned copy"
            if report.original_rcpt_to:
                why += "; Original-Rcpt-To alone does not prove which client sent the copy"
            return Disposition(rcpt, Action.IGNORED, why)
        if len(distinct) > 1:
            clients = sorted({client for client, _key in distinct})
            return Disposition(
                rcpt, Action.IGNORED, f"the report names several copies (clients {', '.join(clients)})"
            )
        target = next(iter(distinct.values()))
        client_id = target.client.id
        self._check_original_rcpt(report.original_rcpt_to, target)
        outcome = await self.ledger.record_complaint(
            client_id, target.subject_key, target.campaign_num, now, f"arf {report.user_agent}".strip()
        )
        metrics.COMPLAINTS.inc()
        if outcome.guard.verdict in (RateVerdict.WARN, RateVerdict.PAUSE):
            metrics.COMPLAINT_RATE_WARNINGS.labels(client=client_id).inc()
        why = f"complaint, suppressed in scope {outcome.scope}" if outcome.suppressed else "complaint"
        why += f"; complaint rate {outcome.guard.rate:.2%} ({outcome.guard.verdict})"
        if outcome.guard.paused_now:
            why += "; client paused"
        return Disposition(rcpt, Action.COMPLAINT, why, client_id, outcome.suppressed)

    def _check_original_rcpt(self, original_rcpt_to: str, target: TokenTarget) -> None:
        """Log when Original-Rcpt-To names someone else than the token (a forward, or redacted)."""
        if not original_rcpt_to:
            return
        try:
            same = self.service.identify(original_rcpt_to).subject_key == target.subject_key
        except InvalidAddress:
            same = False
        if not same:
            log.info("Original-Rcpt-To differs from the token's recipient (redacted or forwarded)")


# --- the listener -----------------------------------------------------------------------------


class InboundSMTP(SMTP):
    """aiosmtpd's SMTP with our wording of its built-in limit replies."""

    async def push(self, status: AnyStr) -> None:
        """Send a reply, replacing aiosmtpd's own wording where we name the reply differently."""
        if isinstance(status, str):
            await super().push(replies.AIOSMTPD_OVERRIDES.get(status, status))
        else:
            await super().push(status)


class InboundHandler:
    """aiosmtpd hooks of the inbound listener."""

    def __init__(self, processor: InboundProcessor, clock: Clock = utc_now) -> None:
        """Serve ``processor``'s addresses, reading time from ``clock``."""
        self.processor = processor
        self.clock = clock

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept only served addresses with a genuine token (or the complaint address)."""
        if len(envelope.rcpt_tos) >= self.processor.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if self.processor.check_recipient(address, self.clock()) is None:
            log.info("refused RCPT <%s> from %s: not an inbound address", address, session.peer)
            return replies.INBOUND_RECIPIENT_REFUSED.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Act on the message for each inbound address; 451 only when the ledger is unreachable."""
        content = envelope.original_content or b""
        mail_from = str(envelope.mail_from or "")
        now = self.clock()
        for rcpt in envelope.rcpt_tos:
            try:
                await self.processor.process(mail_from, rcpt, content, now)
            except RetryLater as exc:
                log.info("inbound mail to <%s> deferred: %s", rcpt, exc)
                return replies.INBOUND_TRY_LATER
            except DatabaseUnavailable as exc:
                log.warning("inbound mail deferred, the ledger is unavailable: %s", exc)
                return replies.LEDGER_UNAVAILABLE
            except Exception:
                # The sender retries on 451: nothing accepted is lost to a bug here.
                log.exception("inbound mail to <%s> failed", rcpt)
                return replies.LOCAL_ERROR
        return replies.INBOUND_ACCEPTED


class InboundListener:
    """The inbound SMTP server as a component of the `serve` loop: ``await start()``, ``stop()``."""

    def __init__(self, handler: InboundHandler, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port, see :attr:`port`)."""
        self.handler = handler
        self.host = host
        self.requested_port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the inbound listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def _make_protocol(self) -> InboundSMTP:
        """One SMTP protocol per connection: no AUTH offered, size-limited DATA."""
        config = self.handler.processor.config
        return InboundSMTP(
            self.handler,
            hostname=config.hostname,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=config.session_timeout_seconds,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            loop=asyncio.get_running_loop(),
        )

    async def start(self, **server_options: Any) -> None:
        """Bind and start serving in the running loop (``server_options`` go to create_server)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, self.host, self.requested_port, **server_options
        )
        log.info("inbound listener on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting connections and close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def build_inbound_listener(
    service: LedgerService,
    ledger: InboundLedger,
    config: InboundConfig,
    listen: str,
    clock: Clock = utc_now,
) -> InboundListener:
    """The listener for ``listen`` (``host:port``, IPv6 hosts in brackets), ready to ``start()``."""
    host, _sep, port = listen.rpartition(":")
    handler = InboundHandler(InboundProcessor(service, ledger, config), clock)
    return InboundListener(handler, host.strip("[]"), int(port))

"""Reading bounce messages: which recipients failed, permanently or temporarily.

flufl.bounce knows the real-world formats (RFC 3464 DSNs, Postfix, Exim, qmail, Exchange,
Yahoo…); the RFC 3464 ``message/delivery-status`` fields (``Action``, ``Status``) refine its
answer — a DSN that says ``Action: failed`` with ``Status: 4.4.7`` (given up after retries) is a
soft bounce, not a hard one — and stand in when flufl recognises nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import parseaddr

from flufl.bounce import all_failures

from ledger.bounce_rules import BounceKind, classify_status, enhanced_status

log = logging.getLogger("consentgate.inbound")

_FAILED_ACTIONS = ("failed", "error")
_DELAYED_ACTIONS = ("delayed",)
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global")
_MAILER_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.IGNORECASE)
# More hops than any real path (RFC 5321 §6.3 suggests ~100 as a loop sign; real mail has < 20).
MAX_RECEIVED_HEADERS = 60


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient block of a ``message/delivery-status`` part."""

    address: str
    action: str
    status: str | None
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """A recipient the bounce reports as failed, and how badly."""

    address: str
    kind: BounceKind
    status: str | None = None


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What a message says about delivery: failures, or a success DSN, or nothing at all."""

    failures: tuple[Failure, ...]
    is_dsn: bool
    delivered: tuple[str, ...] = ()
    detector_error: str = ""

    @property
    def permanent(self) -> frozenset[str]:
        """Addresses that failed hard."""
        return frozenset(f.address for f in self.failures if f.kind is BounceKind.HARD)

    @property
    def temporary(self) -> frozenset[str]:
        """Addresses that failed soft."""
        return frozenset(f.address for f in self.failures if f.kind is BounceKind.SOFT)

    @property
    def is_bounce(self) -> bool:
        """Whether any recipient failed."""
        return bool(self.failures)


def is_report(msg: Message, report_type: str) -> bool:
    """Whether ``msg`` is a ``multipart/report`` of ``report_type`` (delivery-status, feedback-report)."""
    if msg.get_content_type() != "multipart/report":
        return False
    return str(msg.get_param("report-type", "", header="content-type")).lower() == report_type


def dsn_recipients(msg: Message) -> list[DsnRecipient]:
    """The per-recipient blocks of every ``message/delivery-status`` part (RFC 3464 §2.3)."""
    found: list[DsnRecipient] = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        for block in _status_blocks(part):
            action = str(block.get("action", "")).strip().lower()
            recipient = block.get("original-recipient") or block.get("final-recipient")
            if not action or recipient is None:
                continue  # the per-message block (Reporting-MTA…), or a broken one
            status_field = str(block.get("status", ""))
            found.append(
                DsnRecipient(
                    address=_address_of(str(recipient)),
                    action=action,
                    status=enhanced_status(status_field),
                    diagnostic=" ".join(str(block.get("diagnostic-code", "")).split()),
                )
            )
    return found


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part, whether the parser split them or not."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):
        parser = HeaderParser()
        return [parser.parsestr(chunk) for chunk in re.split(r"\r?\n\s*\r?\n", payload) if chunk.strip()]
    return []


def _address_of(field: str) -> str:
    """The address of a DSN recipient field (``rfc822; <a@b>``), lower-cased for matching."""
    _type, _sep, value = field.partition(";")
    return parseaddr((value or field).strip())[1].strip().lower()


def classify(msg: Message) -> BounceReport:
    """Read a bounce: flufl.bounce's verdict, refined and completed by the RFC 3464 fields."""
    blocks = dsn_recipients(msg)
    by_address = {b.address: b for b in blocks}
    detector_error = ""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # flufl's heuristics raise on odd structures: fall back to the DSN
        detector_error = f"{type(exc).__name__}: {exc}"
        log.info("flufl.bounce could not read the message (%s); using the DSN fields", detector_error)
        temporary, permanent = frozenset(), frozenset()
    failures: dict[str, Failure] = {}
    for raw, hint in [(a, True) for a in permanent] + [(a, False) for a in temporary]:
        address = raw.decode("ascii", "replace").strip().lower()
        if not address or address in failures:
            continue
        block = by_address.get(address)
        status = block.status if block else None
        failures[address] = Failure(address, classify_status(status, permanent=hint), status)
    for block in blocks:
        if block.address in failures or not block.address:
            continue
        if block.action.startswith(_FAILED_ACTIONS):
            failures[block.address] = Failure(
                block.address, classify_status(block.status, permanent=True), block.status
            )
        elif block.action.startswith(_DELAYED_ACTIONS) or (block.status or "").startswith("4."):
            failures[block.address] = Failure(block.address, BounceKind.SOFT, block.status)
    delivered = tuple(
        b.address for b in blocks if b.action.startswith(_SUCCESS_ACTIONS) and b.address not in failures
    )
    return BounceReport(
        tuple(failures.values()), is_report(msg, "delivery-status") or bool(blocks), delivered, detector_error
    )


def returned_messages(msg: Message) -> list[Message]:
    """The returned original(s) a bounce or complaint carries (whole message or its headers)."""
    found: list[Message] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype not in _RETURNED_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            found.extend(p for p in payload if isinstance(p, Message))
        elif isinstance(payload, str):
            found.append(HeaderParser().parsestr(payload))
    return found


def loop_reason(msg: Message) -> str | None:
    """Why ``msg`` is a mail loop (a bounce of a bounce, endless hops), or None.

    The gateway never sends bounces, so a returned "original" that is itself a delivery report,
    or was sent with a null return path or by a mailer daemon, means some MTA is bouncing a
    bounce: acting on it could only suppress someone wrongly.
    """
    if len(msg.get_all("received", [])) > MAX_RECEIVED_HEADERS:
        return f"more than {MAX_RECEIVED_HEADERS} Received headers"
    for original in returned_messages(msg):
        if is_report(original, "delivery-status") or original.get_content_type() == "message/delivery-status":
            return "the returned message is itself a delivery report (a bounce of a bounce)"
        if str(original.get("return-path", "")).strip() == "<>":
            return "the returned message had a null return path (a bounce of a bounce)"
        sender = parseaddr(str(original.get("from", "")))[1]
        if _MAILER_DAEMON.match(sender):
            return f"the returned message came from {sender} (a bounce of a bounce)"
    return None
